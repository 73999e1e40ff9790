"""Quantised inference backend of the NeuraLSP MLP (CPU, batch 1).

At batch 1 a forward pass is a chain of matrix-vector products bound by reading the
weights (at N=64: 39M in the first layer, 26M in the head rows for r=48), so bytes are
time. :class:`Int8MLP` is an inference-only copy of a trained
:class:`~nlss_fenicsx.nn.model.NLSSMLP`:

* large Linear layers (``INT8_MIN_WEIGHTS``) use PyTorch's dynamic quantisation (int8
  weights, activations quantised on the fly); the head is quantised per rank ``r``;
* the small float32 layers after them, the input scaling and the permutation run in
  NumPy (:class:`NumpyTail`, :func:`features_numpy`), whose per-operation dispatch is
  cheaper than PyTorch's at these sizes;
* the output is orthonormalised by Cholesky QR (:func:`orthonormal_rows`): the float32
  network's Householder basis up to rounding.

A leaner copy replaces the first layer by its truncated SVD (:func:`low_rank_first_layer`)
and the head by an affine map on a few principal directions of its input
(:meth:`Int8MLP.with_affine_head`). Whether that moves the basis is decided once, at the
end of training, by :func:`nlss_fenicsx.nn.calibration.calibrate` on held-out instances of
the training distribution; its decision (and the few vectors it needs) is stored in the
checkpoint, so loading never generates data. :func:`from_calibration` rebuilds the chosen
copy.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings

import numpy as np
import torch
from torch import nn

from nlss_fenicsx.nn.model import NLSSMLP

__all__ = ["INT8_MIN_WEIGHTS", "Int8MLP", "NumpyTail", "features_numpy",
           "first_layer_basis", "from_calibration", "large_linears", "low_rank_first_layer",
           "orthonormal_rows"]

# Linear layers with fewer weights stay float32: quantising their input on every call
# costs more than reading them (the N=64 model's 128 x 128 hidden layers, for instance).
INT8_MIN_WEIGHTS = 1 << 20

# Cholesky QR: one pass loses orthogonality like cond(X)^2 * eps, a second pass brings it
# back to eps while cond(X) < eps^(-1/2); beyond that only Householder QR is safe. The
# thresholds apply to LAPACK's 1-norm estimate of cond(L) = cond(X), which overestimates
# the 2-norm condition number by a factor of about 5-10 at r = 48.
_CHOLQR_ONE_PASS = 50.0
_CHOLQR_TWO_PASS = 5e3
_SQRT_HALF = np.float32(math.sqrt(0.5))


@contextlib.contextmanager
def _quiet_quantization():
    """torch.ao.quantization announces its move to torchao; the API still works here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantiz.*")
        yield


def _quantize(module: nn.Module, names) -> nn.Module:
    from torch.ao.quantization import quantize_dynamic

    with _quiet_quantization():
        return quantize_dynamic(module, names, dtype=torch.qint8)


def orthonormal_rows(Xt: np.ndarray) -> np.ndarray:
    """Orthonormalise the rows of ``Xt``: ``Q^T`` of ``X = Q R`` with ``diag(R) > 0``.

    Cholesky QR (``X^T X = L L^T``, ``Q^T = L^{-1} X^T``): two BLAS-3 products instead of
    Householder's reflector sweeps. Its orthogonality error grows like ``cond(X)^2`` times
    the unit roundoff, so ``cond(X)`` is estimated from ``L`` (LAPACK ``trcon``, O(r^2)):
    a second pass is taken when ``X`` is not well conditioned, Householder QR when it is
    badly conditioned or Cholesky fails (Golub and Van Loan, Matrix Computations, 5.2;
    Fukaya et al., CholeskyQR2, 2014).

    Parameters
    ----------
    Xt : numpy.ndarray, shape (r, n), float32 or float64
        Rows to orthonormalise, ``r <= n``; may be overwritten.

    Returns
    -------
    numpy.ndarray, shape (r, n), same dtype
        Rows orthonormal to the dtype's precision; the same basis as Householder QR with
        ``diag(R) > 0`` (:func:`~nlss_fenicsx.nn.model.qr_positive`) up to rounding.

    Examples
    --------
    >>> import numpy as np
    >>> Q = orthonormal_rows(np.random.default_rng(0).standard_normal((3, 50)))
    >>> bool(np.allclose(Q @ Q.T, np.eye(3)))
    True
    """
    import scipy.linalg as sla

    Xt = np.ascontiguousarray(Xt)
    for attempt in range(2):
        try:
            L = np.linalg.cholesky(Xt @ Xt.T)
        except np.linalg.LinAlgError:
            break
        if not (np.all(np.isfinite(L)) and np.diagonal(L).min() > 0):
            break
        rcond, info = sla.get_lapack_funcs("trcon", (L,))(L, norm="1", uplo="L")
        ratio = 1.0 / rcond if info == 0 and rcond > 0 else np.inf
        if ratio > _CHOLQR_TWO_PASS:
            break
        # Xt (r x n, C order) is X (n x r) in Fortran order: X <- X L^{-T} in place.
        trsm = sla.get_blas_funcs("trsm", (L, Xt))
        Xt = trsm(1.0, L, Xt.T, side=1, lower=1, trans_a=1, overwrite_b=1).T
        if attempt == 1 or ratio <= _CHOLQR_ONE_PASS:
            return Xt
    Q, R = np.linalg.qr(Xt.T)  # Householder: ill-conditioned or rank-deficient X
    signs = np.sign(np.diagonal(R)).astype(Q.dtype)
    signs[signs == 0] = 1
    return np.ascontiguousarray((Q * signs).T)


