"""nlss_fenicsx.bench.beyond and benchmarks/bench_beyond.py at smoke size.

Checks: the grid holds what the issue asks (coarse spaces x smoothers x ranks, the peers),
every solve reaches the tolerance (true residual), the summary's choice is made on the
validation instances and its numbers are the medians of the test records, the ratio is
their quotient, the options recorded reproduce the run through a plain PETSc KSP, a second
family merges into the same summary, and the script refuses bad arguments in one line.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from nlss_fenicsx.bench.beyond import configurations, run_beyond
from tests.conftest import ROOT

SMOKE = {"ranks": (4, 8), "select": 1, "family_instances": 3,
         "coarse": ("sine", "eig-ref", "nlss-family", "corrected"),
         "smoothers": ("jacobi", "icc"), "progress": False}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("beyond")
    summary = run_beyond(["diffusion"], [8], 2, out, log=lambda line: None, **SMOKE)
    return out, summary


def test_grid_holds_every_coarse_space_smoother_rank_and_peer():
    files = {"eig-ref": "e.npz", "nlss-family": "f.npz", "corrected-learned": "c.npz"}
    names = [c.name for c in configurations(64, files)]
    for kind in ("sine", "eig-ref", "nlss-family", "corrected", "corrected-learned"):
        for sm in ("jacobi", "chebyshev", "sor", "icc"):
            for r in (16, 32, 48):
                assert f"{kind}/{sm}/r{r}" in names
    assert not any(n.startswith("nlss/") for n in names)  # no checkpoint, no NLSS row
    assert {"icc-cg", "gamg-cg", "cholesky", "sa-twogrid/icc"} <= set(names)


def test_smoke_summary_is_the_medians_of_the_test_records(smoke):
    out, summary = smoke
    s = summary["runs"]["diffusion_N8"]
    rows = json.loads((out / "results_diffusion_N8.json").read_text())["rows"]
    assert all(r["ok"] for row in rows.values() for r in row["test"] + row["select"])
    assert all(r["rel_res"] < 1e-5 for row in rows.values() for r in row["test"])
    best, peer = s["best"], s["peer"]
    assert rows[best["config"]]["group"] == "two-level" and rows[peer["config"]]["group"] == "peer"
    for entry in (best, peer):
        test = rows[entry["config"]]["test"]
        assert entry["total_ms"] == pytest.approx(np.median([r["total_ms"] for r in test]))
        assert entry["iterations"] == np.median([r["iterations"] for r in test])
    assert s["ratio"] == pytest.approx(best["total_ms"] / peer["total_ms"])
    # Chosen on the validation instances: the fastest there.
    sel = {k: np.median([r["total_ms"] for r in v["select"]]) for k, v in rows.items()
           if v["group"] == "two-level"}
    assert best["config"] == min(sel, key=sel.get)
    assert set(s["offline_s"]) == {"eig-ref", "nlss-family"}
    assert (out / "tables.md").read_text().count("| sine/icc/r8 |") == 1
    assert (out / "beyond.png").stat().st_size > 1000


def test_recorded_options_reproduce_the_run(smoke):
    """The best configuration's options, given to a plain KSP, give its iterations."""
    from nlss_fenicsx import meshes, pdes
    from nlss_fenicsx._fenicsx import PETSc

    out, summary = smoke
    s = summary["runs"]["diffusion_N8"]
    system = pdes.assemble(pdes.sample("diffusion", meshes.jittered_square(8, seed=7000),
                                       rng=7000))
    db = PETSc.Options()
    for key, value in s["best"]["options"].items():
        db["again_" + key] = value
    ksp = PETSc.KSP().create()
    ksp.setOptionsPrefix("again_")
    ksp.setOperators(system.A)
    ksp.setFromOptions()
    b, x = system.A.createVecRight(), system.A.createVecLeft()
    b.setArray(system.b)
    ksp.solve(b, x)
    rows = json.loads((out / "results_diffusion_N8.json").read_text())["rows"]
    assert ksp.getIterationNumber() == rows[s["best"]["config"]]["test"][0]["iterations"]
    for key in s["best"]["options"]:
        db.delValue("again_" + key)


def test_a_second_family_merges_into_the_summary(smoke):
    out, _ = smoke
    summary = run_beyond(["screened_poisson"], [8], 1, out, log=lambda line: None,
                         **{**SMOKE, "coarse": ("sine",), "smoothers": ("icc",),
                            "ranks": (4,)})
    assert set(summary["runs"]) == {"diffusion_N8", "screened_poisson_N8"}
    text = (out / "tables.md").read_text()
    assert "## diffusion, N = 8" in text and "## screened_poisson, N = 8" in text


def test_script_help_and_bad_arguments(tmp_path):
    script = str(ROOT / "benchmarks" / "bench_beyond.py")
    run = [sys.executable, script]
    proc = subprocess.run([*run, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--instances" in proc.stdout and "summary.json" in proc.stdout
    proc = subprocess.run([*run, "--out", str(tmp_path), "--instances", "0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "expected an integer >= 1, got '0'" in proc.stderr
    (tmp_path / "file").write_text("x")
    proc = subprocess.run([*run, "--out", str(tmp_path / "file"), "--N", "8"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "--out" in proc.stderr
