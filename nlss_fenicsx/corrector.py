"""An instance-adaptive coarse space: the family basis plus a homogenisation corrector.

The sine basis (the family basis of the unit square: ``nlss-family`` is sine-level, see
:mod:`nlss_fenicsx.family`) knows nothing about the instance. Classical homogenisation
says how a smooth mode ``u`` of a rough-coefficient operator looks at the fine scale:
``u + chi_x du/dx + chi_y du/dy``, with the correctors ``chi`` solving
``A chi = -A xi`` for the coordinate functions ``xi = x, y`` (Bensoussan, Lions and
Papanicolaou, *Asymptotic Analysis for Periodic Structures*, 1978, ch. 1; the discrete
first-order corrector of multiscale finite elements: Hou and Wu, J. Comput. Phys. 134,
1997). Two correctors serve every mode, so the per-instance work is two approximate
solves, not ``r``:

    P = P0 + diag(w_x chi_x) dP0/dx + diag(w_y chi_y) dP0/dy,

``P0`` the ``r`` lowest sine modes at the nominal grid nodes (their derivatives are
analytic), ``chi`` = Chebyshev of degree 10 on ``D^-1 A`` over ``[0.03, 1.1] x lambda_max``
applied to ``-g`` (a few products with ``A`` on two vectors). ``xi`` are the nominal
coordinates, so ``chi`` also corrects the mesh's jitter. ``w = 1`` is the classical
corrector; a :class:`CorrectorModel` (a small per-node MLP, NumPy inference) predicts
``w`` from local features of ``A`` (learned with the NLSS loss, :mod:`nlss_fenicsx.nn.corrector`).

Only ``A`` as assembled is needed (Dirichlet rows and columns replaced by the identity):
its interior rows lack the boundary columns, so ``g = A xi - xi_b * (A 1)`` restores their
flux, with ``xi_b`` = ``xi`` except on the first ring of nodes, where it is the mean
position of the ring node's boundary neighbours on the grid (exact for rows that sum to
zero when the boundary neighbours share that position; measured: the same iterations as
the corrector of the matrix with its boundary columns, where ``g = A_full xi``).

``P`` is not orthonormal (a small correction of an orthonormal basis, full column rank);
the two-grid needs only that. Unit-square grid only (``n = (N+1)^2``, any jitter).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from nlss_fenicsx import spectral
from nlss_fenicsx._checks import check_int

__all__ = [
    "CHI_DEGREE",
    "CHI_LOWER",
    "CorrectorModel",
    "corrected_basis",
    "corrector",
    "corrector_rhs",
    "features",
    "grid_geometry",
    "sine_gradients",
]

CHI_DEGREE = 10
CHI_LOWER = 0.03


@functools.lru_cache(maxsize=8)
def _sine_gradients_grid(N: int, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ab = spectral.sine_modes(N, r)
    n = (N + 1) ** 2
    nodes = np.arange(n)
    i, j = nodes % (N + 1), nodes // (N + 1)
    a, b = np.pi * ab[:, 0], np.pi * ab[:, 1]
    sx, cx = np.sin(np.outer(i / N, a)), np.cos(np.outer(i / N, a))
    sy, cy = np.sin(np.outer(j / N, b)), np.cos(np.outer(j / N, b))
    s = 2.0 / N
    P0 = spectral.sine_basis(N, r)  # exact zeros on the boundary
    out = (P0, s * a * cx * sy, s * b * sx * cy)
    for X in out:
        X.setflags(write=False)
    return out


def sine_gradients(N: int, r: int, *, nodes=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the sine basis and its exact x and y derivatives at the nominal grid nodes.

    Cached per ``(N, r)`` (computed once per family and size).

    Parameters
    ----------
    N : int
        Cells per side.
    r : int
        Modes (:func:`nlss_fenicsx.spectral.sine_modes`).
    nodes : array_like of int, shape (m,), optional
        Grid node of each wanted row (default: all, grid order).

    Returns
    -------
    P0, Px, Py : numpy.ndarray, each shape (m, r)
        :func:`nlss_fenicsx.spectral.sine_basis` and its derivatives ``d/dx``, ``d/dy``.

    Examples
    --------
    >>> import numpy as np
    >>> P0, Px, Py = sine_gradients(16, 3)
    >>> bool(np.allclose(P0.T @ P0, np.eye(3))), Px.shape
    (True, (289, 3))
    """
    P0, Px, Py = _sine_gradients_grid(check_int("N", N, 2), check_int("r", r, 1))
    if nodes is None:
        return P0, Px, Py
    nodes = np.asarray(nodes)
    return P0[nodes], Px[nodes], Py[nodes]


