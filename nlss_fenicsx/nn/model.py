"""The NeuraLSP model: a global MLP with a QR head (paper Sec. 4.2), and its checkpoints.

``NLSSMLP`` is the torch module: smoothed vectors ``S`` (grid order) in, an orthonormal
coarse basis ``P`` out. ``NLSSModel`` wraps it with the metadata a checkpoint must carry
(sizes, PDE, loss, versions) and gives the NumPy entry point :meth:`NLSSModel.basis`
used by the two-grid preconditioner, in dolfinx's dof order.

Checkpoint format (one ``torch.save`` dictionary, loadable with ``weights_only=True``)::

    {"format": "nlss_fenicsx.NLSSModel", "format_version": 1,
     "state_dict": {...}, "metadata": {...}, "optimizer": dict | None, "step": int | None}
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nlss_fenicsx._atomic import atomic_path

__all__ = ["LEAN_ENERGY", "CheckpointError", "Int8MLP", "MLPConfig", "NLSSMLP", "NLSSModel",
           "features_numpy", "low_rank_first_layer", "orthonormal_rows"]

CHECKPOINT_FORMAT = "nlss_fenicsx.NLSSModel"
CHECKPOINT_VERSION = 1
_REQUIRED_KEYS = ("format", "format_version", "state_dict", "metadata")

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, of another format, or does not fit the problem."""


@dataclass(frozen=True)
class MLPConfig:
    """Architecture of :class:`NLSSMLP`.

    Parameters
    ----------
    n : int
        Number of unknowns (grid nodes), ``(N + 1)**2`` on the paper's meshes.
    K : int
        Number of smoothed vectors (columns of ``S``).
    r_max : int
        Number of basis columns the network produces; ``1 <= r_max <= K``.
    hidden : tuple of int, default (128, 256, 256, 128)
        Hidden-layer widths (the paper's PDE-solving model). ``(128,)`` is the paper's
        small captured-energy model; ``()`` gives a single linear map.
    layernorm : bool, default True
        LayerNorm after each hidden Linear (before the activation).
    activation : {'gelu', 'relu', 'tanh'}, default 'gelu'
        Hidden activation.

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
    activation: str = "gelu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        for name in ("n", "K", "r_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"MLPConfig.{name} must be a positive integer; got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.K > self.n:
            raise ValueError(
                f"MLPConfig needs K <= n (no more smoothed vectors than unknowns); "
                f"got K={self.K}, n={self.n}"
            )
        if self.r_max > self.K:
            raise ValueError(
                f"MLPConfig needs 1 <= r_max <= K (rank of S is at most K); "
                f"got r_max={self.r_max}, K={self.K}"
            )
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"MLPConfig.hidden widths must be positive; got {self.hidden}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(
                f"Unrecognized activation {self.activation!r}; expected one of "
                f"{sorted(_ACTIVATIONS)}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain-python form (``hidden`` as a list), as stored in checkpoints."""
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d


