"""The one place that picks how a trained model computes ``P``: :func:`load_model`.

A solver asks for ``load_model(path)`` and gets a :class:`Predictor`: the checkpoint's
settings, whether the model needs ``A`` (the GNN), and ``basis(S, r)`` in dof order. The
backend is explicit: ``precision="int8"`` (the default, the preconditioner's) runs the
quantised copy of the MLP (:mod:`nlss_fenicsx.nn.int8`) that the end of training calibrated;
``precision="float32"`` runs the network as trained (:meth:`NLSSModel.basis
<nlss_fenicsx.nn.model.NLSSModel.basis>`, the reference path, several times slower at batch
1). ``Predictor.precision`` says which one runs: float32 for the GNN (it has no int8
copy) and where this PyTorch build cannot quantise (with one warning).

Loaded models are kept per process (keyed by absolute path, size, modification time, inode
and precision), so model loading is not a per-instance cost. A checkpoint with non-finite
weights is refused at load, on whichever rank loads it, before any collective step.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from nlss_fenicsx.nn.checkpoint import CheckpointError, ModelSettings, read_checkpoint
from nlss_fenicsx.nn.gnn import GNNModel
from nlss_fenicsx.nn.int8 import Int8MLP, from_calibration
from nlss_fenicsx.nn.model import NLSSModel

__all__ = ["PRECISIONS", "Predictor", "clear_model_cache", "load_model", "model_from_checkpoint"]

PRECISIONS = ("int8", "float32")
_MODELS = {"mlp": NLSSModel, "gnn": GNNModel}
_CACHE: dict[tuple[str, str], tuple[tuple[int, int, int], Predictor]] = {}


def model_from_checkpoint(path: str | os.PathLike) -> NLSSModel | GNNModel:
    """Load the float32 model of either architecture stored at ``path`` (by its ``arch``).

    Raises
    ------
    CheckpointError
        As :func:`nlss_fenicsx.nn.checkpoint.read_checkpoint`.
    """
    ck = read_checkpoint(path)
    return _MODELS[ck.settings.arch].from_checkpoint(ck)


class Predictor:
    """A trained model ready to give coarse bases, with its backend chosen.

    Parameters
    ----------
    model : NLSSModel or GNNModel
        The float32 model (evaluation mode).
    precision : {'int8', 'float32'}
        Backend asked for (an MLP only; the GNN always runs float32).

    Attributes
    ----------
    settings : ModelSettings
        What the checkpoint records (:func:`nlss_fenicsx.nn.checkpoint.read_settings`).
    needs_A : bool
        Whether :meth:`basis` needs the operator (the GNN).
    precision : str
        What actually runs: ``'int8'`` or ``'float32'``.
    calibration : dict or None
        The int8 calibration stored at the end of training (``None``: the full int8 copy,
        or float32).
    model : NLSSModel or GNNModel
    """

    def __init__(self, model: NLSSModel | GNNModel, precision: str = "int8") -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"Unrecognized precision {precision!r}; expected one of "
                             f"{PRECISIONS}")
        self.model = model
        self.settings: ModelSettings = model.settings
        self.needs_A = isinstance(model, GNNModel)
        self.calibration = getattr(model, "int8_calibration", None)
        self._int8: Int8MLP | None = None
        if precision == "int8" and not self.needs_A:
            try:
                self._int8 = from_calibration(model.net, self.calibration)
            except (ImportError, AttributeError, RuntimeError, NotImplementedError) as err:
                warnings.warn(f"int8 inference unavailable ({err}); using float32",
                              RuntimeWarning, stacklevel=2)
        self.precision = "int8" if self._int8 is not None else "float32"

    def __repr__(self) -> str:
        s = self.settings
        return (f"Predictor(arch={s.arch!r}, precision={self.precision!r}, n={s.n}, K={s.K}, "
                f"r_max={s.r_max}, pde={s.pde!r})")

    def basis(self, S: np.ndarray, r: int, *, node_order: np.ndarray | None = None, A=None,
              dtype=np.float64) -> np.ndarray:
        """Coarse basis ``P`` (``n x r``, orthonormal, dof order) from ``S``.

        Parameters
        ----------
        S : numpy.ndarray
            Smoothed vectors, shape ``(n, K)``, dof order.
        r : int
            Rank, ``1 <= r <= r_max``.
        node_order : numpy.ndarray of int, optional
            ``node_order[i]`` is the dof of input node ``i`` (the order the model was
            trained in, ``settings.node_order``); ``None``: dof order is node order.
        A : scipy.sparse matrix, optional
            The operator in dof order; required when :attr:`needs_A`.
        dtype : numpy dtype
            Of the result (``np.float32`` skips a conversion pass).

        Returns
        -------
        numpy.ndarray
            ``P`` of shape ``(n, r)``.

        Raises
        ------
        ValueError
            Bad input: ``S`` not a finite ``(n, K)`` array, ``r`` out of range,
            ``node_order`` not a permutation, ``A`` missing for the GNN, or a non-finite
            result. It depends on the arguments only, so a caller that runs this on one
            MPI rank can broadcast the error.
        """
        if self.needs_A:
            P = self.model.basis(S, r, node_order, A=A, dtype=dtype)
        elif self._int8 is None:
            P = self.model.basis(S, r, node_order, dtype=dtype)
        else:
            S, r, order = self.model.check_input(S, r, node_order)
            P = self._int8.basis(S, r, order, dtype=dtype)
        if not np.isfinite(P).all():
            raise ValueError("the model produced a non-finite coarse basis P from this S")
        return P


def load_model(path: str | os.PathLike, *, precision: str = "int8") -> Predictor:
    """Load a checkpoint once per process (reloaded if the file changes).

    Parameters
    ----------
    path : str or os.PathLike
        Checkpoint of either architecture.
    precision : {'int8', 'float32'}, default 'int8'
        Backend (see the module docstring); ``Predictor.precision`` says which runs.

    Returns
    -------
    Predictor

    Raises
    ------
    CheckpointError
        One line naming the file: not found, a directory, truncated or corrupt, a type the
        safe loader does not allow, another format, non-finite weights.
    ValueError
        An unknown ``precision``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"Unrecognized precision {precision!r}; expected one of {PRECISIONS}")
    where = os.path.abspath(os.path.expanduser(os.fspath(path)))
    try:
        st = os.stat(where)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {where}") from None
    key = (st.st_size, st.st_mtime_ns, st.st_ino)
    hit = _CACHE.get((where, precision))
    if hit is not None and hit[0] == key:
        return hit[1]
    model = model_from_checkpoint(Path(where).resolve())
    model.net.eval()
    predictor = Predictor(model, precision)
    _CACHE[(where, precision)] = (key, predictor)
    return predictor


def clear_model_cache() -> None:
    """Forget every loaded model."""
    _CACHE.clear()