@functools.lru_cache(maxsize=8)
def _geometry_grid(N: int) -> tuple[np.ndarray, np.ndarray]:
    n = (N + 1) ** 2
    nodes = np.arange(n)
    i, j = nodes % (N + 1), nodes // (N + 1)
    xi = np.column_stack([i / N, j / N])
    boundary = (i == 0) | (i == N) | (j == 0) | (j == N)
    xi_b = xi.copy()
    ring = ((i == 1) | (i == N - 1) | (j == 1) | (j == N - 1)) & ~boundary
    for k in np.flatnonzero(ring):  # mean position of the boundary nodes around node k
        ii = np.clip(i[k] + np.array([-1, 0, 1]), 0, N)
        jj = np.clip(j[k] + np.array([-1, 0, 1]), 0, N)
        near = (ii[:, None] + (N + 1) * jj[None, :]).ravel()
        xi_b[k] = xi[near[boundary[near]]].mean(axis=0)
    xi.setflags(write=False)
    xi_b.setflags(write=False)
    return xi, xi_b


def grid_geometry(N: int, *, nodes=None) -> tuple[np.ndarray, np.ndarray]:
    """Nominal coordinates ``xi`` and the boundary positions ``xi_b`` the corrector uses.

    Parameters
    ----------
    N : int
        Cells per side.
    nodes : array_like of int, optional
        Grid node of each wanted row (default: all, grid order).

    Returns
    -------
    xi, xi_b : numpy.ndarray, each shape (m, 2)
        ``xi_b = xi`` except on the first ring of interior nodes, where it is the mean
        nominal position of the node's boundary neighbours in its 3 x 3 grid neighbourhood.

    Examples
    --------
    >>> xi, xi_b = grid_geometry(4)
    >>> xi[6].tolist(), xi_b[6].tolist()  # node (1, 1): boundary neighbours around it
    ([0.25, 0.25], [0.15, 0.15])
    """
    xi, xi_b = _geometry_grid(check_int("N", N, 2))
    if nodes is None:
        return xi, xi_b
    nodes = np.asarray(nodes)
    return xi[nodes], xi_b[nodes]


def corrector(A, xi, xi_b, *, lam_max: float | None = None,
              degree: int = CHI_DEGREE) -> np.ndarray:
    """Return the two first-order correctors ``chi ~ -A^-1 g``, ``g = A xi - xi_b (A 1)``.

    Parameters
    ----------
    A : scipy.sparse matrix, shape (n, n)
        The instance (SPD, Dirichlet rows as identity rows), any row order.
    xi, xi_b : numpy.ndarray, shape (n, 2)
        From :func:`grid_geometry`, rows in the order of ``A``.
    lam_max : float, optional
        Estimate of ``lambda_max(D^-1 A)`` (6 Lanczos steps otherwise: it only sets the
        interval of an approximate solve).
    degree : int
        Chebyshev degree (products with ``A`` on two vectors).

    Returns
    -------
    numpy.ndarray, shape (n, 2)
        ``chi_x, chi_y`` in length units (zero on identity rows).

    Raises
    ------
    ValueError
        On bad shapes or a bad ``A`` (as :class:`~nlss_fenicsx.relaxation.Smoother`).
    """
    from nlss_fenicsx.relaxation import (
        chebyshev_interval,
        chebyshev_iteration,
        inverse_diagonal,
        lambda_max_estimate,
        start_vector,
    )

    A = sp.csr_matrix(A)
    g = corrector_rhs(A, xi, xi_b)
    Dinv = inverse_diagonal(A)
    if lam_max is None:
        lam_max = lambda_max_estimate(A.__matmul__, Dinv, start_vector(A.shape[0]), steps=6)
    interval = chebyshev_interval(lam_max, lower=CHI_LOWER)
    return -chebyshev_iteration(A.__matmul__, lambda v: Dinv[:, None] * v, g, interval,
                                check_int("degree", degree, 1))


