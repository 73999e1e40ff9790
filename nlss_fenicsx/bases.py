"""Coarse bases computed from the smoothed vectors or the matrix: SVD and smoothed aggregation.

* :func:`svd_basis`: the leading ``r`` left singular vectors of the smoothed vectors
  ``S`` (the target that the NLSS model learns; paper section 3.3), orthonormal.
* :func:`svd_basis_from_gram`: the same basis from the ``K x K`` Gram matrix ``S^T S``,
  the route to take when ``S`` is split by rows over MPI ranks.
* :func:`sa_amg_basis`: PyAMG's smoothed-aggregation prolongator, the paper's SA-AMG
  baseline (sparse, not orthonormal; the Galerkin two-grid does not need orthonormality).
* :func:`append_near_nullspace`: a near-nullspace (e.g. rigid-body modes) appended to a
  basis and orthonormalised against it (issue 14, item 3).

:func:`nlss_fenicsx.coarse.coarse_basis` dispatches to these by kind; they are also
re-exported there.

Sign convention of the SVD. Singular vectors are defined up to sign. Both SVD routes fix it
on the right singular vectors: the largest-magnitude entry of every ``v_j`` is made
positive and ``u_j = S v_j / sigma_j``. ``V`` is small and replicated, so the convention
needs no communication and the serial and distributed routes agree column by column.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

from nlss_fenicsx._checks import check_int, check_real_array, matrix_entries

__all__ = ["allsum", "append_near_nullspace", "sa_amg_basis", "svd_basis", "svd_basis_from_gram"]


def _check_rank(r, limit: int, what: str) -> int:
    if isinstance(r, bool) or not isinstance(r, numbers.Integral):
        raise ValueError(f"expected an integer rank r, got {r!r}")
    if not 1 <= r <= limit:
        raise ValueError(f"expected 1 <= r <= {what} = {limit}, got r = {r}")
    return int(r)


def _sign_from_right(V: np.ndarray) -> np.ndarray:
    """Signs that make the largest-|entry| of each column of ``V`` positive."""
    idx = np.argmax(np.abs(V), axis=0)
    signs = np.sign(V[idx, np.arange(V.shape[1])])
    signs[signs == 0] = 1.0
    return signs


def svd_basis(S, r: int) -> np.ndarray:
    """Return the leading ``r`` left singular vectors of ``S``, orthonormal.

    Uses LAPACK's thin divide-and-conquer SVD (``gesdd``, falling back to ``gesvd`` if
    it does not converge): ``O(n K^2)`` work, backward stable, so the columns are
    orthonormal to machine precision however ill-conditioned ``S`` is.

    Parameters
    ----------
    S : array_like, shape (n, K)
        Smoothed vectors, one per column.
    r : int
        Coarse dimension, ``1 <= r <= min(n, K)``.

    Returns
    -------
    numpy.ndarray, shape (n, r), float64
        ``U_r`` with ``U_r^T U_r = I``, columns ordered by decreasing singular value and
        signed by the convention in the module docstring.

    Raises
    ------
    ValueError
        If ``S`` is not 2-D, complex or not finite, or ``r`` is outside ``[1, min(n, K)]``.

    Examples
    --------
    >>> import numpy as np
    >>> S = np.random.default_rng(0).standard_normal((100, 8))
    >>> P = svd_basis(S, 3)
    >>> P.shape, bool(np.allclose(P.T @ P, np.eye(3)))
    ((100, 3), True)
    """
    S = check_real_array("S", S, ndim=2)
    n, K = S.shape
    r = _check_rank(r, min(n, K), f"min(n, K) for S of shape ({n}, {K})")
    try:
        U, _, Vt = sla.svd(S, full_matrices=False, lapack_driver="gesdd", check_finite=False)
    except np.linalg.LinAlgError:
        U, _, Vt = sla.svd(S, full_matrices=False, lapack_driver="gesvd", check_finite=False)
    signs = _sign_from_right(Vt[:r].T)
    return np.ascontiguousarray(U[:, :r] * signs)


def svd_basis_from_gram(
    G,
    S_local,
    r: int,
    *,
    allreduce: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Return this rank's rows of ``U_r`` from the global Gram matrix (distributed route).

    With ``S`` split by rows over ranks, each rank forms ``S_local^T S_local``; their sum
    (one all-reduce of a ``K x K`` matrix) is ``G = S^T S = V Sigma^2 V^T``. Then
    ``U_r = S V_r Sigma_r^{-1}`` needs only local rows. The Gram route squares the
    condition number: orthogonality of the result degrades like
    ``eps * (sigma_1 / sigma_r)^2``. Pass ``allreduce`` to add a second, Cholesky-QR
    pass (one more all-reduce of an ``r x r`` matrix) that restores orthonormality to
    machine precision; it changes each column only by the (tiny) orthogonality error.

    Parameters
    ----------
    G : array_like, shape (K, K)
        The global Gram matrix ``S^T S`` (already summed over ranks).
    S_local : array_like, shape (n_local, K)
        This rank's rows of ``S``.
    r : int
        Coarse dimension, ``1 <= r <= K`` (and ``r <= n`` globally, which shows up here
        as a rank-deficient ``G``).
    allreduce : callable, optional
        ``x -> sum of x over ranks`` (e.g. ``lambda x: comm.allreduce(x, op=MPI.SUM)``).
        When given, the re-orthonormalisation pass is done. In serial use ``lambda x: x``.

    Returns
    -------
    numpy.ndarray, shape (n_local, r), float64, Fortran order
        The local rows of ``U_r``, same ordering and signs as :func:`svd_basis`.

    Raises
    ------
    ValueError
        On shape mismatch, non-finite input, a bad ``r``, or if ``S`` has numerical rank
        below ``r`` (then ``Sigma_r`` cannot be inverted reliably).

    Examples
    --------
    >>> import numpy as np
    >>> S = np.random.default_rng(0).standard_normal((100, 8))
    >>> top, bottom = S[:60], S[60:]
    >>> G = top.T @ top + bottom.T @ bottom  # the all-reduce
    >>> P = np.vstack([svd_basis_from_gram(G, top, 3), svd_basis_from_gram(G, bottom, 3)])
    >>> bool(np.allclose(P, svd_basis(S, 3)))
    True
    """
    G = check_real_array("G", G, ndim=2)
    S_local = check_real_array("S_local", S_local, ndim=2)
    K = G.shape[0]
    if G.shape != (K, K):
        raise ValueError(f"expected a square Gram matrix G, got shape {G.shape}")
    if S_local.shape[1] != K:
        raise ValueError(
            f"expected S_local with K = {K} columns to match G ({K} x {K}), "
            f"got shape {S_local.shape}"
        )
    r = _check_rank(r, K, f"K for G of shape ({K}, {K})")
    lam, V = sla.eigh(0.5 * (G + G.T), check_finite=False)
    lam, V = lam[::-1][:r], V[:, ::-1][:, :r]
    # Below this, sigma_r^2 is lost in the rounding of G's largest eigenvalue.
    tol = max(lam[0], 0.0) * K * np.finfo(np.float64).eps
    if not lam[-1] > tol:
        raise ValueError(
            f"expected S of numerical rank >= r = {r}, got Gram eigenvalue "
            f"sigma_{r}^2 = {lam[-1]:.3e} <= {tol:.3e} (relative to sigma_1^2 = {lam[0]:.3e})"
        )
    V = V * _sign_from_right(V)
    # U^T as an r x n_local C-contiguous array, i.e. U in Fortran order (PETSc's dense
    # layout): the second pass below then works in place with no transposed copies.
    Ut = (V / np.sqrt(lam)).T @ S_local.T
    if allreduce is not None:
        C = np.asarray(allreduce(Ut @ Ut.T), dtype=np.float64)
        L = sla.cholesky(0.5 * (C + C.T), lower=True, check_finite=False)
        # U <- U L^{-T}: then U^T U = L^{-1} C L^{-T} = I.
        trsm = sla.get_blas_funcs("trsm", (L, Ut))
        Ut = trsm(1.0, L, Ut.T, side=1, lower=1, trans_a=1, overwrite_b=1).T
    return Ut.T


