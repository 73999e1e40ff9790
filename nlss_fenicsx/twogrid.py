"""The two-grid preconditioner on a coarse basis ``P``, and preconditioned CG.

One application of :class:`TwoGrid` to a residual ``r`` (paper Algorithm 1, inner cycle,
started from ``x = 0``)::

    nu_pre  damped-Jacobi sweeps   x <- x + omega D^{-1} (r - A x)
    coarse correction              x <- x + P Ac^{-1} P^T (r - A x),   Ac = P^T A P
    nu_post damped-Jacobi sweeps   x <- x + omega D^{-1} (r - A x)

so ``x = B r`` with ``I - B A = E = S^nu_post (I - P Ac^{-1} P^T A) S^nu_pre`` and
``S = I - omega D^{-1} A``. For SPD ``A`` and ``nu_pre == nu_post`` the operator ``B`` is
symmetric (the post-smoother is the A-adjoint of the pre-smoother, and the coarse
correction is an A-orthogonal projection); it is positive definite when in addition the
smoother is A-norm convergent (``omega < 2 / lambda_max(D^{-1} A)``, true for
``omega = 0.66`` on diagonally dominant matrices).

Setup (``Ac`` and its dense Cholesky factor) is done once in the constructor; ``apply``
may then be called many times, on one vector or a block of vectors.
"""

from __future__ import annotations

import numbers
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from nlss_fenicsx.smoothing import jacobi_inverse_diagonal

__all__ = [
    "TwoGrid",
    "pcg",
    "PCGInfo",
    "NotSPDError",
    "IndefiniteError",
    "ConvergenceError",
]


class NotSPDError(ValueError):
    """The Galerkin coarse operator ``Ac = P^T A P`` is not symmetric positive definite."""


class IndefiniteError(ValueError):
    """PCG met ``p^T A p <= 0`` or ``r^T M r <= 0``: ``A`` or ``M`` is not SPD."""


class ConvergenceError(RuntimeError):
    """PCG stopped before reaching the requested tolerance (raised only on request).

    The :class:`PCGInfo` of the failed solve is available as ``err.info``.
    """

    def __init__(self, message: str, info: PCGInfo):
        super().__init__(message)
        self.info = info


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"expected {name} to be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"expected {name} >= {minimum}, got {name} = {value}")
    return int(value)


def _as_csr(A) -> sp.csr_matrix | sp.csr_array:
    shape = getattr(A, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"expected a square 2-D matrix A, got shape {shape}")
    if sp.issparse(A):
        A = A.tocsr().astype(np.float64, copy=False)
    else:
        A = sp.csr_matrix(np.asarray(A, dtype=np.float64))
    _check_finite_matrix(A)
    return A


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


