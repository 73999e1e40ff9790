"""The two-grid preconditioner on a coarse basis ``P``, and the one check that ``Ac`` is SPD.

One application of :class:`TwoGrid` to a residual ``v`` (paper Algorithm 1, inner cycle,
started from ``x = 0``; ``r`` is the coarse rank, the number of columns of ``P``)::

    nu_pre  smoothing sweeps       x <- smooth(v, x)
    coarse correction              x <- x + P Ac^-1 P^T (v - A x),   Ac = P^T A P
    nu_post smoothing sweeps       x <- smooth(v, x)

so ``x = B v`` with ``I - B A = E = G_post (I - P Ac^-1 P^T A) G_pre``, where ``G`` is the
smoother's iteration matrix (``G = (I - omega D^-1 A)^nu`` for the paper's damped Jacobi;
see :mod:`nlss_fenicsx.relaxation` for ``chebyshev``, ``sor`` and ``icc``). Every smoother there
is ``A``-self-adjoint and ``A``-norm convergent on any SPD ``A`` (its weight is checked
against an estimate of ``lambda_max(D^-1 A)``), and the coarse correction is an
``A``-orthogonal projection, so with ``nu_pre == nu_post`` the operator ``B`` is symmetric
positive definite: PCG's requirement (Briggs, Henson and McCormick, *A Multigrid
Tutorial*, ch. 5; Vassilevski, *Multilevel Block Factorization Preconditioners*, 2008,
section 5.1).

Setup (the smoother's weight, ``Ac`` and its Cholesky factor) is done once in the
constructor; ``apply`` may then be called many times, on one vector or a block.
:func:`pcg` and its result types live in :mod:`nlss_fenicsx.krylov` and are re-exported
here.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from nlss_fenicsx._checks import check_int, matrix_entries, reject_complex
from nlss_fenicsx.krylov import ConvergenceError, IndefiniteError, PCGInfo, pcg
from nlss_fenicsx.relaxation import DEFAULT_NU, Smoother

__all__ = [
    "ConvergenceError",
    "IndefiniteError",
    "NotSPDError",
    "PCGInfo",
    "TwoGrid",
    "check_coarse_spd",
    "pcg",
]


class NotSPDError(ValueError):
    """The Galerkin coarse operator ``Ac = P^T A P`` is not symmetric positive definite."""


def check_coarse_spd(Ac):
    """Cholesky-factor the coarse operator, or say in one line why it is not SPD.

    The one SPD check of the package: :class:`TwoGrid` and the PETSc PC (on its gathered
    dense ``Ac``) both call it. ``Ac`` must be finite, symmetric to ``1e-10`` relative
    (``max|Ac - Ac^T| <= 1e-10 max|Ac|``) and numerically positive definite: LAPACK's
    Cholesky (``potrf``) of its symmetric part must succeed with a smallest pivot above
    ``r * eps * max(diag(Ac))`` (below that ``Ac`` is singular to working precision even
    when the factorisation runs to the end, e.g. for a repeated column of ``P``).

    Parameters
    ----------
    Ac : array_like or scipy.sparse matrix, shape (r, r)
        The Galerkin coarse operator ``P^T A P`` (densified if sparse: ``r`` is small).

    Returns
    -------
    tuple
        ``(c, lower)`` as :func:`scipy.linalg.cho_factor` returns it, of
        ``(Ac + Ac^T) / 2``, for :func:`scipy.linalg.cho_solve`.

    Raises
    ------
    NotSPDError
        (a ``ValueError``) naming the reason: NaN/Inf, not symmetric, Cholesky failed, or
        numerically singular. A is then not SPD or P not of full column rank.
    ValueError
        If ``Ac`` is not square, empty, or complex.

    Examples
    --------
    >>> import numpy as np
    >>> c, lower = check_coarse_spd(np.array([[2.0, -1.0], [-1.0, 2.0]]))
    >>> check_coarse_spd(np.array([[1.0, 2.0], [2.0, 1.0]]))
    Traceback (most recent call last):
    ...
    nlss_fenicsx.twogrid.NotSPDError: coarse operator Ac = P^T A P (2 x 2) is not symmetric \
