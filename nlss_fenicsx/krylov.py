"""Preconditioned conjugate gradients stopped on the true residual (NumPy/SciPy).

Textbook PCG (Hestenes and Stiefel, 1952; Saad, *Iterative Methods for Sparse Linear
Systems*, 2nd ed., Algorithm 9.1) with the safeguards a reader of its result needs: the
stopping test and the history use the true residual ``||b - A x|| / ||b||``, breakdown
(``p^T A p <= 0`` or ``r^T M r <= 0``) is an error, not a silent wrong answer, and not
converging is reported in :class:`PCGInfo` (or raised on request).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from nlss_fenicsx._checks import check_int, reject_complex

__all__ = ["ConvergenceError", "IndefiniteError", "PCGInfo", "pcg"]


def _check_finite_matrix(A) -> None:
    """ValueError if a sparse or dense matrix holds NaN or Inf (O(nnz); operators pass)."""
    if sp.issparse(A):
        finite = np.all(np.isfinite(A.data))
    elif isinstance(A, np.ndarray):
        finite = np.all(np.isfinite(A))
    else:  # a LinearOperator: nothing to inspect
        return
    if not finite:
        raise ValueError("expected A to have finite entries, got NaN or Inf in A")


class IndefiniteError(ValueError):
    """PCG met ``p^T A p <= 0`` or ``r^T M r <= 0``: ``A`` or ``M`` is not SPD."""


class ConvergenceError(RuntimeError):
    """PCG stopped before reaching the requested tolerance (raised only on request).

    The :class:`PCGInfo` of the failed solve is available as ``err.info``.
    """

    def __init__(self, message: str, info: PCGInfo):
        super().__init__(message)
        self.info = info



@dataclass(frozen=True)
class PCGInfo:
    """Outcome of :func:`pcg`.

    Attributes
    ----------
    iterations : int
        CG steps taken (products with ``A p``).
    residuals : tuple of float
        Relative residuals ``||b - A x_k|| / ||b||`` for ``k = 0 .. iterations`` (true
        residuals; with ``residual="recursive"`` the recursively updated ones, except the
        last, which is always a true residual).
    converged : bool
        Whether the final true relative residual is below ``rtol``.
    reason : str
        ``"converged"``, ``"zero_rhs"`` (``b = 0``, so ``x = 0``), ``"maxiter"``, or
        ``"stagnated"`` (the true residual stayed above ``rtol`` after the recursive one
        passed it: the tolerance is below the attainable accuracy).
    rtol : float
        The requested tolerance.
    residual_kind : str
        ``"true"`` or ``"recursive"``: what ``residuals`` holds.
    """

    iterations: int
    residuals: tuple[float, ...]
    converged: bool
    reason: str
    rtol: float = 1e-6
    residual_kind: str = "true"

    @property
    def final_residual(self) -> float:
        """The last (true) relative residual."""
        return self.residuals[-1]

    def raise_if_failed(self) -> PCGInfo:
        """Raise :class:`ConvergenceError` unless converged; otherwise return ``self``.

        Examples
        --------
        >>> PCGInfo(3, (1.0, 0.5, 0.2, 0.1), False, "maxiter").raise_if_failed()
        Traceback (most recent call last):
        ...
        nlss_fenicsx.krylov.ConvergenceError: PCG did not reach rtol = 1e-06: maxiter \
