"""nlss_fenicsx.cli: the ``nlss-fenicsx`` command as a user runs it (issues 15, 18, 14.5, 17.2).

Every failure is asserted as the right behaviour: the exit status, one line on stderr that
names the input, no traceback, nothing left on disk. The MPI runs are in test_cli_mpi.py.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import ROOT

TINY = ["--N", "8", "--K", "8", "--rank", "8", "--hidden", "32,32"]


def _env(tmp_path=None, **extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for var in ("NLSS_FENICSX_DEBUG", "PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE"):
        env.pop(var, None)
    if tmp_path is not None:  # a model cache of the test's own: nothing shared, nothing left
        env["NLSS_FENICSX_CACHE"] = str(tmp_path / "cache")
    return {**env, **extra}


def cli(*args, tmp_path=None, timeout=300, prefix=(), **env):
    """Run ``python -m nlss_fenicsx ARGS`` as a user would."""
    cmd = [*prefix, sys.executable, "-m", "nlss_fenicsx", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=_env(tmp_path, **env), cwd=tmp_path or ROOT)


def assert_one_line(proc, command, expected, *, code=2, kind="error"):
    """Exit ``code``, exactly one line on stderr naming what is wrong, no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"nlss-fenicsx {command}: {kind}"), lines[0]
    for text in [expected] if isinstance(expected, str) else expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() \
        else []


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """``train --N 8 --K 8 --rank 8 --hidden 32,32 --steps 30`` (diffusion, nlss loss)."""
    where = tmp_path_factory.mktemp("model")
    proc = cli("train", "--pde", "diffusion", *TINY, "--steps", "30", "--out", "m.pt",
               "--no-progress", tmp_path=where)
    assert proc.returncode == 0, proc.stderr
    return where / "m.pt"


