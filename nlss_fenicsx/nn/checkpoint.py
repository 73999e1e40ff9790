"""One checkpoint format for every learned coarse space, its one reader and writer.

A checkpoint is one ``torch.save`` dictionary of plain types and tensors, readable with
``torch.load(weights_only=True)``::

    {"format": "nlss_fenicsx.checkpoint", "format_version": 2,
     "settings": {...},      # ModelSettings: what a solver needs to use the model
     "config": {...},        # the architecture (MLPConfig or GNNConfig as a dict)
     "state_dict": {...},    # the network's weights
     "int8": dict | None,    # the int8 calibration decided at the end of training (MLP)
     "train": dict | None,   # training config, step, history, seconds (to resume)
     "optimizer": dict | None,
     "versions": {"nlss_fenicsx": str, "torch": str}}

:func:`read_settings` reads ``settings`` alone (the weights stay on disk), so a solver can
take its defaults (``K``, ``r_max``, the smoothing of ``S``, the PDE family, the node
order) from a model before it builds anything. The models' ``save`` and ``load``
(:class:`nlss_fenicsx.nn.base.LearnedModel`) go through :func:`write_checkpoint` and
:func:`read_checkpoint`.

Every failure to read is one :class:`CheckpointError` line naming the file: missing, a
directory, truncated or corrupt (the zip container's CRC checks are verified when the weights
are read, since ``torch.load`` does not), a type torch's safe loader does not allow, another
format or version, missing entries, weights that do not fit the config, weights that are not
real floating point, non-finite weights. A write that runs out of disk space is one
``OSError`` line (``could not write checkpoint PATH: no space left on device``).
"""

from __future__ import annotations

import errno
import os
import re
import zipfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nlss_fenicsx._atomic import RecoveredError, atomic_path, save_or_recover

__all__ = ["ARCHS", "FORMAT", "FORMAT_VERSION", "NODE_ORDERS", "Checkpoint", "CheckpointError",
           "ModelSettings", "check_fits", "plain", "read_checkpoint", "read_settings",
           "write_checkpoint"]

