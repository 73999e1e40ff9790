"""Nothing lost: a training run or a benchmark killed mid-run keeps what it had written and
continues where it stopped, through the command line, as a user would run them."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import torch

from nlss_fenicsx.nn import NLSSModel
from nlss_fenicsx.nn.train import TrainConfig, train
from tests.conftest import ROOT

STEPS = 300
TRAIN_ARGS = ["train", "--steps", str(STEPS), "--N", "8", "--K", "8", "--rank", "8",
              "--hidden", "32,32", "--ckpt-every", "10", "--no-progress"]


def _env(**extra):
    return dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                PYTHONPATH=str(ROOT), **extra)


def _cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "nlss_fenicsx", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env or _env(),
                          cwd=ROOT)


def _popen(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "nlss_fenicsx", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env or _env(), cwd=ROOT)


def _step(path):
    try:
        return NLSSModel.load(path).step or 0
    except Exception:  # not there yet (checkpoints are replaced atomically)
        return 0


def test_sigterm_mid_training_then_resume_is_bit_identical(tmp_path):
    out = tmp_path / "model.pt"
    proc = _popen(*TRAIN_ARGS, "--out", out)
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and _step(out) < 20:
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.01)
        assert proc.poll() is None, f"training finished before it could be interrupted:\n" \
                                    f"{proc.communicate()}"
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    m = re.search(r"interrupted at step (\d+); checkpoint saved to", stdout)
    assert m, stdout
    stopped = int(m.group(1))
    assert 20 <= stopped < STEPS
    # The checkpoint holds exactly the interrupted step, and Adam's state at that step.
    saved = NLSSModel.load(out)
    assert saved.step == stopped
    adam_steps = {int(s["step"]) for s in saved.optimizer_state["state"].values()}
    assert adam_steps == {stopped}
    assert not [p for p in tmp_path.iterdir() if p.name != "model.pt"]  # no temporaries

    done = _cli(*TRAIN_ARGS, "--out", out)
    assert done.returncode == 0, done.stderr
    assert f"step {STEPS}," in done.stdout
    resumed = NLSSModel.load(out)
    assert resumed.step == STEPS

    # An uninterrupted run with the same settings (in-process, one thread, as the CLI).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = TrainConfig(N=8, K=8, r_max=8, hidden=(32, 32), steps=STEPS, ckpt_every=10)
        straight = train(cfg, tmp_path / "straight.pt", progress=False, log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    ref = straight.net.state_dict()
    for k, v in resumed.net.state_dict().items():
        assert torch.equal(v, ref[k]), k
    ref_opt = NLSSModel.load(tmp_path / "straight.pt").optimizer_state["state"]
    for i, state in resumed.optimizer_state["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(state[key], ref_opt[i][key]), (i, key)


def test_killed_bench_keeps_results_and_resume_continues(tmp_path):
    """``nlss-fenicsx bench`` killed (SIGKILL) after its first results.json: the file is
    whole, incomplete, and ``--resume`` finishes without rerunning what it holds."""
    out = tmp_path / "bench"
    env = _env(NLSS_FENICSX_CACHE=str(tmp_path / "cache"))
    args = ["bench", "--pde", "diffusion", "--budget", "smoke", "--out", out, "--no-progress"]
    results = out / "results.json"
    proc = _popen(*args, env=env)
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
    assert results.exists(), stderr
    first = json.loads(results.read_text())  # whole: written atomically
    assert first["complete"] is False, "the run finished before it could be killed"
    assert first["methods"]

    done = _cli(*args, "--resume", env=env, timeout=900)
    assert done.returncode == 0, done.stderr
    final = json.loads(results.read_text())
    assert final["complete"] is True
    assert set(first["methods"]) <= set(final["methods"])
    for key, entry in first["methods"].items():  # kept, not rerun: identical records
        assert final["methods"][key]["records"] == entry["records"], key
    assert final["started"] == first["started"]
