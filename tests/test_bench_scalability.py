"""bench.scalability: paper Table 4 / Fig. 6 up to N = 256 (issue 16.4), at smoke size."""

import json

import numpy as np
import pytest
import torch

from nlss_fenicsx.bench.results import validate_results
from nlss_fenicsx.bench.scalability import (
    SCAL_METHODS,
    fit_exponents,
    render_scalability,
    run_scalability,
)


def _size(N, methods):
    out = {"N": N, "n": (N + 1) ** 2, "K": N, "r": N // 2,
           "generation": {"ms": 1.0, "mean_ms": 1.0, "std_ms": 0.0, "q1_ms": 1.0,
                          "q3_ms": 1.0}, "methods": {}}
    for name, (t, its) in methods.items():
        if t is None:
            out["methods"][name] = {"method": name.upper(), "not_run": "too big to train"}
            continue
        s = {"n_ok": 2, "n_failed": 0, "iterations": float(its), "coarse_size": None}
        for ph in ("smoothing", "inference", "setup", "solve", "total", "generation",
                   "end_to_end"):
            s.update({f"{ph}_ms": t, f"{ph}_mean_ms": t, f"{ph}_std_ms": 0.1 * t,
                      f"{ph}_q1_ms": t, f"{ph}_q3_ms": t})
        out["methods"][name] = {"method": name.upper(), "name": name, "records": [],
                                "summary": s}
    return out


def _synthetic():
    sizes = []
    for N in (8, 16, 32, 64):
        n = (N + 1) ** 2
        sizes.append(_size(N, {"svd": (2e-3 * n**1.5, 3 * N), "gamg": (1e-2 * n, 20),
                               "nlss": (1e-3 * n**1.2, 2 * N) if N <= 16 else (None, None)}))
    return {"pde": "diffusion", "sizes": sizes, "budget": {"scal_instances": 2},
            "machine": {"cpu": "cpu", "cores": 1, "memory_gib": 1.0, "python": "3.12"}}


def test_fitted_exponents_recover_known_growth():
    ex = fit_exponents(_synthetic())
    assert ex["svd"]["end_to_end"] == pytest.approx(1.5)
    assert ex["svd"]["iterations"] == pytest.approx(1.0)
    assert ex["gamg"]["end_to_end"] == pytest.approx(1.0)
    assert ex["gamg"]["iterations"] == pytest.approx(0.0, abs=1e-12)
    # NLSS only where it ran (not trained at N = 32, 64).
    assert ex["nlss"]["sizes"] == [8, 16]
    assert ex["nlss"]["end_to_end"] == pytest.approx(1.2)


def test_render_says_why_nlss_did_not_run():
    res = _synthetic()
    res["exponents"] = fit_exponents(res)
    text = render_scalability(res)
    assert "| NLSS | not trained: too big to train |" in text
    assert "## Summary: median end-to-end ms (iterations)" in text
    summary = next(line for line in text.splitlines() if line.startswith("| 64 | 4,225 |"))
    assert "not trained" in summary
    assert "| SVD | 1.50 | 1.50 | 1.00 | 8, 16, 32, 64 |" in text
    # Paper columns: mean and standard deviation of the end-to-end time, median beside.
    assert "End-to-End (Avg) | End-to-End (StDev) | End-to-End (Median)" in text


