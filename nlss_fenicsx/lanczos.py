"""The largest eigenvalue of ``D^-1 A`` by a few Lanczos steps, on any communicator.

The smoother weights of :mod:`nlss_fenicsx.relaxation` (which re-exports both functions)
rest on this estimate. It needs only a product with ``A`` and a dot product, so the PETSc PC
runs it distributed (``MatMult`` and an all-reduced dot) with the same numbers on any
number of ranks: the start vector :func:`start_vector` depends on the global index only.
Source: Saad, *Iterative Methods for Sparse Linear Systems*, 2nd ed., section 6.6
(Lanczos), and Parlett, *The Symmetric Eigenvalue Problem*, ch. 13 (Ritz values lie in the
spectrum's hull, so the largest one approaches ``lambda_max`` from below).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.linalg as sla

from nlss_fenicsx._checks import check_int

__all__ = ["lambda_max_estimate", "lambda_max_preconditioned", "start_vector"]


def start_vector(n: int, lo: int = 0, hi: int | None = None, *, seed: int = 0) -> np.ndarray:
    """Rows ``lo:hi`` of a fixed pseudo-random start vector of length ``n``.

    Entry ``i`` depends on ``i`` and ``seed`` only, so every partition of the rows over
    MPI ranks sees the same global vector (and the same Lanczos estimate).

    Parameters
    ----------
    n : int
        Global length.
    lo, hi : int, optional
        This rank's row range (default: all rows).
    seed : int, optional
        Selects the vector.

    Returns
    -------
    numpy.ndarray, shape (hi - lo,), float64, entries in (-1, 1)

    Examples
    --------
    >>> import numpy as np
    >>> full = start_vector(10)
    >>> bool(np.array_equal(np.r_[start_vector(10, 0, 4), start_vector(10, 4, 10)], full))
    True
    """
    seed = check_int("seed", seed, 0)
    hi = n if hi is None else hi
    i = np.arange(lo, hi, dtype=np.uint64)
    # A 64-bit integer hash (splitmix64) of (seed, i): exact, the same on every machine.
    with np.errstate(over="ignore"):  # unsigned arithmetic wraps modulo 2^64, as meant
        z = i + np.uint64(0x9E3779B97F4A7C15) * np.uint64(seed + 1)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) * (2.0 / 2.0**53) - 1.0


def lambda_max_estimate(
    matvec: Callable[[np.ndarray], np.ndarray],
    Dinv,
    x0,
    *,
    dot: Callable[[np.ndarray, np.ndarray], float] | None = None,
    steps: int = 12,
) -> float:
    """Estimate ``lambda_max(D^-1 A)`` of an SPD ``A`` with a few Lanczos steps.

    Lanczos on the symmetric ``C = D^-1/2 A D^-1/2`` (similar to ``D^-1 A``), started
    from ``x0``; the result is the largest eigenvalue of the ``steps x steps``
    tridiagonal matrix. This Ritz value lies in the spectrum's hull, so it approaches
    ``lambda_max`` **from below**; on the test matrices of this package (P1 diffusion,
    anisotropic, screened Poisson, random SPD, hexahedral-like spectra) 12 steps are
    within 5 % of it, which :data:`SAFETY` covers. Stops early (exactly) when the Krylov
    space becomes invariant.

    Comm-agnostic: ``matvec`` and ``dot`` are the only operations on vectors, so a
    distributed caller passes its local product and an all-reduced dot product, and every
    rank returns the same value (every check below goes through ``dot``, so it is
    collective too).

    Parameters
    ----------
    matvec : callable
        ``x_local -> (A x)_local``, shape ``(n_local,)`` to ``(n_local,)``.
    Dinv : array_like, shape (n_local,)
        This rank's rows of ``D^-1`` (positive, e.g. from :func:`inverse_diagonal`).
    x0 : array_like, shape (n_local,)
        This rank's rows of a nonzero start vector (e.g. :func:`start_vector`).
    dot : callable, optional
        ``(u_local, v_local) -> global float`` (default :func:`numpy.dot`, serial).
    steps : int, optional
        Lanczos steps, i.e. products with ``A`` (default 12).

    Returns
    -------
    float
        The estimate, ``0 < estimate <= lambda_max(D^-1 A)`` (up to rounding).

    Raises
    ------
    ValueError
        If ``Dinv`` is not positive and finite, ``x0`` is zero or not finite, ``steps < 1``,
        or ``matvec`` returns NaN/Inf; or if the estimate is not positive (``A`` is not
        SPD).

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> A = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(100, 100), format="csr")
    >>> lam = lambda_max_estimate(A.__matmul__, 1 / A.diagonal(), start_vector(100))
    >>> exact = 1 + np.cos(np.pi / 101)  # lambda_max(D^-1 A) of the 1-D Laplacian
    >>> bool(0.95 * exact < lam <= exact)
    True
    """
    steps = check_int("steps", steps, 1)
    if dot is None:

        def dot(u, v):
            return float(np.dot(u, v))

    Dinv = np.asarray(Dinv, dtype=np.float64).reshape(-1)
    v = np.array(x0, dtype=np.float64).reshape(-1)
    if v.shape != Dinv.shape:
        raise ValueError(f"expected x0 of shape {Dinv.shape} to match Dinv, got {v.shape}")
    # Counted through dot, so that every rank sees the same (global) numbers.
    bad = (~np.isfinite(Dinv) | (Dinv <= 0.0)).astype(np.float64)
    nbad = dot(bad, bad)
    if nbad:
        raise ValueError(f"expected a positive, finite Dinv, got {int(nbad)} bad entries")
    finite = np.isfinite(v)
    v[~finite] = 0.0
    nnonfinite = dot(1.0 - finite, 1.0 - finite)
    norm = np.sqrt(dot(v, v))
    if nnonfinite or not norm > 0.0:
        raise ValueError("expected a nonzero, finite start vector x0")
    h = np.sqrt(Dinv)
    v /= norm
    v_prev = np.zeros_like(v)
    alphas: list[float] = []
    betas: list[float] = []
    beta = 0.0
    for _ in range(steps):
        w = h * np.asarray(matvec(h * v), dtype=np.float64).reshape(-1)
        with np.errstate(invalid="ignore", over="ignore"):  # reported below, on every rank
            alpha = dot(v, w)
            w -= alpha * v
            w -= beta * v_prev
            beta = np.sqrt(max(dot(w, w), 0.0))
        if not (np.isfinite(alpha) and np.isfinite(beta)):
            raise ValueError("the product with A returned NaN or Inf (expected a finite A)")
        alphas.append(alpha)
        if beta <= 1e-12 * max(abs(alpha), 1e-300):  # invariant subspace: exact
            break
        betas.append(beta)
        v_prev, v = v, w / beta
    theta = float(
        sla.eigvalsh_tridiagonal(
            np.array(alphas), np.array(betas[: len(alphas) - 1])
        ).max()
    )
    if not theta > 0.0:
        raise ValueError(
            f"expected an SPD A, got a Lanczos estimate lambda_max(D^-1 A) = {theta:.3e} <= 0"
        )
    return theta


def _serial_dot(u, v) -> float:
    return float(np.dot(u, v))


def lambda_max_preconditioned(
    matvec: Callable[[np.ndarray], np.ndarray],
    precond: Callable[[np.ndarray], np.ndarray],
    x0,
    *,
    dot: Callable[[np.ndarray, np.ndarray], float] | None = None,
    steps: int = 10,
) -> float:
    """Estimate ``lambda_max(M^-1 A)`` for SPD ``A`` and ``M`` by CG-Lanczos.

    ``steps`` iterations of preconditioned CG on ``A x = x0`` from ``x = 0``; their
    coefficients ``alpha_j, beta_j`` define the Lanczos tridiagonal matrix of ``M^-1 A``
    (in the ``M`` inner product), whose largest eigenvalue is returned (Saad, *Iterative
    Methods for Sparse Linear Systems*, 2nd ed., section 6.7.3; PETSc's
    ``KSPComputeEigenvalues`` for CG uses the same relation). Like every Ritz value it lies
    in the spectrum's hull: it approaches ``lambda_max`` from below. Stops early (exactly)
    when the residual vanishes. Comm-agnostic as :func:`lambda_max_estimate`.

    Parameters
    ----------
    matvec : callable
        ``x_local -> (A x)_local``.
    precond : callable
        ``r_local -> (M^-1 r)_local`` (e.g. an incomplete Cholesky solve).
    x0 : array_like, shape (n_local,)
        Nonzero start (right-hand side), e.g. :func:`start_vector`.
    dot : callable, optional
        ``(u_local, v_local) -> global float`` (default :func:`numpy.dot`).
    steps : int, optional
        CG steps (products with ``A`` and applications of ``M^-1``), default 10.

    Returns
    -------
    float
        The estimate, ``0 < estimate <= lambda_max(M^-1 A)`` (up to rounding).

    Raises
    ------
    ValueError
        The estimate is not usable: ``x0`` zero or not finite, a NaN/Inf product, or
        ``r^T M^-1 r <= 0`` (``M`` not positive definite) or ``p^T A p <= 0`` (``A`` not
        positive definite) at some step; the message names the step.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> A = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(100, 100), format="csr")
    >>> d = A.diagonal()  # M = D: the same quantity as lambda_max_estimate
    >>> lam = lambda_max_preconditioned(A.__matmul__, lambda r: r / d, start_vector(100),
    ...                                 steps=12)
    >>> exact = 1 + np.cos(np.pi / 101)
    >>> bool(0.95 * exact < lam <= exact)
    True
    """
    steps = check_int("steps", steps, 1)
    dot = _serial_dot if dot is None else dot
    r = np.array(x0, dtype=np.float64).reshape(-1)
    finite = np.isfinite(r)
    r[~finite] = 0.0
    rr0 = dot(r, r)
    if dot(1.0 - finite, 1.0 - finite) or not rr0 > 0.0:
        raise ValueError("expected a nonzero, finite start vector x0")
    diag: list[float] = []
    off: list[float] = []
    alpha_prev = beta_prev = None
    z = np.asarray(precond(r), dtype=np.float64).reshape(-1)
    rz = dot(r, z)
    p = z.copy()
    for k in range(steps):
        if not (np.isfinite(rz) and rz > 0.0):
            raise ValueError(f"the lambda_max(M^-1 A) estimate is not usable: r^T M^-1 r = "
                             f"{rz:.3e} at CG step {k} (expected a positive definite M)")
        Ap = np.asarray(matvec(p), dtype=np.float64).reshape(-1)
        p_Ap = dot(p, Ap)
        if not (np.isfinite(p_Ap) and p_Ap > 0.0):
            raise ValueError(f"the lambda_max(M^-1 A) estimate is not usable: p^T A p = "
                             f"{p_Ap:.3e} at CG step {k} (expected an SPD A)")
        alpha = rz / p_Ap
        diag.append(1.0 / alpha + (beta_prev / alpha_prev if k else 0.0))
        r = r - alpha * Ap
        if dot(r, r) <= 1e-28 * rr0:  # the Krylov space is invariant: exact
            break
        z = np.asarray(precond(r), dtype=np.float64).reshape(-1)
        rz_new = dot(r, z)
        beta = rz_new / rz
        if k < steps - 1:
            if not (np.isfinite(beta) and beta > 0.0):
                raise ValueError(f"the lambda_max(M^-1 A) estimate is not usable: r^T M^-1 r "
                                 f"= {rz_new:.3e} at CG step {k + 1} (expected a positive "
                                 "definite M)")
            off.append(np.sqrt(beta) / alpha)
        p = z + beta * p
        rz, alpha_prev, beta_prev = rz_new, alpha, beta
    theta = float(sla.eigvalsh_tridiagonal(np.array(diag), np.array(off[: len(diag) - 1])).max())
    if not (np.isfinite(theta) and theta > 0.0):
        raise ValueError(f"the lambda_max(M^-1 A) estimate is not usable: {theta!r}")
    return theta