def features_numpy(S: np.ndarray, node_order: np.ndarray | None = None,
                   dtype=np.float32) -> np.ndarray:
    """:func:`~nlss_fenicsx.nn.model.input_features` of one ``S`` in NumPy, permuted.

    Parameters
    ----------
    S : numpy.ndarray
        Shape ``(n, K)``, dof order.
    node_order : numpy.ndarray of int, optional
        ``node_order[i]`` is the dof of input node ``i``; the gather is the only copy.
    dtype : numpy dtype

    Returns
    -------
    numpy.ndarray
        ``S[node_order]`` with columns scaled to norm ``sqrt(n)``, shape ``(1, n*K)``.
    """
    S = np.asarray(S)
    norms = np.sqrt(np.einsum("ij,ij->j", S, S))
    norms[norms == 0] = 1.0
    X = S.astype(dtype) if node_order is None else np.take(S, node_order, axis=0)
    X = X.astype(dtype, copy=False)
    X *= (math.sqrt(S.shape[0]) / norms).astype(dtype)
    return X.reshape(1, -1)


def large_linears(module: nn.Module) -> set[str]:
    """Names of the Linear submodules of ``module`` with ``>= INT8_MIN_WEIGHTS`` weights."""
    return {name for name, m in module.named_modules()
            if isinstance(m, nn.Linear) and m.weight.numel() >= INT8_MIN_WEIGHTS}


def first_layer_basis(lin: nn.Linear, energy: float) -> torch.Tensor | None:
    """Leading left singular vectors ``U_k`` of ``lin.weight`` keeping ``energy`` of it.

    ``k`` is the smallest rank with ``sum_{j<=k} s_j^2 >= energy * ||W||_F^2`` (from the
    eigendecomposition of the ``h x h`` Gram matrix ``W W^T``); ``None`` when ``k > h/2``
    (too little to gain) or ``W = 0``.

    Parameters
    ----------
    lin : torch.nn.Linear
        Weight ``W`` of shape ``(h, m)``, ``h`` small.
    energy : float
        Fraction in ``(0, 1]``.

    Returns
    -------
    torch.Tensor or None
        ``U_k``, float32, ``(h, k)``.
    """
    with torch.no_grad():
        W = lin.weight.detach().float()
        lam, U = torch.linalg.eigh((W @ W.T).double())
        lam, U = lam.flip(0).clamp(min=0), U.flip(1)
        if not lam.sum() > 0:
            return None
        frac = torch.cumsum(lam, 0) / lam.sum()
        target = torch.tensor(float(energy), dtype=frac.dtype)
        k = min(W.shape[0], int(torch.searchsorted(frac, target)) + 1)
        return None if 2 * k > W.shape[0] else U[:, :k].float().contiguous()


def low_rank_first_layer(lin: nn.Linear, basis: torch.Tensor) -> nn.Sequential:
    """``lin`` projected on ``span(basis)``: ``W_k = U_k U_k^T W`` as two Linear maps.

    ``down = U_k^T W`` (``k x m``, no bias), then ``up = U_k`` (``h x k``, with ``lin``'s
    bias). With ``U_k`` from :func:`first_layer_basis` this is the best rank-``k``
    approximation of ``W`` (Eckart-Young).

    Parameters
    ----------
    lin : torch.nn.Linear
    basis : torch.Tensor
        ``U_k``, shape ``(h, k)``, orthonormal columns.

    Returns
    -------
    torch.nn.Sequential
        ``(down, up)``.
    """
    with torch.no_grad():
        W = lin.weight.detach().float()
        Uk = basis.detach().float()
        down = nn.Linear(W.shape[1], Uk.shape[1], bias=False)
        up = nn.Linear(Uk.shape[1], W.shape[0])
        down.weight.copy_(Uk.T @ W)
        up.weight.copy_(Uk)
        up.bias.copy_(lin.bias.detach().float())
    return nn.Sequential(down, up)


