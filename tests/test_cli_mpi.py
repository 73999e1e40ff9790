"""nlss_fenicsx.cli under ``mpiexec -n 2`` and ``-n 3`` (issue 15, items 1 and 6).

``solve`` and ``mesh`` run in parallel with one writer of the output; the commands that
run on one process refuse at start with one line; an error is one line, the same exit
status on every rank, and a failure on some ranks only ends the job instead of hanging.
Every run has a timeout.
"""

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT, mpiexec
from tests.test_cli import _env, assert_one_line, cli, files

MPI_DIR = ROOT / "tests" / "mpi"
SOLVE = ["solve", "--N", "8", "--K", "8", "--rank", "4"]


def run(nprocs, *args, tmp_path, timeout=180, script=None):
    """``mpiexec -n nprocs python -m nlss_fenicsx ARGS`` (or ``python SCRIPT ARGS``)."""
    target = [str(script)] if script else ["-m", "nlss_fenicsx"]
    cmd = [mpiexec(), "-n", str(nprocs), sys.executable, *target, *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=_env(tmp_path), cwd=tmp_path)


def _iterations(stdout):
    found = re.findall(r"iterations (\d+), final relative residual (\S+)", stdout)
    assert len(found) == 1, stdout  # printed once: one writer
    return int(found[0][0]), float(found[0][1])


@pytest.fixture(scope="module")
def serial_svd(tmp_path_factory):
    proc = cli(*SOLVE, tmp_path=tmp_path_factory.mktemp("serial"))
    assert proc.returncode == 0, proc.stderr
    return _iterations(proc.stdout)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    where = tmp_path_factory.mktemp("model")
    proc = cli("train", "--N", "8", "--K", "8", "--rank", "8", "--hidden", "32,32", "--steps",
               "30", "--no-progress", "--out", "m.pt", tmp_path=where)
    assert proc.returncode == 0, proc.stderr
    return where / "m.pt"


@pytest.mark.parametrize("nprocs", [2, 3])
def test_solve_in_parallel_one_writer_same_iterations(nprocs, serial_svd, tmp_path):
    proc = run(nprocs, *SOLVE, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "dimension mismatch" not in proc.stderr
    its, res = _iterations(proc.stdout)
    assert res < 1e-6
    assert abs(its - serial_svd[0]) <= 1, (its, serial_svd)
    assert f"{nprocs} MPI ranks" in proc.stdout
    assert proc.stdout.count("phases (ms)") == 1


@pytest.mark.parametrize("nprocs", [2, 3])
def test_learned_solve_in_parallel_takes_the_models_settings(nprocs, tiny_model, tmp_path):
    serial = cli("solve", "--model", tiny_model, tmp_path=tmp_path)
    assert serial.returncode == 0, serial.stderr
    proc = run(nprocs, "solve", "--model", tiny_model, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(f"from the model {tiny_model}") == 1
    assert abs(_iterations(proc.stdout)[0] - _iterations(serial.stdout)[0]) <= 1


@pytest.mark.parametrize("nprocs", [2, 3])
def test_mesh_in_parallel_has_one_writer(nprocs, tmp_path):
    out = tmp_path / "m.msh"
    proc = run(nprocs, "mesh", "--N", "6", "--out", out, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("wrote ") == 1 and proc.stderr == ""
    assert files(tmp_path) == ["m.msh"]  # no temporaries of a second writer
    assert out.read_text().startswith("$MeshFormat")


@pytest.mark.parametrize("nprocs", [2, 3])
@pytest.mark.parametrize("args", [
    ["train", "--N", "4", "--K", "4", "--rank", "4", "--steps", "2", "--out", "m.pt"],
    ["energy", "--steps", "2", "--out", "energy"],
    ["bench", "--budget", "smoke", "--out", "bench"],
    ["basis", "--kind", "sine", "--N", "4", "--rank", "4", "--out", "b.npz"],
])
def test_serial_commands_refuse_at_start_with_one_line(nprocs, args, tmp_path):
    proc = run(nprocs, *args, tmp_path=tmp_path, timeout=120)
    assert_one_line(proc, args[0], f"{args[0]} runs on one MPI rank; got {nprocs}: run it "
                                   "without mpiexec")
    assert files(tmp_path) == []


@pytest.mark.parametrize("nprocs", [2, 3])
@pytest.mark.parametrize(("args", "expected"), [
    (["solve", "--rtol", "2"], "argument --rtol: expected 0 < value < 1, got 2"),
    (["solve", "--N", "8", "--K", "100"], "--K must be <= n = (N+1)^2 = 81, got 100"),
    (["solve", "--coarse", "nlss", "--model", "missing.pt"], "missing.pt"),
    (["solve", "--N", "8", "--path", "scipy"], "--path scipy is the serial reference"),
    (["mesh", "--N", "4", "--out", "."], "is a directory; expected a file name"),
])
def test_bad_input_is_one_line_from_every_rank(nprocs, args, expected, tmp_path):
    proc = run(nprocs, *args, tmp_path=tmp_path, timeout=120)
    assert_one_line(proc, args[0], expected)
    assert files(tmp_path) == []


@pytest.mark.parametrize("nprocs", [2, 3])
def test_the_same_failure_on_every_rank_is_printed_once(nprocs, tmp_path):
    proc = run(nprocs, "--", *SOLVE, tmp_path=tmp_path, script=MPI_DIR / "cli_same_error.py")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == ("nlss-fenicsx solve: error: Unrecognized kind "
                                   "'injected-on-every-rank'; expected 'file' or 'dir'")
    # (the ranks' stdout lines reach mpiexec separately: order and line breaks may mix)
    assert sorted(re.findall(r"RANK (\d+) EXIT (\d+)", proc.stdout)) == [
        (str(r), "2") for r in range(nprocs)], proc.stdout


@pytest.mark.parametrize("nprocs", [2, 3])
def test_a_failure_on_one_rank_ends_the_job_instead_of_hanging(nprocs, tmp_path):
    failing = nprocs - 1
    proc = run(nprocs, failing, "--", *SOLVE, tmp_path=tmp_path, timeout=90,
               script=MPI_DIR / "cli_one_rank_fails.py")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    line = (f"nlss-fenicsx solve: error: Unrecognized kind 'injected-on-rank-{failing}'; "
            f"expected 'file' or 'dir' [MPI rank {failing} of {nprocs}; the other ranks did "
            "not stop: aborting]")
    assert proc.stderr.count(line) == 1, proc.stderr
