"""bench.harness: the smoke benchmark end to end, its results file, --resume and the plan."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from nlss_fenicsx.bench.harness import BUDGETS, method_plan, run_bench
from nlss_fenicsx.bench.results import validate_results
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One smoke run (screened Poisson), shared by the tests below."""
    root = tmp_path_factory.mktemp("bench")
    previous = os.environ.get("NLSS_FENICSX_CACHE"), torch.get_num_threads()
    os.environ["NLSS_FENICSX_CACHE"] = str(root / "cache")
    torch.set_num_threads(1)  # torch's threads thrash on a shared 2-core machine
    try:
        res = run_bench("screened_poisson", "smoke", root / "out", progress=False,
                        log=lambda *_: None)
    finally:
        if previous[0] is None:
            os.environ.pop("NLSS_FENICSX_CACHE")
        else:
            os.environ["NLSS_FENICSX_CACHE"] = previous[0]
        torch.set_num_threads(previous[1])
    return root / "out", res


def test_smoke_bench_every_method_converges(smoke):
    out, res = smoke
    on_disk = json.loads((out / "results.json").read_text())
    assert validate_results(on_disk) == []
    assert on_disk["complete"] is True
    expected = method_plan(BUDGETS["smoke"].ranks, res["models"], BUDGETS["smoke"])
    assert set(on_disk["methods"]) == set(expected)
    for key, m in on_disk["methods"].items():
        assert m["summary"]["n_failed"] == 0, (key, m["summary"].get("errors"))
        for rec in m["records"]:
            assert rec["ok"] and rec["rel_residual"] < 1e-6
            assert all(np.isfinite(v) for v in rec["phases"].values())
    assert on_disk["methods"]["eig@4"]["class"] == "oracle"
    assert on_disk["methods"]["svd-s30@4"]["sweeps"] == 30
    for png in ("time_iterations_vs_rank.png", "captured_energy_vs_rank.png"):
        assert (out / png).stat().st_size > 1000
    energy = on_disk["energy"]
    assert energy["svd"] == sorted(energy["svd"])  # SVD energy grows with rank
    # The SVD is the best rank-r subspace for S: no learned basis captures more.
    for name in ("nlss", "subspace", "gnn"):
        assert all(0.0 <= e <= s + 1e-9 for e, s in zip(energy[name], energy["svd"],
                                                           strict=True)), name


def test_smoke_tables_tell_the_truth(smoke):
    out, _ = smoke
    tables = (out / "tables.md").read_text()
    assert "- Fastest method overall:" in tables and "- Fastest two-grid method:" in tables
    for n_c in (4, 8):
        block = tables.split(f"#### n_c = {n_c}")[1].split("####")[0]
        for row in ("| SVD |", "| SVD (30 sweeps) |",
                    "| sine (fixed basis: nothing per instance) |",
                    "| eig-ref (mean coefficients) (eigensolve once per mesh) |",
                    "| SA-AMG (n_c", "| NLSS (ours, int8 inference) |",
                    "| NLSS (ours, float32 inference) |", "eig (oracle",
                    "| Improvement of NLSS (int8) vs the best non-learned two-grid (",
                    "| Improvement of NLSS (float32) vs the best non-learned two-grid (",
                    "| Improvement of NLSS (int8) vs SVD (10 sweeps: the paper's comparison) |",
                    "| Improvement of NLSS (float32) vs SVD (10 sweeps: the paper's "
                    "comparison) |"):
            assert row in block, (n_c, row)
        # eig-ref's once-per-mesh work: its own column, paid for every instance here.
        row = next(line for line in block.splitlines() if line.startswith("| eig-ref"))
        assert float(row.split("|")[-2]) > 0


def test_method_plan():
    plan = method_plan((4, 8), {"nlss": {"path": "m.pt"}}, BUDGETS["smoke"])
    per_rank = ["nlss", "nlss-f32", "svd", "svd-s30", "sine", "eig-ref", "eig", "nlss-scipy",
                "svd-scipy"]
    assert list(plan) == [f"{k}@{r}" for r in (4, 8) for k in per_rank] + [
        "sa", "sa-scipy", "jacobi", "icc", "pyamg", "gamg", "cholesky"]
    assert plan["svd-s30@8"].sweeps == 30 and plan["nlss-scipy@4"].path == "scipy"
    assert plan["nlss@4"].precision == "int8" and plan["nlss-f32@4"].precision == "float32"
    assert plan["eig-ref@8"].reference == "family"


def test_resume_reruns_only_what_is_missing(smoke, tmp_path, monkeypatch):
    out, _ = smoke
    monkeypatch.setenv("NLSS_FENICSX_CACHE", str(out.parent / "cache"))  # models reused
    first = json.loads((out / "results.json").read_text())
    partial = dict(first, complete=False,
                   methods={k: v for k, v in first["methods"].items()
                            if k not in ("gamg", "sine@8")})
    (tmp_path / "results.json").write_text(json.dumps(partial))
    lines = []
    res = run_bench("screened_poisson", "smoke", tmp_path, resume=True, progress=False,
                    log=lines.append)
    assert res["complete"] and set(res["methods"]) == set(first["methods"])
    assert res["started"] == first["started"]
    for key, entry in partial["methods"].items():  # kept, not rerun
        assert res["methods"][key]["records"] == entry["records"], key
    assert res["methods"]["gamg"]["summary"]["n_ok"] == 3


