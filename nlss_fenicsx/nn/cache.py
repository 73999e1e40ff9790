"""Trained models cached on disk, keyed by their training settings (both architectures).

A demo (or a user) asks for "the model trained with these settings" and gets it from the
cache when it is there, or trains it once and stores it::

    from nlss_fenicsx.nn.cache import cached_model
    from nlss_fenicsx.nn.train import TrainConfig

    model, path, trained = cached_model(TrainConfig(N=32, K=48, r_max=48, steps=1000))
    # path can go straight into the PETSc options: {"nlss_model": str(path)}

Layout under ``cache_dir()/models`` (``$NLSS_FENICSX_CACHE`` or ``~/.cache/nlss_fenicsx``):

``<key>.pt``
    The finished model, slimmed for inference: weights, settings and int8 calibration, no
    optimiser state. Written atomically.
``<key>.train.pt``
    The full training checkpoint while training runs; an interrupted run leaves it behind
    and the next call resumes from it. Removed once ``<key>.pt`` is written.
``<key>.lock``
    Serialises processes that train the same model: one trains, the others wait and read.

Reading needs no write access: an entry that is there and current is returned before any
lock file is opened, so a read-only cache that holds the model works. An entry that cannot
be read or whose stored settings differ is reported in one line and retrained; a cache
entry that is a directory, a cache that is read-only but lacks the model, and a full disk
are each one line naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
from pathlib import Path

from nlss_fenicsx.nn.checkpoint import CheckpointError
from nlss_fenicsx.nn.data import cache_dir
from nlss_fenicsx.nn.gnn import GNNModel
from nlss_fenicsx.nn.model import NLSSModel
from nlss_fenicsx.nn.train import TrainConfig, train

__all__ = ["CADENCE_FIELDS", "cached_model", "model_key", "model_path"]

# Bookkeeping fields that never change the trained weights: not part of the key.
CADENCE_FIELDS = ("n_eval", "eval_every", "ckpt_every")
_KEY_FORMAT = 2  # 2: one checkpoint format for both architectures, int8 calibration inside


def _key_settings(cfg: TrainConfig) -> dict:
    return {k: v for k, v in cfg.as_dict().items() if k not in CADENCE_FIELDS}


def model_key(cfg: TrainConfig) -> str:
    """File stem of the cached model for ``cfg``: a readable name plus a short hash.

    The hash covers every setting but the cadence ones (:data:`CADENCE_FIELDS`) and the
    package version, so a new release or any change of the settings gives a new entry.

    Parameters
    ----------
    cfg : TrainConfig

    Returns
    -------
    str

    Examples
    --------
    >>> model_key(TrainConfig(N=32, K=48, r_max=48, steps=1000))[:37]
    'diffusion_N32_K48_r48_nlss_1000steps_'
    """
    from nlss_fenicsx import __version__

    meta = {"settings": _key_settings(cfg), "version": __version__, "format": _KEY_FORMAT}
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:12]
    kind = f"gnn_w{cfg.hidden[0]}" if cfg.arch == "gnn" else cfg.loss
    return f"{cfg.pde}_N{cfg.N}_K{cfg.K}_r{cfg.r_max}_{kind}_{cfg.steps}steps_{digest}"


def model_path(cfg: TrainConfig) -> Path:
    """``cache_dir()/models/<model_key(cfg)>.pt`` (it may not exist yet)."""
    return cache_dir() / "models" / f"{model_key(cfg)}.pt"


@contextlib.contextmanager
def _locked(path: Path):
    """Hold an exclusive lock on ``path`` (opened for writing: only to train)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a")  # noqa: SIM115 - held for the whole block
    except OSError as err:
        raise OSError(err.errno, f"model cache {path.parent} cannot be written "
                      f"({err.strerror}) and does not hold this model; set NLSS_FENICSX_CACHE "
                      "to a writable folder") from None
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _brief(err: Exception) -> str:
    line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return line if len(line) <= 160 else line[:157] + "..."


def _mismatch(model, cfg: TrainConfig) -> list[str]:
    """List the keyed settings in which ``model``'s training config differs from ``cfg``."""
    saved = model.train_state.get("config")
    if not isinstance(saved, dict):
        return ["train config (none stored)"]
    return [k for k, v in _key_settings(cfg).items() if saved.get(k) != v]


def _model_class(cfg: TrainConfig):
    return GNNModel if cfg.arch == "gnn" else NLSSModel


