"""nn/train.py: one loop for the MLP and the GNN. Training lowers the loss and records what
a solver needs; an interrupted run resumes bit-identical (in this process and after a
SIGTERM to another); the same seed gives the same weights here and in a fresh process; a
non-finite loss stops at once and keeps the last good checkpoint; a user's sampler replaces
the paper's data; off a terminal a progress line appears every 10 % or 30 s."""

import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import nlss_fenicsx.nn.train as train_module  # noqa: E402
from nlss_fenicsx.nn.checkpoint import CheckpointError, read_settings  # noqa: E402
from nlss_fenicsx.nn.data import DataConfig, FreshSampler, instance, instance_seed  # noqa: E402
from nlss_fenicsx.nn.gnn import GNNModel  # noqa: E402
from nlss_fenicsx.nn.inference import load_model  # noqa: E402
from nlss_fenicsx.nn.losses import nlss_loss  # noqa: E402
from nlss_fenicsx.nn.model import NLSSModel  # noqa: E402
from nlss_fenicsx.nn.train import DivergedError, TrainConfig, train  # noqa: E402
from tests.conftest import ROOT  # noqa: E402

TINY = dict(N=8, K=8, r_max=8, hidden=(32, 32), n_eval=4, eval_every=10, ckpt_every=10)
TINY_GNN = dict(arch="gnn", N=8, K=8, r_max=8, hidden=(32, 32), lr=1e-3, n_eval=1,
                eval_every=2, ckpt_every=2)
QUIET = dict(progress=False, log=lambda *_: None)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("train") / "tiny.pt"
    return path, train(TrainConfig(steps=40, **TINY), path, **QUIET)


def _same_weights(a, b):
    sa, sb = a.net.state_dict(), b.net.state_dict()
    assert sa.keys() == sb.keys()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def _interrupt_at(step):
    """A log that raises KeyboardInterrupt (as Ctrl-C would) at the evaluation of ``step``."""
    fired = []

    def log(line):
        if not fired and line.startswith(f"step {step}:"):
            fired.append(line)
            raise KeyboardInterrupt

    return log


def test_training_lowers_the_loss_and_records_settings_and_calibration(tiny):
    path, model = tiny
    hist = model.train_state["history"]
    assert [h["step"] for h in hist] == [10, 20, 30, 40]
    assert hist[-1]["energy@8"] > hist[0]["energy@8"]  # held-out captured energy grows
    assert model.train_state["seconds"] > 0 and model.step == 40
    s = read_settings(path)
    assert (s.arch, s.loss, s.n, s.K, s.r_max, s.N, s.pde, s.preset, s.sweeps, s.omega,
            s.node_order, s.mesh_id) == ("mlp", "nlss", 81, 8, 8, 8, "diffusion", "default",
                                        10, 0.66, "grid", None)
    saved = NLSSModel.load(path)
    assert saved.int8_calibration is not None and saved.int8_calibration["ranks"] == [2, 4, 8]
    assert saved.train_state["config"] == TrainConfig(steps=40, **TINY).as_dict()
    assert _same_weights(saved, model)


@pytest.mark.parametrize("arch", ["mlp", "gnn"])
def test_an_interrupted_run_resumes_bit_identical(tmp_path, arch):
    cfg = TrainConfig(steps=8, **(TINY_GNN if arch == "gnn" else {**TINY, "eval_every": 4,
                                                                   "ckpt_every": 4}))
    stop = 4
    straight = train(cfg, tmp_path / "a.pt", **QUIET)
    lines = []

    def log(line):
        lines.append(line)
        _log(line)

    _log = _interrupt_at(stop)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "b.pt", progress=False, log=log)
    assert any(f"interrupted at step {stop}; checkpoint saved to" in m for m in lines)
    part = (GNNModel if arch == "gnn" else NLSSModel).load(tmp_path / "b.pt")
    assert part.step == stop and part.optimizer_state is not None
    other = TrainConfig(**{**cfg.as_dict(), "hidden": cfg.hidden, "steps": 9})
    with pytest.raises(CheckpointError, match=r"different settings \(steps\)"):
        train(other, tmp_path / "b.pt", **QUIET)
    resumed = train(cfg, tmp_path / "b.pt", **QUIET)
    assert resumed.step == cfg.steps and _same_weights(straight, resumed)
    assert resumed.train_state["history"] == straight.train_state["history"]