@pytest.mark.parametrize(("content", "expected"), [
    ("{\"schema_version\": 2", "not valid JSON, truncated or damaged"),
    ("[]", "expected a JSON object, got list"),
])
def test_resume_with_a_damaged_file_is_one_line_before_any_work(tmp_path, monkeypatch,
                                                                content, expected):
    cache = tmp_path / "cache"
    monkeypatch.setenv("NLSS_FENICSX_CACHE", str(cache))
    (tmp_path / "results.json").write_text(content)
    with pytest.raises(ValueError) as err:
        run_bench("diffusion", "smoke", tmp_path, resume=True, progress=False)
    assert f"{tmp_path / 'results.json'}: " in str(err.value) and expected in str(err.value)
    assert not cache.exists()  # nothing trained


def test_resume_of_another_family_is_refused(smoke, tmp_path):
    out, _ = smoke
    (tmp_path / "results.json").write_text((out / "results.json").read_text())
    with pytest.raises(ValueError, match="holds pde='screened_poisson', budget='smoke'; "
                                         "cannot resume pde='diffusion'"):
        run_bench("diffusion", "smoke", tmp_path, resume=True, progress=False)


@pytest.mark.parametrize(("edit", "expected"), [
    ({"budget": {"N": 16}}, "budget.N is 16 there, 8 asked for"),
    ({"budget": {"hidden": [64, 64], "note": "edited"}},
     'budget.hidden is [64, 64] there, [32, 32] asked for; budget.note is "edited" there, '
     '"CI smoke test: tiny sizes, a few tra... asked for'),
    ({"budget": {"N": 8.0}}, "budget.N is 8.0 there, 8 asked for"),
    ({"seeds": {"test": [1, 2, 3]}}, "seeds.test is [1, 2, 3] there, [7000, 7001, 7002] "
                                     "asked for"),
    ({"ranks": [4, 1000]}, "holds ranks [1000]; expected integers in 1..r_max=8"),
])
def test_resume_of_an_edited_run_is_refused_before_any_work(smoke, tmp_path, monkeypatch,
                                                            edit, expected):
    """A results file whose budget, seeds or ranks are not the requested run's: its tables
    would describe settings the data was not measured with."""
    out, _ = smoke
    cache = tmp_path / "cache"
    monkeypatch.setenv("NLSS_FENICSX_CACHE", str(cache))
    res = json.loads((out / "results.json").read_text())
    for key, value in edit.items():
        res[key] = {**res[key], **value} if isinstance(value, dict) else value
    (tmp_path / "results.json").write_text(json.dumps(res))
    before = (tmp_path / "results.json").read_text()
    with pytest.raises(ValueError) as err:
        run_bench("screened_poisson", "smoke", tmp_path, resume=True, progress=False)
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'results.json'}: ") and "\n" not in msg
    assert expected in msg and "run without --resume" in msg, msg
    assert not cache.exists() and (tmp_path / "results.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"ranks": [4, 9]}, r"ranks must lie in 1..r_max=8 for budget 'smoke'; got \[9\]"),
    ({"budget": "huge"}, "Unrecognized budget 'huge'"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    args = {"budget": "smoke", **kwargs}
    with pytest.raises(ValueError, match=match):
        run_bench("diffusion", args.pop("budget"), tmp_path, progress=False, **args)


@pytest.mark.slow
def test_killed_bench_keeps_results_and_resume_continues(tmp_path):
    """``nlss-fenicsx bench`` killed (SIGKILL) after its first results.json: the file is
    whole, incomplete, no temporary is left for long, and ``--resume`` finishes without
    rerunning what it holds."""
    out = tmp_path / "bench"
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PYTHONPATH=str(ROOT), NLSS_FENICSX_CACHE=str(tmp_path / "cache"))
    args = [sys.executable, "-m", "nlss_fenicsx", "bench", "--pde", "diffusion", "--budget",
            "smoke", "--out", str(out), "--no-progress"]
    results = out / "results.json"
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 600
        while proc.poll() is None and not results.exists():
            assert time.monotonic() < deadline, "no results.json within 600 s"
            time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    first = json.loads(results.read_text())  # whole: written atomically
    assert first["complete"] is False, "the run finished before it could be killed"
    done = subprocess.run([*args, "--resume"], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stderr
    final = json.loads(results.read_text())
    assert final["complete"] is True and final["started"] == first["started"]
    for key, entry in first["methods"].items():
        assert final["methods"][key]["records"] == entry["records"], key
    assert not [p for p in out.iterdir() if "nlss-tmp" in p.name]  # swept by the resume


def test_an_out_that_cannot_be_written_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("NLSS_FENICSX_CACHE", str(tmp_path / "cache"))
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ValueError, match=r"out .*a_file is a file, not a folder"):
        run_bench("diffusion", "smoke", blocker / "bench", progress=False)
    assert not (tmp_path / "cache").exists()  # nothing trained
