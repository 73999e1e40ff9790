"""Trained models cached on disk, keyed by their training settings.

A demo (or a user) asks for "the model trained with these settings" and gets it from the
cache when it is there, or trains it once and stores it::

    from nlss_fenicsx.nn.cache import cached_model
    from nlss_fenicsx.nn.train import TrainConfig

    model, path, trained = cached_model(TrainConfig(N=32, K=48, r_max=48, steps=1000))
    # path can go straight into the PETSc options: {"nlss_model": str(path)}

Layout under ``cache_dir()/models`` (``$NLSS_FENICSX_CACHE`` or ``~/.cache/nlss_fenicsx``):

``<key>.pt``
    The finished model, slimmed for inference: weights and metadata, no optimiser
    state (a third of the size of a training checkpoint). Written atomically.
``<key>.train.pt``
    The full training checkpoint (weights, Adam state, step) while training runs;
    an interrupted run leaves it behind and the next call resumes from it. It is
    removed once ``<key>.pt`` is written.
``<key>.lock``
    Serialises processes that ask for the same model at the same time: one trains,
    the others wait and then read its result.

A cache entry that cannot be read (truncated, corrupt) or whose stored settings differ
from the requested ones is reported in one line and retrained; nothing is silently reused.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path

from nlss_fenicsx.nn.data import cache_dir
from nlss_fenicsx.nn.model import CheckpointError, NLSSModel
from nlss_fenicsx.nn.train import TrainConfig, train

__all__ = ["KEY_FIELDS", "cached_gnn", "cached_model", "model_key", "model_path"]

# Settings that decide the trained weights. Evaluation and checkpoint cadence
# (n_eval, eval_every, ckpt_every) do not, so they are not part of the key.
KEY_FIELDS = ("pde", "N", "K", "r_max", "loss", "steps", "lr", "batch", "seed", "protocol",
              "preset", "hidden", "layernorm", "sweeps", "omega", "n_train", "n_test")
_KEY_FORMAT = 1


# Bookkeeping fields that never change the trained weights (any architecture).
_CADENCE = ("n_eval", "eval_every", "ckpt_every")


def _is_gnn(cfg) -> bool:
    from nlss_fenicsx.nn.gnn import GNNTrainConfig

    return isinstance(cfg, GNNTrainConfig)


def _key_settings(cfg) -> dict:
    d = cfg.as_dict()
    if _is_gnn(cfg):
        return {k: v for k, v in d.items() if k not in _CADENCE}
    return {k: d[k] for k in KEY_FIELDS}


def model_key(cfg: TrainConfig) -> str:
    """File stem of the cached model for ``cfg``: a readable name plus a short hash.

    The hash covers every setting in :data:`KEY_FIELDS` and the package version, so a new
    release or any change of the training settings gives a new entry.

    Examples
    --------
    >>> model_key(TrainConfig(N=32, K=48, r_max=48, steps=1000))[:40]
    'diffusion_N32_K48_r48_nlss_1000steps_'
    """
    from nlss_fenicsx import __version__

    meta = {"settings": _key_settings(cfg), "version": __version__, "format": _KEY_FORMAT,
            **({"arch": "gnn"} if _is_gnn(cfg) else {})}
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:12]
    kind = f"gnn_w{cfg.width}" if _is_gnn(cfg) else cfg.loss
    return f"{cfg.pde}_N{cfg.N}_K{cfg.K}_r{cfg.r_max}_{kind}_{cfg.steps}steps_{digest}"


def model_path(cfg: TrainConfig) -> Path:
    """``cache_dir()/models/<model_key(cfg)>.pt`` (it may not exist yet)."""
    return cache_dir() / "models" / f"{model_key(cfg)}.pt"


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _brief(err: Exception) -> str:
    """First line of an error, shortened: torch's unpickling errors run to a page."""
    line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return line if len(line) <= 160 else line[:157] + "..."


def _mismatch(model, cfg) -> list[str]:
    """Names of the keyed settings in which ``model``'s stored config differs from ``cfg``."""
    saved = model.metadata.get("extra", {}).get("train_config")
    if not isinstance(saved, dict):
        return ["train_config (none stored)"]
    want = _key_settings(cfg)
    return [k for k, v in want.items() if saved.get(k) != v]


