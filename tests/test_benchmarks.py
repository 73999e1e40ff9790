"""The scripts in benchmarks/ that write the README's result files, run at tiny sizes as
their own command lines: bench_training (training time, peak memory, int8 calibration),
bench_nlss (perf.json with the int8 calibration angles), bench_assembly, bench_mlp_size."""

import json
import os
import subprocess
import sys

import pytest

from nlss_fenicsx.nn import MLPConfig
from tests.conftest import ROOT


def _run(script, *args, tmp_path, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               NLSS_FENICSX_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_bench_training_records_time_memory_and_the_int8_calibration(tmp_path):
    out = tmp_path / "perf"
    _run("bench_training.py", "--N", 8, "--K", 8, "--rank", 8, "--steps", 5, "--hidden", 16,
         "--out", out, tmp_path=tmp_path)
    rep = json.loads((out / "training.json").read_text())
    assert rep["command"] == ("nlss-fenicsx train --pde diffusion --N 8 --K 8 --rank 8 "
                              "--steps 5 --hidden 16 --out MODEL.pt --restart --no-progress")
    assert rep["parameters"] == MLPConfig(n=81, K=8, r_max=8, hidden=(16,)).num_parameters()
    assert rep["steps"] == 5
    # The child's own peak: at least what the checkpoint saw inside train().
    assert rep["peak_rss_mib"] >= rep["train_peak_rss_mib_in_checkpoint"] > 0
    assert rep["wall_s"] > rep["train_seconds"] > 0
    cal = rep["int8_calibration"]
    assert isinstance(cal["max_angle_deg"], float) and "head_basis" not in cal
    text = (out / "training.md").read_text()
    assert "| peak resident memory of the command's process |" in text
    assert not list(tmp_path.glob("**/*.pt"))  # the model went to a removed temporary folder


def test_bench_nlss_writes_the_int8_calibration_into_perf_json(tmp_path):
    out = tmp_path / "perf"
    _run("bench_nlss.py", "--budget", "smoke", "--pde", "diffusion", "--instances", 2,
         "--rank", 4, "--no-training-step", "--out", out, tmp_path=tmp_path)
    rep = json.loads((out / "perf.json").read_text())
    d = rep["pdes"]["diffusion"]
    assert set(d["rows"]) == {"NLSS (int8)", "NLSS (float32)", "SVD", "ICC(0)-CG"}
    cal = d["int8_calibration"]
    assert cal["max_angle_deg"] >= 0 and cal["ranks"]
    assert "int8 calibration (end of training):" in (out / "perf.md").read_text()


def test_bench_assembly_writes_its_table(tmp_path):
    out = tmp_path / "results" / "assembly"
    _run("bench_assembly.py", "--N", 6, 8, "--repeats", 1, "--out", out, tmp_path=tmp_path)
    rep = json.loads((out / "assembly.json").read_text())
    assert [row["N"] for row in rep["rows"]] == [6, 8]
    assert rep["command"] == "python benchmarks/bench_assembly.py --N 6 8 --repeats 1"
    assert all(row["ours_assemble_ms"] > 0 and row["loop_assemble_ms"] > 0
               for row in rep["rows"])
    assert "not the authors' code" in (out / "assembly.md").read_text()


def test_bench_mlp_size_measures_what_fits_and_says_what_does_not(tmp_path):
    out = tmp_path / "scal"
    _run("bench_mlp_size.py", "--N", 6, "--steps", 2, "--cli-steps", 2, "--out", out,
         tmp_path=tmp_path)
    rows = json.loads((out / "mlp_size.json").read_text())["rows"]
    assert [(r["N"], r["r_max"]) for r in rows] == [(6, 3), (6, 6)]
    for r in rows:
        assert r["parameters"] == MLPConfig(n=49, K=6, r_max=r["r_max"]).num_parameters()
        assert r["step_s"] > 0 and r["peak_rss_mib"] > 0 and r["budget_minutes"] > 0
        # the whole command (nlss-fenicsx train) also ran, in its own process
        assert r["cli_peak_rss_mib"] > 0 and r["cli_wall_s"] >= r["cli_overhead_s"] >= 0
        assert r["cli_command"].startswith("nlss-fenicsx train --pde diffusion --N 6 --K 6 "
                                           f"--rank {r['r_max']} --steps 2")
    _run("bench_mlp_size.py", "--N", 256, "--memory-fraction", 0.75, "--out", out,
         tmp_path=tmp_path)  # far too big here: nothing is built, only counted
    big = json.loads((out / "mlp_size.json").read_text())["rows"]
    assert [r["r_max"] for r in big] == [128, 256]
    assert big[0]["parameters"] == 3_255_028_096
    assert all("not_measured" in r and "GiB to train" in r["not_measured"] for r in big)


@pytest.mark.parametrize("script", ["bench_training.py", "bench_nlss.py", "bench_assembly.py",
                                    "bench_mlp_size.py", "network_analysis.py"])
def test_an_unwritable_out_is_refused_before_any_work(tmp_path, script):
    blocker = tmp_path / "file"
    blocker.write_text("")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT),
               NLSS_FENICSX_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--out",
                           str(blocker / "out")], capture_output=True, text=True, timeout=120,
                          env=env)
    assert proc.returncode != 0
    assert "--out" in proc.stderr and str(blocker) in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "cache").exists()  # nothing trained
