"""bench.results: the results files' schema, one-line errors for damaged files on --resume,
and the one-writer rule under MPI (issue 15, items 6 and 7)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nlss_fenicsx.bench.results import (
    SCHEMA_VERSION,
    check_same_run,
    load_results,
    validate_results,
)
from tests.conftest import ROOT, mpiexec


def _valid() -> dict:
    record = {"ok": True, "iterations": 7, "rel_residual": 1e-7, "coarse_size": 4,
              "phases": {"smoothing": 0.001, "inference": 0.001, "setup": 0.001,
                         "solve": 0.002, "total": 0.005}}
    summary = {"n_ok": 1, "n_failed": 0, "iterations": 7.0, "iterations_q1": 7.0,
               "iterations_q3": 7.0, "coarse_size": 4.0}
    for ph in ("smoothing", "inference", "setup", "solve", "total"):
        for s in ("ms", "q1_ms", "q3_ms", "mean_ms", "std_ms"):
            summary[f"{ph}_{s}"] = 1.0
    return {"schema_version": SCHEMA_VERSION, "kind": "bench", "pde": "diffusion",
            "budget": {"name": "smoke"}, "ranks": [4], "seeds": {"test": [7000]},
            "machine": {"cpu": "x", "cores": 1, "python": "3.12", "versions": {}},
            "models": {}, "started": "2025-01-01T00:00:00+00:00", "complete": False,
            "methods": {"svd@4": {"method": "SVD", "name": "svd", "rank": 4, "path": "petsc",
                                  "records": [record], "summary": summary}}}


def test_valid_file_round_trips(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(_valid()))
    assert validate_results(_valid()) == []
    assert load_results(path)["methods"]["svd@4"]["records"][0]["iterations"] == 7


@pytest.mark.parametrize(("content", "expected"), [
    ('{"schema_version": 2, "kind": "ben', "not valid JSON, truncated or damaged"),
    ("[1, 2, 3]", "expected a JSON object, got list"),
    ('{"schema_version": 2, "kind": "bench"}', "pde missing"),
    (json.dumps({**_valid(), "schema_version": 1}), "written by an older version"),
    (json.dumps({**_valid(), "kind": "scalability"}), "kind: expected 'bench'"),
    ("\xff\xfe not text", "cannot read it"),
])
def test_damaged_file_is_one_line_naming_it(tmp_path, content, expected):
    path = tmp_path / "results.json"
    if content.startswith("\xff"):
        path.write_bytes(b"\xff\xfe\x00 not text")
    else:
        path.write_text(content)
    with pytest.raises(ValueError) as err:
        load_results(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and expected in msg, msg
    assert "run without --resume" in msg


@pytest.mark.parametrize(("content", "expected"), [
    ('{"schema_version": ' + "9" * 5000 + "}", "Exceeds the limit (4300 digits)"),
    ("[" * 100_000 + "]" * 100_000, "maximum recursion depth exceeded"),
])
def test_json_python_cannot_hold_is_one_line_naming_the_file(tmp_path, content, expected):
    """Valid JSON Python's parser refuses: a 5000-digit integer, deep nesting."""
    path = tmp_path / "results.json"
    path.write_text(content)
    with pytest.raises(ValueError) as err:
        load_results(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: not valid JSON for a results file (") and "\n" not in msg
    assert expected in msg and "run without --resume" in msg, msg


def test_check_same_run_names_every_differing_field():
    fresh = {"pde": "diffusion", "budget": {"N": 8, "hidden": (32, 32), "name": "smoke"},
             "seeds": {"test": [7000], "train": 0}}
    stored = json.loads(json.dumps(fresh))  # tuples stored as lists: the same run
    check_same_run("r.json", stored, fresh)
    stored["budget"]["N"], stored["seeds"]["train"] = 16, True
    del stored["budget"]["hidden"]
    with pytest.raises(ValueError) as err:
        check_same_run("r.json", stored, fresh)
    assert str(err.value) == (
        'r.json: holds another run than the one asked for: budget.N is 16 there, 8 asked '
        'for; budget.hidden is "missing" there, [32, 32] asked for; seeds.train is true '
        "there, 0 asked for; move it away or run without --resume to start afresh")
    with pytest.raises(ValueError, match="pde is \"anisotropic\" there, \"diffusion\""):
        check_same_run("r.json", {**fresh, "pde": "anisotropic"}, fresh)


def test_a_directory_is_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"cannot read it \(Is a directory\)"):
        load_results(tmp_path)


def test_records_are_checked():
    res = _valid()
    res["methods"]["svd@4"]["records"].append({"ok": False})
    res["methods"]["svd@4"]["records"].append({"ok": True, "iterations": 2.5,
                                               "phases": {"total": -1.0}})
    problems = validate_results(res)
    assert "methods.svd@4.records[1] failed without an error" in problems
    assert any("records[2].phases invalid" in p for p in problems)
    assert "methods.svd@4.records[2].iterations not an int" in problems
    del res["methods"]["svd@4"]["summary"]["total_std_ms"]
    assert any("summary missing ['total_std_ms']" in p for p in validate_results(res))


def test_scalability_kind_skips_methods_not_run():
    res = {"schema_version": SCHEMA_VERSION, "kind": "scalability", "pde": "diffusion",
           "budget": {}, "machine": _valid()["machine"], "started": "x", "complete": True,
           "sizes": [{"N": 128, "methods": {"nlss": {"method": "NLSS", "not_run": "why"}}}]}
    assert validate_results(res, "scalability") == []
    res["sizes"].append({"N": 256})
    assert validate_results(res, "scalability") == ["sizes[1].methods missing"]


@pytest.mark.mpi
@pytest.mark.parametrize("nprocs", [2, 3])
def test_bench_refuses_several_ranks_on_every_rank(tmp_path, nprocs):
    """Before any work (no model trained, nothing written), the same line on every rank."""
    script = Path(__file__).parent / "mpi" / "bench_refuses.py"
    proc = subprocess.run([mpiexec(), "-n", str(nprocs), sys.executable, str(script),
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                               "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    lines = sorted(proc.stdout.splitlines())
    assert len(lines) == 2 * nprocs
    expected = (f"runs on one MPI rank (it times serial solves and writes one results "
                f"file); got {nprocs} ranks: run it without mpiexec")
    assert all(line.endswith(expected) for line in lines), lines
    assert not (tmp_path / "out").exists()