# ------------------------------------------------------------------ bad values (15.8)
@pytest.mark.parametrize(("args", "expected"), [
    (["mesh", "--N", "1"], "argument --N: expected an integer >= 2, got 1"),
    (["mesh", "--jitter", "0.7"], "argument --jitter: expected 0 <= jitter < 0.5, got 0.7"),
    (["mesh", "--seed", "-1"], "argument --seed: expected an integer in [0, 4294967295], got -1"),
    (["solve", "--seed", "-3"], "argument --seed: expected an integer in [0, 4294967295], got -3"),
    (["train", "--seed", "-1"], "argument --seed: expected an integer in [0, 4294967295], got -1"),
    (["energy", "--seed", "-1"], "argument --seed: expected an integer in [0, 4294967295], "
                                 "got -1"),
    (["solve", "--seed", str(2**64 - 1)], "argument --seed: expected an integer in [0, "
                                          "4294967295], got 18446744073709551615"),
    (["train", "--seed", "9" * 23], "argument --seed: expected an integer in [0, 4294967295]"),
    (["solve", "--sweeps", "100000000"], "argument --sweeps: expected an integer in [0, 10000]"),
    (["solve", "--rtol", "1"], "argument --rtol: expected 0 < value < 1, got 1"),
    (["solve", "--rtol", "2.5"], "argument --rtol: expected 0 < value < 1, got 2.5"),
    (["solve", "--rtol", "0"], "argument --rtol: expected 0 < value < 1, got 0"),
    (["solve", "--rtol=-1e-6"], "argument --rtol: expected 0 < value < 1, got -1e-6"),
    (["solve", "--rtol", "abc"], "argument --rtol: expected a number, got 'abc'"),
    (["solve", "--nu", "0"], "argument --nu: expected an integer >= 1 (with no smoothing the "
                             "two-grid operator is singular), got 0"),
    (["solve", "--N", "8", "--mesh", "meshes/square_N8_s0.msh"],
     "--N 8 and --mesh meshes/square_N8_s0.msh: give one"),
    (["train", "--N", "8", "--mesh", "meshes/square_N8_s0.msh"],
     "--N 8 and --mesh meshes/square_N8_s0.msh: give one"),
    (["solve", "--omega", "2"], "argument --omega: expected 'auto' or 0 < omega < 2, got 2"),
    (["solve", "--omega", "fast"], "argument --omega: expected a number, got 'fast'"),
    (["solve", "--rank", "0"], "argument --rank: expected an integer >= 1, got 0"),
    (["solve", "--rank", "4.5"], "argument --rank: expected an integer, got '4.5'"),
    (["solve", "--rank", "80", "--K", "72"], "--rank must be <= --K, got rank 80 > K 72"),
    (["solve", "--K", "5000", "--N", "8"], "--K must be <= n = (N+1)^2 = 81, got 5000"),
    (["solve", "--coarse", "sine", "--N", "3", "--rank", "17"],
     "--rank must be <= n = (N+1)^2 = 16, got 17"),
    (["solve", "--coarse", "nlss"], "--coarse nlss needs --model PATH"),
    (["solve", "--coarse", "fixed"], "--coarse fixed needs --basis PATH"),
    (["solve", "--N", "100000"], ["--N 100000 needs about", "GiB of memory; this machine has"]),
    (["mesh", "--N", "100000"], ["--N 100000 needs about", "GiB of memory"]),
    (["train", "--N", "1000", "--K", "72", "--rank", "72"],
     ["training at --N 1000 needs about", "GiB of memory"]),
    (["train", "--rank", "100", "--K", "72"], "--rank must be <= --K, got rank 100 > K 72"),
    (["train", "--K", "5000", "--N", "8", "--rank", "8"], "--K must be <= n = (N+1)^2 = 81"),
    (["train", "--lr", "0"], "argument --lr: expected a positive number, got 0"),
    (["train", "--lr", "inf"], "argument --lr: expected a positive number, got inf"),
    (["train", "--hidden", "32,x"], "argument --hidden: expected comma-separated integers"),
    (["train", "--arch", "gnn", "--hidden", "16,16", "--N", "4", "--K", "4", "--rank", "4"],
     "--arch gnn takes --hidden WIDTH (one integer"),
    (["train", "--arch", "gnn", "--loss", "subspace", "--N", "4", "--K", "4", "--rank", "4"],
     "--arch gnn trains on the two-grid loss; --loss subspace does not apply"),
    (["train", "--mesh", "/nonexistent.msh"], "--mesh: mesh file not found: /nonexistent.msh"),
    (["bench", "--ranks", "0"], "argument --ranks: expected positive widths, got '0'"),
    (["basis", "--kind", "sine", "--N", "3", "--rank", "16"],
     "--rank must be < n = (N+1)^2 = 16, got 16"),
    (["basis", "--kind", "nlss-family", "--N", "8", "--instances", "0"],
     "argument --instances: expected an integer >= 1, got 0"),
    (["frobnicate"], "argument COMMAND: invalid choice: 'frobnicate'"),
])
def test_bad_values_exit_2_with_one_line_and_leave_nothing(args, expected, tmp_path):
    t0 = time.monotonic()
    proc = cli(*args, tmp_path=tmp_path, timeout=60)
    if args[0] == "frobnicate":  # argparse's own line, for the top-level command
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
        assert proc.stderr.startswith("nlss-fenicsx: error: ") and expected in proc.stderr
    else:
        assert_one_line(proc, args[0], expected)
    assert files(tmp_path) == []  # nothing written, not even the cache folder
    assert time.monotonic() - t0 < 30  # refused at once, before any work