def corrector_rhs(A, xi, xi_b) -> np.ndarray:
    """Return ``g = A xi - xi_b (A 1)``, zero on identity rows: ``A_full xi`` rebuilt from ``A``.

    For an interior row whose boundary neighbours (columns zeroed in ``A``) all sit at
    ``xi_b``, and rows of the full operator that sum to zero, this is exactly
    ``(A_full xi)_i``; off the first ring ``xi_b = xi`` and it is ``(A xi)_i``.

    Parameters
    ----------
    A : scipy.sparse matrix, shape (n, n)
    xi, xi_b : numpy.ndarray, shape (n, 2)
        From :func:`grid_geometry`, rows in the order of ``A``.

    Returns
    -------
    numpy.ndarray, shape (n, 2)

    Raises
    ------
    ValueError
        On shapes that do not match ``A``.
    """
    A = sp.csr_matrix(A)
    xi, xi_b = np.asarray(xi, dtype=np.float64), np.asarray(xi_b, dtype=np.float64)
    if xi.shape != (A.shape[0], 2) or xi_b.shape != xi.shape:
        raise ValueError(f"expected xi and xi_b of shape ({A.shape[0]}, 2), got {xi.shape} "
                         f"and {xi_b.shape}")
    # On an identity (Dirichlet) row xi_b = xi, so g = a_ii xi_i - xi_i a_ii = 0 exactly.
    return A @ xi - xi_b * (A @ np.ones(A.shape[0]))[:, None]


def features(A, chi: np.ndarray, N: int) -> np.ndarray:
    """Local, scale-free features of each node for a :class:`CorrectorModel`.

    Per node: ``log(d_i / median d)``, ``(A 1)_i / d_i``, ``chi / h`` (2) and the
    neighbour mean of ``chi / h`` minus ``chi / h`` (2), the mean over ``A``'s graph with
    weights ``|a_ij|``; zero on identity rows. Two products with ``|A|``.

    Parameters
    ----------
    A : scipy.sparse matrix, shape (n, n)
    chi : numpy.ndarray, shape (n, 2)
        :func:`corrector`, rows in ``A``'s order.
    N : int
        Cells per side (``h = 1 / N``).

    Returns
    -------
    numpy.ndarray, shape (n, 6), float64
    """
    A = sp.csr_matrix(A)
    d = A.diagonal()
    abs_a = sp.csr_matrix((np.abs(A.data), A.indices, A.indptr), shape=A.shape)
    c = chi * N
    V = np.column_stack([np.ones(A.shape[0]), c])
    X = abs_a @ V - np.abs(d)[:, None] * V  # sums over the neighbours (diagonal removed)
    deg = X[:, 0]
    dirichlet = deg <= 0.0  # identity rows have no neighbours
    mean = X[:, 1:] / np.where(dirichlet, 1.0, deg)[:, None]
    F = np.column_stack([np.log(d / np.median(d[~dirichlet] if np.any(~dirichlet) else d)),
                         (A @ np.ones(A.shape[0])) / d, c, mean - c])
    F[dirichlet] = 0.0
    return F


class CorrectorModel:
    """A per-node MLP that predicts the corrector weights ``w`` (NumPy inference).

    ``w = 1 + W3 relu(W2 relu(W1 (F - mu) / sd + b1) + b2) + b3`` per node, ``F`` from
    :func:`features`; trained with the NLSS loss by :func:`nlss_fenicsx.nn.corrector.train`
    (the last layer starts at zero: the untrained model is the classical corrector).

    Parameters
    ----------
    weights : dict of str to numpy.ndarray
        ``mu, sd`` (F,), ``W1`` (F, H), ``b1`` (H,), ``W2`` (H, H), ``b2`` (H,), ``W3``
        (H, 2), ``b3`` (2,); plus ``meta`` (a dict) as written by :meth:`save`.

    Raises
    ------
    ValueError
        On missing, misshaped or non-finite weights.
    """

    NAMES = ("mu", "sd", "W1", "b1", "W2", "b2", "W3", "b3")
    FORMAT = "nlss_fenicsx.corrector/1"

    def __init__(self, weights: dict, meta: dict | None = None):
        missing = [k for k in self.NAMES if k not in weights]
        if missing:
            raise ValueError(f"corrector model: missing weights {missing}")
        self.w = {k: np.asarray(weights[k], dtype=np.float64) for k in self.NAMES}
        if not all(np.all(np.isfinite(v)) for v in self.w.values()):
            raise ValueError("corrector model: non-finite weights")
        if self.w["W1"].shape[0] != self.w["mu"].shape[0] or self.w["W3"].shape[1] != 2:
            raise ValueError("corrector model: inconsistent weight shapes")
        self.meta = dict(meta or {})

    def weights(self, F: np.ndarray) -> np.ndarray:
        """Return ``w``, shape ``(n, 2)``, for features ``F`` of shape ``(n, 6)``."""
        w = self.w
        h = np.maximum((F - w["mu"]) / w["sd"] @ w["W1"] + w["b1"], 0.0)  # ReLU: cheap
        h = np.maximum(h @ w["W2"] + w["b2"], 0.0)
        return 1.0 + h @ w["W3"] + w["b3"]

    def save(self, path: str | os.PathLike) -> None:
        """Write the weights and ``meta`` atomically as ``.npz`` (no pickle)."""
        import json

        from nlss_fenicsx._atomic import atomic_path

        with atomic_path(Path(path), suffix=".npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **self.w, meta=np.array(json.dumps(
                {**self.meta, "format": self.FORMAT})))

    @classmethod
    def load(cls, path: str | os.PathLike) -> CorrectorModel:
        """Read a model written by :meth:`save`; one ValueError line naming the file."""
        import json

        try:
            with np.load(Path(path), allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("format") != cls.FORMAT:
                    raise ValueError(f"not a corrector model (format {meta.get('format')!r})")
                return cls({k: z[k] for k in cls.NAMES}, meta)
        except (OSError, KeyError, ValueError) as err:
            raise ValueError(f"{path}: cannot read the corrector model ({err})") from None


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, mtime_ns: int) -> CorrectorModel:
    return CorrectorModel.load(path)