def sa_amg_basis(A, *, B=None, block_size: int = 1, seed: int = 0) -> sp.csr_matrix:
    """First-level prolongator of PyAMG smoothed aggregation (the paper's SA-AMG baseline).

    Calls ``pyamg.smoothed_aggregation_solver(A, B=B, max_levels=2, max_coarse=10)`` and
    returns ``levels[0].P``. PyAMG estimates the spectral radius for its Jacobi
    prolongation smoother from ``numpy.random``'s global state; this function seeds that
    state with ``seed`` for the call and restores it afterwards, so the result is
    deterministic and the caller's global RNG is left untouched (not thread-safe with
    other users of the global state).

    Parameters
    ----------
    A : scipy.sparse matrix or array, shape (n, n)
        Real SPD system matrix (copied to float64; PyAMG never sees the caller's object).
    B : array_like, shape (n, m), optional
        Near-nullspace candidates (e.g. rigid-body modes; dependent ones are dropped);
        default the constant vector
        per component (``ones((n, 1))`` for ``block_size = 1``, as in the paper).
    block_size : int, optional
        Unknowns per node (e.g. 3 for 3-D elasticity): ``A`` is aggregated node by node
        (as a BSR matrix with ``block_size x block_size`` blocks).
    seed : int, optional
        Seed for PyAMG's randomised spectral-radius estimate.

    Returns
    -------
    scipy.sparse.csr_matrix, shape (n, nc)
        The smoothed prolongator, ``nc < n``. Not orthonormal.

    Raises
    ------
    ValueError
        If ``A`` is not square or complex, ``B`` has the wrong shape or is not finite,
        ``n`` is not a multiple of ``block_size``, or ``A`` is too small for PyAMG to build
        a coarse level.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> A = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(100, 100), format="csr")
    >>> P = sa_amg_basis(A)
    >>> P.shape[0], P.shape[1] < 100
    (100, True)
    """
    import pyamg  # heavy import, only needed for this baseline

    A = sp.csr_matrix(matrix_entries(A, csr=True), dtype=np.float64, copy=True)
    if not np.all(A.diagonal() > 0):
        i = int(np.flatnonzero(~(A.diagonal() > 0))[0])
        raise ValueError(f"expected an SPD A (positive diagonal), got A[{i}, {i}] = "
                         f"{A.diagonal()[i]!r}")
    # Stored zeros (dolfinx keeps the pattern of the zeroed Dirichlet rows and columns)
    # would count as strong connections: a boundary node could then form an aggregate of
    # its own whose candidate vector smooths to 0, i.e. a zero column of P.
    A.eliminate_zeros()
    n = A.shape[0]
    bs = check_int("block_size", block_size, 1)
    if n % bs:
        raise ValueError(f"expected n = {n} to be a multiple of block_size = {bs}")
    if B is None:
        B = np.kron(np.ones((n // bs, 1)), np.eye(bs))
    else:
        B = check_real_array("near-nullspace B", B, ndim=2)
        if B.shape[0] != n:
            raise ValueError(f"expected a near-nullspace B with n = {n} rows, got {B.shape}")
        # An orthonormal basis of span(B): dependent or zero candidates (a repeated mode)
        # would give PyAMG's tentative prolongator dependent columns, i.e. a singular Ac.
        U, sigma, _ = np.linalg.svd(B, full_matrices=False)
        keep = sigma > 1e-10 * (sigma[0] if sigma.size else 0.0)
        if not keep.any():
            raise ValueError("expected a nonzero near-nullspace B, got only zero vectors")
        B = U[:, keep]
    if bs > 1:
        A = A.tobsr(blocksize=(bs, bs))
    # PyAMG draws from the legacy global RNG; seed it for this call only.
    state = np.random.get_state()  # noqa: NPY002
    try:
        np.random.seed(seed)  # noqa: NPY002
        ml = pyamg.smoothed_aggregation_solver(A, B=B, max_levels=2, max_coarse=10)
    finally:
        np.random.set_state(state)  # noqa: NPY002
    if len(ml.levels) < 2:
        raise ValueError(
            f"expected A large enough for a coarse level (n > max_coarse = 10), got n = {n}"
        )
    return sp.csr_matrix(ml.levels[0].P)


def allsum(comm, X: np.ndarray) -> np.ndarray:
    """Sum ``X`` over the ranks of ``comm`` (``X`` itself when ``comm`` is None)."""
    return X if comm is None else np.asarray(comm.allreduce(X), dtype=np.float64)


def append_near_nullspace(P_local, B_local, *, comm=None, rtol: float = 1e-10) -> np.ndarray:
    """Append a near-nullspace to a coarse basis, orthonormalised against it.

    ``Y = (I - P (P^T P)^-1 P^T) B`` (twice, for stability), then the directions of ``Y``
    whose squared norm exceeds ``rtol`` times the largest ``||b_j||^2`` are orthonormalised
    (eigendecomposition of ``Y^T Y``) and appended: ``[P, Q]``. ``P``'s columns are kept as
    they are; a candidate already in ``span(P)`` adds nothing. Collective (three small
    all-reduces) when ``comm`` is given.

    Parameters
    ----------
    P_local : numpy.ndarray, shape (n_local, r)
        This rank's rows of a full-rank basis.
    B_local : array_like, shape (n_local, m)
        This rank's rows of the near-nullspace (e.g. rigid-body modes).
    comm : mpi4py communicator, optional
    rtol : float, optional

    Returns
    -------
    numpy.ndarray, shape (n_local, r + m'), ``m' <= m``

    Examples
    --------
    >>> import numpy as np
    >>> P = np.eye(4)[:, :2]
    >>> append_near_nullspace(P, np.ones((4, 1))).round(3)
    array([[1.   , 0.   , 0.   ],
           [0.   , 1.   , 0.   ],
           [0.   , 0.   , 0.707],
           [0.   , 0.   , 0.707]])
    """
    P = np.asarray(P_local, dtype=np.float64)
    Y = np.array(B_local, dtype=np.float64)
    Gp = allsum(comm, P.T @ P)
    bscale = float(np.max(allsum(comm, np.einsum("ij,ij->j", Y, Y)), initial=0.0))
    cho = sla.cho_factor(Gp, lower=True)
    for _ in range(2):
        Y -= P @ sla.cho_solve(cho, allsum(comm, P.T @ Y))
    lam, V = np.linalg.eigh(allsum(comm, Y.T @ Y))
    keep = np.flatnonzero(lam > rtol * bscale)[::-1]
    if keep.size == 0:
        return P
    return np.hstack([P, Y @ (V[:, keep] / np.sqrt(lam[keep]))])
