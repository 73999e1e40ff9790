"""The base both learned coarse spaces share: network, settings, input checks, save, load.

:class:`~nlss_fenicsx.nn.model.NLSSModel` (the paper's MLP) and
:class:`~nlss_fenicsx.nn.gnn.GNNModel` (the GNN baseline) derive from
:class:`LearnedModel`; their checkpoints are one format
(:mod:`nlss_fenicsx.nn.checkpoint`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from nlss_fenicsx.nn.checkpoint import (
    Checkpoint,
    CheckpointError,
    ModelSettings,
    check_fits,
    read_checkpoint,
    write_checkpoint,
)

__all__ = ["LearnedModel", "check_node_order", "check_sizes"]


def check_sizes(config, names=("n", "K", "r_max")) -> None:
    """Check a frozen config's sizes: positive integers (stored as ``int``), ``r_max <= K <= n``.

    Parameters
    ----------
    config : dataclass instance
        With fields ``n``, ``K``, ``r_max`` and any others listed in ``names``.
    names : sequence of str
        Fields that must be positive integers.

    Raises
    ------
    ValueError
        Naming the config, the field, what is expected and what was given.

    Examples
    --------
    >>> from nlss_fenicsx.nn.model import MLPConfig
    >>> MLPConfig(n=4, K=8, r_max=2)
    Traceback (most recent call last):
    ...
    ValueError: MLPConfig needs K <= n (no more smoothed vectors than unknowns); got K=8, n=4
    """
    kind = type(config).__name__
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{kind}.{name} must be a positive integer; got {value!r}")
        object.__setattr__(config, name, int(value))
    if config.K > config.n:
        raise ValueError(f"{kind} needs K <= n (no more smoothed vectors than unknowns); "
                         f"got K={config.K}, n={config.n}")
    if config.r_max > config.K:
        raise ValueError(f"{kind} needs 1 <= r_max <= K (the rank of S is at most K); "
                         f"got r_max={config.r_max}, K={config.K}")


def check_node_order(node_order, n: int) -> np.ndarray | None:
    """``node_order`` as an integer array if it is a permutation of ``range(n)`` (O(n)).

    Parameters
    ----------
    node_order : array_like of int or None
        ``node_order[i]`` is the dof of input node ``i``; ``None`` passes through.
    n : int
        Number of nodes.

    Returns
    -------
    numpy.ndarray or None

    Raises
    ------
    ValueError
        If it is not an integer array holding each of ``0 .. n-1`` once.

    Examples
    --------
    >>> check_node_order([2, 0, 1], 3)
    array([2, 0, 1])
    """
    if node_order is None:
        return None
    p = np.asarray(node_order)
    ok = p.shape == (n,) and np.issubdtype(p.dtype, np.integer)
    if ok and n:
        ok = 0 <= p.min() and p.max() < n
        if ok:
            seen = np.zeros(n, dtype=bool)
            seen[p] = True
            ok = bool(seen.all())
    if not ok:
        raise ValueError(f"node_order must be a permutation of range({n}); got an array of "
                         f"shape {p.shape} and dtype {p.dtype}")
    return p



class LearnedModel:
    """What both learned coarse spaces share: network, settings, input checks, save, load.

    Subclasses set ``ARCH``, ``DEFAULT_LOSS``, ``config_type`` and ``network_type`` and
    implement ``basis``.

    Parameters
    ----------
    config : MLPConfig or GNNConfig
        Architecture (sizes ``n``, ``K``, ``r_max``).
    net : torch.nn.Module, optional
        An existing network built for ``config``; a freshly initialised one by default.
    **settings
        Further :class:`ModelSettings` fields (``loss``, ``N``, ``pde``, ``preset``,
        ``sweeps``, ``omega``, ``node_order``, ``mesh_id``).

    Attributes
    ----------
    net : torch.nn.Module
    settings : ModelSettings
    path : pathlib.Path or None
        File it was loaded from.
    step : int or None
        Training step stored in that file.
    optimizer_state : dict or None
        Optimizer state stored in that file.
    train_state : dict
        Training record: ``config``, ``history``, ``seconds``, ``peak_rss_mib``, ``device``.
    int8_calibration : dict or None
        The int8 calibration decided at the end of training (MLP).
    """

    ARCH: ClassVar[str]
    DEFAULT_LOSS: ClassVar[str]
    config_type: ClassVar[type]
    network_type: ClassVar[type]

    def __init__(self, config, *, net: torch.nn.Module | None = None, **settings) -> None:
        if net is None:
            net = self.network_type(config)
        elif net.config != config:
            raise ValueError(f"net was built for {net.config}, which differs from {config}")
        self.config = config
        self.net = net
        settings.setdefault("loss", self.DEFAULT_LOSS)
        self.settings = ModelSettings(arch=self.ARCH, n=config.n, K=config.K,
                                      r_max=config.r_max, **settings)
        self.path: Path | None = None
        self.step: int | None = None
        self.optimizer_state: dict | None = None
        self.train_state: dict = {}
        self.int8_calibration: dict | None = None

    def __repr__(self) -> str:
        s = self.settings
        return (f"{type(self).__name__}(n={s.n}, K={s.K}, r_max={s.r_max}, pde={s.pde!r}, "
                f"loss={s.loss!r}, parameters={self.num_parameters()})")

    @property
    def n(self) -> int:
        """Number of unknowns the model was built for."""
        return self.config.n

    @property
    def K(self) -> int:
        """Number of smoothed vectors the model was built for."""
        return self.config.K

    @property
    def r_max(self) -> int:
        """Largest rank the model produces."""
        return self.config.r_max

    def num_parameters(self) -> int:
        """Count the trainable scalars of the network."""
        return sum(p.numel() for p in self.net.parameters())

    def to(self, device: torch.device | str) -> LearnedModel:
        """Move the network to ``device`` (in place) and return ``self``."""
        self.net.to(device)
        return self

    def check_compatible(self, *, n: int | None = None, K: int | None = None,
                         pde: str | None = None) -> None:
        """:func:`check_fits` with this model's settings (``CheckpointError`` on mismatch)."""
        where = f"checkpoint {self.path}" if self.path is not None else "model"
        check_fits(self.settings, n=n, K=K, pde=pde, where=where)

    def check_input(self, S, r, node_order=None) -> tuple[np.ndarray, int, np.ndarray | None]:
        """Validate the arguments of ``basis``; returns ``(S, r, node_order)``.

        Raises
        ------
        ValueError
            If ``S`` is not ``(n, K)`` or not finite, ``r`` is not in ``1..r_max``, or
            ``node_order`` is not a permutation of ``range(n)``.
        """
        S = np.asarray(S)
        cfg = self.config
        if S.ndim != 2 or S.shape != (cfg.n, cfg.K):
            raise ValueError(f"model was trained for n={cfg.n}, K={cfg.K}; got S of shape "
                             f"{S.shape}")
        if isinstance(r, bool) or not isinstance(r, int | np.integer) or not 1 <= r <= cfg.r_max:
            raise ValueError(f"r must satisfy 1 <= r <= r_max={cfg.r_max}; got r={r!r}")
        if not np.isfinite(S).all():
            raise ValueError("S has NaN or Inf entries; expected finite smoothed vectors")
        return S, int(r), check_node_order(node_order, cfg.n)

    @staticmethod
    def to_dof_order(P_node: np.ndarray, node_order: np.ndarray | None) -> np.ndarray:
        """Move the rows of ``P_node`` (node order) to dof order: ``P[node_order] = P_node``."""
        if node_order is None:
            return P_node
        P = np.empty_like(P_node)
        P[node_order] = P_node
        return P

    def checkpoint(self, *, optimizer=None, step: int | None = None,
                   train: dict | None = None) -> Checkpoint:
        """Return this model as a :class:`Checkpoint` (``train`` overrides ``train_state``)."""
        return Checkpoint(settings=self.settings, config=self.config.to_dict(),
                          state_dict=self.net.state_dict(), int8=self.int8_calibration,
                          train=self.train_state if train is None else train,
                          optimizer=None if optimizer is None else optimizer.state_dict(),
                          path=self.path)

    def save(self, path: str | os.PathLike, *, optimizer=None, step: int | None = None,
             recover: bool = False) -> Path:
        """Write a checkpoint atomically (:func:`write_checkpoint`).

        Parameters
        ----------
        path : str or os.PathLike
            Destination.
        optimizer : optional
            An optimizer whose ``state_dict`` is stored so that training can resume.
        step : int, optional
            Training step to record (default: ``self.step``).
        recover : bool
            Keep the file in the recovery folder if ``path`` cannot be written.

        Returns
        -------
        pathlib.Path
        """
        step = self.step if step is None else step
        train = {**self.train_state, "step": None if step is None else int(step)}
        return write_checkpoint(path, self.checkpoint(optimizer=optimizer, train=train),
                                recover=recover)

    @classmethod
    def from_checkpoint(cls, ck: Checkpoint, *, map_location: Any = "cpu") -> LearnedModel:
        """Build the model a :class:`Checkpoint` describes (weights loaded).

        Raises
        ------
        CheckpointError
            If the config is invalid or the weights do not fit it.
        """
        try:
            config = cls.config_type(**ck.config)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {ck.path} has an invalid config: {exc}") from None
        extra = {k: v for k, v in ck.settings.to_dict().items()
                 if k not in ("arch", "n", "K", "r_max")}
        model = cls(config, **extra)
        try:
            model.net.load_state_dict(ck.state_dict)
        except (RuntimeError, TypeError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise CheckpointError(f"checkpoint {ck.path} weights do not fit its config "
                                  f"{config}: {first}") from None
        if isinstance(map_location, str | torch.device):
            model.net.to(map_location)
        model.path = ck.path
        model.train_state = dict(ck.train or {})
        model.step = model.train_state.get("step")
        model.optimizer_state = ck.optimizer
        model.int8_calibration = ck.int8
        return model

    @classmethod
    def load(cls, path: str | os.PathLike, *, map_location: Any = "cpu") -> LearnedModel:
        """Read a checkpoint of this architecture written by :meth:`save`.

        Parameters
        ----------
        path : str or os.PathLike
        map_location : str or torch.device, default 'cpu'

        Returns
        -------
        LearnedModel
            With ``path``, ``step``, ``optimizer_state``, ``train_state`` and
            ``int8_calibration`` from the file.

        Raises
        ------
        CheckpointError
            As :func:`read_checkpoint`, or a checkpoint of the other architecture.
        """
        ck = read_checkpoint(path, arch=cls.ARCH, map_location=map_location)
        return cls.from_checkpoint(ck, map_location=map_location)
