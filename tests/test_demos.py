"""Each demo runs in-process on its `--quick` size and pins one number (scikit-fem style).

The learned demos train their tiny `--quick` model into a temporary cache
(``NLSS_FENICSX_CACHE``), so the tests also check the cache: a second run reuses the
model, and a corrupted cache file is reported and retrained.
"""

import importlib.util
from pathlib import Path

import pytest

DEMOS = Path(__file__).resolve().parents[1] / "demos"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"nlss_demo_{name}", DEMOS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private model cache for the test."""
    root = tmp_path / "cache"
    monkeypatch.setenv("NLSS_FENICSX_CACHE", str(root))
    return root


def _check_pde_demo(res, n_expected: int):
    assert res["n"] == n_expected
    assert res["rel_residual"] < 1e-6
    methods = res["methods"]
    assert list(methods) == ["NLSS", "SVD", "SA-AMG", "Jacobi-CG", "ICC(0)-CG", "GAMG-CG",
                             "Cholesky"]
    # LinearProblem and the benchmark runner solve the same system with the same PC.
    assert methods["NLSS"]["iterations"] == res["iterations"]
    for label, m in methods.items():
        assert m["rel_residual"] < 1e-6, label
        hist = m["history"]
        assert hist[0] == pytest.approx(1.0) and hist[-1] < 1e-6, label
        if label != "Cholesky":
            assert len(hist) == m["iterations"] + 1, label
    assert len(res["history"]) == res["iterations"] + 1
    assert Path(res["files"]["png"]).stat().st_size > 0
    assert Path(res["files"]["solution"]).exists()


def test_diffusion_quick_trains_then_reuses_cache(tmp_path, cache, capsys):
    demo = _load("diffusion")
    argv = ["--quick", "--out", str(tmp_path / "out")]
    res = demo.main(argv)
    out = capsys.readouterr().out
    assert res["trained"] and "trained model cached at" in out
    assert "LinearProblem + TwoGridPC (nlss" in out and "GAMG-CG" in out
    _check_pde_demo(res, 9**2)
    # Measured: 8 CG iterations (N 8, rank 6, K 8, 30 training steps, rtol 1e-6).
    assert abs(res["iterations"] - 8) <= 2
    model = Path(res["model"])
    assert model.parent == cache / "models" and model.suffix == ".pt"

    again = demo.main(argv)
    out = capsys.readouterr().out
    assert not again["trained"] and "reusing cached model" in out
    assert again["iterations"] == res["iterations"]


def test_diffusion_corrupt_cache_is_retrained(tmp_path, cache, capsys):
    demo = _load("diffusion")
    argv = ["--quick", "--out", str(tmp_path / "out")]
    model = Path(demo.main(argv)["model"])
    model.write_bytes(b"\x00garbage, not a checkpoint\xff" * 64)
    capsys.readouterr()
    res = demo.main(argv)
    out = capsys.readouterr().out
    assert "is corrupt" in out and "retraining" in out
    assert res["trained"] and res["model"] == str(model)
    assert abs(res["iterations"] - 8) <= 2


@pytest.mark.parametrize("name, iterations", [("anisotropic", 8), ("screened_poisson", 6)])
def test_pde_demo_quick(name, iterations, tmp_path, cache, capsys):
    res = _load(name).main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert f"{name} on a jittered Gmsh mesh" in out
    _check_pde_demo(res, 9**2)
    assert res["pde"] == name and res["trained"]
    # Measured on the development machine (N 8, rank 6, K 8, 30 training steps).
    assert abs(res["iterations"] - iterations) <= 2


def test_your_model_quick(tmp_path, capsys):
    res = _load("your_model").main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "TwoGridPC (SVD)" in out and "set-up time:" in out
    assert "TwoGridPC (NLSS)" not in out and res["learned"] is None
    assert 500 <= res["n"] <= 700  # 609 unknowns at h = 0.045
    # Measured: 12 CG iterations (rank 32, K 48, rtol 1e-8, unpreconditioned norm).
    assert abs(res["methods"]["TwoGridPC (SVD)"]["iterations"] - 12) <= 3
    assert res["coarse_size"] == 32
    # Every iterative solution equals the direct one far below the demo's own 1e-5 check
    # (measured: 4e-10 at most).
    for label, m in res["methods"].items():
        assert m["rel_l2_diff"] < 1e-8, label
    assert set(res["twogrid_timings"]) == {"smoothing", "inference", "setup"}
    assert Path(res["files"]["png"]).stat().st_size > 0
    assert Path(res["files"]["solution"]).exists()


def test_your_model_learned_quick(tmp_path, capsys):
    demo = _load("your_model")
    argv = ["--quick", "--learned", "--queries", "3", "--out", str(tmp_path)]
    res = demo.main(argv)
    out = capsys.readouterr().out
    assert "TwoGridPC (NLSS)" in out and "many queries: 3 new members" in out
    learned = res["learned"]
    assert learned["trained"] and Path(learned["model"]) == tmp_path / "nlss_model.pt"
    assert len(learned["queries"]) == 3
    assert res["methods"]["TwoGridPC (NLSS)"]["rel_l2_diff"] < 1e-8
    # Measured: 22-23 CG iterations per member (rtol 1e-8) after 30 steps of a tiny
    # network; the SVD basis takes 11. (Trained properly, NLSS needs fewer than SVD.)
    assert all(abs(q["nlss_its"] - 22) <= 3 for q in learned["queries"])
    again = demo.main(argv)
    assert not again["learned"]["trained"]
    assert "reusing the model" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["your_model", "diffusion", "anisotropic",
                                  "screened_poisson"])
def test_demo_rejects_bad_input(name, capsys):
    flag = ["--h", "-1"] if name == "your_model" else ["--N", "1"]
    with pytest.raises(SystemExit) as err:
        _load(name).main(flag)
    assert err.value.code == 2
    assert "error:" in capsys.readouterr().err
