"""The NeuraLSP model: a global MLP with a QR head (paper Sec. 4.2), in float32.

:class:`NLSSMLP` is the torch module: smoothed vectors ``S`` (node order) in, an
orthonormal coarse basis ``P`` out. :class:`NLSSModel` adds the settings its checkpoint
carries and the NumPy entry point :meth:`NLSSModel.basis`, in the problem's dof order. It
is the reference path: the network exactly as trained, Householder QR. Solvers use
:func:`nlss_fenicsx.nn.inference.load_model`, which picks the int8 backend
(:mod:`nlss_fenicsx.nn.int8`) unless asked for float32.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from nlss_fenicsx.nn.base import LearnedModel, check_sizes

__all__ = ["MLPConfig", "NLSSMLP", "NLSSModel", "check_forward", "he_init", "input_features",
           "qr_positive"]


@dataclass(frozen=True)
class MLPConfig:
    """Architecture of :class:`NLSSMLP`.

    Parameters
    ----------
    n : int
        Number of unknowns (nodes), ``(N + 1)**2`` on the paper's meshes.
    K : int
        Number of smoothed vectors (columns of ``S``).
    r_max : int
        Number of basis columns the network produces; ``1 <= r_max <= K <= n``.
    hidden : tuple of int, default (128, 256, 256, 128)
        Hidden-layer widths (the paper's PDE-solving model; ``(128,)`` is its small
        captured-energy model; ``()`` a single linear map).
    layernorm : bool, default True
        LayerNorm after each hidden Linear (before the GELU).

    Raises
    ------
    ValueError
        If a size is not a positive integer or ``r_max <= K <= n`` fails.

    Examples
    --------
    >>> MLPConfig(n=81, K=8, r_max=8, hidden=(32, 32)).hidden
    (32, 32)
    """

    n: int
    K: int
    r_max: int
    hidden: tuple[int, ...] = (128, 256, 256, 128)
    layernorm: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        check_sizes(self)
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"MLPConfig.hidden widths must be positive; got {self.hidden}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-python form (``hidden`` as a list), as stored in checkpoints."""
        return {**asdict(self), "hidden": list(self.hidden)}

    def num_parameters(self) -> int:
        """Trainable scalars of :class:`NLSSMLP` with this config, without building it.

        Examples
        --------
        >>> MLPConfig(n=4225, K=72, r_max=72).num_parameters()  # the paper's N=64 model
        78312776
        """
        widths = [self.n * self.K, *self.hidden, self.n * self.r_max]
        linear = sum(a * b + b for a, b in zip(widths[:-1], widths[1:], strict=True))
        return linear + (2 * sum(self.hidden) if self.layernorm else 0)


