"""Jacobi smoothing of random vectors: the matrix S of smoothed (smooth test) vectors.

NeuraLSP (paper section 3.3) samples the near-nullspace of ``A`` by smoothing ``K``
random vectors with damped Jacobi, ``S = G^{s1} S0`` with the Jacobi iteration matrix
``G = I - omega D^-1 A``. ``S`` always means these smoothed vectors in this package (the
level smoothers of the two-grid cycle live in :mod:`nlss_fenicsx.relaxation`). Following the
authors' public code, every column has unit 2-norm in the result. A sweep is linear and
rescaling a column commutes with it, so normalising after every sweep (the authors' code)
and normalising once at the end give the same S up to rounding; we normalise every
``RENORM_EVERY`` sweeps and at the end, which keeps any number of sweeps clear of under-
and overflow at a fraction of the cost (the column norms are a third of the work of a
sweep).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from nlss_fenicsx._checks import check_int, check_real_array, matrix_entries
from nlss_fenicsx.relaxation import (
    inverse_diagonal,
    jacobi_weight,
    lambda_max_estimate,
    start_vector,
)

__all__ = ["RENORM_EVERY", "gaussian_start", "jacobi_iteration_matrix", "normalize_columns",
           "smoothed_vectors"]

# A sweep changes a column's norm by a bounded factor (|1 - omega*lambda| over the spectrum
# of D^-1 A, below 2 for the matrices here), so 8 sweeps stay far from float32 limits.
RENORM_EVERY = 8


def gaussian_start(rng, n: int, K: int) -> np.ndarray:
    """Draw the random start block: ``n x K`` independent standard normal values, float32.

    Drawn by the Box-Muller transform (Box and Muller, 1958) from ``n*K`` float32
    uniforms of ``rng``: an exact transform to the normal distribution, cheaper than
    NumPy's float64 ziggurat for blocks of this size. Every
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
    if isinstance(rng, int | np.integer) and not isinstance(rng, bool) and rng < 0:
        raise ValueError(f"expected rng to be a seed >= 0, a Generator or None, got {rng!r}")
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


def smoothed_vectors(
    A,
    K: int,
    *,
    sweeps: int = 10,
    omega: float | str = 0.66,
    rng: np.random.Generator | int | None = None,
    dtype=np.float64,
    S0: np.ndarray | None = None,
) -> np.ndarray:
    """Smooth ``K`` standard Gaussian vectors with damped Jacobi: the matrix ``S``.

    Each sweep is one sparse-times-dense block product with the Jacobi iteration matrix
    ``G = I - omega D^-1 A`` (formed once, same pattern as ``A``), ``S <- G S``, and
    every ``RENORM_EVERY`` sweeps and at the end every column is rescaled to unit 2-norm
    (paper section 3.3; the authors' code for the normalisation).

    Parameters
    ----------
    A : scipy.sparse matrix or array (CSR preferred), or numpy.ndarray, shape (n, n)
        The real system matrix; its diagonal must be positive and finite.
    K : int
        Number of vectors, ``1 <= K <= n``.
    sweeps : int, optional
        Number of Jacobi sweeps ``s1 >= 0`` (default 10, as in the paper's code). With
        ``sweeps=0`` the raw Gaussian start is returned, not normalised.
    omega : float or "auto", optional
        Jacobi weight, ``omega > 0`` (default 0.66, the paper's; it defines the ``S`` the
        learned models were trained on). ``"auto"`` takes
        :func:`~nlss_fenicsx.relaxation.jacobi_weight` of a Lanczos estimate of
        ``lambda_max(D^-1 A)``: 0.66 wherever that converges, a smaller safe weight
        otherwise (with a divergent weight ``S`` fills with the oscillatory modes).
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
        On a non-square, empty or complex ``A`` (or a ``LinearOperator``), NaN or Inf in
        ``A`` (or ``S0``), ``K < 1`` or ``K > n``, ``sweeps < 0``, ``omega`` not
        ``"auto"`` and not finite and positive, a nonpositive diagonal, a non-floating
        ``dtype``, or if the smoothed vectors stop being finite (a weight far beyond
        ``2 / lambda_max(D^-1 A)``, e.g. ``omega = 1e300``).

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> A = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(50, 50), format="csr")
    >>> S = smoothed_vectors(A, 4, rng=0)
    >>> S.shape, bool(np.allclose(np.linalg.norm(S, axis=0), 1.0))
    ((50, 4), True)
    """
    K = check_int("K", K, 1)
    sweeps = check_int("sweeps", sweeps, 0)
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"expected a real floating dtype (float32 or float64), got {dtype}")
    A = matrix_entries(A, dtype=dtype)
    Dinv = inverse_diagonal(A, dtype=dtype)
    if isinstance(omega, str) and omega == "auto":
        lam = lambda_max_estimate(A.__matmul__, Dinv, start_vector(A.shape[0]))
        omega = jacobi_weight("auto", lam)[0]
    elif (isinstance(omega, str | bool) or not isinstance(omega, int | float | np.floating
                                                          | np.integer)
          or not np.isfinite(float(omega)) or not float(omega) > 0.0):
        raise ValueError(f"expected omega = 'auto' or a finite omega > 0, got omega = {omega!r}")
    omega = float(omega)

    n = A.shape[0]
    if K > n:
        raise ValueError(f"expected K <= n = {n} (rows of A), got K = {K}")
    if S0 is None:
        S = gaussian_start(rng, n, K).astype(dtype, copy=False)
    else:
        S = check_real_array("S0", S0, ndim=2).astype(dtype)
        if S.shape != (n, K):
            raise ValueError(f"expected S0 of shape ({n}, {K}), got shape {S.shape}")
    S = np.ascontiguousarray(S)
    if sweeps == 0:
        return S
    G = jacobi_iteration_matrix(A, omega, Dinv)
    for k in range(1, sweeps + 1):
        S = G @ S  # one pass over the block per sweep (a fused multiply and subtract)
        if (k % RENORM_EVERY == 0 or k == sweeps) and not _renormalise(S):
            raise ValueError(
                f"the smoothed vectors S are not finite after {k} Jacobi sweeps with omega = "
                f"{omega:g} (expected omega < 2 / lambda_max(D^-1 A); use omega = 'auto')"
            )
    return np.ascontiguousarray(S)