class TwoGrid:
    """Two-grid preconditioner: damped Jacobi smoothing around a Galerkin coarse solve.

    Parameters
    ----------
    A : scipy.sparse matrix or array (CSR preferred), or numpy.ndarray, shape (n, n)
        SPD system matrix (symmetric to 1e-10 relative, positive finite diagonal).
    P : numpy.ndarray or scipy.sparse matrix, shape (n, r)
        Coarse basis (prolongator), full column rank; orthonormality is not needed.
        Dense ``P`` is kept dense, sparse ``P`` (e.g. from
        :func:`~nlss_fenicsx.coarse.sa_amg_basis`) is kept as CSR.
    nu_pre, nu_post : int, optional
        Numbers of pre- and post-smoothing sweeps (default 5 each, as in the paper).
        Equal values give a symmetric operator, as PCG requires.
    omega : float, optional
        Jacobi damping, ``omega > 0`` (default 0.66).

    Attributes
    ----------
    A, P : the operators (float64).
    Ac : numpy.ndarray, shape (r, r)
        The symmetrised dense coarse operator ``P^T A P``.
    timings : dict
        ``{"setup": seconds}`` for forming ``Ac`` and its Cholesky factor
        (:func:`time.perf_counter`; input validation is not included).

    Raises
    ------
    ValueError
        On inconsistent shapes, bad smoothing parameters, NaN or Inf in ``A`` or ``P``,
        a non-symmetric ``A`` or a nonpositive diagonal.
    NotSPDError
        If ``Ac`` is not (numerically) symmetric positive definite.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> n = 64
    >>> A = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(n, n), format="csr")
    >>> P = np.linalg.qr(np.random.default_rng(0).standard_normal((n, 8)))[0]
    >>> tg = TwoGrid(A, P)
    >>> x, info = pcg(A, np.ones(n), tg)
    >>> info.converged
    True
    """

    def __init__(self, A, P, *, nu_pre: int = 5, nu_post: int = 5, omega: float = 0.66):
        A = _as_csr(A)
        n = A.shape[0]
        self.nu_pre = _check_int("nu_pre", nu_pre, 0)
        self.nu_post = _check_int("nu_post", nu_post, 0)
        omega = float(omega)
        if not (np.isfinite(omega) and omega > 0.0):
            raise ValueError(f"expected a finite omega > 0, got omega = {omega!r}")
        self.omega = omega

        if sp.issparse(P):
            P = P.tocsr().astype(np.float64, copy=False)
            finite = np.all(np.isfinite(P.data))
        else:
            P = np.asarray(P, dtype=np.float64)
            finite = np.all(np.isfinite(P))
        if P.ndim != 2 or P.shape[0] != n:
            raise ValueError(
                f"expected P of shape (n, r) with n = {n} rows to match A ({n} x {n}), "
                f"got shape {P.shape}"
            )
        if not 1 <= P.shape[1] <= n:
            raise ValueError(f"expected P with 1 <= r <= n = {n} columns, got r = {P.shape[1]}")
        if not finite:
            raise ValueError("expected P to have finite entries, got NaN or inf")

        scale = abs(A).max() if A.nnz else 0.0
        asym = abs(A - A.T).max() if A.nnz else 0.0
        if not asym <= 1e-10 * scale:
            raise ValueError(
                "expected a symmetric A (|A - A^T| <= 1e-10 max|A|), "
                f"got max|A - A^T| = {asym:.3e} with max|A| = {scale:.3e}"
            )
        self._wDinv = omega * jacobi_inverse_diagonal(A)
        self.A, self.P = A, P
        self.n, self.r = n, P.shape[1]

        t0 = time.perf_counter()
        AP = A @ P
        Ac = P.T @ AP
        Ac = Ac.toarray() if sp.issparse(Ac) else np.asarray(Ac)
        Ac = 0.5 * (Ac + Ac.T)  # remove rounding asymmetry before Cholesky
        self.Ac = Ac
        self._cho = self._factor(Ac)
        self.timings = {"setup": time.perf_counter() - t0}

    def _factor(self, Ac: np.ndarray):
        r = Ac.shape[0]
        msg = (
            f"coarse operator Ac = P^T A P ({r} x {r}) is not symmetric positive definite; "
            "A must be SPD and P full column rank"
        )
        if not np.all(np.isfinite(Ac)):
            raise NotSPDError(f"{msg} (Ac has NaN or inf entries)")
        try:
            cho = sla.cho_factor(Ac, lower=True, check_finite=False)
        except np.linalg.LinAlgError as err:
            raise NotSPDError(f"{msg} (Cholesky failed: {err})") from err
        # The smallest pivot bounds lambda_min(Ac) from above: if it is lost in rounding,
        # Ac is numerically singular even though the factorisation ran to the end.
        pivots = np.diag(cho[0]) ** 2
        if not pivots.min() > r * np.finfo(np.float64).eps * np.max(np.diag(Ac)):
            raise NotSPDError(
                f"{msg} (numerically singular: smallest Cholesky pivot {pivots.min():.3e}, "
                f"largest diagonal entry {np.max(np.diag(Ac)):.3e})"
            )
        return cho

    @property
    def shape(self) -> tuple[int, int]:
        """``(n, n)``."""
        return (self.n, self.n)

    @property
    def symmetric(self) -> bool:
        """Whether the operator is symmetric (``nu_pre == nu_post``)."""
        return self.nu_pre == self.nu_post

    def apply(self, r) -> np.ndarray:
        """Apply the preconditioner: ``z = B r`` (one two-grid cycle from ``x = 0``).

        Parameters
        ----------
        r : array_like, shape (n,) or (n, m)
            A residual, or a block of ``m`` residuals (one per column).

        Returns
        -------
        numpy.ndarray, same shape as ``r``, float64

        Examples
        --------
        >>> import numpy as np, scipy.sparse as sp
        >>> A = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(10, 10), format="csr")
        >>> tg = TwoGrid(A, np.eye(10))  # r = n: the coarse solve is exact
        >>> bool(np.allclose(A @ tg.apply(np.ones(10)), 1.0))
        True
        """
        return self._apply(r, self.nu_pre, self.nu_post)

    def _apply(self, r, nu_pre: int, nu_post: int) -> np.ndarray:
        r = np.asarray(r, dtype=np.float64)
        if r.ndim not in (1, 2) or r.shape[0] != self.n:
            raise ValueError(
                f"expected r of shape ({self.n},) or ({self.n}, m), got shape {r.shape}"
            )
        A, P = self.A, self.P
        wDinv = self._wDinv if r.ndim == 1 else self._wDinv[:, None]
        x = np.zeros_like(r)
        for k in range(nu_pre):
            # The first sweep from x = 0 needs no product with A.
            x += wDinv * (r if k == 0 else r - A @ x)
        coarse = sla.cho_solve(self._cho, P.T @ (r - A @ x), check_finite=False)
        x += P @ coarse
        for _ in range(nu_post):
            x += wDinv * (r - A @ x)
        return x

    def aspreconditioner(self) -> spla.LinearOperator:
        """The preconditioner as a SciPy ``LinearOperator`` (float64, shape ``(n, n)``).

        ``rmatvec`` applies the adjoint (pre and post sweep counts swapped), which is the
        operator itself when ``nu_pre == nu_post``.

        Examples
        --------
        >>> import numpy as np, scipy.sparse as sp, scipy.sparse.linalg as spla
        >>> A = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(50, 50), format="csr")
        >>> M = TwoGrid(A, np.eye(50)[:, ::5]).aspreconditioner()
        >>> x, flag = spla.cg(A, np.ones(50), M=M)
        >>> flag
        0
        """
        return spla.LinearOperator(
            self.shape,
            matvec=self.apply,
            matmat=self.apply,
            rmatvec=lambda r: self._apply(r, self.nu_post, self.nu_pre),
            rmatmat=lambda r: self._apply(r, self.nu_post, self.nu_pre),
            dtype=np.float64,
        )

    def as_dense(self) -> np.ndarray:
        """The dense ``n x n`` matrix ``B`` (applies the operator to the identity; small n).

        Examples
        --------
        >>> import numpy as np, scipy.sparse as sp
        >>> A = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(10, 10), format="csr")
        >>> B = TwoGrid(A, np.eye(10)[:, ::2]).as_dense()
        >>> bool(np.allclose(B, B.T))
        True
        """
        return self.apply(np.eye(self.n))

    def __repr__(self) -> str:
        kind = "sparse" if sp.issparse(self.P) else "dense"
        return (
            f"TwoGrid(n={self.n}, r={self.r}, P={kind}, nu_pre={self.nu_pre}, "
            f"nu_post={self.nu_post}, omega={self.omega})"
        )


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
        nlss_fenicsx.twogrid.ConvergenceError: PCG did not reach rtol = 1e-06: maxiter \
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
        Relative tolerance on the true residual (default 1e-6, as in the paper).
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
        On bad shapes, parameters or non-finite inputs (NaN or Inf in ``b``, ``x0`` or a
        matrix ``A``).
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
    _check_finite_matrix(A)
    b = np.asarray(b, dtype=np.float64)
    if b.shape != (n,):
        raise ValueError(f"expected b of shape ({n},) to match A, got shape {b.shape}")
    if not np.all(np.isfinite(b)):
        raise ValueError("expected b to have finite entries, got NaN or inf")
    rtol = float(rtol)
    if not (np.isfinite(rtol) and rtol > 0.0):
        raise ValueError(f"expected a finite rtol > 0, got rtol = {rtol!r}")
    maxiter = 10 * n if maxiter is None else _check_int("maxiter", maxiter, 0)
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
        pAp = float(p @ Ap)
        if not np.isfinite(pAp):
            raise FloatingPointError("PCG: p^T A p is NaN or inf")
        if pAp <= 0.0:
            raise IndefiniteError(f"PCG breakdown: p^T A p = {pAp:.3e} <= 0, A is not SPD")
        alpha = rz / pAp
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
