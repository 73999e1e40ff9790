"""nn/cache.py: keys, reuse of slim files, corrupt and stale entries, resume, both
architectures, and the fault classes of a cache: read-only, an entry that is a directory,
a full disk."""

import contextlib
import errno
import os
import pathlib

import pytest

torch = pytest.importorskip("torch")

from nlss_fenicsx.nn import checkpoint as ckpt  # noqa: E402
from nlss_fenicsx.nn.cache import cached_model, model_key, model_path  # noqa: E402
from nlss_fenicsx.nn.checkpoint import CheckpointError  # noqa: E402
from nlss_fenicsx.nn.gnn import GNNModel  # noqa: E402
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
    train(TrainConfig(**(TINY | {"steps": 3})), partial, progress=False, log=_quiet([]))
    ck = torch.load(partial, weights_only=True)
    ck["train"]["config"]["steps"] = cfg.steps  # as if stopped at step 3 of 6
    torch.save(ck, partial)
    lines = []
    model, path, trained = cached_model(cfg, progress=False, log=_quiet(lines))
    assert trained and model.step == cfg.steps
    assert any("resuming interrupted training at step 3" in m for m in lines)
    assert not partial.exists()
    # Resuming gives the weights of an uninterrupted run (train() is deterministic).
    full = train(cfg, cache / "full.pt", progress=False, log=_quiet([]))
    for a, b in zip(model.net.parameters(), full.net.parameters(), strict=True):
        assert torch.equal(a, b)  # bit-identical


def test_a_cached_entry_is_read_without_write_access(cache, monkeypatch):
    """A read-only cache that holds the model: nothing is opened for writing (no lock file),
    the model is returned."""
    cfg = TrainConfig(**TINY)
    _, path, _ = cached_model(cfg, progress=False, log=_quiet([]))
    lock = path.with_suffix(".lock")
    lock.unlink()
    real_open = open

    def read_only_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            raise PermissionError(errno.EROFS, "Read-only file system", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", read_only_open)
    model, path2, trained = cached_model(cfg, progress=False, log=_quiet([]))
    assert not trained and path2 == path and model.step == cfg.steps
    assert not lock.exists()
    # The same read-only cache without the model: one line naming the folder.
    with pytest.raises(OSError, match=r"model cache .* cannot be written \(Read-only file "
                                      r"system\) and does not hold this model") as info:
        cached_model(TrainConfig(**(TINY | {"seed": 9})), progress=False, log=_quiet([]))
    assert "\n" not in str(info.value)


def test_an_entry_that_is_a_directory_is_one_line(cache):
    cfg = TrainConfig(**TINY)
    model_path(cfg).mkdir(parents=True)
    with pytest.raises(CheckpointError, match="is a directory, not a checkpoint") as info:
        cached_model(cfg, progress=False, log=_quiet([]))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("fault", ["ENOSPC", "torch"])
def test_a_full_disk_is_named_in_one_line_and_leaves_no_file(cache, monkeypatch, fault):
    """/dev/full (Python's ENOSPC), or torch's own "unexpected pos" RuntimeError on a file
    system with no room left (what a full disk gives through torch's zip writer)."""
    if fault == "ENOSPC":
        @contextlib.contextmanager
        def to_dev_full(path, **_):
            yield pathlib.Path("/dev/full")  # every write there fails with ENOSPC

        monkeypatch.setattr(ckpt, "atomic_path", to_dev_full)
        monkeypatch.setattr(ckpt, "save_or_recover", lambda path, write: write(pathlib.Path(
            "/dev/full")))
    else:
        def torch_full(*_a, **_k):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos "
                               "8384 vs 8278")

        monkeypatch.setattr(ckpt.torch, "save", torch_full)
        monkeypatch.setattr(ckpt.os, "statvfs", lambda _: os.statvfs_result(
            (4096, 4096, 1000, 0, 0, 100, 0, 0, 0, 255)))
    cfg = TrainConfig(**(TINY | {"ckpt_every": 2}))
    with pytest.raises(OSError) as info:
        cached_model(cfg, progress=False, log=_quiet([]))
    assert info.value.errno == errno.ENOSPC
    partial = model_path(cfg).with_suffix(".train.pt")
    assert str(info.value) == (f"could not write checkpoint {partial}: no space left on "
                               f"device (the model cache {cache / 'models'}: free space there "
                               "or set NLSS_FENICSX_CACHE to another folder)")
    assert sorted(p.name for p in (cache / "models").iterdir()) == [
        model_path(cfg).with_suffix(".lock").name]


def test_the_gnn_is_cached_the_same_way(cache):
    cfg = TrainConfig(arch="gnn", N=4, K=4, r_max=4, steps=2, hidden=(8, 8), n_eval=1)
    assert model_key(cfg).startswith("diffusion_N4_K4_r4_gnn_w8_2steps_")
    model, path, trained = cached_model(cfg, progress=False, log=_quiet([]))
    assert trained and isinstance(model, GNNModel)
    again, _, trained2 = cached_model(cfg, progress=False, log=_quiet([]))
    assert not trained2 and isinstance(again, GNNModel)
    assert GNNModel.load(path).optimizer_state is None
