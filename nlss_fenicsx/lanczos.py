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

__all__ = ["lambda_max_estimate", "start_vector"]


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
