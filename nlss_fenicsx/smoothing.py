"""Jacobi smoothing of random vectors: the matrix S of smooth test vectors.

NeuraLSP (paper section 3.3) samples the near-nullspace of ``A`` by smoothing ``K``
random vectors with damped Jacobi, ``S = (I - omega D^{-1} A)^{s1} S0``. Following the
authors' public code, every column has unit 2-norm in the result. A sweep is linear and
rescaling a column commutes with it, so normalising after every sweep (the authors' code)
and normalising once at the end give the same S up to rounding; we normalise every
``RENORM_EVERY`` sweeps and at the end, which keeps any number of sweeps clear of under-
and overflow at a fraction of the cost (the column norms are a third of the work of a
sweep).
"""

from __future__ import annotations

import numbers

import numpy as np
import scipy.sparse as sp

__all__ = ["RENORM_EVERY", "gaussian_start", "jacobi_inverse_diagonal", "normalize_columns",
           "smoothed_vectors"]

# A sweep changes a column's norm by a bounded factor (|1 - omega*lambda| over the spectrum
# of D^-1 A, below 2 for the matrices here), so 8 sweeps stay far from float32 limits.
RENORM_EVERY = 8


def jacobi_inverse_diagonal(A, *, dtype=np.float64) -> np.ndarray:
    """Return ``1 / diag(A)`` after checking that the diagonal is positive and finite.

    Parameters
    ----------
    A : scipy.sparse matrix or array, or numpy.ndarray, shape (n, n)
        Square matrix whose diagonal drives a Jacobi smoother.
    dtype : numpy floating dtype, optional
        dtype of the returned vector.

    Returns
    -------
    numpy.ndarray, shape (n,)
        The inverse diagonal ``D^{-1}``.

    Raises
    ------
    ValueError
        If ``A`` is not square, or any diagonal entry is nonpositive or not finite.

    Examples
    --------
    >>> import numpy as np
    >>> jacobi_inverse_diagonal(np.diag([2.0, 4.0]))
    array([0.5 , 0.25])
    """
    shape = getattr(A, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"expected a square 2-D matrix A, got shape {shape}")
    diag = np.asarray(A.diagonal(), dtype=np.float64)
    bad = ~np.isfinite(diag) | (diag <= 0.0)
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            "expected a positive, finite diagonal of A (Jacobi needs D > 0), got "
            f"{int(bad.sum())} bad entries, first A[{i}, {i}] = {float(diag[i])!r}"
        )
    return (1.0 / diag).astype(dtype, copy=False)


def gaussian_start(rng, n: int, K: int) -> np.ndarray:
    """The random start block: ``n x K`` independent standard normal draws, float32.

    Drawn by the Box-Muller transform from ``n*K`` float32 uniforms of ``rng``: an exact
    transform to the normal distribution, about 3x faster than NumPy's float64 ziggurat
    at this size (0.7 vs 2.4 ms for 4225 x 72), which was 40 % of the smoothing. Every
    route (serial, distributed, training data) draws its start here, so a seed gives the
    same block whatever the working precision or number of ranks. Values are bounded by
    ``sqrt(-2 log 2^-24)`` (about 5.8), which smoothing cannot tell apart from a normal
    tail.

    Parameters
    ----------
    rng : numpy.random.Generator, int or None
        Passed to :func:`numpy.random.default_rng`.
    n, K : int
        Shape of the block.

    Returns
    -------
    numpy.ndarray, shape (n, K), float32, C-contiguous

    Examples
    --------
    >>> Z = gaussian_start(0, 2000, 50)
    >>> Z.dtype, abs(float(Z.mean())) < 0.01, abs(float(Z.std()) - 1) < 0.01
    (dtype('float32'), True, True)
    """
    size = int(n) * int(K)
    half = (size + 1) // 2
    u = np.random.default_rng(rng).random((2, half), dtype=np.float32)
    radius = np.log1p(-u[0])  # 1 - u in (0, 1]: the logarithm is finite
    radius *= -2.0
    np.sqrt(radius, out=radius)
    angle = u[1]
    angle *= np.float32(2.0 * np.pi)
    out = np.empty(2 * half, dtype=np.float32)
    np.multiply(radius, np.cos(angle), out=out[:half])
    np.multiply(radius, np.sin(angle), out=out[half:])
    return out[:size].reshape(int(n), int(K))


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"expected {name} to be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"expected {name} >= {minimum}, got {name} = {value}")
    return int(value)


