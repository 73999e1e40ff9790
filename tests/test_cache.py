"""The on-disk model cache: keys, reuse, slim files, corrupt/stale entries, resume."""

import pytest

torch = pytest.importorskip("torch")

from nlss_fenicsx.nn.cache import cached_model, model_key, model_path  # noqa: E402
from nlss_fenicsx.nn.model import NLSSModel  # noqa: E402
from nlss_fenicsx.nn.train import TrainConfig, train  # noqa: E402

TINY = dict(N=4, K=4, r_max=4, steps=6, hidden=(8,))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NLSS_FENICSX_CACHE", str(tmp_path))
    return tmp_path


def _quiet(lines):
    return lambda msg: lines.append(msg)


def test_key_is_readable_and_tracks_settings():
    cfg = TrainConfig(**TINY)
    key = model_key(cfg)
    assert key.startswith("diffusion_N4_K4_r4_nlss_6steps_")
    assert model_key(TrainConfig(**TINY)) == key
    assert model_key(TrainConfig(**TINY, eval_every=2, ckpt_every=3)) == key  # bookkeeping
    for change in ({"lr": 2e-3}, {"seed": 1}, {"hidden": (16,)}, {"preset": "paper"},
                   {"pde": "anisotropic"}, {"loss": "subspace"}):
        assert model_key(TrainConfig(**(TINY | change))) != key, change


def test_train_once_then_reuse_slim_file(cache):
    cfg = TrainConfig(**TINY)
    lines = []
    model, path, trained = cached_model(cfg, progress=False, log=_quiet(lines))
    assert trained and path == model_path(cfg) and path.parent == cache / "models"
    assert not path.with_suffix(".train.pt").exists()
    saved = NLSSModel.load(path)
    assert saved.step == cfg.steps and saved.optimizer_state is None  # slim for inference
    again, path2, trained2 = cached_model(cfg, progress=False, log=_quiet(lines))
    assert not trained2 and path2 == path
    assert any("reusing cached model" in m for m in lines)
    for a, b in zip(model.net.parameters(), again.net.parameters(), strict=True):
        assert torch.equal(a, b)


def test_corrupt_entry_is_reported_and_retrained(cache):
    cfg = TrainConfig(**TINY)
    _, path, _ = cached_model(cfg, progress=False, log=_quiet([]))
    path.write_bytes(b"not a checkpoint" * 10)
    lines = []
    _, _, trained = cached_model(cfg, progress=False, log=_quiet(lines))
    assert trained
    assert any("is corrupt" in m and "retraining" in m for m in lines)
    assert NLSSModel.load(path).step == cfg.steps


def test_stale_entry_is_reported_and_retrained(cache):
    cfg = TrainConfig(**TINY)
    path = model_path(cfg)
    path.parent.mkdir(parents=True)
    other = train(TrainConfig(**(TINY | {"seed": 3})), path, progress=False, log=_quiet([]))
    assert other.step == cfg.steps
    lines = []
    _, _, trained = cached_model(cfg, progress=False, log=_quiet(lines))
    assert trained and any("is stale" in m and "seed" in m for m in lines)


def test_interrupted_training_resumes(cache):
    cfg = TrainConfig(**TINY)
    partial = model_path(cfg).with_suffix(".train.pt")
    partial.parent.mkdir(parents=True)
    # A run stopped at step 3: a full checkpoint (optimizer state included) with cfg.
    first = train(TrainConfig(**(TINY | {"steps": 3})), partial, progress=False,
                  log=_quiet([]))
    first.metadata["extra"]["train_config"]["steps"] = cfg.steps
    ck = torch.load(partial, weights_only=True)
    ck["metadata"]["extra"]["train_config"]["steps"] = cfg.steps
    torch.save(ck, partial)
    lines = []
    model, path, trained = cached_model(cfg, progress=False, log=_quiet(lines))
    assert trained and model.step == cfg.steps
    assert any("resuming interrupted training at step 3" in m for m in lines)
    assert not partial.exists()
    # Resuming gives the weights of an uninterrupted run (train() is deterministic).
    full = train(cfg, cache / "full.pt", progress=False, log=_quiet([]))
    for a, b in zip(model.net.parameters(), full.net.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
