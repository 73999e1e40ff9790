"""Every demo runs on its `--quick` size and pins one number (scikit-fem's
tests/test_examples.py), serially in-process and, where a demo claims parallel support,
under `mpiexec -n 2` (DOLFINx's python/demo/test.py).

The demos train their tiny `--quick` models into a private cache (``NLSS_FENICSX_CACHE``).
"""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, mpiexec

DEMOS = ROOT / "demos"
# Measured: NLSS (learned) CG iterations at the --quick size (N 8, rank 6, K 8, 30 steps).
PINNED = {"diffusion": 8, "anisotropic": 8, "screened_poisson": 7}
YOUR_MODEL_PINNED = 11  # TwoGridPC (NLSS) iterations of the first new member (--quick)


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"nlss_demo_{name}", DEMOS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def demo_env(cache, monkeypatch):
    monkeypatch.setenv("NLSS_FENICSX_CACHE", str(cache))
    monkeypatch.syspath_prepend(str(DEMOS))  # the demos import from diffusion.py


def _env(cache) -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                PYTHONPATH=str(ROOT), NLSS_FENICSX_CACHE=str(cache))


def _mpi_demo(name: str, cache, *args, nprocs: int = 2, timeout: float = 300):
    cmd = [mpiexec(), "-n", str(nprocs), sys.executable, str(DEMOS / f"{name}.py"), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=_env(cache), cwd=DEMOS)
    assert proc.returncode == 0, f"{cmd}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.parametrize("name", list(PINNED))
def test_pde_demo_quick(name, tmp_path, demo_env, capsys):
    res = _load(name).main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert f"{name} on a jittered Gmsh mesh, N=8: n = 81 unknowns" in out
    assert res["n"] == 81
    its = res["iterations"]
    assert set(its) == {"NLSS (learned)", "SVD of S", "sine modes", "eig-ref", "GAMG",
                        "ICC(0)", "Jacobi", "Cholesky (direct)", "SA-AMG two-grid"}
    # Every method reaches the direct solution.
    assert all(err < 1e-5 for err in res["rel_error"].values()), res["rel_error"]
    # Energy of S: no basis holds more of S than its SVD.
    assert all(e <= res["energy"]["SVD of S"] + 1e-9 for e in res["energy"].values())
    assert Path(res["files"]["png"]).stat().st_size > 1000
    assert abs(its["NLSS (learned)"] - PINNED[name]) <= 1, its


@pytest.mark.mpi
def test_diffusion_demo_under_mpiexec(tmp_path, demo_env, cache):
    """Same mesh, coefficient and model on 2 ranks: the same NLSS iterations as serial."""
    serial = _load("diffusion").main(["--quick", "--out", str(tmp_path / "serial")])
    text = _mpi_demo("diffusion", cache, "--quick", "--out", str(tmp_path / "mpi"))
    assert "n = 81 unknowns on 2 rank(s)" in text
    row = re.search(r"^NLSS \(learned\)\s+(\d+)", text, re.M)
    assert row, text
    assert abs(int(row.group(1)) - serial["iterations"]["NLSS (learned)"]) <= 1
    assert "SA-AMG" not in text  # serial-only, left out in parallel


def test_your_model_trains_then_reuses_and_runs_in_parallel(tmp_path, demo_env, cache, capsys):
    demo = _load("your_model")
    argv = ["--quick", "--out", str(tmp_path)]
    res = demo.main(argv)
    assert Path(res["model"]) == tmp_path / "model.pt"
    its = res["iterations"]
    assert set(its) == {"TwoGridPC (NLSS)", "TwoGridPC (SVD)", "GAMG", "direct"}
    assert all(len(v) == 3 for v in its.values())
    assert abs(its["TwoGridPC (NLSS)"][0] - YOUR_MODEL_PINNED) <= 1
    stamp = (tmp_path / "model.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert demo.main(argv)["iterations"] == its  # the model is reused, not retrained
    # Node order independent of the partition: the same model, the same iterations.
    text = _mpi_demo("your_model", cache, *argv)
    nlss = re.search(r"TwoGridPC \(NLSS\)\s+\[([\d, ]+)\]", text)
    assert nlss, text
    parallel = [int(v) for v in nlss.group(1).split(",")]
    assert all(abs(p - s) <= 1 for p, s in zip(parallel, its["TwoGridPC (NLSS)"], strict=True))
    assert (tmp_path / "model.pt").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_your_model_under_mpiexec_without_a_model_is_one_line(tmp_path, cache):
    cmd = [mpiexec(), "-n", "2", sys.executable, str(DEMOS / "your_model.py"), "--quick",
           "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=_env(cache))
    assert proc.returncode == 1
    assert "your_model.py: no model at" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("name", ["diffusion", "anisotropic", "screened_poisson", "your_model"])
def test_demo_checks_its_out_first(name, tmp_path, demo_env, capsys, monkeypatch):
    monkeypatch.setenv("NLSS_FENICSX_CACHE", str(tmp_path / "fresh_cache"))
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as err:
        _load(name).main(["--quick", "--out", str(blocker / "out")])
    assert err.value.code == 2
    msg = capsys.readouterr().err.strip().splitlines()[-1]
    assert msg.startswith(f"{name}.py: error: --out") or "error: --out" in msg, msg
    assert not (tmp_path / "fresh_cache").exists()  # nothing trained


@pytest.mark.parametrize("name", ["diffusion", "anisotropic", "screened_poisson", "your_model"])
def test_demo_help_and_bad_values(name, demo_env, capsys):
    with pytest.raises(SystemExit) as err:
        _load(name).main(["--help"])
    assert err.value.code == 0 and "--quick" in capsys.readouterr().out
    flag = ["--h", "-1"] if name == "your_model" else ["--N", "1"]
    with pytest.raises(SystemExit) as err:
        _load(name).main(flag)
    assert err.value.code == 2 and "error:" in capsys.readouterr().err


def test_a_failing_demo_says_one_line_not_a_traceback(tmp_path):
    # A cache that cannot be created (its parent is a file) and holds no model.
    blocker = tmp_path / "file"
    blocker.write_text("")
    cmd = [sys.executable, str(DEMOS / "diffusion.py"), "--quick", "--out", str(tmp_path / "o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env=_env(blocker / "cache"), cwd=DEMOS)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode in (1, 2) and len(lines) == 1, proc.stderr
    assert lines[0].startswith("diffusion.py: ") and "cache" in lines[0]
    assert "Traceback" not in proc.stderr


def test_run_script_maps_interrupts_and_failures(capsys):
    from nlss_fenicsx.cli import run_script

    def interrupted(argv):
        raise KeyboardInterrupt

    def full_disk(argv):
        raise OSError(28, "No space left on device")

    assert run_script("demo.py", interrupted) == 130
    assert run_script("demo.py", full_disk) == 1
    assert run_script("demo.py", lambda argv: {"done": True}) == 0
    assert capsys.readouterr().err.splitlines() == [
        "demo.py: interrupted", "demo.py: failed: [Errno 28] No space left on device"]
