"""Coarse bases for the two-grid preconditioner.

* :func:`svd_basis`: the leading ``r`` left singular vectors of the smoothed vectors
  ``S`` (the target that the NLSS model learns; paper section 3.3), orthonormal.
* :func:`svd_basis_from_gram`: the same basis from the ``K x K`` Gram matrix ``S^T S``,
  the route to take when ``S`` is split by rows over MPI ranks.
* :func:`sa_amg_basis`: PyAMG's smoothed-aggregation prolongator, the paper's SA-AMG
  baseline (sparse, not orthonormal; the Galerkin two-grid does not need orthonormality).

Sign convention. Singular vectors are defined up to sign. Both SVD routes fix it on the
right singular vectors: the largest-magnitude entry of every ``v_j`` is made positive and
``u_j = S v_j / sigma_j``. ``V`` is small and replicated, so the convention needs no
communication and the serial and distributed routes agree column by column.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

__all__ = ["svd_basis", "svd_basis_from_gram", "sa_amg_basis"]


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


def _as_2d_finite(name: str, X) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"expected {name} to be 2-D, got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError(f"expected {name} to have finite entries, got NaN or inf")
    return X


def svd_basis(S, r: int) -> np.ndarray:
    """Leading ``r`` left singular vectors of ``S``, orthonormal.

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
        If ``S`` is not 2-D or not finite, or ``r`` is outside ``[1, min(n, K)]``.

    Examples
    --------
    >>> import numpy as np
    >>> S = np.random.default_rng(0).standard_normal((100, 8))
    >>> P = svd_basis(S, 3)
    >>> P.shape, bool(np.allclose(P.T @ P, np.eye(3)))
    ((100, 3), True)
    """
    S = _as_2d_finite("S", S)
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
    """Local row block of ``U_r`` from the global Gram matrix: the distributed route.

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
    G = _as_2d_finite("G", G)
    S_local = _as_2d_finite("S_local", S_local)
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


def sa_amg_basis(A, *, seed: int = 0) -> sp.csr_matrix:
    """First-level prolongator of PyAMG smoothed aggregation (the paper's SA-AMG baseline).

    Calls ``pyamg.smoothed_aggregation_solver(A, B=ones((n, 1)), max_levels=2,
    max_coarse=10)`` and returns ``levels[0].P``. PyAMG estimates the spectral radius
    for its Jacobi prolongation smoother from ``numpy.random``'s global state; this
    function seeds that state with ``seed`` for the call and restores it afterwards, so
    the result is deterministic and the caller's global RNG is left untouched (not
    thread-safe with other users of the global state).

    Parameters
    ----------
    A : scipy.sparse matrix or array, shape (n, n)
        SPD system matrix (copied to float64 CSR; PyAMG never sees the caller's object).
    seed : int, optional
        Seed for PyAMG's randomised spectral-radius estimate.

    Returns
    -------
    scipy.sparse.csr_matrix, shape (n, nc)
        The smoothed prolongator, ``nc < n``. Not orthonormal.

    Raises
    ------
    ValueError
        If ``A`` is not square, or too small for PyAMG to build a coarse level.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> A = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(100, 100), format="csr")
    >>> P = sa_amg_basis(A)
    >>> P.shape[0], P.shape[1] < 100
    (100, True)
    """
    import pyamg  # heavy import, only needed for this baseline

    shape = getattr(A, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"expected a square 2-D matrix A, got shape {shape}")
    A = sp.csr_matrix(A, dtype=np.float64, copy=True)
    # Stored zeros (dolfinx keeps the pattern of the zeroed Dirichlet rows and columns)
    # would count as strong connections: a boundary node could then form an aggregate of
    # its own whose candidate vector smooths to 0, i.e. a zero column of P.
    A.eliminate_zeros()
    n = A.shape[0]
    # PyAMG draws from the legacy global RNG; seed it for this call only.
    state = np.random.get_state()  # noqa: NPY002
    try:
        np.random.seed(seed)  # noqa: NPY002
        ml = pyamg.smoothed_aggregation_solver(A, B=np.ones((n, 1)), max_levels=2, max_coarse=10)
    finally:
        np.random.set_state(state)  # noqa: NPY002
    if len(ml.levels) < 2:
        raise ValueError(
            f"expected A large enough for a coarse level (n > max_coarse = 10), got n = {n}"
        )
    return sp.csr_matrix(ml.levels[0].P)