def input_features(S: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Scale each column of ``S`` to norm ``sqrt(n)`` and flatten: the network input.

    Parameters
    ----------
    S : torch.Tensor
        Shape ``(batch, n, K)`` or ``(n, K)``.
    dtype : torch.dtype
        Of the result.

    Returns
    -------
    torch.Tensor
        Shape ``(batch, n*K)``, node-major (feature ``i*K + c`` is ``S[i, c]``); entries
        O(1) whatever the scale of ``S``; all-zero columns stay zero.
    """
    if S.ndim == 2:
        S = S.unsqueeze(0)
    S = S.to(dtype)
    norms = torch.linalg.vector_norm(S, dim=-2, keepdim=True)
    norms = torch.where(norms > 0, norms, torch.ones_like(norms))
    return (S * (math.sqrt(S.shape[-2]) / norms)).reshape(S.shape[0], -1)


def check_forward(config, S: torch.Tensor, r: int | None) -> int:
    """Check a network's input ``S`` (``(batch, n, K)`` or ``(n, K)``) and rank ``r``.

    Returns
    -------
    int
        ``r`` (``config.r_max`` for ``None``).

    Raises
    ------
    ValueError
        If ``S`` has another shape or ``r`` is not in ``1..r_max``.
    """
    r = config.r_max if r is None else int(r)
    if not 1 <= r <= config.r_max:
        raise ValueError(f"r must satisfy 1 <= r <= r_max={config.r_max}; got r={r}")
    if S.ndim not in (2, 3) or tuple(S.shape[-2:]) != (config.n, config.K):
        raise ValueError(f"model was built for S of shape (batch, {config.n}, {config.K}) or "
                         f"({config.n}, {config.K}); got S of shape {tuple(S.shape)}")
    return r


def qr_positive(raw: torch.Tensor) -> torch.Tensor:
    """``Q`` of the reduced QR of ``raw`` with the signs fixed so that ``diag(R) >= 0``.

    The sign convention makes ``Q`` unique and a continuous function of ``raw``, and the
    first ``r`` columns of ``Q`` depend only on the first ``r`` columns of ``raw``
    (Gram-Schmidt is nested).

    Parameters
    ----------
    raw : torch.Tensor
        Shape ``(..., n, r)``, ``r <= n``.

    Returns
    -------
    torch.Tensor
        Same shape, orthonormal columns.

    Examples
    --------
    >>> import torch
    >>> [round(v, 6) for v in qr_positive(torch.tensor([[-3.0], [-4.0]])).ravel().tolist()]
    [-0.6, -0.8]
    """
    Q, R = torch.linalg.qr(raw, mode="reduced")
    signs = torch.sign(torch.diagonal(R, dim1=-2, dim2=-1))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return Q * signs.unsqueeze(-2)


def he_init(net: nn.Module) -> None:
    """He (Kaiming normal) weights and zero biases in every Linear layer, unit LayerNorms.

    The paper's PyTorch initialisation (He et al. 2015), shared by both architectures.
    """
    for module in net.modules():
        if isinstance(module, nn.Linear):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            module.reset_parameters()


class NLSSMLP(nn.Module):
    """Global MLP with a QR head: ``S`` -> orthonormal ``P`` (paper Sec. 4.2, Fig. 2).

    Layers ``n*K -> hidden[0] -> ... -> hidden[-1] -> n*r_max``, each hidden one
    Linear -> LayerNorm -> GELU; He (Kaiming normal) weights and zero biases. The input
    is :func:`input_features`; the last Linear produces ``r_max`` blocks of ``n`` values
    (feature ``j*n + i`` is entry ``(i, j)`` of the raw basis), so ``forward(S, r=r)``
    computes only the first ``r*n`` rows, and :func:`qr_positive` turns them into ``P``.
    Since QR is nested, that equals the first ``r`` columns of ``forward(S)`` (up to
    rounding).

    Parameters
    ----------
    config : MLPConfig
    """

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width = config.n * config.K
        for h in config.hidden:
            layers.append(nn.Linear(width, h))
            if config.layernorm:
                layers.append(nn.LayerNorm(h))
            layers.append(nn.GELU())
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, config.n * config.r_max)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise the weights: :func:`he_init`."""
        he_init(self)

    def forward(self, S: torch.Tensor, r: int | None = None) -> torch.Tensor:
        """Orthonormal basis from smoothed vectors.

        Parameters
        ----------
        S : torch.Tensor
            Smoothed vectors in node order, shape ``(batch, n, K)`` or ``(n, K)``.
        r : int, optional
            Number of columns, ``1 <= r <= r_max``; default ``r_max``.

        Returns
        -------
        torch.Tensor
            ``P`` of shape ``(batch, n, r)`` (or ``(n, r)``), orthonormal columns.

        Raises
        ------
        ValueError
            If ``S`` is not ``(..., n, K)`` or ``r`` is out of range.
        """
        cfg = self.config
        r = check_forward(cfg, S, r)
        x = self.body(input_features(S, self.head.weight.dtype))
        rows = r * cfg.n  # the first r columns are a contiguous block of output rows
        W, b = self.head.weight, self.head.bias
        if rows < W.shape[0]:  # (slicing the whole would cost a full-size copy in backward)
            W, b = W[:rows], b[:rows]
        raw = nn.functional.linear(x, W, b).reshape(-1, r, cfg.n).transpose(-1, -2)
        P = qr_positive(raw)
        return P[0] if S.ndim == 2 else P


class NLSSModel(LearnedModel):
    """A NeuraLSP model with the settings its checkpoint carries (float32 reference path).

    Parameters
    ----------
    config : MLPConfig
        Architecture.
    net : NLSSMLP, optional
        An existing network; a freshly initialised one by default.
    **settings
        :class:`~nlss_fenicsx.nn.checkpoint.ModelSettings` fields: ``loss`` (default
        ``'nlss'``), ``N``, ``pde``, ``preset``, ``sweeps``, ``omega``, ``node_order``,
        ``mesh_id``.

    Notes
    -----
    ``save``, ``load`` and the attributes are those of
    :class:`~nlss_fenicsx.nn.base.LearnedModel`.

    Examples
    --------
    >>> import numpy as np
    >>> model = NLSSModel(MLPConfig(n=9, K=4, r_max=3, hidden=(16,)), pde="diffusion")
    >>> P = model.basis(np.random.default_rng(0).standard_normal((9, 4)), 2)
    >>> P.shape, bool(np.allclose(P.T @ P, np.eye(2), atol=1e-5))
    ((9, 2), True)
    """

    ARCH = "mlp"
    DEFAULT_LOSS = "nlss"
    config_type = MLPConfig
    network_type = NLSSMLP

    def basis(self, S: np.ndarray, r: int, node_order: np.ndarray | None = None, *,
              dtype=np.float64) -> np.ndarray:
        """Coarse basis ``P`` (``n x r``, orthonormal, dof order) from ``S``: float32 torch.

        This is the network as trained (Householder QR in torch). The preconditioner runs
        the int8 backend instead (``nn.inference.load_model(path)``, default
        ``precision='int8'``), which is several times faster at batch 1 and gives a basis
        within a small principal angle of this one (calibrated at the end of training).

        Parameters
        ----------
        S : numpy.ndarray
            Smoothed vectors, shape ``(n, K)``, in dof order.
        r : int
            Rank, ``1 <= r <= r_max``; the first ``r`` columns of the nested basis.
        node_order : numpy.ndarray of int, optional
            ``node_order[i]`` is the dof of input node ``i`` (e.g. ``System.grid_order``);
            the network sees ``S[node_order]`` and ``P`` is mapped back to dof order.
            ``None``: dof order is node order.
        dtype : numpy dtype
            Of the result.

        Returns
        -------
        numpy.ndarray
            ``P`` of shape ``(n, r)``, orthonormal to float32 precision (about 1e-6).

        Raises
        ------
        ValueError
            If ``S`` is not ``(n, K)`` or not finite, ``r`` is out of range, or
            ``node_order`` is not a permutation of ``range(n)``.
        """
        S, r, order = self.check_input(S, r, node_order)
        if order is not None:
            S = S[order]
        param = next(self.net.parameters())
        with torch.inference_mode():
            S_t = torch.as_tensor(np.ascontiguousarray(S), dtype=param.dtype,
                                  device=param.device)
            P_node = self.net(S_t, r=r).cpu().numpy().astype(dtype)
        return self.to_dof_order(P_node, order)