positive definite; A must be SPD and P of full column rank (Cholesky failed: leading minor \
of order 2 is not positive)
    """
    if sp.issparse(Ac):
        Ac = Ac.toarray()
    reject_complex("Ac", Ac)
    Ac = np.asarray(Ac, dtype=np.float64)
    if Ac.ndim != 2 or Ac.shape[0] != Ac.shape[1] or Ac.shape[0] == 0:
        raise ValueError(f"expected a non-empty square coarse operator Ac, got shape {Ac.shape}")
    r = Ac.shape[0]
    msg = (f"coarse operator Ac = P^T A P ({r} x {r}) is not symmetric positive definite; "
           "A must be SPD and P of full column rank")
    if not np.all(np.isfinite(Ac)):
        raise NotSPDError(f"{msg} (Ac has NaN or Inf entries)")
    scale, asym = np.abs(Ac).max(), np.abs(Ac - Ac.T).max()
    if not asym <= 1e-10 * scale:
        raise NotSPDError(f"{msg} (not symmetric: max|Ac - Ac^T| = {asym:.3e}, "
                          f"max|Ac| = {scale:.3e})")
    sym = 0.5 * (Ac + Ac.T)
    L, info = sla.lapack.dpotrf(sym, lower=1, clean=0)
    if info != 0:
        raise NotSPDError(f"{msg} (Cholesky failed: leading minor of order {info} is not "
                          "positive)")
    cho = (L, True)
    # The smallest pivot bounds lambda_min(Ac) from above.
    pivots = np.diag(L) ** 2
    top = np.max(np.diag(sym))
    if not pivots.min() > r * np.finfo(np.float64).eps * top:
        raise NotSPDError(f"{msg} (numerically singular: smallest Cholesky pivot "
                          f"{pivots.min():.3e}, largest diagonal entry {top:.3e})")
    return cho


def _as_basis(P, n: int):
    if isinstance(P, spla.LinearOperator):
        raise ValueError(f"expected P as a NumPy array or SciPy sparse matrix (n = {n} rows), "
                         "got LinearOperator")
    reject_complex("P", P)
    if sp.issparse(P):
        P = sp.csr_matrix(P, dtype=np.float64)
        finite = np.all(np.isfinite(P.data))
    else:
        P = np.asarray(P, dtype=np.float64)
        finite = np.all(np.isfinite(P))
    if P.ndim != 2 or P.shape[0] != n:
        raise ValueError(f"expected P of shape (n, r) with n = {n} rows to match A ({n} x {n}), "
                         f"got shape {P.shape}")
    if not 1 <= P.shape[1] <= n:
        raise ValueError(f"expected P with 1 <= r <= n = {n} columns, got r = {P.shape[1]}")
    if not finite:
        raise ValueError("expected P to have finite entries, got NaN or inf")
    return P


class TwoGrid:
    """Two-grid preconditioner: a convergent smoother around a Galerkin coarse solve.

    Parameters
    ----------
    A : scipy.sparse matrix or array (CSR preferred), or numpy.ndarray, shape (n, n)
        SPD system matrix (real, symmetric to 1e-10 relative, positive finite diagonal).
        Its entries are needed: a ``LinearOperator`` is refused.
    P : numpy.ndarray or scipy.sparse matrix, shape (n, r)
        Coarse basis (prolongation), full column rank; orthonormality is not needed.
        Dense ``P`` is kept dense, sparse ``P`` (e.g. from
        :func:`~nlss_fenicsx.coarse.sa_amg_basis`) is kept as CSR.
    smoother : {"jacobi", "chebyshev", "sor", "icc"}, optional
        Level smoother (default ``"jacobi"``, the paper's); see
        :mod:`nlss_fenicsx.relaxation`.
    nu : int, optional
        Pre- and post-smoothing sweeps (default 5, the paper's ``nu_1 = nu_2 = 5``; 1 for
        ``icc``: Chebyshev degree 1 on ICC(0) gives the cheapest solve).
    nu_pre, nu_post : int, optional
        Override ``nu`` for one side. Equal values give a symmetric ``B`` (as PCG
        requires); ``nu_pre = nu_post = 0`` is refused (``B = P Ac^-1 P^T`` would be
        singular).
    omega : "auto" or float, optional
        Smoother weight (default ``"auto"``: for Jacobi the paper's 0.66 wherever it is
        safe, see :func:`~nlss_fenicsx.relaxation.jacobi_weight`; an explicit unsafe value
        is refused).
    lam_max : float, optional
        Known estimate of ``lambda_max(D^-1 A)`` (of ``lambda_max(M^-1 A)``, M = ICC(0),
        for ``icc``); otherwise Lanczos estimates it.
    seed : int, optional
        Selects the Lanczos start vector.

    Attributes
    ----------
    A, P : the operators (float64; ``A`` as CSR).
    Ac : numpy.ndarray, shape (r, r)
        The symmetrised dense coarse operator ``P^T A P``.
    smoother : nlss_fenicsx.relaxation.Smoother
        Its ``omega``, ``lam_max``, ``interval`` and ``why`` say what was chosen.
    omega : float or None
        The weight used (``smoother.omega``).
    timings : dict
        ``{"setup": seconds}``: the smoother's set-up (the estimate), ``Ac`` and its
        Cholesky factor (:func:`time.perf_counter`; input validation not included).

    Raises
    ------
    ValueError
        On inconsistent shapes, an empty or complex system, a ``LinearOperator``, bad or
        unsafe smoothing parameters, NaN or Inf in ``A`` or ``P``, a non-symmetric ``A``
        or a nonpositive diagonal.
    NotSPDError
        If ``Ac`` is not (numerically) symmetric positive definite.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> n = 64
    >>> A = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(n, n), format="csr")
    >>> P = np.linalg.qr(np.random.default_rng(0).standard_normal((n, 8)))[0]
    >>> tg = TwoGrid(A, P)
    >>> tg.omega
    0.66
    >>> x, info = pcg(A, np.ones(n), tg)
    >>> info.converged
    True
    """

    def __init__(self, A, P, *, smoother: str = "jacobi", nu: int | None = None,
                 nu_pre: int | None = None, nu_post: int | None = None, omega="auto",
                 lam_max: float | None = None, seed: int = 0):
        A = matrix_entries(A, csr=True)
        n = A.shape[0]
        nu = check_int("nu", DEFAULT_NU.get(smoother, 5) if nu is None else nu, 0)
        self.nu_pre = check_int("nu_pre", nu if nu_pre is None else nu_pre, 0)
        self.nu_post = check_int("nu_post", nu if nu_post is None else nu_post, 0)
        if self.nu_pre == self.nu_post == 0:
            raise ValueError("expected nu >= 1 smoothing sweeps, got nu_pre = nu_post = 0 "
                             "(without smoothing B = P Ac^-1 P^T is singular)")
        P = _as_basis(P, n)
        scale = abs(A).max() if A.nnz else 0.0
        asym = abs(A - A.T).max() if A.nnz else 0.0
        if not asym <= 1e-10 * scale:
            raise ValueError(
                "expected a symmetric A (|A - A^T| <= 1e-10 max|A|), "
                f"got max|A - A^T| = {asym:.3e} with max|A| = {scale:.3e}"
            )
        self.A, self.P = A, P
        self.n, self.r = n, P.shape[1]

        t0 = time.perf_counter()
        self.smoother = Smoother(A, smoother, nu=max(self.nu_pre, self.nu_post, 1),
                                 omega=omega, lam_max=lam_max, seed=seed)
        self.omega = self.smoother.omega
        Ac = P.T @ (A @ P)
        Ac = Ac.toarray() if sp.issparse(Ac) else np.asarray(Ac)
        self.Ac = 0.5 * (Ac + Ac.T)  # remove rounding asymmetry before Cholesky
        self._cho = check_coarse_spd(self.Ac)
        self.timings = {"setup": time.perf_counter() - t0}

    @property
    def shape(self) -> tuple[int, int]:
        """``(n, n)``."""
        return (self.n, self.n)

    @property
    def symmetric(self) -> bool:
        """Whether the operator is symmetric (``nu_pre == nu_post``)."""
        return self.nu_pre == self.nu_post

    def apply(self, v) -> np.ndarray:
        """Apply the preconditioner: ``z = B v`` (one two-grid cycle from ``x = 0``).

        Parameters
        ----------
        v : array_like, shape (n,) or (n, m)
            A residual, or a block of ``m`` residuals (one per column).

        Returns
        -------
        numpy.ndarray, same shape as ``r``, float64

        Raises
        ------
        ValueError
            On a wrong shape or a complex ``v``.

        Examples
        --------
        >>> import numpy as np, scipy.sparse as sp
        >>> A = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(10, 10), format="csr")
        >>> tg = TwoGrid(A, np.eye(10))  # r = n: the coarse solve is exact
        >>> bool(np.allclose(A @ tg.apply(np.ones(10)), 1.0))
        True
        """
        return self._apply(v, self.nu_pre, self.nu_post)

    def _apply(self, v, nu_pre: int, nu_post: int) -> np.ndarray:
        reject_complex("v", v)
        v = np.asarray(v, dtype=np.float64)
        if v.ndim not in (1, 2) or v.shape[0] != self.n:
            raise ValueError(
                f"expected v of shape ({self.n},) or ({self.n}, m), got shape {v.shape}"
            )
        A, P = self.A, self.P
        x = self.smoother.smooth(v, nu=nu_pre)
        coarse = sla.cho_solve(self._cho, P.T @ (v - A @ x), check_finite=False)
        x += P @ coarse
        return self.smoother.smooth(v, x, nu=nu_post)

    def aspreconditioner(self) -> spla.LinearOperator:
        """Return the preconditioner as a SciPy ``LinearOperator`` (float64, ``(n, n)``).

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
            rmatvec=lambda v: self._apply(v, self.nu_post, self.nu_pre),
            rmatmat=lambda v: self._apply(v, self.nu_post, self.nu_pre),
            dtype=np.float64,
        )

    def as_dense(self) -> np.ndarray:
        """Return the dense ``n x n`` matrix ``B`` (the operator applied to ``I``; small n).

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
            f"TwoGrid(n={self.n}, r={self.r}, P={kind}, smoother={self.smoother.kind!r}, "
            f"nu_pre={self.nu_pre}, nu_post={self.nu_post}, omega={self.omega})"
        )