def jacobi_iteration_matrix(A, omega: float, Dinv: np.ndarray):
    """Form the Jacobi iteration matrix ``G = I - omega D^-1 A`` in ``Dinv``'s dtype.

    Parameters
    ----------
    A : scipy.sparse matrix or numpy.ndarray, shape (n, n)
    omega : float
    Dinv : numpy.ndarray, shape (n,)
        ``1 / diag(A)``.

    Returns
    -------
    scipy.sparse.csr_matrix (``A``'s pattern plus the diagonal) or numpy.ndarray, (n, n)
    """
    scale = -omega * Dinv
    if sp.issparse(A):
        A = A.tocsr()
        data = A.data * np.repeat(scale, np.diff(A.indptr))
        G = sp.csr_matrix((data.astype(Dinv.dtype, copy=False), A.indices, A.indptr),
                          shape=A.shape)
        G = G + sp.eye(A.shape[0], dtype=Dinv.dtype, format="csr")
        return G.tocsr()
    G = np.asarray(A) * scale[:, None]
    G[np.diag_indices_from(G)] += 1.0
    return G.astype(Dinv.dtype, copy=False)


def _renormalise(S: np.ndarray) -> bool:
    """Normalise the columns of ``S`` in place; False if a column norm is not finite."""
    norms = np.sqrt(np.einsum("ij,ij->j", S, S))
    if not np.all(np.isfinite(norms)):
        return False
    norms[norms == 0.0] = 1.0
    np.divide(S, norms, out=S)
    return True


def normalize_columns(S: np.ndarray) -> np.ndarray:
    """Scale each column of ``S`` to unit 2-norm in place (a zero column stays zero).

    Parameters
    ----------
    S : numpy.ndarray, shape (n, K), floating

    Returns
    -------
    numpy.ndarray
        ``S`` itself.

    Raises
    ------
    ValueError
        If a column norm is not finite (NaN or Inf in ``S``, or overflow).

    Examples
    --------
    >>> import numpy as np
    >>> normalize_columns(np.array([[3.0, 0.0], [4.0, 0.0]]))
    array([[0.6, 0. ],
           [0.8, 0. ]])
    """
    if not _renormalise(S):
        raise ValueError("expected finite columns of S, got a NaN, Inf or overflowing norm")
    return S
