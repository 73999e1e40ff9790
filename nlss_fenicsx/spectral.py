"""Coarse spaces from eigenvectors: grid sine modes, lowest eigenvectors, the eig-ref cache.

* :func:`sine_basis`: the ``r`` lowest Dirichlet sine modes ``sin(a pi x) sin(b pi y)`` on
  the ``(N+1)^2`` nodes of the unit-square grid. On the uniform grid they are exactly the
  eigenvectors of the 5-point Laplacian (and of the P1 stiffness matrix of a right-triangle
  mesh, whose hypotenuse edges carry no coupling), ordered by ``a^2 + b^2`` (LeVeque,
  *Finite Difference Methods*, 2007, section 3.4). They cost nothing per instance.
* :func:`lowest_eigenvectors`: the ``r`` eigenvectors of the smallest eigenvalues of a
  symmetric positive (semi-)definite sparse matrix, dense LAPACK for small ``n`` and ARPACK
  in shift-invert mode otherwise (Lehoucq, Sorensen and Yang, *ARPACK Users' Guide*, 1998,
  section 3.2.3).
* :func:`pattern_laplacian`: the reference operator that needs nothing but ``A``: the
  graph Laplacian of ``A``'s sparsity pattern, with ``A``'s identity (Dirichlet) rows kept.
* :class:`ReferenceCache`: the eig-ref basis computed once per mesh and reused, keyed on a
  digest of the pattern (and of the reference matrix when one is given).
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from nlss_fenicsx._checks import check_int
from nlss_fenicsx.lanczos import start_vector

__all__ = [
    "DENSE_LIMIT",
    "ReferenceCache",
    "grid_size",
    "identity_rows",
    "lowest_eigenvectors",
    "pattern_laplacian",
    "sine_basis",
    "sine_modes",
]

# Up to this size the eigenvectors come from dense LAPACK (exact, and ARPACK needs r < n).
DENSE_LIMIT = 1500


def grid_size(n: int) -> int:
    """Return ``N`` with ``n = (N + 1)^2``, or raise ValueError (sine needs a unit square).

    Examples
    --------
    >>> grid_size(4225)
    64
    """
    N = int(round(np.sqrt(n))) - 1
    if N < 2 or (N + 1) ** 2 != n:
        raise ValueError(
            f"expected n = (N + 1)^2 unknowns of the unit-square grid (one per node, N >= 2), "
            f"got n = {n}: the sine basis needs the unit-square grid (use eig-ref elsewhere)"
        )
    return N


def sine_modes(N: int, r: int) -> np.ndarray:
    """Return the mode numbers ``(a, b)`` of the ``r`` lowest modes, shape ``(r, 2)``.

    Ordered by ``a^2 + b^2`` (the order of the Laplacian's eigenvalues
    ``pi^2 (a^2 + b^2)``), ties by ``a`` then ``b``; ``1 <= a, b <= N - 1``. For the
    5-point stencil's eigenvalues ``4 - 2 cos(a pi/N) - 2 cos(b pi/N)`` this is the same
    set of ``r`` lowest modes whenever ``r`` is small next to ``N^2`` (e.g. ``N = 64``,
    ``r <= 72``); at coarse ``N`` a few high modes can swap.

    Examples
    --------
    >>> sine_modes(8, 4).tolist()
    [[1, 1], [1, 2], [2, 1], [2, 2]]
    """
    N = check_int("N", N, 2)
    r = check_int("r", r, 1)
    if r > (N - 1) ** 2:
        raise ValueError(f"expected r <= (N - 1)^2 = {(N - 1) ** 2} interior sine modes "
                         f"for N = {N}, got r = {r}")
    a, b = np.meshgrid(np.arange(1, N), np.arange(1, N), indexing="ij")
    a, b = a.ravel(), b.ravel()
    order = np.lexsort((b, a, a * a + b * b))[:r]
    return np.column_stack([a[order], b[order]])


def sine_basis(N: int, r: int, *, nodes=None) -> np.ndarray:
    """Return the ``r`` lowest Dirichlet sine modes on the unit-square grid, orthonormal.

    Column ``k`` is ``sin(a pi x) sin(b pi y)`` at the grid nodes ``(x, y) = (i/N, j/N)``
    (grid node ``i + (N+1) j``), ``(a, b) = sine_modes(N, r)[k]``, scaled by ``2 / N``.
    The modes are exactly orthogonal on the grid (the discrete sine transform), so the
    scaling makes them orthonormal; they vanish on the boundary nodes. The nominal grid
    positions are used whatever the jitter of the mesh. The grid-order basis is computed
    once per ``(N, r)`` and cached (rows are then copied out by ``nodes``).

    Parameters
    ----------
    N : int
        Cells per side (``n = (N+1)^2`` nodes).
    r : int
        Number of modes, ``1 <= r <= (N-1)^2``.
    nodes : array_like of int, optional
        Grid node indices of the wanted rows (default: all, in grid order); e.g. the
        nodes of this rank's dofs.

    Returns
    -------
    numpy.ndarray, shape (len(nodes), r), float64

    Raises
    ------
    ValueError
        On ``N < 2``, ``r`` out of range, or a node index outside ``[0, (N+1)^2)``.

    Examples
    --------
    >>> import numpy as np
    >>> P = sine_basis(8, 5)
    >>> P.shape, bool(np.allclose(P.T @ P, np.eye(5)))
    ((81, 5), True)
    """
    G = _sine_grid(check_int("N", N, 2), check_int("r", r, 1))
    if nodes is None:
        return G.copy()
    n = G.shape[0]
    nodes = np.asarray(nodes).reshape(-1)
    if nodes.size and (nodes.dtype.kind not in "iu" or nodes.min() < 0 or nodes.max() >= n):
        raise ValueError(f"expected grid node indices in [0, {n}), got {nodes!r}")
    return G[nodes]


@functools.lru_cache(maxsize=16)
def _sine_grid(N: int, r: int) -> np.ndarray:
    """Compute the grid-order sine basis once per ``(N, r)`` (read-only)."""
    ab = sine_modes(N, r)
    nodes = np.arange((N + 1) ** 2)
    i, j = nodes % (N + 1), nodes // (N + 1)
    G = np.ascontiguousarray(_sines(i, ab[:, 0], N) * _sines(j, ab[:, 1], N) * (2.0 / N))
    G.setflags(write=False)
    return G


def _sines(i: np.ndarray, a: np.ndarray, N: int) -> np.ndarray:
    """``sin(pi i a / N)`` with the argument reduced exactly (zero is exactly zero)."""
    k = np.outer(i, a) % (2 * N)
    out = np.sin(np.pi * k / N)
    out[k % N == 0] = 0.0
    return out


def _fix_signs(V: np.ndarray) -> np.ndarray:
    """Make the largest-magnitude entry of every column positive (a deterministic sign)."""
    idx = np.argmax(np.abs(V), axis=0)
    signs = np.sign(V[idx, np.arange(V.shape[1])])
    signs[signs == 0] = 1.0
    return V * signs


def lowest_eigenvectors(A, r: int) -> np.ndarray:
    """Return the eigenvectors of the ``r`` smallest eigenvalues of a symmetric matrix.

    ``n <= DENSE_LIMIT``: LAPACK's ``syevr`` on the dense matrix (all digits). Otherwise
    ARPACK (:func:`scipy.sparse.linalg.eigsh`) in shift-invert mode around
    ``sigma = -1e-6 max(diag)``, just below the spectrum of a positive semi-definite
    ``A``, so a singular ``A`` (a pure-Neumann operator) factorises too; the start vector
    is fixed, so the result is deterministic.

    Parameters
    ----------
    A : scipy.sparse matrix or numpy.ndarray, shape (n, n)
        Symmetric, positive semi-definite in the intended use.
    r : int
        ``1 <= r < n`` (``r <= n`` on the dense route).

    Returns
    -------
    numpy.ndarray, shape (n, r), float64
        Orthonormal columns in increasing eigenvalue order, each signed so that its
        largest-magnitude entry is positive.

    Raises
    ------
    ValueError
        On a bad ``r``, or if ARPACK does not converge.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> A = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(30, 30), format="csr")
    >>> V = lowest_eigenvectors(A, 2)
    >>> x = np.arange(1, 31) / 31
    >>> bool(np.allclose(V[:, 0], np.sin(np.pi * x) / np.linalg.norm(np.sin(np.pi * x))))
    True
    """
    n = A.shape[0]
    r = check_int("r", r, 1)
    if n <= DENSE_LIMIT:
        if r > n:
            raise ValueError(f"expected r <= n = {n} eigenvectors, got r = {r}")
        dense = A.toarray() if sp.issparse(A) else np.asarray(A, dtype=np.float64)
        _, V = sla.eigh(0.5 * (dense + dense.T), subset_by_index=[0, r - 1])
        return np.ascontiguousarray(_fix_signs(V))
    if r >= n - 1:
        raise ValueError(f"expected r < n - 1 = {n - 1} eigenvectors for n = {n}, got r = {r}")
    A = sp.csr_matrix(A, dtype=np.float64)
    sigma = -1e-6 * float(np.abs(A.diagonal()).max() or 1.0)
    try:
        lam, V = spla.eigsh(A, k=r, sigma=sigma, which="LM", v0=start_vector(n),
                            ncv=min(n, max(2 * r + 1, r + 20)), tol=1e-10)
    except spla.ArpackNoConvergence as err:
        raise ValueError(f"ARPACK did not converge to the {r} lowest eigenvectors "
                         f"(n = {n}): {err}") from err
    order = np.argsort(lam)
    return np.ascontiguousarray(_fix_signs(V[:, order]))


def identity_rows(A, *, lo: int = 0) -> np.ndarray:
    """Mark the rows of ``A`` whose only nonzero value is on the diagonal (Dirichlet rows).

    Parameters
    ----------
    A : scipy.sparse matrix or numpy.ndarray, shape (n, n) or (n_local, n)
        The matrix, or a block of its rows (global columns).
    lo : int
        Global index of the block's first row (its diagonal sits at column ``lo + i``).

    Returns
    -------
    numpy.ndarray, shape (n,) or (n_local,), bool

    Examples
    --------
    >>> import numpy as np
    >>> identity_rows(np.array([[1.0, 0.0], [-1.0, 2.0]])).tolist()
    [True, False]
    """
    return _local_identity_rows(sp.csr_matrix(A), lo)


def pattern_laplacian(A) -> sp.csr_matrix:
    """Build the graph Laplacian of ``A``'s sparsity pattern, keeping its Dirichlet rows.

    ``L = deg - adj`` on the graph whose edges are the stored off-diagonal entries of ``A``
    (made symmetric); every identity row of ``A`` (only a diagonal value: a Dirichlet dof)
    becomes an identity row and column of ``L``, as in ``A``, while the degrees keep
    counting the edges to those dofs (a graph Dirichlet Laplacian: positive definite on
    the other dofs whenever each connected part touches a Dirichlet dof). The reference operator of
    eig-ref when no other is given: it depends on the mesh only, not on the coefficients.

    Parameters
    ----------
    A : scipy.sparse matrix, shape (n, n)

    Returns
    -------
    scipy.sparse.csr_matrix, shape (n, n), float64, symmetric positive semi-definite

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> rows, cols = [0, 1, 1, 2, 2, 2, 3, 3], [0, 1, 2, 1, 2, 3, 2, 3]
    >>> vals = [1.0, 2.0, -1.0, -1.0, 2.0, 0.0, 0.0, 1.0]  # stored zeros: 2 touches dof 3
    >>> A = sp.csr_matrix((vals, (rows, cols)), shape=(4, 4))
    >>> pattern_laplacian(A).toarray()
    array([[ 1.,  0.,  0.,  0.],
           [ 0.,  1., -1.,  0.],
           [ 0., -1.,  2.,  0.],
           [ 0.,  0.,  0.,  1.]])
    """
    A = sp.csr_matrix(A)
    adj = sp.csr_matrix((np.ones(A.nnz), A.indices, A.indptr), shape=A.shape)
    adj = ((adj + adj.T) != 0).astype(np.float64)
    adj.setdiag(0.0)
    adj.eliminate_zeros()
    keep = (~identity_rows(A)).astype(np.float64)
    # Degrees count the edges to Dirichlet dofs too (as the stiffness of a node next to the
    # boundary does): the free block is then the graph's Dirichlet Laplacian, nonsingular.
    deg = np.asarray(adj.sum(axis=1)).ravel()
    deg[keep == 0.0] = 1.0
    adj = sp.diags(keep) @ adj @ sp.diags(keep)  # cut the Dirichlet dofs out of the graph
    return (sp.diags(deg) - adj).tocsr()


class ReferenceCache:
    """In-process cache of reference eigenvectors, one entry per mesh ("compute once").

    An entry is keyed on :meth:`key` (a digest of the sparsity pattern, the identity rows
    and, when given, the reference matrix's values) and holds this rank's rows of the
    ``r_cached`` lowest eigenvectors; a request for ``r <= r_cached`` columns is a hit.
    At most ``size`` meshes are kept (least recently used first out).

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> cache = ReferenceCache()
    >>> A = sp.identity(3, format="csr")
    >>> key = cache.key(A, None)
    >>> cache.get(key, 2) is None
    True
    >>> cache.put(key, np.eye(3)[:, :2])
    >>> cache.get(key, 1).shape
    (3, 1)
    """

    def __init__(self, size: int = 4):
        self.size = size
        self._entries: OrderedDict[str, np.ndarray] = OrderedDict()
        self.misses = 0

    @staticmethod
    def key(A_local, reference_local, *, lo: int = 0) -> str:
        """Digest of this rank's rows: pattern, identity rows, reference values."""
        A_local = sp.csr_matrix(A_local)
        h = hashlib.blake2b(digest_size=16)
        for arr in (np.array([lo, *A_local.shape], dtype=np.int64),
                    A_local.indptr.astype(np.int64), A_local.indices.astype(np.int64),
                    _local_identity_rows(A_local, lo)):
            h.update(np.ascontiguousarray(arr).tobytes())
        if reference_local is not None:
            R = sp.csr_matrix(reference_local, dtype=np.float64)
            for arr in (R.indptr.astype(np.int64), R.indices.astype(np.int64), R.data):
                h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()

    def get(self, key: str, r: int) -> np.ndarray | None:
        """Return this rank's rows of the ``r`` cached columns, or None on a miss."""
        V = self._entries.get(key)
        if V is None or V.shape[1] < r:
            return None
        self._entries.move_to_end(key)
        return V[:, :r].copy()

    def put(self, key: str, V: np.ndarray) -> None:
        """Store this rank's rows ``V`` of the reference eigenvectors under ``key``."""
        self._entries[key] = np.array(V, dtype=np.float64)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every entry."""
        self._entries.clear()


def _local_identity_rows(A_local, lo: int) -> np.ndarray:
    """Identity-row mask of a row block whose diagonal sits at column ``lo + i``."""
    rows = np.repeat(np.arange(A_local.shape[0]), np.diff(A_local.indptr))
    on_diag = A_local.indices == rows + lo
    off = ~on_diag & (A_local.data != 0.0)
    has_off = np.bincount(rows[off], minlength=A_local.shape[0]) > 0
    diag = np.zeros(A_local.shape[0])
    np.add.at(diag, rows[on_diag], A_local.data[on_diag])
    return ~has_off & (diag != 0.0)