def smoothed_vectors(
    A,
    K: int,
    *,
    sweeps: int = 10,
    omega: float = 0.66,
    rng: np.random.Generator | int | None = None,
    dtype=np.float64,
    S0: np.ndarray | None = None,
) -> np.ndarray:
    """Smooth ``K`` standard Gaussian vectors with damped Jacobi.

    Each sweep is one sparse-times-dense block product with the Jacobi iteration matrix
    ``M = I - omega D^{-1} A`` (formed once, same pattern as ``A``), ``S <- M S``, and
    every ``RENORM_EVERY`` sweeps and at the end every column is rescaled to unit 2-norm.

    Parameters
    ----------
    A : scipy.sparse matrix or array (CSR preferred), or numpy.ndarray, shape (n, n)
        The system matrix; its diagonal must be positive and finite.
    K : int
        Number of vectors, ``1 <= K <= n``.
    sweeps : int, optional
        Number of Jacobi sweeps ``s1 >= 0`` (default 10, as in the paper's code). With
        ``sweeps=0`` the raw Gaussian start is returned, not normalised.
    omega : float, optional
        Jacobi damping, ``omega > 0`` (default 0.66).
    rng : numpy.random.Generator, int or None, optional
        Source of the starting vectors, passed to :func:`gaussian_start` (float32
        Box-Muller draws, cast to ``dtype``), so a given seed gives the same start
        whatever ``dtype`` is.
    dtype : numpy floating dtype, optional
        Working and output precision (float64 or float32).
    S0 : numpy.ndarray, optional
        A given start block ``(n, K)`` instead of the Gaussian draw (``rng`` is ignored).

    Returns
    -------
    numpy.ndarray, shape (n, K), C-contiguous (row-major)
        The smoothed vectors ``S``, one per column. Row-major keeps SciPy's CSR-times-dense
        kernel copy-free and makes a contiguous row block per MPI rank. A column that the
        smoother annihilates exactly stays zero instead of becoming NaN.

    Raises
    ------
    ValueError
        On a non-square ``A``, NaN or Inf in ``A`` (or ``S0``), ``K < 1`` or ``K > n``,
        ``sweeps < 0``, ``omega <= 0`` or non-finite, a nonpositive diagonal, or a
        non-floating ``dtype``.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> A = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(50, 50), format="csr")
    >>> S = smoothed_vectors(A, 4, rng=0)
    >>> S.shape, bool(np.allclose(np.linalg.norm(S, axis=0), 1.0))
    ((50, 4), True)
    """
    K = _check_int("K", K, 1)
    sweeps = _check_int("sweeps", sweeps, 0)
    omega = float(omega)
    if not (np.isfinite(omega) and omega > 0.0):
        raise ValueError(f"expected a finite omega > 0, got omega = {omega!r}")
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"expected a real floating dtype (float32 or float64), got {dtype}")
    Dinv = jacobi_inverse_diagonal(A, dtype=dtype)
    if sp.issparse(A):
        A = A.tocsr().astype(dtype, copy=False)
        finite = np.all(np.isfinite(A.data))
    else:
        A = np.asarray(A, dtype=dtype)
        finite = np.all(np.isfinite(A))
    if not finite:
        raise ValueError("expected A to have finite entries, got NaN or Inf in A")

    n = A.shape[0]
    if K > n:
        raise ValueError(f"expected K <= n = {n} (rows of A), got K = {K}")
    if S0 is None:
        S = gaussian_start(rng, n, K).astype(dtype, copy=False)
    else:
        S = np.array(S0, dtype=dtype, copy=True)
        if S.shape != (n, K):
            raise ValueError(f"expected S0 of shape ({n}, {K}), got shape {S.shape}")
        if not np.all(np.isfinite(S)):
            raise ValueError("expected S0 to have finite entries, got NaN or Inf")
    S = np.ascontiguousarray(S)
    if sweeps == 0:
        return S
    M = jacobi_iteration_matrix(A, omega, Dinv)
    for k in range(1, sweeps + 1):
        S = M @ S  # one pass over the block per sweep (a fused multiply and subtract)
        if k % RENORM_EVERY == 0 or k == sweeps:
            normalize_columns(S)
    return np.ascontiguousarray(S)


def jacobi_iteration_matrix(A, omega: float, Dinv: np.ndarray):
    """``M = I - omega D^{-1} A`` in ``Dinv``'s dtype: CSR with ``A``'s pattern (plus the
    diagonal) for sparse ``A``, a dense array otherwise."""
    scale = -omega * Dinv
    if sp.issparse(A):
        A = A.tocsr()
        data = A.data * np.repeat(scale, np.diff(A.indptr))
        M = sp.csr_matrix((data.astype(Dinv.dtype, copy=False), A.indices, A.indptr),
                          shape=A.shape)
        M = M + sp.eye(A.shape[0], dtype=Dinv.dtype, format="csr")
        return M.tocsr()
    M = np.asarray(A) * scale[:, None]
    M[np.diag_indices_from(M)] += 1.0
    return M.astype(Dinv.dtype, copy=False)


def normalize_columns(S: np.ndarray) -> np.ndarray:
    """Scale each column of ``S`` to unit 2-norm in place (a zero column stays zero)."""
    norms = np.sqrt(np.einsum("ij,ij->j", S, S))
    norms[norms == 0.0] = 1.0
    np.divide(S, norms, out=S)
    return S