after 3 iterations, final relative residual 1.000e-01
        """
        if not self.converged:
            raise ConvergenceError(
                f"PCG did not reach rtol = {self.rtol:g}: {self.reason} after "
                f"{self.iterations} iterations, final relative residual "
                f"{self.final_residual:.3e}",
                self,
            )
        return self


# Steps allowed after the recursive residual passed rtol while the true one did not.
_EXTRA_STEPS = 5


def _as_preconditioner(M, n: int) -> Callable[[np.ndarray], np.ndarray]:
    if M is None:
        fn = np.copy
    elif hasattr(M, "apply"):
        fn = M.apply
    elif isinstance(M, spla.LinearOperator):
        fn = M.matvec
    elif sp.issparse(M) or isinstance(M, np.ndarray):
        if M.shape != (n, n):
            raise ValueError(f"expected M of shape ({n}, {n}), got shape {M.shape}")
        fn = M.__matmul__
    elif callable(M):
        fn = M
    else:
        raise TypeError(
            "expected M to be None, an object with .apply, a LinearOperator, a matrix or "
            f"a callable, got {type(M).__name__}"
        )

    def apply(r: np.ndarray) -> np.ndarray:
        z = np.asarray(fn(r), dtype=np.float64)
        if z.size != n:
            raise ValueError(f"expected the preconditioner to return {n} values, got {z.shape}")
        return z.reshape(n)

    return apply


def pcg(
    A,
    b,
    M=None,
    *,
    x0=None,
    rtol: float = 1e-6,
    maxiter: int | None = None,
    residual: str = "true",
    check: bool = False,
) -> tuple[np.ndarray, PCGInfo]:
    """Preconditioned conjugate gradients, stopped on the true relative residual.

    Textbook PCG (Hestenes-Stiefel with a preconditioner) with the recursively updated
    residual driving the recurrence. Convergence means ``||b - A x|| / ||b|| < rtol``
    for the *true* residual. With ``residual="true"`` (default) the true residual is
    computed every iteration (one extra product with ``A``; small next to a two-grid
    cycle), and both the stopping test and the history use it. With
    ``residual="recursive"`` the history holds recursive residuals and the true residual
    is computed only once a recursive one is below ``rtol``.

    In both modes, once the recursive residual is below ``rtol`` but the true one is not
    (rounding has made them drift apart, so the true residual is near its attainable
    accuracy, about ``eps * cond(A)``), at most 5 more steps are taken, as in MATLAB's
    ``pcg``, with the true residual checked each step and the recurrence restarted from
    it whenever the recursive one is below ``rtol`` (residual replacement); then PCG
    stops with ``reason="stagnated"``. Internally the system is scaled by ``1 / ||b||``, so no scale
    of ``b`` under- or overflows.

    Not converging is not an error: ``info.converged`` is False and ``info.reason`` is
    ``"maxiter"`` or ``"stagnated"``; pass ``check=True`` (or call
    ``info.raise_if_failed()``) to raise :class:`ConvergenceError` instead.

    Parameters
    ----------
    A : scipy.sparse matrix, numpy.ndarray or LinearOperator, shape (n, n)
        SPD matrix (anything supporting ``A @ x``).
    b : array_like, shape (n,)
        Right-hand side.
    M : None, TwoGrid, LinearOperator, matrix or callable, optional
        SPD preconditioner, approximating ``A^{-1}``: an object with ``.apply``, a SciPy
        ``LinearOperator``, a matrix used as ``M @ r``, or a callable ``r -> z``.
        None means no preconditioner.
    x0 : array_like, shape (n,), optional
        Initial guess (default zero).
    rtol : float, optional
        Relative tolerance on the true residual, ``0 < rtol < 1`` (default 1e-6, as in
        the paper).
    maxiter : int, optional
        Maximum number of iterations (default ``10 n``).
    residual : {"true", "recursive"}, optional
        What the history holds and how often the true residual is computed (see above).
    check : bool, optional
        Raise :class:`ConvergenceError` if not converged (default False).

    Returns
    -------
    x : numpy.ndarray, shape (n,)
        The last iterate.
    info : PCGInfo
        Iterations, residual history, convergence flag and reason.

    Raises
    ------
    ValueError
        On bad shapes (an empty system included), parameters (``rtol`` outside (0, 1)),
        complex input, or non-finite inputs (NaN or Inf in ``b``, ``x0`` or a matrix
        ``A``).
    IndefiniteError
        If ``p^T A p <= 0`` (``A`` not SPD) or ``r^T M r <= 0`` (``M`` not SPD).
    FloatingPointError
        If NaN or inf appear during the iteration.
    ConvergenceError
        Only with ``check=True``, when not converged.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> A = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(20, 20), format="csr")
    >>> x, info = pcg(A, np.ones(20), rtol=1e-10)
    >>> info.converged, info.iterations, info.residuals[-1] < 1e-10
    (True, 10, True)
    """
    shape = getattr(A, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"expected a square operator A, got shape {shape}")
    n = shape[0]
    if n == 0:
        raise ValueError(f"expected a non-empty system, got A of shape {shape}")
    reject_complex("A", A)
    _check_finite_matrix(A)
    reject_complex("b", b)
    b = np.asarray(b, dtype=np.float64)
    if b.shape != (n,):
        raise ValueError(f"expected b of shape ({n},) to match A, got shape {b.shape}")
    if not np.all(np.isfinite(b)):
        raise ValueError("expected b to have finite entries, got NaN or inf")
    if isinstance(rtol, bool) or not isinstance(rtol, int | float | np.number):
        raise ValueError(f"expected rtol to be a number with 0 < rtol < 1, got {rtol!r}")
    rtol = float(rtol)
    if not 0.0 < rtol < 1.0:
        # rtol >= 1 would report x = 0 as converged.
        raise ValueError(f"expected 0 < rtol < 1, got rtol = {rtol!r}")
    maxiter = 10 * n if maxiter is None else check_int("maxiter", maxiter, 0)
    if residual not in ("true", "recursive"):
        raise ValueError(f"Unrecognized residual {residual!r}; expected 'true' or 'recursive'")
    true_history = residual == "true"
    apply_M = _as_preconditioner(M, n)

    def finish(x, hist, converged, reason):
        info = PCGInfo(len(hist) - 1, tuple(hist), converged, reason, rtol, residual)
        if check:
            info.raise_if_failed()
        return x, info

    bmax = float(np.max(np.abs(b)))
    if bmax == 0.0:
        return finish(np.zeros(n), [0.0], True, "zero_rhs")
    bnorm = bmax * float(np.linalg.norm(b / bmax))  # ||b|| without under- or overflow
    # Solve for x / ||b|| with b / ||b||: residual norms are then relative, and r^T z
    # cannot under- or overflow whatever the scale of b.
    b = b / bnorm
    if x0 is None:
        x = np.zeros(n)
        r = b.copy()
    else:
        reject_complex("x0", x0)
        x = np.array(x0, dtype=np.float64).reshape(-1)
        if x.shape != (n,) or not np.all(np.isfinite(x)):
            raise ValueError(f"expected a finite x0 of shape ({n},), got shape {np.shape(x0)}")
        x /= bnorm
        r = b - A @ x
    hist = [float(np.linalg.norm(r))]
    if hist[0] < rtol:
        return finish(x * bnorm, hist, True, "converged")

    def precondition(r):
        z = apply_M(r)
        rz = float(r @ z)
        if not np.isfinite(rz):
            raise FloatingPointError("PCG: the preconditioner returned NaN or inf")
        if rz <= 0.0:
            raise IndefiniteError(
                f"PCG breakdown: r^T M r = {rz:.3e} <= 0, the preconditioner M is not SPD"
            )
        return z, rz

    z, rz = precondition(r)
    p = z.copy()
    extra_steps = 0  # steps taken since the recursive residual first passed rtol
    for _ in range(maxiter):
        Ap = A @ p
        pap = float(p @ Ap)
        if not np.isfinite(pap):
            raise FloatingPointError("PCG: p^T A p is NaN or inf")
        if pap <= 0.0:
            raise IndefiniteError(f"PCG breakdown: p^T A p = {pap:.3e} <= 0, A is not SPD")
        alpha = rz / pap
        x += alpha * p
        r -= alpha * Ap
        rec = float(np.linalg.norm(r))
        if true_history:
            r_true = b - A @ x
            hist.append(float(np.linalg.norm(r_true)))
        else:
            hist.append(rec)
        if not np.isfinite(hist[-1]):
            raise FloatingPointError("PCG: the residual is NaN or inf")
        if true_history and hist[-1] < rtol:
            return finish(x * bnorm, hist, True, "converged")
        if rec < rtol or extra_steps:
            if not true_history:
                r_true = b - A @ x
                hist[-1] = float(np.linalg.norm(r_true))
                if hist[-1] < rtol:
                    return finish(x * bnorm, hist, True, "converged")
            # The recursive residual has drifted below the true one: the true residual is
            # near its attainable accuracy. Allow a few more steps (as MATLAB's pcg does),
            # restarting the recurrence from the true residual whenever the recursive one
            # is below rtol again (residual replacement), then call it stagnation.
            extra_steps += 1
            if extra_steps > _EXTRA_STEPS:
                return finish(x * bnorm, hist, False, "stagnated")
            if rec < rtol:
                r = r_true
        z, rz_new = precondition(r)
        p = z + (rz_new / rz) * p
        rz = rz_new
    if not true_history:
        hist[-1] = float(np.linalg.norm(b - A @ x))
    return finish(x * bnorm, hist, False, "maxiter")