class NumpyTail:
    """Small float32 layers (Linear, LayerNorm, GELU: the MLP's) evaluated in NumPy.

    Same arithmetic as the modules (float32; GELU by ``erf``), so outputs agree to
    float32 rounding. :meth:`split` cuts a body after its last quantised layer.

    Parameters
    ----------
    steps : list of tuple
        ``("linear", W^T, b)``, ``("layernorm", w, b, eps)`` or ``("gelu",)``.
    """

    def __init__(self, steps: list[tuple]):
        self.steps = steps

    @classmethod
    def split(cls, body: nn.Module) -> tuple[nn.Module, NumpyTail | None]:
        """Cut ``body`` after its last quantised module: ``(prefix, tail)``.

        ``prefix`` (torch) runs up to the last quantised module, ``tail`` the rest;
        ``(body, None)`` if a module after it is not supported.
        """
        flat: list[nn.Module] = []

        def walk(m):
            for c in (m if isinstance(m, nn.Sequential) else [m]):
                if isinstance(c, nn.Sequential):
                    walk(c)
                else:
                    flat.append(c)

        walk(body)
        last = max((i for i, m in enumerate(flat)
                    if type(m).__module__.startswith("torch.ao.nn.quantized")), default=-1)
        steps: list[tuple] = []

        def arr(t):
            return None if t is None else t.detach().float().numpy().copy()

        for m in flat[last + 1:]:
            if type(m) is nn.Linear:
                steps.append(("linear", arr(m.weight).T.copy(), arr(m.bias)))
            elif type(m) is nn.LayerNorm and len(m.normalized_shape) == 1:
                steps.append(("layernorm", arr(m.weight), arr(m.bias), np.float32(m.eps)))
            elif type(m) is nn.GELU and m.approximate == "none":
                steps.append(("gelu",))
            else:
                return body, None
        return nn.Sequential(*flat[:last + 1]), cls(steps)

    def __call__(self, z: np.ndarray) -> np.ndarray:
        """Apply the layers to ``z`` (``batch x width``, float32)."""
        from scipy.special import erf

        for kind, *p in self.steps:
            if kind == "linear":
                z = z @ p[0]
                if p[1] is not None:
                    z += p[1]
            elif kind == "layernorm":
                d = z - z.mean(axis=-1, keepdims=True)
                var = np.einsum("ij,ij->i", d, d)[:, None] / np.float32(d.shape[-1])
                z = d / np.sqrt(var + p[2])
                if p[0] is not None:
                    z *= p[0]
                if p[1] is not None:
                    z += p[1]
            else:  # gelu
                z = np.float32(0.5) * z * (np.float32(1.0) + erf(z * _SQRT_HALF))
        return z