@pytest.fixture(autouse=True)
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_smoke_scalability_then_resume(tmp_path, monkeypatch):
    """N=6 with a trained model, then (resumed) N=10 without one: smoke trains NLSS at
    N = 6, 8 only and the cache holds nothing for N = 10."""
    monkeypatch.setenv("NLSS_FENICSX_CACHE", str(tmp_path / "cache"))
    quiet = {"progress": False, "log": lambda *_: None}
    first = run_scalability("diffusion", "smoke", tmp_path, sizes=(6,), **quiet)
    assert first["exponents"] == {}  # one size: nothing to fit
    res = run_scalability("diffusion", "smoke", tmp_path, sizes=(6, 10), resume=True, **quiet)
    assert [s["N"] for s in res["sizes"]] == [6, 10]
    assert res["sizes"][0] == first["sizes"][0]  # kept, not rerun
    on_disk = json.loads((tmp_path / "scalability.json").read_text())
    assert validate_results(on_disk, "scalability") == []
    for s in res["sizes"]:
        assert s["K"] == s["N"] and s["r"] == s["N"] // 2
        for name in SCAL_METHODS:
            m = s["methods"][name]
            if name in ("nlss", "nlss-f32") and s["N"] == 10:
                # n = 121, K = 10, r_max = 5, hidden (32, 32): 1210*32 + 32 + 32*32 + 32
                # + 32*605 + 605 + two LayerNorms (2*32 each) = 59,901
                assert "the MLP (K = 10, r_max = 5) has 59,901 parameters" in m["not_run"]
                assert "budget 'smoke' trains NLSS for N in [6, 8] only" in m["not_run"]
                continue
            summ = m["summary"]
            assert summ["n_failed"] == 0, (s["N"], name, summ.get("errors"))
            assert summ["end_to_end_ms"] > summ["total_ms"] > 0  # generation included
            for rec in m["records"]:
                ph = rec["phases"]
                assert ph["end_to_end"] == pytest.approx(ph["total"] + ph["generation"])
                assert rec["rel_residual"] < 1e-6
    assert "nlss" not in res["exponents"]  # one size only
    nlss6 = res["sizes"][0]["methods"]
    assert nlss6["nlss"]["method"] == "NLSS" and nlss6["nlss-f32"]["method"] == "NLSS (float32)"
    assert nlss6["eig-ref"]["method"] == "eig-ref (mean coefficients)"
    assert all(r["phases"]["once"] > 0 for r in nlss6["eig-ref"]["records"])
    assert set(res["exponents"]) >= {"svd", "sine", "eig-ref", "gamg", "icc", "cholesky"}
    assert all(np.isfinite(e["end_to_end"]) for e in res["exponents"].values())
    assert (tmp_path / "scalability.png").stat().st_size > 1000
    text = (tmp_path / "scalability.md").read_text()
    assert "not trained:" in text
    assert "every instance here has its own mesh, so this run paid it for each" in text


@pytest.mark.parametrize(("edit", "expected"), [
    ({"pde": "anisotropic"}, 'pde is "anisotropic" there, "diffusion" asked for'),
    ({"budget": {"scal_instances": 5}}, "budget.scal_instances is 5 there, 2 asked for"),
])
def test_resume_of_another_run_is_refused_before_any_work(tmp_path, monkeypatch, edit,
                                                          expected):
    from dataclasses import asdict

    from nlss_fenicsx.bench.harness import BUDGETS
    from nlss_fenicsx.bench.results import SCHEMA_VERSION

    monkeypatch.setenv("NLSS_FENICSX_CACHE", str(tmp_path / "cache"))
    smoke = BUDGETS["smoke"]
    stored = {"schema_version": SCHEMA_VERSION, "kind": "scalability", "pde": "diffusion",
              "budget": json.loads(json.dumps(asdict(smoke))), "sizes": [],
              "machine": {"cpu": "x", "cores": 1, "python": "3", "versions": {}},
              "started": "2025-01-01T00:00:00+00:00", "complete": False}
    for key, value in edit.items():
        stored[key] = {**stored[key], **value} if isinstance(value, dict) else value
    path = tmp_path / "out" / "scalability.json"
    path.parent.mkdir()
    path.write_text(json.dumps(stored))
    with pytest.raises(ValueError) as err:
        run_scalability("diffusion", "smoke", path.parent, resume=True, progress=False)
    assert str(err.value).startswith(f"{path}: holds another run than the one asked for: ")
    assert expected in str(err.value)
    assert not (tmp_path / "cache").exists() and sorted(path.parent.iterdir()) == [path]


def test_nlss_at_n256_is_not_trained_and_says_why(monkeypatch):
    """The N=256 MLP (K = 256, r_max = 128) is never trained here: its parameter count and
    the memory training it needs are stated (12 bytes per parameter + the largest
    gradient), without building it."""
    from nlss_fenicsx.bench import machine, scalability
    from nlss_fenicsx.bench.harness import BUDGETS

    monkeypatch.setenv("NLSS_FENICSX_CACHE", "/nonexistent/cache")  # nothing cached
    monkeypatch.setattr(machine, "machine_info", lambda: {"memory_gib": 23.5})
    n = 257**2
    params = n * 256 * 128 + 128 + 128 * 256 + 256 + 256 * 256 + 256 + 256 * 128 + 128 \
        + 128 * n * 128 + n * 128 + 2 * (128 + 256 + 256 + 128)
    out = scalability._nlss_model("diffusion", BUDGETS["standard"], 256, progress=False,
                                  log=None)
    assert out["parameters"] == params  # 3,247M
    assert out["train_bytes"] == 12 * params + 4 * n * 256 * 128
    assert out["not_trained"].startswith(f"the MLP (K = 256, r_max = 128) has "
                                         f"{params / 1e6:,.0f}M parameters (12.1 GiB in "
                                         "float32, about 44.4 GiB to train with BackwardAdam)")
    assert "more than this machine's" in out["not_trained"]
    assert 128 in BUDGETS["standard"].scal_train_N  # N = 128 fits (results/scalability/mlp_size)