def test_sa_on_a_tiny_mesh_is_not_refused_for_K(tmp_path):
    """``--coarse sa`` uses no smoothed vectors: the default K = 72 > n = 16 is no reason."""
    proc = cli("solve", "--N", "3", "--coarse", "sa", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"iterations \d+, final relative residual", proc.stdout)
    assert "Traceback" not in proc.stderr
    proc = cli("solve", "--N", "3", "--coarse", "sa", "--K", "72", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "note: --K not used by --coarse sa (ignored)" in proc.stderr


def test_solve_rtol_is_honoured(tmp_path):
    proc = cli("solve", "--N", "8", "--K", "8", "--rank", "4", "--rtol", "1e-3",
               tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    res = float(re.search(r"final relative residual (\S+)", proc.stdout).group(1))
    assert res < 1e-3


# ------------------------------------------------------------------ output paths (15.2)
OUTPUTS = {  # command -> (arguments, whether --out is a folder)
    "mesh": (["--N", "4"], False),
    "train": (["--N", "4", "--K", "4", "--rank", "4", "--hidden", "8", "--steps", "2"], False),
    "energy": (["--pde", "diffusion", "--steps", "2", "--n-train", "2", "--n-test", "2"], True),
    "bench": (["--pde", "diffusion", "--budget", "smoke"], True),
    "basis": (["--kind", "sine", "--N", "4", "--rank", "4"], False),
}


@pytest.mark.parametrize("command", OUTPUTS)
@pytest.mark.parametrize("case", ["is-dir-or-file", "parent-is-a-file"])
def test_output_path_checked_before_any_work(command, case, tmp_path):
    args, folder = OUTPUTS[command]
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    if case == "is-dir-or-file":
        out, expected = (blocker, "is a file; expected a folder") if folder else \
            (tmp_path, "is a directory; expected a file name")
    else:
        out, expected = blocker / "sub" / "out", f"{blocker} is a file, not a folder"
    t0 = time.monotonic()
    proc = cli(command, *args, "--out", out, tmp_path=tmp_path, timeout=120)
    assert_one_line(proc, command, [f"--out {out}", expected])
    assert time.monotonic() - t0 < 30
    assert files(tmp_path) == ["blocker"]  # no cache, no model, no temporaries


def _unshare():
    exe = shutil.which("unshare")
    if exe is None or subprocess.run([exe, "-rm", "true"], capture_output=True).returncode:
        pytest.skip("needs `unshare -rm` (user and mount namespaces) to mount a file system")
    return exe


def _in_mount(folder, options, *args, tmp_path, timeout=300):
    """Run the CLI with ``folder`` a fresh tmpfs mounted with ``options`` (e.g. ro)."""
    folder.mkdir(exist_ok=True)
    cmd = " ".join([f"mount -t tmpfs -o {options} tmpfs {folder} &&", sys.executable, "-m",
                    "nlss_fenicsx", *map(str, args)])
    return subprocess.run([_unshare(), "-rm", "sh", "-c", cmd], capture_output=True, text=True,
                          timeout=timeout, env=_env(tmp_path), cwd=tmp_path)


@pytest.mark.parametrize("command", OUTPUTS)
def test_output_on_a_read_only_file_system(command, tmp_path):
    args, folder = OUTPUTS[command]
    ro = tmp_path / "ro"
    out = ro / ("results" if folder else "out.file")
    proc = _in_mount(ro, "ro,size=1m", command, *args, "--out", out, tmp_path=tmp_path)
    assert_one_line(proc, command, f"--out {out}: cannot write in {ro} (Read-only file system)")
    assert files(tmp_path) == ["ro"]


def test_training_keeps_the_model_when_the_final_write_fails(tmp_path):
    """A disk too small for the checkpoint: the finished model goes to the recovery folder
    and the one line says where; exit 1."""
    full = tmp_path / "full"
    proc = _in_mount(full, "size=16k", "train", "--N", "4", "--K", "4", "--rank", "4",
                     "--hidden", "8", "--steps", "3", "--ckpt-every", "1000", "--no-progress",
                     "--out", full / "m.pt", tmp_path=tmp_path)
    line = assert_one_line(proc, "train", f"could not write {full / 'm.pt'}", code=1,
                           kind="failed")
    saved = re.search(r"saved it to (\S+) instead", line).group(1)
    assert saved.startswith(str(tmp_path / "cache" / "recovered"))
    from nlss_fenicsx.nn.checkpoint import read_settings

    assert read_settings(saved).K == 4


# ------------------------------------------------------------------ litter (15.4)
def test_train_killed_mid_write_leaves_a_temporary_that_the_next_run_sweeps(tmp_path):
    out = tmp_path / "models" / "m.pt"
    common = ["--N", "8", "--K", "8", "--rank", "8", "--hidden", "256,256", "--no-progress",
              "--out", out]
    args = ["train", *common, "--steps", "100000", "--ckpt-every", "1"]
    for _attempt in range(5):
        proc = subprocess.Popen([sys.executable, "-m", "nlss_fenicsx", *map(str, args)],
                                env=_env(tmp_path), cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while proc.poll() is None and time.monotonic() < deadline:
                if out.parent.exists() and any(p.name.endswith(".nlss-tmp")
                                               for p in out.parent.iterdir()):
                    proc.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.0005)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
        left = [p.name for p in out.parent.iterdir() if p.name.endswith(".nlss-tmp")]
        if left:
            break
    assert left and all(f"-{proc.pid}." in name for name in left), left
    # The next run writing there (a short resume) removes it.
    done = cli("train", *common, "--steps", "1", "--restart", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.pt"]


# ------------------------------------------------------------------ resume inputs (15.7)
@pytest.mark.parametrize(("content", "expected"), [
    ('{"schema_version": 1, "kind": "bench", "pde": "diff', "results.json"),
    ("[1, 2, 3]", "results.json"),
    ('{"schema_version": 1, "kind": "bench", "pde": "diffusion"}', "results.json"),
    ("", "results.json"),
])
def test_bench_resume_with_damaged_results(content, expected, tmp_path):
    out = tmp_path / "bench"
    out.mkdir()
    (out / "results.json").write_text(content)
    proc = cli("bench", "--pde", "diffusion", "--budget", "smoke", "--out", out, "--resume",
               "--no-progress", tmp_path=tmp_path, timeout=120)
    assert_one_line(proc, "bench", [str(out / "results.json")])
    assert files(tmp_path) == ["bench", "bench/results.json"]


# ------------------------------------------------------------------ checkpoints (15.9, 18)
def test_solve_takes_the_models_settings(tiny_model, tmp_path):
    """Issue 18: only --model (and --pde): K=8, N=8, rank = r_max = 8 come from it."""
    proc = cli("solve", "--pde", "diffusion", "--coarse", "nlss", "--model", tiny_model,
               tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"from the model {tiny_model}: " in proc.stdout
    taken = proc.stdout.split(f"from the model {tiny_model}: ")[1].splitlines()[0]
    for item in ("N=8", "K=8", "sweeps=10", "rank=8 (r_max)"):
        assert item in taken, taken
    assert "pde=" not in taken  # given, not taken
    assert "n=81" in proc.stdout and "K=8" in proc.stdout
    its = re.search(r"iterations (\d+), final relative residual (\S+)", proc.stdout)
    # Reference: the same solve with every setting given explicitly, as before issue 18.
    explicit = cli("solve", "--pde", "diffusion", "--coarse", "nlss", "--model", tiny_model,
                   "--N", "8", "--K", "8", "--sweeps", "10", "--rank", "8", tmp_path=tmp_path)
    assert explicit.returncode == 0, explicit.stderr
    assert re.search(r"iterations (\d+), final relative residual (\S+)",
                     explicit.stdout).groups() == its.groups()
    # --model alone: the coarse kind is the model's, and the PDE family too.
    proc = cli("solve", "--model", tiny_model, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "pde=diffusion" in proc.stdout and "method NLSS" in proc.stdout
    # A smaller rank than r_max is fine; so is K given equal to the model's (the rank still
    # comes from the model, not from the built-in default).
    proc = cli("solve", "--model", tiny_model, "--rank", "4", tmp_path=tmp_path)
    assert proc.returncode == 0 and "(rank 4," in proc.stdout, proc.stderr
    proc = cli("solve", "--model", tiny_model, "--K", "8", tmp_path=tmp_path)
    assert proc.returncode == 0 and "(rank 8," in proc.stdout, proc.stderr
    # --omega is the cycle's weight: S is still smoothed with the model's, and says so.
    proc = cli("solve", "--model", tiny_model, "--omega", "0.5", tmp_path=tmp_path)
    assert proc.returncode == 0 and "omega of S=0.66" in proc.stdout, proc.stderr


@pytest.mark.parametrize(("args", "expected"), [
    (["--K", "72"], ["--K 72", "K=8"]),
    (["--N", "16"], ["--N 16", "N=8"]),
    (["--sweeps", "3"], ["--sweeps 3", "sweeps=10"]),
    (["--rank", "9"], ["--rank 9", "r_max=8"]),
    (["--pde", "anisotropic"], ["--pde anisotropic", "pde=diffusion"]),
    (["--coarse", "gnn"], ["--coarse gnn", "is an MLP (nlss loss) checkpoint",
                           "use --coarse nlss"]),
    (["--coarse", "subspace"], ["--coarse subspace", "use --coarse nlss"]),
    (["--coarse", "svd"], ["--model applies to --coarse nlss, subspace, gnn; got --coarse svd"]),
])
def test_solve_refuses_what_contradicts_the_model(tiny_model, args, expected, capsys):
    from nlss_fenicsx.cli import main  # in-process: these stop before any solve

    assert main(["solve", "--model", str(tiny_model), *args]) == 2
    captured = capsys.readouterr()
    assert_one_line(subprocess.CompletedProcess([], 2, captured.out, captured.err), "solve",
                    expected)


def test_unreadable_checkpoints_are_one_line(tiny_model, tmp_path, capsys):
    from nlss_fenicsx.cli import main

    bad = tmp_path / "bad.pt"
    bad.write_bytes(tiny_model.read_bytes()[:500])
    for path in (bad, tmp_path / "none.pt", tmp_path):
        assert main(["solve", "--coarse", "nlss", "--model", str(path)]) == 2
        captured = capsys.readouterr()
        assert_one_line(subprocess.CompletedProcess([], 2, captured.out, captured.err),
                        "solve", str(path))


# ------------------------------------------------------------------ training (15.5, 15.11)
def test_diverging_training_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "m.pt"
    proc = cli("train", "--N", "4", "--K", "4", "--rank", "4", "--hidden", "8", "--steps",
               "50", "--ckpt-every", "1", "--lr", "1e30", "--no-progress", "--out", out,
               tmp_path=tmp_path)
    line = assert_one_line(proc, "train", "non-finite", code=1, kind="failed")
    assert re.search(r"step \d+", line)
    if out.exists():  # the last good checkpoint, finite (a NaN one is refused at load)
        from nlss_fenicsx.nn.inference import load_model

        load_model(out, precision="float32")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".nlss-tmp")]


def test_training_off_a_terminal_prints_progress_lines(tmp_path):
    proc = cli("train", "--N", "4", "--K", "4", "--rank", "4", "--hidden", "8", "--steps",
               "40", "--out", tmp_path / "m.pt", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    progress = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "40" in ln
                and re.search(r"\b\d+\s*/\s*40\b|\d+ ?%", ln)]
    assert len(progress) >= 5, proc.stdout + proc.stderr
    quiet = cli("train", "--N", "4", "--K", "4", "--rank", "4", "--hidden", "8", "--steps",
                "40", "--restart", "--no-progress", "--out", tmp_path / "m.pt",
                tmp_path=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr


def test_gnn_trains_through_the_cli_and_solves(tmp_path):
    out = tmp_path / "g.pt"
    proc = cli("train", "--arch", "gnn", "--N", "4", "--K", "4", "--rank", "4", "--hidden",
               "16", "--steps", "2", "--out", out, "--no-progress", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    from nlss_fenicsx.nn.checkpoint import read_settings

    s = read_settings(out)
    assert (s.arch, s.K, s.r_max, s.N) == ("gnn", 4, 4, 4)
    solved = cli("solve", "--model", out, tmp_path=tmp_path)
    assert solved.returncode == 0, solved.stderr
    assert "method GNN" in solved.stdout
    refused = cli("solve", "--model", out, "--coarse", "nlss", tmp_path=tmp_path)
    assert_one_line(refused, "solve", ["is a GNN checkpoint", "use --coarse gnn"])


def test_sigterm_mid_training_is_interrupted_and_resumes(tmp_path):
    """Stopped by SIGTERM: "interrupted", exit 130, the checkpoint of that step and nothing
    else on disk; the next run resumes there and finishes. (That the resumed weights are
    bit-identical to an uninterrupted run is train()'s: test_nn_train.py.)"""
    from nlss_fenicsx.nn.checkpoint import read_checkpoint

    steps = 150
    args = ["train", *TINY, "--steps", str(steps), "--ckpt-every", "10", "--no-progress",
            "--out", tmp_path / "model.pt"]

    def step():
        try:
            return read_checkpoint(tmp_path / "model.pt").train["step"]
        except Exception:  # not written yet
            return 0

    proc = subprocess.Popen([sys.executable, "-m", "nlss_fenicsx", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(tmp_path), cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and step() < 20:
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.01)
        assert proc.poll() is None, "training finished before it could be interrupted"
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "nlss-fenicsx train: interrupted"
    assert "Traceback" not in stderr
    stopped = step()
    assert 20 <= stopped < steps
    assert files(tmp_path) == ["model.pt"]  # no temporaries, no cache
    done = cli(*args, tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    assert step() == steps and f"step {steps}," in done.stdout


# ------------------------------------------------------------------ interrupts (15.10)
_INTERRUPT_AT = textwrap.dedent("""
    # Sends this process a real SIGINT from inside MODULE:ATTR.PATH, then runs the CLI.
    import importlib, os, signal, sys, time
    module, path = sys.argv[1].split(":")
    parent = importlib.import_module(module)
    *owners, leaf = path.split(".")
    for name in owners:
        parent = getattr(parent, name)
    original = getattr(parent, leaf)
    def hit(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # the KeyboardInterrupt arrives here
        return original(*args, **kwargs)
    setattr(parent, leaf, hit)
    from nlss_fenicsx.cli import main
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.parametrize("where", [
    "nlss_fenicsx.petsc:TwoGridPC.setUp",  # the preconditioner's set-up, inside PETSc
    "nlss_fenicsx.petsc:TwoGridPC.apply",  # inside the Krylov iteration
    "nlss_fenicsx.pdes:assemble",
    "nlss_fenicsx.meshes:jittered_square",
])
def test_ctrl_c_anywhere_in_solve_is_interrupted_130(where, tmp_path):
    script = tmp_path / "hit.py"
    script.write_text(_INTERRUPT_AT)
    proc = subprocess.run([sys.executable, str(script), where, "solve", "--N", "8", "--K", "8",
                           "--rank", "4"],
                          capture_output=True, text=True, timeout=120, env=_env(tmp_path),
                          cwd=tmp_path)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip() == "nlss-fenicsx solve: interrupted", proc.stderr


# ------------------------------------------------------------------ errors that are bugs
def test_internal_errors_are_one_line_unless_debugging(monkeypatch, capsys):
    from nlss_fenicsx import cli as cli_module

    def broken(args, comm):
        return {}["no such key"]

    monkeypatch.setattr(cli_module, "_cmd_mesh", broken)
    monkeypatch.delenv("NLSS_FENICSX_DEBUG", raising=False)
    parser_args = ["mesh", "--N", "4"]
    monkeypatch.setattr(cli_module, "build_parser", _patched_parser(cli_module, broken))
    assert cli_module.main(parser_args) == 70
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("nlss-fenicsx mesh: internal error: KeyError: 'no such key'")
    assert "please report this" in err and "NLSS_FENICSX_DEBUG=1" in err
    monkeypatch.setenv("NLSS_FENICSX_DEBUG", "1")
    assert cli_module.main(parser_args) == 70
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.delenv("NLSS_FENICSX_DEBUG")
    assert cli_module.main(["--debug", *parser_args]) == 70
    assert "Traceback" in capsys.readouterr().err


def _patched_parser(cli_module, func):
    original = cli_module.build_parser

    def build():
        parser = original()
        parser._subparsers._group_actions[0].choices["mesh"].set_defaults(func=func)
        return parser

    return build


def test_numpy_value_errors_are_bugs_not_bad_input():
    import numpy as np

    from nlss_fenicsx._cli_checks import classify

    try:
        np.ones((2, 3)) @ np.ones((2, 3))
    except ValueError as err:
        code, line = classify(err)
    assert code == 70 and line.startswith("internal error: ValueError: matmul")
    code, line = classify(ValueError("--K must be <= n"))  # raised by us
    assert (code, line) == (2, "error: --K must be <= n")


# ------------------------------------------------------------------ help (item 4)
def test_every_command_has_help_and_help_imports_nothing_heavy():
    code = textwrap.dedent("""
        import sys
        from nlss_fenicsx.cli import main
        for cmd in ([], ["mesh"], ["solve"], ["train"], ["energy"], ["bench"], ["basis"]):
            try:
                main([*cmd, "--help"])
            except SystemExit as e:
                assert e.code == 0
        heavy = sorted(m for m in ("torch", "dolfinx", "petsc4py", "mpi4py", "numpy", "ufl")
                       if m in sys.modules)
        print("HEAVY", heavy)
    """)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=_env())
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout
    assert time.monotonic() - t0 < 10
    helps = proc.stdout.split("usage: nlss-fenicsx")[1:]
    assert len(helps) == 7
    for text in helps:
        assert "exit status: 0 done" in text
    for cmd in ("mesh", "solve", "train", "energy", "bench", "basis"):
        assert f"  {cmd}  " in helps[0] or f"    {cmd}" in helps[0]


# ------------------------------------------------------------------ your own mesh (14.5)
def test_train_on_your_own_mesh_then_solve_on_it(tmp_path):
    mesh = tmp_path / "my.msh"
    assert cli("mesh", "--N", "6", "--seed", "3", "--out", mesh, tmp_path=tmp_path)\
        .returncode == 0
    out = tmp_path / "mine.pt"
    proc = cli("train", "--mesh", mesh, "--pde", "diffusion", "--K", "8", "--rank", "6",
               "--hidden", "16", "--steps", "5", "--no-progress", "--out", out,
               tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    from nlss_fenicsx.nn.checkpoint import read_settings

    s = read_settings(out)
    assert (s.node_order, s.n, s.K, s.r_max, s.N) == ("mesh", 49, 8, 6, None)
    solved = cli("solve", "--mesh", mesh, "--model", out, tmp_path=tmp_path)
    assert solved.returncode == 0, solved.stderr
    assert "n=49" in solved.stdout
    refused = cli("solve", "--model", out, tmp_path=tmp_path)
    assert_one_line(refused, "solve", "trained on a mesh of its own: give that mesh with --mesh")


# ------------------------------------------------------------------ basis (17.2)
@pytest.mark.parametrize("kind", ["sine", "eig-ref", "nlss-family"])
def test_basis_written_once_then_used_by_solve(kind, tmp_path):
    out = tmp_path / f"{kind}.npz"
    proc = cli("basis", "--kind", kind, "--pde", "diffusion", "--N", "8", "--rank", "12",
               "--instances", "3", "--out", out, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and f"wrote {out}" in proc.stdout
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".nlss-tmp")] == []
    solved = cli("solve", "--N", "8", "--coarse", "fixed", "--basis", out, "--rank", "8",
                 tmp_path=tmp_path)
    assert solved.returncode == 0, solved.stderr
    assert re.search(r"iterations \d+", solved.stdout)
    other = cli("solve", "--N", "16", "--coarse", "fixed", "--basis", out, "--rank", "8",
                tmp_path=tmp_path)
    assert_one_line(other, "solve", str(out))  # a basis for another mesh: refused


def test_fixed_takes_its_rank_from_the_file_and_runs_on_both_paths(tmp_path):
    out = tmp_path / "sine.npz"
    assert cli("basis", "--kind", "sine", "--N", "8", "--rank", "6", "--out", out,
               tmp_path=tmp_path).returncode == 0
    its = {}
    for path in ("petsc", "scipy"):
        proc = cli("solve", "--N", "8", "--coarse", "fixed", "--basis", out, "--path", path,
                   tmp_path=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert re.search(r"method fixed basis (\(SciPy\) )?\(rank 6,", proc.stdout)  # r_max, not 48
        its[path] = re.search(r"iterations (\d+)", proc.stdout).group(1)
    assert its["petsc"] == its["scipy"]
    noted = cli("solve", "--N", "8", "--coarse", "svd", "--rank", "4", "--basis", out,
                tmp_path=tmp_path)
    assert noted.returncode == 0 and "--basis not used by --coarse svd" in noted.stderr


def test_a_clipped_rank_is_noted_once_and_reported_as_used(tmp_path):
    proc = cli("solve", "--N", "8", "--coarse", "sine", "--rank", "60", "--debug",
               tmp_path=tmp_path)  # --debug after the command is accepted
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("nlss_rank clipped to 49") == 1, proc.stderr
    assert "method sine (rank 49 (clipped from 60)" in proc.stdout