def _lookup(cfg: TrainConfig, path: Path, log):
    """Find a current entry: ``(model or None, state)``, reading only.

    ``state`` is ``'current'``, ``'missing'``, ``'stale'`` or ``'incomplete'``.
    """
    if path.is_dir():
        raise CheckpointError(f"model cache entry {path} is a directory, not a checkpoint; "
                              "remove it or set NLSS_FENICSX_CACHE to another folder")
    if not path.exists():
        return None, "missing"
    try:
        model = _model_class(cfg).load(path)
    except CheckpointError as err:
        log(f"cache entry {path} is corrupt ({_brief(err)}): retraining")
        return None, "stale"
    bad, step = _mismatch(model, cfg), int(model.step or 0)
    if not bad and step == cfg.steps:
        return model, "current"
    if not bad and step < cfg.steps and model.optimizer_state is not None:
        log(f"cache entry {path} is incomplete (step {step} of {cfg.steps}): resuming")
        return None, "incomplete"
    why = f"different settings: {', '.join(bad)}" if bad else f"step {step}, expected {cfg.steps}"
    log(f"cache entry {path} is stale ({why}): retraining")
    return None, "stale"


def cached_model(cfg: TrainConfig, *, retrain: bool = False, progress: bool = True, log=print,
                 device: str = "cpu") -> tuple[NLSSModel | GNNModel, Path, bool]:
    """Return the model trained with ``cfg``: from the cache, or trained once and cached.

    Parameters
    ----------
    cfg : TrainConfig
        Training settings (either architecture); they define the entry (:func:`model_key`).
    retrain : bool
        Ignore (and replace) an existing entry and any interrupted training.
    progress : bool
        Training progress (see :func:`nlss_fenicsx.nn.train.train`).
    log : callable
        One line per event: reuse, resume, a corrupt or stale entry, where it was written.
    device : str
        Torch device to train on.

    Returns
    -------
    model : NLSSModel or GNNModel
        In evaluation mode; ``model.path`` is the cached file.
    path : pathlib.Path
        The cached file, for the ``nlss_model`` option.
    trained : bool
        True if this call trained (or finished training).

    Raises
    ------
    CheckpointError
        The entry is a directory.
    OSError
        One line naming the path: the cache is read-only and lacks the model, or the disk
        is full (ENOSPC) while training or writing.
    """
    path = model_path(cfg)
    if not retrain:
        model, _ = _lookup(cfg, path, lambda _: None)  # read-only: no lock yet
        if model is not None:
            model.net.eval()
            log(f"reusing cached model {path} ({cfg.steps} steps)")
            return model, path, False
    partial = path.with_suffix(".train.pt")
    with _locked(path.with_suffix(".lock")):
        state = "stale"
        if not retrain:  # again under the lock: another process may have trained it
            model, state = _lookup(cfg, path, log)
            if model is not None:
                model.net.eval()
                log(f"reusing cached model {path} ({cfg.steps} steps)")
                return model, path, False
        if state == "incomplete":
            os.replace(path, partial)
        else:
            path.unlink(missing_ok=True)
        if retrain:
            partial.unlink(missing_ok=True)
        model = _train(cfg, partial, progress=progress, log=log, device=device)
        model.save(path, optimizer=None, step=model.step)  # slim: no optimiser state
        partial.unlink(missing_ok=True)
        model.path, model.optimizer_state = path, None
        log(f"trained model cached at {path}")
        return model, path, True


def _train(cfg: TrainConfig, partial: Path, *, progress: bool, log, device: str):
    """Train into the full checkpoint ``partial``, resuming it when it is usable."""
    resume = partial.exists()
    if resume:
        try:
            previous = _model_class(cfg).load(partial)
        except CheckpointError as err:
            log(f"interrupted training {partial} is corrupt ({_brief(err)}): starting over")
            resume = False
        else:
            bad = _mismatch(previous, cfg)
            if bad:
                log(f"interrupted training {partial} is stale (different settings: "
                    f"{', '.join(bad)}): starting over")
                resume = False
            else:
                log(f"resuming interrupted training at step {previous.step} of {cfg.steps}")
                # train() wants the identical config; the stored one may differ from cfg
                # in cadence only.
                cfg = TrainConfig.from_dict(previous.train_state["config"])
            del previous
    if not resume:
        partial.unlink(missing_ok=True)
    try:
        return train(cfg, partial, device=device, resume=resume, progress=progress, log=log)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            full = OSError(f"could not write checkpoint {err.filename or partial}: no space "
                           f"left on device (the model cache {partial.parent}: free space "
                           "there or set NLSS_FENICSX_CACHE to another folder)")
            full.errno = errno.ENOSPC
            raise full from None
        raise