FORMAT = "nlss_fenicsx.checkpoint"
FORMAT_VERSION = 2
ARCHS = ("mlp", "gnn")
NODE_ORDERS = ("grid", "mesh")
_REQUIRED = ("settings", "config", "state_dict")


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, of another format, or does not fit the problem."""


@dataclass(frozen=True)
class ModelSettings:
    """What a solver needs to know to use a trained model (plain types only).

    Parameters
    ----------
    arch : {'mlp', 'gnn'}
        Network: the paper's MLP with QR head, or the GNN baseline (needs ``A``).
    loss : str
        Training loss: ``'nlss'`` (paper Eq. 4), ``'subspace'`` (Eq. 3) or ``'twogrid'``
        (the GNN's two-grid loss).
    n, K, r_max : int
        Unknowns, smoothed vectors (columns of ``S``) and the largest coarse rank.
    N : int, optional
        Cells per side of the unit-square mesh it was trained on (``n = (N+1)**2``);
        ``None`` on a user's mesh.
    pde, preset : str, optional
        PDE family and coefficient preset of the training problems.
    sweeps : int, optional
        Jacobi sweeps that made ``S`` in training.
    omega : float, optional
        Jacobi weight of those sweeps.
    node_order : {'grid', 'mesh'}
        Node order the network expects ``S`` in: ``'grid'`` is the unit square's grid order
        (node ``i + (N+1) j``, which is also the jittered square's input node index);
        ``'mesh'`` the input node order of the user's mesh identified by ``mesh_id``.
    mesh_id : str, optional
        Identity of that mesh (``None`` for ``'grid'``).

    Examples
    --------
    >>> s = ModelSettings(arch="mlp", loss="nlss", n=81, K=8, r_max=8, N=8, pde="diffusion")
    >>> ModelSettings.from_dict(s.to_dict()) == s
    True
    """

    arch: str
    loss: str
    n: int
    K: int
    r_max: int
    N: int | None = None
    pde: str | None = None
    preset: str | None = None
    sweeps: int | None = None
    omega: float | None = None
    node_order: str = "grid"
    mesh_id: str | None = None

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"Unrecognized arch {self.arch!r}; expected one of {ARCHS}")
        if self.node_order not in NODE_ORDERS:
            raise ValueError(f"Unrecognized node_order {self.node_order!r}; expected one of "
                             f"{NODE_ORDERS}")
        for name in ("n", "K", "r_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"ModelSettings.{name} must be a positive integer; got {value!r}")
            object.__setattr__(self, name, int(value))
        if not self.r_max <= self.K <= self.n:
            raise ValueError(f"ModelSettings needs r_max <= K <= n; got r_max={self.r_max}, "
                             f"K={self.K}, n={self.n}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-python form, as stored in checkpoints."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSettings:
        """Inverse of :meth:`to_dict`; unknown keys (from a newer writer) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def check_fits(settings: ModelSettings, *, n: int | None = None, K: int | None = None,
               r: int | None = None, pde: str | None = None, mesh_id: str | None = None,
               where: str = "model") -> None:
    """Refuse a model that does not fit the problem, naming every mismatch in one line.

    A model used on another PDE family is refused (not warned): its coarse space was
    learned from that family's smooth error, and on another one it silently costs
    iterations. Arguments left ``None`` are not checked, so a caller that does not know the
    family (a user's own forms) passes ``pde=None``.

    Parameters
    ----------
    settings : ModelSettings
        The model's (:func:`read_settings`).
    n, K : int, optional
        The problem's unknowns and smoothed vectors.
    r : int, optional
        The coarse rank asked for; must be ``<= settings.r_max``.
    pde : str, optional
        The problem's PDE family; checked when the model records one.
    mesh_id : str, optional
        Identity of the problem's mesh; checked for a model trained on a user's mesh.
    where : str
        How to name the model in the message (e.g. ``"checkpoint m.pt"``).

    Raises
    ------
    CheckpointError
        Naming the model's and the problem's values of every mismatch.

    Examples
    --------
    >>> s = ModelSettings(arch="mlp", loss="nlss", n=81, K=8, r_max=8, pde="diffusion")
    >>> check_fits(s, n=81, K=8, pde="anisotropic")
    Traceback (most recent call last):
    ...
    nlss_fenicsx.nn.checkpoint.CheckpointError: model was trained for pde='diffusion'; ...
    """
    mine = {"n": settings.n, "K": settings.K, "pde": settings.pde, "mesh_id": settings.mesh_id}
    given = {"n": n, "K": K, "pde": pde, "mesh_id": mesh_id}
    bad = [k for k in mine if given[k] is not None and mine[k] is not None and mine[k] != given[k]]
    if bad:
        have = ", ".join(f"{k}={mine[k]!r}" for k in bad)
        want = ", ".join(f"{k}={given[k]!r}" for k in bad)
        raise CheckpointError(f"{where} was trained for {have}; the problem has {want}")
    if r is not None and not 1 <= r <= settings.r_max:
        raise CheckpointError(f"coarse rank {r} is outside 1..r_max={settings.r_max} of {where}")


def plain(obj: Any, where: str = "value") -> Any:
    """``obj`` in types ``torch.load(weights_only=True)`` accepts, or ``TypeError``.

    NumPy scalars and arrays become python numbers and lists, paths strings, tuples stay
    tuples; tensors pass through. Anything else (an arbitrary object) is refused before
    anything is written, so no checkpoint needs an unsafe load.

    Parameters
    ----------
    obj : object
        Nested dicts (str keys), lists, tuples, scalars, strings, paths, arrays, tensors.
    where : str
        Name of ``obj`` in the error message.

    Returns
    -------
    object

    Raises
    ------
    TypeError
        Naming the first value of an unsupported type and where it sits.

    Examples
    --------
    >>> import numpy as np, pathlib
    >>> plain({"a": np.int64(3), "p": pathlib.Path("m.pt")})
    {'a': 3, 'p': 'm.pt'}
    """
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or type(obj) in (bool, int, float, str) or isinstance(obj, torch.Tensor):
        return obj
    for kind in (bool, int, float, str):  # subclasses (e.g. torch's TorchVersion) -> base
        if isinstance(obj, kind):
            return kind(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, list | tuple):
        return type(obj)(plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if not isinstance(key, str):
                raise TypeError(f"checkpoint keys must be str; got {key!r} in {where}")
            out[key] = plain(value, f"{where}[{key!r}]")
        return out
    raise TypeError(f"checkpoint {where} has unsupported type {type(obj).__name__}; use plain "
                    f"python values (None, bool, int, float, str, list, tuple, dict) or tensors")


@dataclass
class Checkpoint:
    """The content of one checkpoint file (see the module docstring for the layout).

    Attributes
    ----------
    settings : ModelSettings
    config : dict
        Architecture, as ``MLPConfig.to_dict()`` or ``GNNConfig.to_dict()``.
    state_dict : dict
        The network's weights.
    int8 : dict or None
        Int8 calibration (:func:`nlss_fenicsx.nn.calibration.calibrate`).
    train : dict or None
        ``config`` (TrainConfig as a dict), ``step``, ``history``, ``seconds`` and more.
    optimizer : dict or None
        Optimizer state (to resume).
    versions : dict
        Versions of nlss_fenicsx and torch that wrote it.
    path : pathlib.Path or None
        Where it was read from.
    """

    settings: ModelSettings
    config: dict
    state_dict: dict
    int8: dict | None = None
    train: dict | None = None
    optimizer: dict | None = None
    versions: dict = field(default_factory=dict)
    path: Path | None = None


def _first_nonfinite(tensors: dict, where: str) -> str | None:
    """Name of the first floating tensor in ``tensors`` (nested) holding NaN or Inf."""
    for key, t in tensors.items():
        if isinstance(t, dict):
            bad = _first_nonfinite(t, f"{where}[{key!r}]")
            if bad:
                return bad
        elif isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(
                torch.isfinite(t).all()):
            return f"{where}[{key!r}]"
    return None


class _NoSpaceError(OSError):
    """ENOSPC while writing a checkpoint; its text is one line naming the file."""

    def __str__(self) -> str:
        return f"could not write checkpoint {self.filename}: no space left on device"


def write_checkpoint(path: str | os.PathLike, ck: Checkpoint, *, recover: bool = False) -> Path:
    """Write ``ck`` atomically (temporary file beside ``path``, fsync, rename).

    Parameters
    ----------
    path : str or os.PathLike
        Destination; its folder is created if missing.
    ck : Checkpoint
    recover : bool
        For finished work (the final checkpoint of a training run): if writing ``path``
        fails, write the file to the recovery folder instead
        (:func:`nlss_fenicsx._atomic.save_or_recover`) and raise ``RecoveredError``.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    TypeError
        If a value is not of a plain type (:func:`plain`); nothing is written.
    CheckpointError
        If a weight is NaN or Inf; nothing is written.
    OSError
        ``ENOSPC`` when the disk is full: ``could not write checkpoint PATH: no space left
        on device`` (the destination untouched, no temporary left); ``RecoveredError``
        (an OSError) with ``recover``.
    """
    from nlss_fenicsx import __version__

    path = Path(path)
    bad = _first_nonfinite(ck.state_dict, "state_dict")
    if bad:
        raise CheckpointError(f"refusing to write {path}: non-finite weights in {bad}")
    payload = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "settings": ck.settings.to_dict(), "config": plain(ck.config, "config"),
        "state_dict": ck.state_dict, "int8": plain(ck.int8, "int8"),
        "train": plain(ck.train, "train"), "optimizer": ck.optimizer,
        "versions": {"nlss_fenicsx": __version__, "torch": str(torch.__version__)},
    }

    no_space = _NoSpaceError(errno.ENOSPC, "no space left on device", str(path))
    weights = sum(t.nbytes for t in ck.state_dict.values() if isinstance(t, torch.Tensor))

    def write(tmp: Path) -> None:
        # torch's zip writer reports a full disk as a RuntimeError ("unexpected pos"): it
        # is one when the file system has less room left than the weights need.
        try:
            with open(tmp, "wb") as fh:
                torch.save(payload, fh)
        except OSError as err:
            raise no_space if err.errno == errno.ENOSPC else err from None
        except RuntimeError:
            st = os.statvfs(tmp.parent)
            if st.f_bavail * st.f_frsize < weights + 65536:
                raise no_space from None
            raise

    try:
        if recover:
            save_or_recover(path, write)
        else:
            with atomic_path(path) as tmp:
                write(tmp)
    except RecoveredError:
        raise
    except OSError as err:
        if err.errno == errno.ENOSPC:  # also fsync's, outside write()
            raise no_space from None
        raise
    return path


_UNSAFE = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def _load(path: Path, *, map_location: Any = "cpu", mmap: bool = False) -> dict:
    """``torch.load(weights_only=True)`` of a checkpoint, or one CheckpointError line."""
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, not a file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (or is not a file)")
    if not zipfile.is_zipfile(path):  # torch's own message here names its internals
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt, or not a "
                              "checkpoint (no zip archive; expected a .pt written by "
                              "`nlss-fenicsx train`)")
    if not mmap:  # the weights are read: check them against the container's CRCs
        _check_crcs(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except PermissionError:
        raise CheckpointError(f"checkpoint {path} cannot be read: permission denied") from None
    except Exception as exc:
        unsafe = _UNSAFE.search(str(exc))
        if unsafe:
            raise CheckpointError(
                f"checkpoint {path} holds a {unsafe.group(1)}, a type torch's safe loader "
                "does not allow; nlss_fenicsx writes plain types only, so it did not write "
                "this file") from None
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt "
                              f"({type(exc).__name__}: {first})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        tag = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"checkpoint {path} is not an nlss_fenicsx checkpoint of this "
                              f"version: expected format {FORMAT!r}, got {tag!r}")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {version!r}; this "
                              f"nlss_fenicsx reads version {FORMAT_VERSION} (train it again)")
    missing = [k for k in _REQUIRED if not isinstance(payload.get(k), dict)]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks required entries {missing}")
    return payload