class Int8MLP:
    """Inference-only int8 copy of an :class:`~nlss_fenicsx.nn.model.NLSSMLP` (CPU).

    Parameters
    ----------
    net : NLSSMLP
        The trained network (copied; any device and dtype).

    Attributes
    ----------
    first_layer : torch.nn.Linear or None
        The float32 first layer of ``net`` (what a lean copy truncates).
    first_layer_rank : int or None
        Rank of a lean first layer (``None``: the full layer).
    head_directions : int or None
        Directions of an affine head (``None``: the int8 head).

    Raises
    ------
    RuntimeError, ImportError, NotImplementedError
        Where this PyTorch build has no dynamic quantisation (the caller falls back to
        float32).
    """

    def __init__(self, net: NLSSMLP):
        self.config = net.config
        src = copy.deepcopy(net).float().cpu().eval()
        self._head_w = src.head.weight.detach()
        self._head_b = src.head.bias.detach()
        self.first_layer = src.body[0] if len(src.body) and isinstance(src.body[0], nn.Linear) \
            else None
        self._affine = None
        self.first_layer_rank: int | None = None
        self.head_directions: int | None = None
        self.body = _quantize(src.body, large_linears(src.body))
        self._split: tuple[nn.Module, NumpyTail | None] | None = None
        self._heads: dict[int, nn.Module] = {}

    def _head(self, r: int) -> nn.Module:
        if r not in self._heads:
            rows = r * self.config.n
            lin = nn.Linear(self._head_w.shape[1], rows)
            with torch.no_grad():
                lin.weight.copy_(self._head_w[:rows])
                lin.bias.copy_(self._head_b[:rows])
            self._heads[r] = _quantize(nn.Sequential(lin), {nn.Linear})
        return self._heads[r]

    def with_lean_first_layer(self, basis: torch.Tensor) -> Int8MLP:
        """Copy this one with the first layer :func:`low_rank_first_layer` on ``basis``.

        ``basis`` is ``h x k``; the copy shares the other layers and the head, and its two
        factors are int8 where large.
        """
        if self.first_layer is None:
            raise ValueError("the network has no first Linear layer to make lean")
        lean = low_rank_first_layer(self.first_layer, basis)
        out = copy.copy(self)
        out.body = nn.Sequential(_quantize(lean, large_linears(lean)), *list(self.body)[1:])
        out._split = None
        out.first_layer_rank = int(basis.shape[1])
        return out

    def with_affine_head(self, mean: torch.Tensor, directions: torch.Tensor) -> Int8MLP:
        """Copy this one with the head's input ``y`` projected on ``mean + span(directions)``.

        With ``Q = directions`` (``h x q``, orthonormal columns) the head becomes
        ``W (mean + Q Q^T (y - mean)) + b = base + D c`` with ``base = W mean + b``,
        ``D = W Q`` and ``c = Q^T (y - mean)``: ``q + 1`` numbers per output instead of
        ``h``; exact when ``y`` lies in that affine subspace.
        """
        with torch.no_grad():
            W, b = self._head_w.float(), self._head_b.float()
            mean = torch.as_tensor(mean).float().reshape(-1)
            Q = torch.as_tensor(directions).float()
            base = W @ mean + b
            Dt = (W @ Q).T.contiguous()  # q x (r_max*n): the first r*n columns per rank
        out = copy.copy(self)
        out._affine = tuple(t.numpy() for t in (mean, Q, base, Dt))
        out.head_directions = int(Q.shape[1])
        return out

    def _hidden(self, x: torch.Tensor) -> np.ndarray:
        """Compute the head's input for features ``x`` (``(batch, n*K)``), float32 NumPy."""
        if self._split is None:
            self._split = NumpyTail.split(self.body)
        prefix, tail = self._split
        with torch.no_grad(), _quiet_quantization():
            z = prefix(x)
        return tail(z.numpy()) if tail is not None else z.numpy()

    def raw(self, x: torch.Tensor, r: int) -> np.ndarray:
        """Compute the head's output before orthonormalisation, ``(1, r*n)`` float32.

        ``x`` are the network's input features, shape ``(1, n*K)``.
        """
        y = self._hidden(x)
        if self._affine is None:
            with torch.no_grad(), _quiet_quantization():
                return self._head(r)(torch.from_numpy(y)).numpy()
        mean, Q, base, Dt = self._affine
        rows = r * self.config.n
        out = ((y - mean) @ Q) @ Dt[:, :rows]
        out += base[:rows]
        return out

    def head_input(self, S: np.ndarray) -> np.ndarray:
        """Compute the head's input ``y`` for one ``S`` (node order), shape ``(1, h)``."""
        return self._hidden(torch.from_numpy(features_numpy(S)))

    def basis(self, S: np.ndarray, r: int, node_order: np.ndarray | None = None,
              dtype=np.float64) -> np.ndarray:
        """Compute ``P`` (``n x r``, dof order) from ``S`` (``(n, K)``, dof order).

        All in NumPy but the int8 products; the arguments are checked by the caller
        (:meth:`~nlss_fenicsx.nn.base.LearnedModel.check_input`).
        """
        n = self.config.n
        x = torch.from_numpy(features_numpy(S, node_order))
        Pt = orthonormal_rows(self.raw(x, r).reshape(r, n))
        if node_order is not None:  # P[node_order] = Pt.T, as a gather of columns
            inverse = np.empty_like(node_order)
            inverse[node_order] = np.arange(n)
            Pt = np.take(Pt, inverse, axis=1)
        return Pt.T.astype(dtype, copy=False)


def from_calibration(net: NLSSMLP, calibration: dict | None) -> Int8MLP:
    """Build the int8 copy a calibration describes (the full one for ``None``).

    Parameters
    ----------
    net : NLSSMLP
    calibration : dict or None
        As stored in the checkpoint.

    Returns
    -------
    Int8MLP

    Raises
    ------
    RuntimeError, ImportError, NotImplementedError
        Where this PyTorch build has no dynamic quantisation.
    """
    q = Int8MLP(net)
    cal = calibration or {}
    if cal.get("first_layer_basis") is not None:
        q = q.with_lean_first_layer(cal["first_layer_basis"])
    if cal.get("head_mean") is not None:
        q = q.with_affine_head(cal["head_mean"], cal["head_basis"])
    return q