def test_the_same_seed_gives_the_same_weights_here_and_in_a_fresh_process(tmp_path):
    cfg = TrainConfig(steps=20, seed=0, **{**TINY, "n_eval": 2})
    a = train(cfg, tmp_path / "a.pt", **QUIET)
    b = train(cfg, tmp_path / "b.pt", **QUIET)
    c = train(TrainConfig(**{**cfg.as_dict(), "hidden": cfg.hidden, "seed": 1}),
              tmp_path / "c.pt", **QUIET)
    assert _same_weights(a, b) and not _same_weights(a, c)
    S = np.random.default_rng(0).standard_normal((81, 8))
    np.testing.assert_array_equal(a.basis(S, 8), b.basis(S, 8))

    def digest(model):
        return hashlib.sha256(b"".join(v.numpy().tobytes() for v in
                                       model.net.state_dict().values())).hexdigest()

    code = ("import json, sys, hashlib, torch; torch.set_num_threads(1); "
            "from nlss_fenicsx.nn.train import TrainConfig, train; "
            "cfg = TrainConfig.from_dict(json.loads(sys.argv[1])); "
            "m = train(cfg, sys.argv[2], progress=False, log=lambda *_: None); "
            "print(hashlib.sha256(b''.join(v.numpy().tobytes() for v in "
            "m.net.state_dict().values())).hexdigest())")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(cfg.as_dict()),
                           str(tmp_path / "d.pt")], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == digest(a)


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(ROOT))