def cached_gnn(cfg, *, retrain: bool = False, progress: bool = True, log=print,
               device: str = "cpu"):
    """:func:`cached_model` for the GNN baseline (``cfg`` a
    :class:`~nlss_fenicsx.nn.gnn.GNNTrainConfig`); returns ``(GNNModel, path, trained)``."""
    if not _is_gnn(cfg):
        raise TypeError(f"cached_gnn needs a GNNTrainConfig, got {type(cfg).__name__}")
    return cached_model(cfg, retrain=retrain, progress=progress, log=log, device=device)


def _arch(cfg):
    """(model class, train function, config class) for ``cfg``'s architecture."""
    if _is_gnn(cfg):
        from nlss_fenicsx.nn.gnn import GNNModel, GNNTrainConfig, train_gnn

        return GNNModel, train_gnn, GNNTrainConfig
    return NLSSModel, train, TrainConfig


def cached_model(cfg, *, retrain: bool = False, progress: bool = True,
                 log=print, device: str = "cpu") -> tuple[NLSSModel, Path, bool]:
    """The model trained with ``cfg``, from the cache or trained (once) and cached.

    Parameters
    ----------
    cfg : TrainConfig
        Training settings; they define the cache entry (:func:`model_key`).
    retrain : bool
        Ignore (and replace) an existing entry and any interrupted training.
    progress : bool
        Show the training progress bar.
    log : callable
        Receives one line per event worth telling: reuse, resume, a corrupt or stale
        entry, where the model was written.
    device : str
        Torch device to train on.

    Returns
    -------
    model : NLSSModel
        In evaluation mode; ``model.path`` is the cached file.
    path : pathlib.Path
        The cached file (``cache_dir()/models/<key>.pt``), for the ``nlss_model`` option.
    trained : bool
        True if this call trained (or finished training), False if the entry was reused.

    Notes
    -----
    An entry is reused only if it loads and stores the same settings (the
    ``train_config`` in its metadata) and ``step == cfg.steps``. A corrupt entry
    (:class:`~nlss_fenicsx.nn.model.CheckpointError`) or a stale one is reported and
    retrained. A complete training checkpoint with ``step < cfg.steps`` (an interrupted
    run) is resumed, not restarted.
    """
    path = model_path(cfg)
    partial = path.with_suffix(".train.pt")
    model_cls = _arch(cfg)[0]
    with _locked(path.with_suffix(".lock")):
        if retrain:
            partial.unlink(missing_ok=True)
        elif path.exists():
            try:
                model = model_cls.load(path)
            except CheckpointError as err:
                log(f"cache entry {path} is corrupt ({_brief(err)}): retraining")
                path.unlink(missing_ok=True)
            else:
                bad = _mismatch(model, cfg)
                step = int(model.step or 0)
                if not bad and step == cfg.steps:
                    model.net.eval()
                    log(f"reusing cached model {path} ({cfg.steps} steps)")
                    return model, path, False
                if not bad and step < cfg.steps and model.optimizer_state is not None:
                    log(f"cache entry {path} is incomplete (step {step} of {cfg.steps}): "
                        "resuming its training")
                    os.replace(path, partial)
                else:
                    why = (f"different settings: {', '.join(bad)}" if bad
                           else f"step {step}, expected {cfg.steps}")
                    log(f"cache entry {path} is stale ({why}): retraining")
                    path.unlink(missing_ok=True)
        model = _train(cfg, partial, retrain=retrain, progress=progress, log=log,
                       device=device)
        # Slim for inference: weights and metadata only, written atomically.
        model.save(path, optimizer=None, step=model.step)
        partial.unlink(missing_ok=True)
        model.path = path
        model.optimizer_state = None
        model.net.eval()
        log(f"trained model cached at {path}")
        return model, path, True


def _train(cfg, partial: Path, *, retrain: bool, progress: bool, log, device: str):
    """Train into the full checkpoint ``partial``, resuming it when it is usable."""
    model_cls, train_fn, cfg_cls = _arch(cfg)
    resume = partial.exists() and not retrain
    if resume:
        try:
            previous = model_cls.load(partial)
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
                # in bookkeeping only (evaluation and checkpoint cadence).
                cfg = cfg_cls.from_dict(previous.metadata["extra"]["train_config"])
            del previous
    if not resume:
        partial.unlink(missing_ok=True)
    return train_fn(cfg, partial, device=device, resume=resume, progress=progress, log=log)