def _check_crcs(path: Path) -> None:
    """Refuse a checkpoint whose zip members fail their CRC check (damaged bytes)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):  # not a zip (or truncated): torch.load names it
        return
    with archive:
        try:
            bad = archive.testzip()
        except Exception as exc:  # noqa: BLE001 - a damaged header: the same one line
            bad = f"? ({type(exc).__name__}: {exc})"
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} is corrupt: member {bad} fails its CRC "
                              "check (the file was damaged after it was written)")


def _settings(payload: dict, path: Path) -> ModelSettings:
    try:
        return ModelSettings.from_dict(payload["settings"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} has invalid settings: {exc}") from None


def read_settings(path: str | os.PathLike) -> ModelSettings:
    """Read the settings of a checkpoint, not its weights (memory-mapped).

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    ModelSettings

    Raises
    ------
    CheckpointError
        As :func:`read_checkpoint`, except that the weights are not checked.
    """
    path = Path(path)
    return _settings(_load(path, mmap=True), path)


def read_checkpoint(path: str | os.PathLike, *, arch: str | None = None,
                    map_location: Any = "cpu") -> Checkpoint:
    """Read and check a checkpoint.

    Parameters
    ----------
    path : str or os.PathLike
    arch : {'mlp', 'gnn'}, optional
        Refuse a checkpoint of the other architecture.
    map_location : str or torch.device
        Passed to :func:`torch.load`.

    Returns
    -------
    Checkpoint

    Raises
    ------
    CheckpointError
        One line naming ``path``: missing, a directory, unreadable, truncated or corrupt (a
        zip member failing its CRC check names the member), a type the safe loader does
        not allow, another format, version or architecture, missing entries, weights that
        are not real floating point (complex, integer), NaN or Inf in the weights.
    """
    path = Path(path)
    payload = _load(path, map_location=map_location)
    settings = _settings(payload, path)
    if arch is not None and settings.arch != arch:
        raise CheckpointError(f"checkpoint {path} holds a {settings.arch.upper()} model; "
                              f"expected a {arch.upper()} one")
    bad = next((f"{k} ({t.dtype})" for k, t in payload["state_dict"].items()
                if isinstance(t, torch.Tensor) and not t.is_floating_point()), None)
    if bad:  # complex (or integer) weights: loading would cast them with a warning
        raise CheckpointError(f"checkpoint {path} has weight {bad}; expected real floating "
                              "point weights only")
    for key in ("state_dict", "int8"):
        bad = _first_nonfinite(payload.get(key) or {}, key)
        if bad:
            raise CheckpointError(f"checkpoint {path} has non-finite weights (NaN or Inf in "
                                  f"{bad}); it cannot be used (was its training diverging?)")
    return Checkpoint(settings=settings, config=payload["config"],
                      state_dict=payload["state_dict"], int8=payload.get("int8"),
                      train=payload.get("train"), optimizer=payload.get("optimizer"),
                      versions=payload.get("versions") or {}, path=path)