def test_sigterm_mid_training_then_resume_is_bit_identical(tmp_path):
    """A run killed by SIGTERM (the flag is checked between steps) saves exactly the step it
    reached with Adam's state, leaves no temporary file, and resumes to the weights of an
    uninterrupted run."""
    steps = 300
    cfg = TrainConfig(steps=steps, N=8, K=8, r_max=8, hidden=(32, 32), ckpt_every=10)
    out = tmp_path / "model.pt"
    code = ("import json, sys, torch; torch.set_num_threads(1); "
            "from nlss_fenicsx.nn.train import TrainConfig, train; "
            "cfg = TrainConfig.from_dict(json.loads(sys.argv[1]))\n"
            "try:\n    train(cfg, sys.argv[2], progress=False)\n"
            "except KeyboardInterrupt:\n    sys.exit(130)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(cfg.as_dict()), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=_env())
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and _step(out) < 20:
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.01)
        assert proc.poll() is None, f"finished before it could be interrupted: {proc.communicate()}"
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    m = re.search(r"interrupted at step (\d+); checkpoint saved to", stdout)
    assert m, stdout
    stopped = int(m.group(1))
    assert 20 <= stopped < steps
    saved = NLSSModel.load(out)
    assert saved.step == stopped
    assert {int(s["step"]) for s in saved.optimizer_state["state"].values()} == {stopped}
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporaries
    resumed = train(cfg, out, **QUIET)
    straight = train(cfg, tmp_path / "straight.pt", **QUIET)
    assert resumed.step == steps and _same_weights(resumed, straight)
    ref_opt = NLSSModel.load(tmp_path / "straight.pt").optimizer_state["state"]
    for i, state in NLSSModel.load(out).optimizer_state["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(state[key], ref_opt[i][key]), (i, key)


def _step(path):
    try:
        return NLSSModel.load(path).step or 0
    except Exception:  # not there yet (checkpoints are replaced atomically)
        return 0


def test_a_non_finite_loss_stops_at_once_and_keeps_the_last_good_checkpoint(tmp_path,
                                                                              monkeypatch):
    out = tmp_path / "m.pt"
    cfg = TrainConfig(steps=10, **{**TINY, "ckpt_every": 4, "eval_every": 100})
    calls = []

    def nan_from_step_6(P, S):
        calls.append(1)
        loss = nlss_loss(P, S)
        return loss * float("nan") if len(calls) >= 6 else loss

    monkeypatch.setitem(train_module._LOSSES["mlp"], "nlss", nan_from_step_6)
    with pytest.raises(DivergedError) as info:
        train(cfg, out, **QUIET)
    err = info.value
    assert str(err) == (f"training diverged: the loss became non-finite (nan) at step 6 "
                        f"(lr=0.001); kept the checkpoint of step 4 at {out}")
    assert err.step == 6 and err.checkpoint == out and isinstance(err, RuntimeError)
    kept = NLSSModel.load(out)  # loads: finite weights, the state after step 4
    assert kept.step == 4 and [p.name for p in tmp_path.iterdir()] == ["m.pt"]
    # A real divergence (learning rate 1e30): nothing was checkpointed yet, nothing written.
    monkeypatch.undo()
    with pytest.raises(DivergedError, match=r"the loss became non-finite \(nan\) at step \d+ "
                                            r"\(lr=1e\+30\); nothing was written to "):
        train(TrainConfig(steps=20, lr=1e30, **{**TINY, "ckpt_every": 100}),
              tmp_path / "lr.pt", **QUIET)
    assert not (tmp_path / "lr.pt").exists()


def _permuted_sampler(perm, seed=0):
    """A user's sampler: the paper's instances with their nodes renumbered by ``perm``."""
    fresh = FreshSampler(DataConfig(N=8, K=8), seed=seed)
    calls = []

    def sampler(t):
        calls.append(t)
        return fresh(t)[perm]

    sampler.mesh_id, sampler.sweeps, sampler.omega, sampler.calls = "my-mesh", 10, 0.66, calls
    return sampler


def test_a_user_sampler_trains_in_its_node_order_and_the_checkpoint_records_it(tmp_path):
    perm = np.random.default_rng(5).permutation(81)  # the user's node i is grid node perm[i]
    sampler = _permuted_sampler(perm)
    cfg = TrainConfig(steps=6, pde="my-membrane", **{**TINY, "n_eval": 2})
    model = train(cfg, tmp_path / "m.pt", sampler=sampler, **QUIET)
    # Training indices 0..5, then held-out 6, 7 (evaluation) and 8..27 (int8 calibration).
    assert sorted(set(sampler.calls)) == list(range(6 + 2 + 20))
    s = read_settings(tmp_path / "m.pt")
    assert (s.node_order, s.mesh_id, s.N, s.preset, s.pde, s.sweeps, s.omega, s.n) == \
        ("mesh", "my-mesh", None, None, "my-membrane", 10, 0.66, 81)
    # Trained in the user's node order: the same as training on the paper's data with the
    # network's input and output rows permuted -- check by predicting on a user instance.
    S_user = sampler(100)
    P = load_model(tmp_path / "m.pt", precision="float32").basis(S_user.astype(float), 4)
    np.testing.assert_allclose(P, model.basis(S_user, 4))
    other = _permuted_sampler(perm)
    other.mesh_id = "another-mesh"
    with pytest.raises(CheckpointError, match=r"different settings \(mesh\)"):
        train(cfg, tmp_path / "m.pt", sampler=other, **QUIET)


def test_the_gnn_trains_on_a_user_sampler_returning_A_and_S(tmp_path):
    def sampler(t):
        problem, S = instance(DataConfig(N=6, K=8), instance_seed(3, t))
        return problem.A, S

    sampler.mesh_id = "square-6"
    model = train(TrainConfig(steps=2, **{**TINY_GNN, "N": 64}), tmp_path / "g.pt",
                  sampler=sampler, **QUIET)
    assert isinstance(model, GNNModel) and model.settings.n == 49
    assert read_settings(tmp_path / "g.pt").mesh_id == "square-6"
    assert [h["step"] for h in model.train_state["history"]] == [2]


def test_off_a_terminal_a_progress_line_every_10_percent_or_30_seconds(tmp_path, monkeypatch):
    monkeypatch.setattr(train_module.sys.stderr, "isatty", lambda: False, raising=False)
    lines = []
    train(TrainConfig(steps=20, **{**TINY, "eval_every": 100}), tmp_path / "a.pt",
          progress=True, log=lines.append)
    progress = [m for m in lines if m.startswith("train diffusion mlp nlss: step")]
    assert [re.search(r"step (\d+)/20 \((\d+) %\)", m).groups() for m in progress] == \
        [(str(2 * k), str(10 * k)) for k in range(1, 11)]

    class Clock:  # 40 s pass between two readings: a line at every step
        now = 0.0

        @classmethod
        def monotonic(cls):
            cls.now += 40.0
            return cls.now

        perf_counter = staticmethod(time.perf_counter)

    monkeypatch.setattr(train_module, "time", Clock)
    lines.clear()
    train(TrainConfig(steps=30, **{**TINY, "eval_every": 100}), tmp_path / "b.pt",
          progress=True, log=lines.append)
    assert len([m for m in lines if m.startswith("train diffusion")]) == 30
    lines.clear()
    train(TrainConfig(steps=10, **{**TINY, "eval_every": 100}), tmp_path / "c.pt", **{
        "progress": False, "log": lines.append})
    assert not [m for m in lines if m.startswith("train diffusion")]  # progress=False

    class Stdout(io.StringIO):  # a file: block-buffered unless flushed
        flushes = 0

        def flush(self):
            Stdout.flushes += 1

    monkeypatch.setattr(sys, "stdout", Stdout())
    train(TrainConfig(steps=5, **{**TINY, "eval_every": 100}), tmp_path / "d.pt", progress=True)
    printed = sys.stdout.getvalue().splitlines()
    assert len(printed) == 6 and Stdout.flushes >= 6  # 5 progress + 1 evaluation, flushed


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"r_max": 0}, "r_max must be >= 1, got 0"),
     ({"r_max": 9}, "r_max must be <= K, got r_max=9 > K=8"),
     ({"K": 100, "r_max": 8}, r"K must satisfy 1 <= K <= n = \(N\+1\)\^2 = 81, got 100"),
     ({"N": 1, "K": 2, "r_max": 2}, "N must be >= 2, got 1"),
     ({"steps": 0}, "steps must be >= 1, got 0"),
     ({"lr": float("inf")}, "lr must be a positive finite number, got inf"),
     ({"lr": -1.0}, "lr must be a positive finite number"),
     ({"arch": "cnn"}, "Unrecognized arch 'cnn'"),
     ({"loss": "twogrid"}, "Unrecognized loss 'twogrid' for arch 'mlp'"),
     ({"arch": "gnn", "loss": "nlss"}, "Unrecognized loss 'nlss' for arch 'gnn'"),
     ({"arch": "gnn", "protocol": "dataset"}, "Unrecognized protocol 'dataset' for arch 'gnn'"),
     ({"arch": "gnn", "hidden": (32, 16)}, r"one width repeated per layer.*\(32, 16\)"),
     ({"hidden": (32, 0)}, "hidden must hold positive widths"),
     ({"probes": 0}, "probes >= 1 or None"),
     ({"preset": "mine"}, "Unrecognized preset 'mine'")],
)
def test_config_bad_values_are_one_value_error(kwargs, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{"N": 8, "K": 8, "r_max": 8, **kwargs})
    assert not list(tmp_path.iterdir())


def test_config_defaults_per_architecture_and_round_trip():
    mlp, gnn = TrainConfig(), TrainConfig(arch="gnn")
    assert (mlp.loss, mlp.lr, mlp.hidden, mlp.n_eval) == ("nlss", 1e-3, (128, 256, 256, 128), 8)
    assert (gnn.loss, gnn.lr, gnn.hidden, gnn.n_eval) == ("twogrid", 1e-4, (488,) * 5, 2)
    assert TrainConfig.from_dict(gnn.as_dict()) == gnn
    assert gnn.loss_probes(4225) == 8 and gnn.loss_probes(81) is None
    assert gnn.net_config(81).width == 488 and gnn.net_config(81).layers == 5
    assert TrainConfig(pde="my-label").pde == "my-label"  # a label for a user's sampler
    with pytest.raises(ValueError, match="Unrecognized PDE family 'my-label'"):
        train(TrainConfig(pde="my-label", N=4, K=2, r_max=2), "unused.pt")
