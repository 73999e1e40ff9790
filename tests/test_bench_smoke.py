"""The smoke benchmark: every method produces a row, converged, with finite times, and the
JSON follows the documented schema."""

import json

import numpy as np
import pytest
import torch

from nlss_fenicsx.bench.harness import (
    BUDGETS,
    method_plan,
    run_bench,
    run_scalability,
    validate_results,
)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # torch's threads thrash on a shared 2-core machine
    yield
    torch.set_num_threads(previous)


def test_smoke_bench_every_method_converges(tmp_path, monkeypatch):
    monkeypatch.setenv("NLSS_FENICSX_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "bench"
    res = run_bench("screened_poisson", "smoke", out, progress=False, log=lambda *_: None)
    on_disk = json.loads((out / "results.json").read_text())
    assert validate_results(on_disk) == []
    assert on_disk["complete"] is True
    expected = method_plan(BUDGETS["smoke"].ranks, res["models"], BUDGETS["smoke"])
    assert set(on_disk["methods"]) == set(expected)
    assert len(expected) == 4 * 6 + 1 + 5  # per rank: 3 learned, svd, 2 scipy; sa; 5 peers
    for key, m in on_disk["methods"].items():
        assert m["summary"]["n_failed"] == 0, (key, m["summary"].get("errors"))
        for rec in m["records"]:
            assert rec["ok"] and rec["rel_residual"] < 1e-6
            assert all(np.isfinite(v) for v in rec["phases"].values())
    tables = (out / "tables.md").read_text()
    assert "Improvement" in tables and "NLSS (ours)" in tables
    for png in ("time_iterations_vs_rank.png", "captured_energy_vs_rank.png"):
        assert (out / png).stat().st_size > 1000
    energy = on_disk["energy"]
    assert energy["svd"] == sorted(energy["svd"])  # SVD energy grows with rank
    assert all(0.0 <= e <= 1.0 + 1e-9 for name in ("svd", "nlss") for e in energy[name])


def test_validate_results_flags_problems():
    assert any("schema_version" in p for p in validate_results({"schema_version": 2}))
    bad = {"methods": {"svd@4": {"records": [{"ok": True, "phases": {"total": -1.0}}]}}}
    assert any("phases invalid" in p for p in validate_results(bad))


def test_bad_ranks_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="ranks must lie in 1..r_max=8"):
        run_bench("diffusion", "smoke", tmp_path, ranks=[4, 9], progress=False)


def test_smoke_scalability(tmp_path, monkeypatch):
    monkeypatch.setenv("NLSS_FENICSX_CACHE", str(tmp_path / "cache"))
    res = run_scalability("diffusion", "smoke", tmp_path, progress=False, log=lambda *_: None)
    assert [s["N"] for s in res["sizes"]] == [6, 8, 10]
    for s in res["sizes"]:
        for name, m in s["methods"].items():
            assert m["summary"]["n_failed"] == 0, (name, m["summary"].get("errors"))
            assert m["summary"]["end_to_end_ms"] > 0
    assert set(res["exponents"]) >= {"nlss", "svd", "icc"}
    assert (tmp_path / "scalability.png").exists() and (tmp_path / "scalability.md").exists()