class NLSSMLP(nn.Module):
    """Global MLP with a QR head: ``S`` (grid order) -> orthonormal ``P``.

    Layers: ``n*K -> hidden[0] -> ... -> hidden[-1] -> n*r_max``, each hidden layer being
    Linear -> LayerNorm -> GELU (paper Fig. 2), then a reduced QR of the ``n x r``
    output, with the signs fixed so that ``diag(R) >= 0`` (this makes ``Q`` unique and a
    continuous function of the network output). Linear weights use He (Kaiming normal,
    ``nonlinearity='relu'``) initialisation and zero biases.

    Input scaling: inside :meth:`forward`, each column of ``S`` is scaled to unit 2-norm
    and the whole input multiplied by ``sqrt(n)``, so entries are O(1) whatever the
    scale of ``S`` (the smoother already normalises columns; redoing it here makes every
    caller see the same input). All-zero columns stay zero. ``S`` is flattened
    row-major (node-major), so input feature ``i*K + c`` is ``S[i, c]``.

    Output layout: the last Linear produces ``r_max`` blocks of ``n`` values, feature
    ``j*n + i`` being entry ``(i, j)`` of the raw basis. The first ``r`` columns are then
    the first ``r*n`` rows of the last weight matrix, so ``forward(S, r=r)`` computes only
    those. Since QR (Gram-Schmidt) is nested, the result equals the first ``r`` columns of
    ``forward(S)`` exactly (up to rounding).

    Parameters
    ----------
    config : MLPConfig
        Architecture.
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
            layers.append(_ACTIVATIONS[config.activation]())
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, config.n * config.r_max)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He initialisation of every Linear layer (the paper's PyTorch default), zero biases."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()

    def forward(self, S: torch.Tensor, r: int | None = None) -> torch.Tensor:
        """Orthonormal basis from smoothed vectors.

        Parameters
        ----------
        S : torch.Tensor
            Smoothed vectors in grid order, shape ``(batch, n, K)`` or ``(n, K)``; cast
            to the network's dtype.
        r : int, optional
            Number of columns to compute, ``1 <= r <= r_max``; default ``r_max``.

        Returns
        -------
        torch.Tensor
            ``P`` with orthonormal columns, shape ``(batch, n, r)`` (or ``(n, r)`` for
            unbatched input).
        """
        cfg = self.config
        r = cfg.r_max if r is None else int(r)
        if not 1 <= r <= cfg.r_max:
            raise ValueError(f"r must satisfy 1 <= r <= r_max={cfg.r_max}; got r={r}")
        if S.ndim not in (2, 3) or tuple(S.shape[-2:]) != (cfg.n, cfg.K):
            raise ValueError(
                f"model was built for S of shape (batch, {cfg.n}, {cfg.K}) or "
                f"({cfg.n}, {cfg.K}); got S of shape {tuple(S.shape)}"
            )
        unbatched = S.ndim == 2
        x = self.body(_features(S, cfg, self.head.weight.dtype))
        rows = r * cfg.n  # the first r columns are a contiguous block of output rows
        W, b = self.head.weight, self.head.bias
        if rows < W.shape[0]:  # (a slice of the whole would cost a full-size copy in backward)
            W, b = W[:rows], b[:rows]
        raw = nn.functional.linear(x, W, b)
        P = _orthonormal_columns(raw, r, cfg.n)
        return P[0] if unbatched else P


def _features(S: torch.Tensor, cfg: MLPConfig, dtype) -> torch.Tensor:
    """The network input: columns scaled to norm sqrt(n), flattened node-major."""
    if S.ndim == 2:
        S = S.unsqueeze(0)
    S = S.to(dtype)  # e.g. float64 data into a float32 network
    norms = torch.linalg.vector_norm(S, dim=-2, keepdim=True)
    norms = torch.where(norms > 0, norms, torch.ones_like(norms))
    return (S * (math.sqrt(cfg.n) / norms)).reshape(S.shape[0], cfg.n * cfg.K)


def _orthonormal_columns(raw: torch.Tensor, r: int, n: int) -> torch.Tensor:
    """Reshape the head's output to ``(batch, n, r)`` and orthonormalise by QR, with the
    signs fixed so that ``diag(R) > 0`` (unique and nested in r)."""
    raw = raw.reshape(raw.shape[0], r, n).transpose(-1, -2)  # (batch, n, r)
    Q, R = torch.linalg.qr(raw, mode="reduced")
    signs = torch.sign(torch.diagonal(R, dim1=-2, dim2=-1))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return Q * signs.unsqueeze(-2)


# Cholesky QR: one pass loses orthogonality like cond(X)^2 * eps, a second pass brings it
# back to eps while cond(X) < eps^(-1/2); beyond that only Householder QR is safe. The
# thresholds apply to LAPACK's 1-norm estimate of cond(L) = cond(X), which overestimates
# the 2-norm condition number by a factor of about 5-10 at r = 48 (measured).
_CHOLQR_ONE_PASS = 50.0  # estimate below this: one pass (float32: error about 1e-6)
_CHOLQR_TWO_PASS = 5e3  # below this: two passes; above: Householder


def orthonormal_rows(Xt: np.ndarray) -> np.ndarray:
    """Orthonormalise the rows of ``Xt`` (``r x n``): ``Q^T`` of the QR ``X = Q R`` with
    ``diag(R) > 0``, the same basis as :func:`_orthonormal_columns` (up to rounding).

    Cholesky QR (``G = X^T X = L L^T``, ``Q^T = L^{-1} X^T``): two BLAS-3 products of
    ``n r^2`` instead of Householder's reflector sweeps, about 3x faster at ``n = 4225,
    r = 48``. Its orthogonality error grows like ``cond(X)^2`` times the unit roundoff,
    so the diagonal of ``L`` is watched: a second pass is taken when ``X`` is not well
    conditioned, and Householder QR when it is badly conditioned or Cholesky fails
    (``cond(X)`` from LAPACK's ``trcon`` estimate on ``L``, O(r^2)). A trained network's
    output is well conditioned (``cond(X)`` about 2 at ``N = 64``), so one pass is the
    rule.

    Parameters
    ----------
    Xt : numpy.ndarray, shape (r, n), float32 or float64
        Rows to orthonormalise, ``r <= n``; overwritten.

    Returns
    -------
    numpy.ndarray, shape (r, n), same dtype
        Rows orthonormal to the dtype's precision.
    """
    import scipy.linalg as sla

    Xt = np.ascontiguousarray(Xt)
    for attempt in range(2):
        G = Xt @ Xt.T
        try:
            L = np.linalg.cholesky(G)
        except np.linalg.LinAlgError:
            break
        if not (np.all(np.isfinite(L)) and np.diagonal(L).min() > 0):
            break
        trcon = sla.get_lapack_funcs("trcon", (L,))
        rcond, info = trcon(L, norm="1", uplo="L")
        ratio = 1.0 / rcond if info == 0 and rcond > 0 else np.inf  # estimate of cond(X)
        if ratio > _CHOLQR_TWO_PASS:
            break
        # Xt is C-contiguous (r x n), i.e. X (n x r) in Fortran order: X <- X L^{-T}
        # in place, with no copy.
        trsm = sla.get_blas_funcs("trsm", (L, Xt))
        Xt = trsm(1.0, L, Xt.T, side=1, lower=1, trans_a=1, overwrite_b=1).T
        if attempt == 0 and ratio <= _CHOLQR_ONE_PASS:
            return Xt
        if attempt == 1:
            return Xt
    # Householder fallback (ill-conditioned or numerically rank-deficient X).
    Q, R = np.linalg.qr(Xt.T)
    signs = np.sign(np.diagonal(R)).astype(Q.dtype)
    signs[signs == 0] = 1
    return np.ascontiguousarray((Q * signs).T)


def features_numpy(S: np.ndarray, n: int, grid_order: np.ndarray | None = None,
                   dtype=np.float32) -> np.ndarray:
    """:func:`_features` for one ``S`` in NumPy, with the permutation to grid order fused
    in: ``S[grid_order]`` with columns scaled to norm ``sqrt(n)``, flattened node-major,
    shape ``(1, n*K)``. The norms are taken on ``S`` as given (a permutation does not
    change them), so the gather is the only copy."""
    S = np.asarray(S)
    norms = np.sqrt(np.einsum("ij,ij->j", S, S))
    norms[norms == 0] = 1.0
    X = S.astype(dtype) if grid_order is None else np.take(S, grid_order, axis=0)
    X = X.astype(dtype, copy=False)  # (one copy either way)
    X *= (math.sqrt(n) / norms).astype(dtype)
    return X.reshape(1, -1)


def _is_permutation(p: np.ndarray, n: int) -> bool:
    """Whether ``p`` is an integer array holding each of ``0..n-1`` once (O(n), no sort)."""
    if p.shape != (n,) or not np.issubdtype(p.dtype, np.integer):
        return False
    if n == 0:
        return True
    if p.min() < 0 or p.max() >= n:
        return False
    seen = np.zeros(n, dtype=bool)
    seen[p] = True
    return bool(seen.all())


@contextlib.contextmanager
def _quiet_quantization():
    """torch.ao.quantization announces its move to torchao; the API still works here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantiz.*")
        yield


# The lean first layer (Int8MLP.with_lean_first_layer, accepted by NLSSModel.int8):
# energies to try, smallest rank first; the largest principal angle (degrees) to the full
# int8 basis allowed on the calibration instances; how many instances, and their stream.
LEAN_ENERGY = 0.9
LEAN_CANDIDATES = (0.8, 0.9)
LEAN_HEAD_DIRECTIONS = (8, 16)
LEAN_MAX_ANGLE = 1.5
LEAN_CALIBRATION_FIT = 16
LEAN_CALIBRATION = 4
LEAN_CALIBRATION_SEED = 424242


def low_rank_first_layer(lin: nn.Linear, energy: float = LEAN_ENERGY, *,
                         eig: tuple[torch.Tensor, torch.Tensor] | None = None
                         ) -> nn.Sequential | None:
    """The rank-``k`` truncated SVD of ``lin`` as two Linear maps, or ``None``.

    ``W = U S V^T`` (``h x m``, ``h`` small): ``W_k = U_k U_k^T W`` is the best rank-``k``
    approximation, applied as ``down = U_k^T W`` (``k x m``, no bias) then ``up = U_k``
    (``h x k``, with ``lin``'s bias). ``k`` is the smallest rank keeping ``energy`` of
    ``||W||_F^2``; ``None`` when that is more than half of ``h`` (too little to gain). The
    factors come from the eigendecomposition of the ``h x h`` Gram matrix ``W W^T``
    (:func:`first_layer_eig`; pass it as ``eig`` to reuse it).
    """
    with torch.no_grad():
        W = lin.weight.detach().float()
        h, m = W.shape
        lam, U = first_layer_eig(lin) if eig is None else eig
        if not lam.sum() > 0:
            return None
        frac = torch.cumsum(lam, 0) / lam.sum()
        k = min(h, int(torch.searchsorted(frac, torch.tensor(float(energy), dtype=frac.dtype)))
                + 1)
        if 2 * k > h:
            return None
        Uk = U[:, :k].float()
        down, up = nn.Linear(m, k, bias=False), nn.Linear(k, h)
        down.weight.copy_(Uk.T @ W)
        up.weight.copy_(Uk)
        up.bias.copy_(lin.bias.detach().float())
    return nn.Sequential(down, up)


def first_layer_eig(lin: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending, float64) and eigenvectors of ``W W^T`` for ``lin.weight``."""
    with torch.no_grad():
        W = lin.weight.detach().float()
        lam, U = torch.linalg.eigh((W @ W.T).double())
        return lam.flip(0).clamp(min=0), U.flip(1)


# Linear layers with fewer weights than this stay float32 in the int8 copy: at N=64 the
# hidden 128 x 128 layers hold 64 KB each, and quantising their input on every call costs
# more than reading them (about 0.2 ms per solve over the small layers, measured).
INT8_MIN_WEIGHTS = 1 << 20


def _large_linears(module: nn.Module) -> set[str]:
    """Names of the Linear submodules of ``module`` worth quantising (``INT8_MIN_WEIGHTS``)."""
    return {name for name, m in module.named_modules()
            if isinstance(m, nn.Linear) and m.weight.numel() >= INT8_MIN_WEIGHTS}


class _NumpyTail:
    """The small float32 layers after the int8 ones, evaluated in NumPy.

    At batch 1 each of these layers is a few thousand multiply-adds, so their cost is the
    per-operation dispatch; after the smoothing and PCG code has run (instruction caches
    cold) PyTorch's dispatch costs tens of microseconds per operation, NumPy's a few (at
    N=64: 0.17 ms against 0.44 ms for the 11 layers, measured in the preconditioner). Same
    arithmetic as the modules (float32; GELU by ``erf``), so the outputs agree to float32
    rounding. :meth:`split` returns ``None`` for a module it does not know, and the caller
    keeps PyTorch for everything.
    """

    def __init__(self, steps: list[tuple]):
        self.steps = steps

    @classmethod
    def split(cls, body: nn.Module) -> tuple[nn.Module, _NumpyTail | None]:
        """``(prefix, tail)``: ``prefix`` (PyTorch) runs the modules up to the last quantised
        one, ``tail`` the rest; ``(body, None)`` where a module is not supported."""
        flat: list[nn.Module] = []

        def walk(m):
            if isinstance(m, nn.Sequential):
                for c in m:
                    walk(c)
            else:
                flat.append(m)

        walk(body)
        last = max((i for i, m in enumerate(flat) if type(m).__module__.startswith(
            "torch.ao.nn.quantized")), default=-1)
        steps: list[tuple] = []
        with torch.no_grad():
            for m in flat[last + 1:]:
                if type(m) is nn.Linear:
                    b = None if m.bias is None else m.bias.detach().float().numpy().copy()
                    steps.append(("linear", m.weight.detach().float().numpy().T.copy(), b))
                elif type(m) is nn.LayerNorm and len(m.normalized_shape) == 1:
                    w = None if m.weight is None else m.weight.detach().float().numpy().copy()
                    b = None if m.bias is None else m.bias.detach().float().numpy().copy()
                    steps.append(("layernorm", w, b, np.float32(m.eps)))
                elif type(m) is nn.GELU and m.approximate == "none":
                    steps.append(("gelu",))
                elif type(m) is nn.ReLU:
                    steps.append(("relu",))
                elif type(m) is nn.Tanh:
                    steps.append(("tanh",))
                else:
                    return body, None
        return nn.Sequential(*flat[:last + 1]), cls(steps)

    def __call__(self, z: np.ndarray) -> np.ndarray:
        """Apply the layers to ``z`` (``batch x width``, float32)."""
        from scipy.special import erf

        for step in self.steps:
            kind = step[0]
            if kind == "linear":
                z = z @ step[1]
                if step[2] is not None:
                    z += step[2]
            elif kind == "layernorm":
                d = z - z.mean(axis=-1, keepdims=True)
                var = np.einsum("ij,ij->i", d, d)[:, None] / np.float32(d.shape[-1])
                z = d / np.sqrt(var + step[3])
                if step[1] is not None:
                    z *= step[1]
                if step[2] is not None:
                    z += step[2]
            elif kind == "gelu":
                z = np.float32(0.5) * z * (np.float32(1.0) + erf(z * _SQRT_HALF))
            elif kind == "relu":
                z = np.maximum(z, np.float32(0.0))
            else:
                z = np.tanh(z)
        return z


_SQRT_HALF = np.float32(math.sqrt(0.5))


class Int8MLP:
    """Inference-only copy of an :class:`NLSSMLP` with int8 weights (CPU).

    A forward pass at batch 1 is a matrix-vector product bound by reading the weights (at
    N=64: 39M in the first layer, 26M in the head rows for r=48), so bytes are time. Every
    large Linear layer (``INT8_MIN_WEIGHTS``) is converted by PyTorch's dynamic
    quantisation (int8 weights with one scale per layer, activations quantised on the fly,
    fbgemm kernels; the small hidden layers stay float32); the head is quantised per
    requested rank ``r`` (its first ``r*n`` rows) and cached. The output is
    orthonormalised by Cholesky QR (:func:`orthonormal_rows`), which gives the same basis
    as the float32 network's Householder QR up to rounding at a third of the cost, so
    ``P`` stays orthonormal; only its span moves, by the small angles the tests bound.

    :meth:`with_lean_first_layer` gives a copy whose first layer is its truncated SVD
    (:func:`low_rank_first_layer`); :meth:`NLSSModel.int8` uses it only when a calibration
    on the model's own training distribution shows that the basis does not move.

    Parameters
    ----------
    net : NLSSMLP

    Attributes
    ----------
    first_layer_rank : int or None
        Rank of a lean first layer (``None``: the full layer).
    calibration : dict or None
        How the lean copy was accepted (set by :meth:`NLSSModel.int8`).
    """

    def __init__(self, net: NLSSMLP):
        import copy

        from torch.ao.quantization import quantize_dynamic

        self.config = net.config
        src = copy.deepcopy(net).float().cpu().eval()
        self._head_w = src.head.weight.detach()
        self._head_b = src.head.bias.detach()
        self._first = src.body[0] if len(src.body) and isinstance(src.body[0], nn.Linear) \
            else None
        self._first_eig = None
        self._affine = None
        self.first_layer_rank = None
        self.head_directions = None
        self.calibration = None
        with _quiet_quantization():
            self.body = quantize_dynamic(src.body, _large_linears(src.body), dtype=torch.qint8)
        self._split: tuple[nn.Module, _NumpyTail | None] | None = None  # built on first use
        self._heads: dict[int, nn.Module] = {}

    def _head(self, r: int) -> nn.Module:
        from torch.ao.quantization import quantize_dynamic

        if r not in self._heads:
            rows = r * self.config.n
            lin = nn.Linear(self._head_w.shape[1], rows)
            with torch.no_grad():
                lin.weight.copy_(self._head_w[:rows])
                lin.bias.copy_(self._head_b[:rows])
            with _quiet_quantization():
                self._heads[r] = quantize_dynamic(nn.Sequential(lin), {nn.Linear},
                                                  dtype=torch.qint8)
        return self._heads[r]

    def with_lean_first_layer(self, energy: float = LEAN_ENERGY) -> Int8MLP | None:
        """A copy sharing this one's quantised layers and head, with the first layer
        replaced by its rank-``k`` truncated SVD keeping ``energy`` of its Frobenius energy
        (int8 where a factor is large, ``INT8_MIN_WEIGHTS``); ``None`` if that saves too little (see
        :func:`low_rank_first_layer`)."""
        import copy

        from torch.ao.quantization import quantize_dynamic

        if self._first is None:
            return None
        if self._first_eig is None:
            self._first_eig = first_layer_eig(self._first)
        lean = low_rank_first_layer(self._first, energy, eig=self._first_eig)
        if lean is None:
            return None
        with _quiet_quantization():
            first = quantize_dynamic(lean, _large_linears(lean), dtype=torch.qint8)
        out = copy.copy(self)  # shares the head weights and their per-rank cache
        out.body = nn.Sequential(first, *list(self.body)[1:])
        out._split = None
        out.first_layer_rank = lean[0].out_features
        return out

    def __call__(self, S: torch.Tensor, r: int | None = None) -> torch.Tensor:
        cfg = self.config
        r = self._check_r(r)
        if S.ndim not in (2, 3) or tuple(S.shape[-2:]) != (cfg.n, cfg.K):
            raise ValueError(f"model was built for S of shape (batch, {cfg.n}, {cfg.K}) or "
                             f"({cfg.n}, {cfg.K}); got S of shape {tuple(S.shape)}")
        with torch.no_grad():
            x = _features(S.detach().cpu(), cfg, torch.float32)
        rows = [orthonormal_rows(self.raw(x[i:i + 1], r).reshape(r, cfg.n))
                for i in range(x.shape[0])]
        P = torch.from_numpy(np.stack(rows)).transpose(-1, -2)  # (batch, n, r)
        return P[0] if S.ndim == 2 else P

    def _check_r(self, r: int | None) -> int:
        r = self.config.r_max if r is None else int(r)
        if not 1 <= r <= self.config.r_max:
            raise ValueError(f"r must satisfy 1 <= r <= r_max={self.config.r_max}; got r={r}")
        return r

    def raw(self, x: torch.Tensor, r: int) -> np.ndarray:
        """The head's output before orthonormalisation, ``(1, r*n)`` float32 (NumPy), from
        network input features ``x`` of shape ``(1, n*K)`` (:func:`_features`)."""
        r = self._check_r(r)
        y = self._hidden(x)
        if self._affine is None:
            with torch.no_grad(), _quiet_quantization():
                return self._head(r)(torch.from_numpy(y)).numpy()
        mean, Q, base, Dt = self._affine
        rows = r * self.config.n
        out = ((y - mean) @ Q) @ Dt[:, :rows]
        out += base[:rows]
        return out

    def _hidden(self, x: torch.Tensor) -> np.ndarray:
        """The last hidden layer (the head's input) for features ``x``, ``(batch, h)``
        float32: the int8 layers in PyTorch, the small ones after them in NumPy."""
        if self._split is None:
            self._split = _NumpyTail.split(self.body)
        prefix, tail = self._split
        with torch.no_grad(), _quiet_quantization():
            z = prefix(x)
        return tail(z.numpy()) if tail is not None else z.numpy()

    def basis(self, S: np.ndarray, r: int, grid_order: np.ndarray | None = None,
              dtype=np.float64) -> np.ndarray:
        """``P`` (``n x r``, dof order, Fortran layout as PETSc's dense storage) from ``S``
        in dof order: input scaling in NumPy with the permutation to grid order fused in,
        the int8 products, Cholesky QR on the ``r x n`` output, and the permutation back.
        Arguments are as in :meth:`NLSSModel.basis` (checked there); ``dtype=np.float32``
        returns the float32 result as computed (no conversion pass)."""
        n = self.config.n
        x = torch.from_numpy(features_numpy(S, n, grid_order))
        Pt = orthonormal_rows(self.raw(x, r).reshape(r, n))
        if grid_order is not None:  # P[grid_order] = Pt.T, as a gather of columns
            inverse = np.empty_like(grid_order)
            inverse[grid_order] = np.arange(n)
            Pt = np.take(Pt, inverse, axis=1)
        return Pt.T.astype(dtype, copy=False)

    def head_input(self, S: torch.Tensor) -> torch.Tensor:
        """The last hidden layer ``y`` (the head's input) for one ``S`` (grid order), ``(1, h)``."""
        with torch.no_grad():
            x = _features(S.detach().cpu(), self.config, torch.float32)
        return torch.from_numpy(self._hidden(x))

    def with_affine_head(self, mean: torch.Tensor, directions: torch.Tensor) -> Int8MLP:
        """A copy whose head sees its input projected on ``mean + span(directions)``.

        With ``Q = directions`` (``h x q``, orthonormal columns) the head becomes
        ``W (mean + Q Q^T (y - mean)) + b = base + D c`` with ``base = W mean + b``,
        ``D = W Q`` (float32, stored as ``D^T``, ``q x r_max*n``) and
        ``c = Q^T (y - mean)``: ``q + 1`` numbers per output instead of ``h``. Exact when
        ``y`` lies in that affine subspace; the calibration in :meth:`NLSSModel.int8`
        measures how far the basis moves when it does not.
        """
        import copy

        with torch.no_grad():
            W, b = self._head_w.float(), self._head_b.float()
            mean = mean.detach().float().reshape(-1)
            Q = directions.detach().float()
            base = W @ mean + b
            Dt = (W @ Q).T.contiguous()  # q x (r_max*n): the first r*n columns are contiguous rows
        out = copy.copy(self)
        out._affine = tuple(t.numpy() for t in (mean, Q, base, Dt))  # applied in NumPy (raw)
        out.head_directions = int(Q.shape[1])
        return out


def _plain(obj: Any, where: str) -> Any:
    """Convert metadata to types ``torch.load(weights_only=True)`` accepts, or raise."""
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
        return type(obj)(_plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if not isinstance(key, str):
                raise TypeError(f"checkpoint metadata keys must be str; got {key!r} in {where}")
            out[key] = _plain(value, f"{where}[{key!r}]")
        return out
    raise TypeError(
        f"checkpoint metadata {where} has unsupported type {type(obj).__name__}; use plain "
        f"python values (None, bool, int, float, str, list, tuple, dict) or tensors"
    )


class NLSSModel:
    """A trained (or trainable) NeuraLSP model with the metadata its checkpoint carries.

    Parameters
    ----------
    config : MLPConfig
        Architecture (sizes ``n``, ``K``, ``r_max``).
    N : int, optional
        Mesh resolution the model was trained on (``n = (N + 1)**2``).
    pde : str, optional
        PDE family, e.g. ``'diffusion'``.
    preset : str, optional
        Coefficient preset of the family (e.g. ``'paper'`` or ``'code'``).
    loss : str, optional
        Training loss, e.g. ``'nlss'`` or ``'subspace'``.
    extra : dict, optional
        Any further plain-python metadata (seeds, steps, timings).
    net : NLSSMLP, optional
        An existing network; a freshly initialised one by default.

    Attributes
    ----------
    net : NLSSMLP
        The torch module (train it directly).
    metadata : dict
        ``n, K, r_max, N, pde, preset, loss, version, torch_version, config, extra``.
    path : pathlib.Path or None
        File it was loaded from, if any.
    step : int or None
        Training step stored in the checkpoint it was loaded from.
    optimizer_state : dict or None
        Optimizer ``state_dict`` stored in that checkpoint (to resume training).

    Examples
    --------
    >>> import numpy as np
    >>> model = NLSSModel(MLPConfig(n=9, K=4, r_max=3, hidden=(16,)), pde="diffusion")
    >>> P = model.basis(np.random.default_rng(0).standard_normal((9, 4)), r=2)
    >>> P.shape, bool(np.allclose(P.T @ P, np.eye(2), atol=1e-5))
    ((9, 2), True)
    """

    def __init__(
        self,
        config: MLPConfig,
        *,
        N: int | None = None,
        pde: str | None = None,
        preset: str | None = None,
        loss: str | None = None,
        extra: dict[str, Any] | None = None,
        net: NLSSMLP | None = None,
    ) -> None:
        from nlss_fenicsx import __version__

        if net is None:
            net = NLSSMLP(config)
        elif net.config != config:
            raise ValueError(f"net was built for {net.config}, which differs from {config}")
        self.config = config
        self.net = net
        self.metadata: dict[str, Any] = _plain(
            {
                "n": config.n,
                "K": config.K,
                "r_max": config.r_max,
                "N": N,
                "pde": pde,
                "preset": preset,
                "loss": loss,
                "version": __version__,
                "torch_version": torch.__version__,
                "config": config.to_dict(),
                "extra": dict(extra or {}),
            },
            "metadata",
        )
        self._int8: Int8MLP | None = None
        self.path: Path | None = None
        self.step: int | None = None
        self.optimizer_state: dict[str, Any] | None = None

    def __repr__(self) -> str:
        m = self.metadata
        return (
            f"NLSSModel(n={m['n']}, K={m['K']}, r_max={m['r_max']}, pde={m['pde']!r}, "
            f"loss={m['loss']!r}, parameters={self.num_parameters()})"
        )

    # ---------------------------------------------------------------- inference
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
        """Number of trainable scalars in the network."""
        return sum(p.numel() for p in self.net.parameters())

    def to(self, device: torch.device | str) -> NLSSModel:
        """Move the network to ``device`` (in place) and return ``self``."""
        self.net.to(device)
        return self

    def int8(self) -> Int8MLP | None:
        """The int8 inference copy of the network (built once, then reused), or ``None``
        (with one warning) where this PyTorch build has no dynamic quantisation.

        When the checkpoint records its training distribution (``train_config``), the
        copy is made leaner where that provably does not matter: ``LEAN_CALIBRATION_FIT``
        fresh instances of the distribution fit the mean and principal directions of the
        head's input, ``LEAN_CALIBRATION`` more are held out, and the candidates, fewest
        weight bytes first, are a truncated first layer (:meth:`Int8MLP.with_lean_first_layer`,
        ``LEAN_CANDIDATES`` energies) with an affine head on ``LEAN_HEAD_DIRECTIONS``
        directions (:meth:`Int8MLP.with_affine_head`), or either alone; the first whose
        basis stays within ``LEAN_MAX_ANGLE`` degrees of the float32 network's at ranks
        ``r_max/4``, ``r_max/2`` and ``r_max`` on every held-out instance is kept. The
        N=64 models keep a first layer of rank 33 / 32 / 31 of 128 with an 8-direction head
        (diffusion / anisotropic / screened Poisson: 1.07 / 1.34 / 1.29 degrees, identical
        PCG iterations; `benchmarks/bench_nlss.py` reports them). A small model trained
        briefly keeps its full int8 network (its int8 head alone turns the basis by
        about 1 degree, and a truncated first layer by tens). The calibration runs once per
        loaded model (about 2 s at N=64); ``int8().calibration`` says what was decided.
        """
        if self._int8 is None:
            try:
                full = Int8MLP(self.net)
            except (ImportError, AttributeError, RuntimeError, NotImplementedError) as err:
                warnings.warn(f"int8 inference unavailable ({err}); using float32",
                              RuntimeWarning, stacklevel=2)
                self._int8 = False
            else:
                self._int8 = self._lean_if_harmless(full)
        return self._int8 or None

    def _calibration_inputs(self) -> list[np.ndarray]:
        """``S`` (grid order) of fresh instances of the training distribution stored in the
        checkpoint (``LEAN_CALIBRATION_FIT`` to fit, then ``LEAN_CALIBRATION`` held out),
        or ``[]`` when it records none (or one that does not fit)."""
        tc = (self.metadata.get("extra") or {}).get("train_config")
        if not isinstance(tc, dict):
            return []
        from nlss_fenicsx.nn.data import DataConfig, instance, instance_seed

        try:
            cfg = DataConfig(pde=tc["pde"], N=int(tc["N"]), K=int(tc["K"]),
                             sweeps=int(tc.get("sweeps", 10)), omega=float(tc.get("omega", 0.66)),
                             preset=tc.get("preset", "default"))
        except (KeyError, TypeError, ValueError):
            return []
        if cfg.n != self.config.n or cfg.K != self.config.K:
            return []
        return [instance(cfg, instance_seed(LEAN_CALIBRATION_SEED, i))[1]
                for i in range(LEAN_CALIBRATION_FIT + LEAN_CALIBRATION)]

    def _lean_if_harmless(self, full: Int8MLP) -> Int8MLP:
        """The leanest copy whose basis stays within ``LEAN_MAX_ANGLE`` of the float32
        network's on the held-out calibration instances (see :meth:`int8`), else ``full``."""
        import scipy.linalg as sla

        inputs = self._calibration_inputs()
        if not inputs:
            full.calibration = {"lean": False, "why": "no training distribution recorded"}
            return full
        fit = [torch.as_tensor(S) for S in inputs[:LEAN_CALIBRATION_FIT]]
        held = [torch.as_tensor(S) for S in inputs[LEAN_CALIBRATION_FIT:]]
        r_max = self.config.r_max
        ranks = sorted({max(1, r_max // 4), max(1, r_max // 2), r_max})
        net = self.net
        if any(p.is_cuda or p.dtype != torch.float32 for p in net.parameters()):
            import copy

            net = copy.deepcopy(net).float().cpu()
        with torch.no_grad():  # the reference: the trained float32 network itself
            ref = [[net(x.float(), r=r).double().numpy() for r in ranks] for x in held]

        def worst_angle(cand: Int8MLP) -> float:
            return max(float(np.degrees(sla.subspace_angles(P, cand(x, r=r).double().numpy())
                                        .max()))
                       for x, Ps in zip(held, ref, strict=True)
                       for r, P in zip(ranks, Ps, strict=True))

        firsts = [(f"first layer at {e:g} energy", full.with_lean_first_layer(e))
                  for e in LEAN_CANDIDATES]
        firsts = [(k, m) for k, m in firsts if m is not None] + [("full first layer", full)]
        candidates = []  # fewest bytes first: affine heads, then the int8 head
        for key, first in firsts:
            if LEAN_HEAD_DIRECTIONS:
                Y = torch.cat([first.head_input(x) for x in fit]).double()
                mean = Y.mean(0)
                Vt = torch.linalg.svd(Y - mean, full_matrices=False)[2]
                candidates += [(f"{key}, head on {q} directions", first, mean, Vt[:q].T)
                               for q in LEAN_HEAD_DIRECTIONS if q <= Vt.shape[0]]
        candidates += [(key, first, None, None) for key, first in firsts if first is not full]
        tried = {}
        chosen = full
        for key, first, mean, Q in candidates:
            cand = first if Q is None else first.with_affine_head(mean, Q)
            worst = worst_angle(cand)
            tried[key] = {"first_layer_rank": cand.first_layer_rank,
                          "head_directions": cand.head_directions, "max_angle_deg": worst}
            if worst <= LEAN_MAX_ANGLE:
                cand.calibration = {"lean": True, "choice": key,
                                    "first_layer_rank": cand.first_layer_rank,
                                    "head_directions": cand.head_directions,
                                    "max_angle_deg": worst, "fit": len(fit),
                                    "held_out": len(held), "ranks": ranks, "tried": tried}
                chosen = cand
                break
        else:
            why = (f"no candidate within {LEAN_MAX_ANGLE} degrees" if tried else
                   "nothing to gain")
            full.calibration = {"lean": False, "why": why, "tried": tried}
        full._heads.clear()  # the calibration's heads (shared); the solver's rank is built on use
        return chosen

    def basis(self, S: np.ndarray, r: int, grid_order: np.ndarray | None = None,
              precision: str = "float32", dtype=np.float64) -> np.ndarray:
        """Coarse basis ``P`` (``n x r``, orthonormal, float64, dof order) from ``S``.

        Parameters
        ----------
        S : numpy.ndarray
            Smoothed vectors, shape ``(n, K)``, in dof order.
        r : int
            Rank, ``1 <= r <= r_max``; the first ``r`` columns of the nested basis.
        grid_order : numpy.ndarray of int, optional
            ``grid_order[g]`` is the dof of grid node ``g`` (``pdes.System.grid_order``).
            The network sees ``S[grid_order]``; the result is mapped back to dof order.
            ``None`` means dof order is grid order.
        precision : {'float32', 'int8'}
            ``'int8'`` runs the dynamically quantised copy (:meth:`int8`, CPU; made leaner
            per model when a calibration shows the basis does not move): at N=64 about
            four times fewer weight bytes with the full network, fifteen times fewer lean, and
            8-14x faster at batch 1 (cold and warm caches); its input scaling, permutation
            and small hidden layers run in NumPy and its output is orthonormalised by
            Cholesky QR (:func:`orthonormal_rows`).
            ``'float32'`` is the reference path (the torch module as trained, Householder
            QR).
        dtype : numpy dtype, optional
            Of the result; ``np.float32`` skips the final conversion (the preconditioner
            asks for it and converts while copying into PETSc's dense matrix).

        Returns
        -------
        numpy.ndarray
            ``P`` of shape ``(n, r)``, ``dtype`` (default float64). Orthonormal to the
            network's precision (float32: about 1e-6); the two-grid method only needs its
            span.

        Raises
        ------
        ValueError
            If ``S`` does not have the model's shape ``(n, K)``, ``r`` is out of range, or
            ``grid_order`` is not a permutation of ``range(n)``.
        """
        S = np.asarray(S)
        cfg = self.config
        if S.ndim != 2 or S.shape != (cfg.n, cfg.K):
            raise ValueError(
                f"model was trained for n={cfg.n}, K={cfg.K}; got S of shape {S.shape}"
            )
        if isinstance(r, bool) or not isinstance(r, int | np.integer) or not 1 <= r <= cfg.r_max:
            raise ValueError(f"r must satisfy 1 <= r <= r_max={cfg.r_max}; got r={r!r}")
        if grid_order is not None:
            grid_order = np.asarray(grid_order)
            if not _is_permutation(grid_order, cfg.n):
                raise ValueError(
                    f"grid_order must be a permutation of range({cfg.n}); got an array of "
                    f"shape {grid_order.shape} and dtype {grid_order.dtype}"
                )
        if precision not in ("float32", "int8"):
            raise ValueError(f"Unrecognized precision {precision!r}; expected 'float32' or "
                             "'int8'")
        int8 = self.int8() if precision == "int8" else None
        if int8 is not None:
            return int8.basis(S, int(r), grid_order, dtype=dtype)
        if grid_order is not None:
            S = S[grid_order]
        param = next(self.net.parameters())
        with torch.inference_mode():
            S_t = torch.as_tensor(np.ascontiguousarray(S), dtype=param.dtype,
                                  device=param.device)
            P_grid = self.net(S_t, r=int(r)).cpu().numpy().astype(dtype)
        if grid_order is None:
            return P_grid
        P = np.empty_like(P_grid)
        P[grid_order] = P_grid
        return P

    def check_compatible(
        self, *, n: int | None = None, K: int | None = None, pde: str | None = None
    ) -> None:
        """Raise :class:`CheckpointError` if the model does not fit the problem.

        Parameters
        ----------
        n, K : int, optional
            The problem's number of unknowns and of smoothed vectors.
        pde : str, optional
            The problem's PDE family; checked only if the model records one.

        Raises
        ------
        CheckpointError
            Naming every mismatch, with the model's and the problem's values.
        """
        mine = {"n": self.config.n, "K": self.config.K, "pde": self.metadata.get("pde")}
        given = {"n": n, "K": K, "pde": pde}
        bad = [
            k for k in mine if given[k] is not None and mine[k] is not None and mine[k] != given[k]
        ]
        if bad:
            where = f"checkpoint {self.path}" if self.path is not None else "model"
            have = ", ".join(f"{k}={mine[k]!r}" for k in bad)
            want = ", ".join(f"{k}={given[k]!r}" for k in bad)
            raise CheckpointError(f"{where} was trained for {have}; the problem has {want}")

    # ---------------------------------------------------------------- checkpoints
    def save(
        self,
        path: str | os.PathLike,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        step: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Path:
        """Write a checkpoint atomically (temporary file in the same folder, then rename).

        Parameters
        ----------
        path : str or os.PathLike
            Destination; its folder must exist.
        optimizer : torch.optim.Optimizer, optional
            Its ``state_dict`` is stored so that training can resume.
        step : int, optional
            Training step to record.
        extra : dict, optional
            Merged into ``metadata['extra']`` of the written file (``self`` is unchanged).

        Returns
        -------
        pathlib.Path
            The path written.
        """
        return write_checkpoint(path, CHECKPOINT_FORMAT, self, optimizer=optimizer, step=step,
                                extra=extra)

    @classmethod
    def load(cls, path: str | os.PathLike, *, map_location: Any = "cpu") -> NLSSModel:
        """Read a checkpoint written by :meth:`save`.

        Parameters
        ----------
        path : str or os.PathLike
            Checkpoint file.
        map_location : str or torch.device, default 'cpu'
            Passed to :func:`torch.load`.

        Returns
        -------
        NLSSModel
            With ``path``, ``step`` and ``optimizer_state`` set from the file.

        Raises
        ------
        CheckpointError
            If the file is missing, truncated or corrupt, of another format or format
            version, lacks required entries, or its weights do not fit its config.
        """
        path = Path(path)
        payload = read_checkpoint(path, CHECKPOINT_FORMAT, map_location=map_location)
        metadata = payload["metadata"]
        try:
            config = MLPConfig(**metadata["config"])
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path} has an invalid config: {exc}") from exc
        model = cls(
            config,
            N=metadata.get("N"),
            pde=metadata.get("pde"),
            preset=metadata.get("preset"),
            loss=metadata.get("loss"),
            extra=metadata.get("extra"),
        )
        return finish_load(model, payload, path, map_location)


def write_checkpoint(path: str | os.PathLike, fmt: str, model, *, optimizer=None,
                     step: int | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Atomically write ``model`` (``.net``, ``.metadata``) as a checkpoint of format ``fmt``:
    a temporary file in the same folder, fsync, then rename. ``extra`` is merged into
    ``metadata['extra']`` of the file only."""
    path = Path(path)
    metadata = dict(model.metadata)
    metadata["extra"] = {**metadata.get("extra", {}), **_plain(extra or {}, "extra")}
    payload = {
        "format": fmt,
        "format_version": CHECKPOINT_VERSION,
        "state_dict": model.net.state_dict(),
        "metadata": _plain(metadata, "metadata"),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "step": None if step is None else int(step),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def read_checkpoint(path: Path, fmt: str, *, map_location: Any = "cpu") -> dict:
    """The payload of a checkpoint of format ``fmt``, or one clear :class:`CheckpointError`
    (missing, truncated or corrupt file, another format or version, missing entries)."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (or is not a file)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        tag = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        kind = "GNN" if fmt.endswith("GNNModel") else "model"
        raise CheckpointError(f"checkpoint {path} is not an nlss_fenicsx {kind} checkpoint: "
                              f"expected format {fmt!r}, got {tag!r}")
    missing = [k for k in _REQUIRED_KEYS if k not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks required entries {missing}")
    version = payload["format_version"]
    if not isinstance(version, int) or not 1 <= version <= CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {version!r}; this "
                              f"nlss_fenicsx reads versions 1..{CHECKPOINT_VERSION}")
    metadata = payload["metadata"]
    if not isinstance(metadata, dict) or not isinstance(metadata.get("config"), dict):
        raise CheckpointError(f"checkpoint {path} lacks metadata['config']")
    return payload


def finish_load(model, payload: dict, path: Path, map_location: Any):
    """Load the weights into a freshly built ``model`` and attach what the file records."""
    try:
        model.net.load_state_dict(payload["state_dict"])
    except (RuntimeError, TypeError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path} weights do not fit its config "
                              f"{model.config}: {exc}") from exc
    if isinstance(map_location, str | torch.device):
        model.net.to(map_location)
    model.metadata = payload["metadata"]  # what was written (the writer's versions too)
    model.path = path
    model.step = payload.get("step")
    model.optimizer_state = payload.get("optimizer")
    return model