def load_corrector(path: str | os.PathLike) -> CorrectorModel:
    """:meth:`CorrectorModel.load`, cached per path and modification time."""
    p = Path(path)
    try:
        mtime = p.stat().st_mtime_ns
    except OSError as err:
        raise ValueError(f"{path}: cannot read the corrector model ({err.strerror})") from None
    return _load_cached(str(p.resolve()), mtime)


def corrected_basis(A, r: int, *, node_order, lam_max: float | None = None,
                    model: CorrectorModel | None = None,
                    timings: dict | None = None) -> np.ndarray:
    """Build ``P = P0 + diag(w chi_x) dP0/dx + diag(w chi_y) dP0/dy`` in ``A``'s dof order.

    Parameters
    ----------
    A : scipy.sparse matrix, shape (n, n)
        The instance on the jittered unit square, ``n = (N+1)^2`` (dof order).
    r : int
        Coarse rank.
    node_order : array_like of int, shape (n,)
        ``node_order[i]`` = dof of grid node ``i``.
    lam_max : float, optional
        Estimate of ``lambda_max(D^-1 A)`` (computed if not given).
    model : CorrectorModel, optional
        Learned weights ``w``; None: the classical corrector (``w = 1``).
    timings : dict, optional
        Filled with ``corrector`` and ``basis`` seconds.

    Returns
    -------
    numpy.ndarray, shape (n, r)
        Full column rank, zero on the boundary nodes; not orthonormal.

    Raises
    ------
    ValueError
        Off the unit-square grid, on a bad ``r`` or node order.

    Examples
    --------
    >>> import numpy as np
    >>> from nlss_fenicsx import grid
    >>> pts = grid.jittered_points(8, seed=1)
    >>> tri = grid.delaunay_triangles(pts)
    >>> gp = grid.assemble_p1("diffusion", pts, tri, {"g": np.ones(len(tri))},
    ...                       boundary=grid.boundary_mask(8))
    >>> corrected_basis(gp.A, 5, node_order=np.arange(81)).shape
    (81, 5)
    """
    import time

    t0 = time.perf_counter()
    n = A.shape[0]
    N = spectral.grid_size(n)
    order = np.asarray(node_order)
    node_of_dof = np.empty(n, dtype=np.int64)
    node_of_dof[order] = np.arange(n)
    P0, Px, Py = sine_gradients(N, r)  # grid order, cached
    xi, xi_b = grid_geometry(N)
    if lam_max is None:  # start vector in node order: P does not depend on the dof order
        from nlss_fenicsx.relaxation import inverse_diagonal, lambda_max_estimate, start_vector

        lam_max = lambda_max_estimate(A.__matmul__, inverse_diagonal(A),
                                      start_vector(n)[node_of_dof], steps=6)
    chi = corrector(A, xi[node_of_dof], xi_b[node_of_dof], lam_max=lam_max)
    if model is not None:
        chi = chi * model.weights(features(A, chi, N))
    chi = chi[order]  # grid order
    t1 = time.perf_counter()
    P = Px * chi[:, :1]
    P += Py * chi[:, 1:]
    P += P0
    P = P[node_of_dof]  # dof order
    if timings is not None:
        timings.update(corrector=t1 - t0, basis=time.perf_counter() - t1)
    return P
