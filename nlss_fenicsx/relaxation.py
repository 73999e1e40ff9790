"""Level smoothers with a convergence guarantee on any SPD matrix, and their weight rules.

A smoother applied ``nu`` times to ``A x = b`` changes the error by an iteration matrix
``G``; the two-grid operator of :class:`~nlss_fenicsx.twogrid.TwoGrid` is symmetric
positive definite when the post-smoother is the ``A``-adjoint of the pre-smoother and
``||G||_A < 1`` (then ``E = G* (I - P Ac^-1 P^T A) G`` has ``A``-norm below 1, so
``B = (I - E) A^-1`` is SPD). The three smoothers here are each ``A``-self-adjoint, so the
same smoother before and after the coarse correction is its own adjoint:

``jacobi``
    ``x <- x + omega D^-1 (b - A x)``, ``G = I - omega D^-1 A``. ``||G||_A < 1`` iff
    ``0 < omega < 2 / lambda_max(D^-1 A)``. The weight comes from :func:`jacobi_weight`
    on an estimate of ``lambda_max(D^-1 A)`` (:func:`lambda_max_estimate`): the paper's
    ``omega = 0.66`` wherever it is safe (on the paper's three families
    ``lambda_max(D^-1 A)`` is about 2.1-2.4, so it is), ``4 / (3 lambda_hi)`` otherwise.
``chebyshev``
    The Chebyshev polynomial of degree ``nu`` in ``D^-1 A`` that is smallest on the
    interval :func:`chebyshev_interval` (PETSc's default targets: ``0.1`` and ``1.1``
    times the estimate). ``|p(lambda)| < 1`` on all of ``(0, hi]``, so ``||G||_A < 1``
    whenever ``hi >= lambda_max``.
``sor``
    Symmetric SOR: each sweep is a forward then a backward SOR sweep,
    ``G = (I - (D/omega + U)^-1 A)(I - (D/omega + L)^-1 A)``, ``||G||_A < 1`` for any SPD
    ``A`` and ``0 < omega < 2`` (Ostrowski-Reich); no estimate is needed.
``icc``
    The Chebyshev polynomial of degree ``nu`` in ``M^-1 A`` with ``M = L L^T`` the
    incomplete Cholesky factorisation without fill, ICC(0)
    (:class:`~nlss_fenicsx.incomplete.IncompleteCholesky`), on the interval
    :func:`chebyshev_interval` of an estimate of ``lambda_max(M^-1 A)`` by CG-Lanczos
    (:func:`lambda_max_preconditioned`, 10 steps). ``M`` is SPD (a breakdown is shifted),
    so ``M^-1 A`` has a positive spectrum and the guarantee is Chebyshev's: ``||G||_A < 1``
    whenever ``lambda_max(M^-1 A) < lo + hi = 1.2`` times the estimate (the polynomial
    stays below 1 in modulus up to there), i.e. while the estimate is at least 83 % of
    ``lambda_max``. Undamped ICC(0) (Richardson with weight 1) has no such guarantee:
    ``lambda_max(M^-1 A)`` exceeds 2 on the anisotropic family at ``N >= 64``, and the
    two-grid operator is then indefinite. Degree 1 is Richardson with the weight
    ``2 / (lo + hi)``.

The estimate is the largest Ritz value of a few Lanczos steps on ``D^-1/2 A D^-1/2``
(:func:`lambda_max_estimate`, from :mod:`nlss_fenicsx.lanczos`, re-exported here): it
never exceeds ``lambda_max`` (it comes from below), so every rule first raises it by
``SAFETY = 1.1`` (as PETSc's Chebyshev smoother does). Sources: Saad, *Iterative Methods
for Sparse Linear Systems*, 2nd ed., sections 6.6 (Lanczos), 4.1 (Jacobi, SOR, SSOR) and
12.3 (Chebyshev); Briggs, Henson and McCormick, *A Multigrid Tutorial*, ch. 2.
"""

from __future__ import annotations

import numpy as np

from nlss_fenicsx._checks import check_int, matrix_entries
from nlss_fenicsx.incomplete import IncompleteCholesky
from nlss_fenicsx.lanczos import lambda_max_estimate, lambda_max_preconditioned, start_vector

__all__ = [
    "DEFAULT_NU",
    "PAPER_OMEGA",
    "SAFETY",
    "SMOOTHERS",
    "WEAKEST",
    "Smoother",
    "chebyshev_interval",
    "chebyshev_iteration",
    "inverse_diagonal",
    "jacobi_weight",
    "lambda_max_estimate",
    "lambda_max_preconditioned",
    "sor_weight",
    "start_vector",
]

SMOOTHERS = ("jacobi", "chebyshev", "sor", "icc")
# CG-Lanczos steps of the lambda_max(M^-1 A) estimate of the icc smoother.
ICC_STEPS = 10
# Sweeps (polynomial degree) by default: the paper's 5, but 1 for icc (measured: degree 1
# gives the cheapest solve; each degree costs a product with A and an ICC(0) solve).
DEFAULT_NU = {"jacobi": 5, "chebyshev": 5, "sor": 5, "icc": 1}
PAPER_OMEGA = 0.66
# Lanczos approaches lambda_max from below: every rule uses SAFETY * estimate.
SAFETY = 1.1
# Chebyshev targets [CHEB_LOWER * est, SAFETY * est] of D^-1 A (PETSc's defaults).
CHEB_LOWER = 0.1


def inverse_diagonal(A, *, dtype=np.float64) -> np.ndarray:
    """Return ``1 / diag(A)`` after checking that the diagonal is positive and finite.

    Parameters
    ----------
    A : scipy.sparse matrix or array, or numpy.ndarray, shape (n, n) or (n_local, n)
        Matrix whose diagonal drives a Jacobi-type smoother (a row block of a distributed
        matrix is fine: its diagonal is read from the square part, ``A[i, i]``).
    dtype : numpy floating dtype, optional
        dtype of the returned vector.

    Returns
    -------
    numpy.ndarray, shape (n,) or (n_local,)
        The inverse diagonal ``D^-1``.

    Raises
    ------
    ValueError
        If any diagonal entry is nonpositive or not finite (an SPD matrix has none).

    Examples
    --------
    >>> import numpy as np
    >>> inverse_diagonal(np.diag([2.0, 4.0]))
    array([0.5 , 0.25])
    """
    diag = np.asarray(A.diagonal(), dtype=np.float64)
    bad = ~np.isfinite(diag) | (diag <= 0.0)
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            "expected a positive, finite diagonal of A (Jacobi needs D > 0), got "
            f"{int(bad.sum())} bad entries, first A[{i}, {i}] = {float(diag[i])!r}"
        )
    return (1.0 / diag).astype(dtype, copy=False)


def _positive_estimate(lam_max) -> float:
    lam = float(lam_max)
    if not (np.isfinite(lam) and lam > 0.0):
        raise ValueError(f"expected a finite estimate lambda_max > 0, got {lam_max!r}")
    return lam


# A smoother weaker than this hardly smooths: the two-level operator is then nearly singular,
# and CG's preconditioned residual can report a convergence the true residual does not have.
WEAKEST = 0.1


def _too_weak(what: str, why: str) -> str:
    return (f"{what} is too small to smooth: {why}; the preconditioner would be nearly "
            "singular and CG could report a convergence the true residual does not have; "
            "use omega = 'auto'")


def _explicit_weight(omega) -> float:
    if isinstance(omega, bool) or not isinstance(omega, int | float | np.number):
        raise ValueError(f"expected omega to be 'auto' or a number, got {omega!r}")
    w = float(omega)
    if not (np.isfinite(w) and w > 0.0):
        raise ValueError(f"expected a finite omega > 0, got omega = {omega!r}")
    return w


def jacobi_weight(omega, lam_max: float) -> tuple[float, str]:
    """Choose the damped-Jacobi weight, and say why in one line.

    With ``lam_hi = SAFETY * lam_max``, a weight is *safe* when ``omega * lam_hi < 2``
    (then ``||I - omega D^-1 A||_A < 1`` even if the estimate is 10 % low).

    Parameters
    ----------
    omega : "auto" or float
        ``"auto"``: the paper's 0.66 when it is safe, else ``4 / (3 lam_hi)`` (the weight
        that damps the upper half of the spectrum by at least 3, as PyAMG's
        prolongation smoother uses). A float: used if safe, refused otherwise.
    lam_max : float
        Estimate of ``lambda_max(D^-1 A)`` (:func:`lambda_max_estimate`).

    Returns
    -------
    weight : float
    why : str
        One line for logs and ``-ksp_view``.

    Raises
    ------
    ValueError
        If ``omega`` is neither ``"auto"`` nor a finite positive number, if ``lam_max`` is
        not finite and positive, or if an explicit ``omega`` is unsafe (the message names
        ``omega``, the estimate and the bound) or too weak to smooth
        (``omega * lam_max < WEAKEST``).

    Examples
    --------
    >>> jacobi_weight("auto", 2.0)[0]
    0.66
    >>> round(jacobi_weight("auto", 3.1)[0], 4)  # hexahedral elasticity: 0.66 would diverge
    0.391
    >>> jacobi_weight(0.66, 3.1)
    Traceback (most recent call last):
    ...
    ValueError: omega = 0.66 is unsafe for this matrix: lambda_max(D^-1 A) is estimated at \
3.1, so damped Jacobi needs omega < 2 / (1.1 * 3.1) = 0.5865; use omega = 'auto'
    """
    lam = _positive_estimate(lam_max)
    hi = SAFETY * lam
    if isinstance(omega, str):
        if omega != "auto":
            raise ValueError(f"expected omega to be 'auto' or a number, got {omega!r}")
        if PAPER_OMEGA * hi < 2.0:
            return PAPER_OMEGA, (
                f"omega = 0.66 (the paper's): safe, 0.66 * {SAFETY} * lambda_max(D^-1 A) = "
                f"{PAPER_OMEGA * hi:.3f} < 2 with lambda_max ~ {lam:.4g}"
            )
        w = 4.0 / (3.0 * hi)
        return w, (
            f"omega = {w:.4g} = 4 / (3 * {SAFETY} * lambda_max(D^-1 A)) with lambda_max ~ "
            f"{lam:.4g}: the paper's 0.66 would diverge (0.66 * {SAFETY} * {lam:.4g} = "
            f"{PAPER_OMEGA * hi:.3f} >= 2)"
        )
    w = _explicit_weight(omega)
    if w * lam < WEAKEST:
        raise ValueError(_too_weak(f"omega = {w:g}", f"omega * lambda_max(D^-1 A) = "
                                   f"{w * lam:.3g} < {WEAKEST} (lambda_max ~ {lam:.4g})"))
    if not w * hi < 2.0:
        raise ValueError(
            f"omega = {w:g} is unsafe for this matrix: lambda_max(D^-1 A) is estimated at "
            f"{lam:.4g}, so damped Jacobi needs omega < 2 / ({SAFETY} * {lam:.4g}) = "
            f"{2.0 / hi:.4g}; use omega = 'auto'"
        )
    return w, (f"omega = {w:g} (given): safe, {w:g} * {SAFETY} * lambda_max(D^-1 A) = "
               f"{w * hi:.3f} < 2 with lambda_max ~ {lam:.4g}")


def sor_weight(omega) -> tuple[float, str]:
    """Choose the SSOR weight, and say why: ``"auto"`` is 1 (symmetric Gauss-Seidel).

    Raises
    ------
    ValueError
        Unless ``omega`` is ``"auto"`` or a number with ``WEAKEST <= omega < 2`` (SOR
        converges for every SPD matrix when ``0 < omega < 2``; below ``WEAKEST`` it hardly
        smooths).

    Examples
    --------
    >>> sor_weight("auto")[0], sor_weight(1.5)[0]
    (1.0, 1.5)
    """
    if isinstance(omega, str):
        if omega != "auto":
            raise ValueError(f"expected omega to be 'auto' or a number, got {omega!r}")
        return 1.0, "omega = 1 (symmetric Gauss-Seidel): converges for any SPD A"
    w = _explicit_weight(omega)
    if not w < 2.0:
        raise ValueError(f"expected 0 < omega < 2 for SOR (convergent for any SPD A), "
                         f"got omega = {w:g}")
    if w < WEAKEST:
        raise ValueError(_too_weak(f"omega = {w:g}", f"SOR needs {WEAKEST} <= omega < 2"))
    return w, f"omega = {w:g} (given): 0 < omega < 2, convergent for any SPD A"


def chebyshev_interval(lam_max: float, *, lower: float = CHEB_LOWER) -> tuple[float, float]:
    """Return the interval ``(lo, hi)`` of ``D^-1 A`` that the Chebyshev smoother damps.

    ``lo = lower * lam_max`` (default 0.1), ``hi = SAFETY * lam_max`` (PETSc's default
    targets for its Chebyshev smoother). Pass them to PETSc as
    ``ksp_chebyshev_eigenvalues lo,hi``. A smaller ``lower`` turns the smoother into an
    approximate solver (:mod:`nlss_fenicsx.corrector` uses 0.03).

    Raises
    ------
    ValueError
        If ``lam_max`` is not finite and positive, or ``lower`` not in ``(0, 1)``.

    Examples
    --------
    >>> chebyshev_interval(2.0)
    (0.2, 2.2)
    """
    lam = _positive_estimate(lam_max)
    if not 0.0 < lower < 1.0:
        raise ValueError(f"expected 0 < lower < 1 for the Chebyshev interval, got {lower!r}")
    return lower * lam, SAFETY * lam


def chebyshev_iteration(matvec, precond, r, interval: tuple[float, float],
                        nu: int) -> np.ndarray:
    """Return ``p(M^-1 A) M^-1 r``: ``nu`` Chebyshev steps on ``A e = r`` from ``e = 0``.

    Saad, *Iterative Methods for Sparse Linear Systems*, 2nd ed., Algorithm 12.1, with the
    preconditioner ``M^-1``: after ``nu`` steps the error is
    ``T_nu((theta - M^-1 A) / delta) / T_nu(theta / delta)`` times the initial one, on the
    interval ``(lo, hi)`` of ``M^-1 A`` (``theta``, ``delta`` its centre and half-width).
    The ``chebyshev`` and ``icc`` smoothers and the homogenisation corrector use it.

    Parameters
    ----------
    matvec : callable
        ``v -> A v`` (``v`` of shape (n,) or (n, m)).
    precond : callable
        ``v -> M^-1 v``.
    r : numpy.ndarray, shape (n,) or (n, m)
        Residual(s); not modified.
    interval : (float, float)
        ``(lo, hi)`` with ``0 < lo < hi``.
    nu : int
        Degree, ``>= 1``.

    Returns
    -------
    numpy.ndarray, same shape as ``r``

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> A = sp.diags([1.0, 2.0])  # spectrum inside (0.9, 2.1): degree 6 nearly solves it
    >>> e = chebyshev_iteration(A.__matmul__, lambda v: v, np.ones(2), (0.9, 2.1), 6)
    >>> bool(np.allclose(e, [1.0, 0.5], atol=1e-3))
    True
    """
    lo, hi = interval
    theta, delta = 0.5 * (hi + lo), 0.5 * (hi - lo)
    sigma = theta / delta
    rho = 1.0 / sigma
    r = np.array(r, dtype=np.float64)
    d = precond(r) / theta
    x = d.copy()
    for _ in range(nu - 1):
        r -= matvec(d)
        rho_new = 1.0 / (2.0 * sigma - rho)
        d = (rho_new * rho) * d + (2.0 * rho_new / delta) * precond(r)
        rho = rho_new
        x += d
    return x


class Smoother:
    """``nu`` sweeps of a convergent smoother on ``A x = b`` (set up once, applied many).

    Parameters
    ----------
    A : scipy.sparse matrix or array, or numpy.ndarray, shape (n, n)
        SPD matrix (positive finite diagonal).
    kind : {"jacobi", "chebyshev", "sor", "icc"}, optional
        See the module docstring (default ``"jacobi"``, as in the paper).
    nu : int, optional
        Sweeps per application (default 5, the paper's); for ``chebyshev`` and ``icc`` the
        polynomial degree, for ``sor`` the number of symmetric (forward + backward) sweeps.
    omega : "auto" or float, optional
        Weight for ``jacobi`` (:func:`jacobi_weight`) and ``sor`` (:func:`sor_weight`);
        must be ``"auto"`` for ``chebyshev`` and ``icc``.
    lam_max : float, optional
        A known estimate of ``lambda_max(D^-1 A)`` (of ``lambda_max(M^-1 A)`` for
        ``icc``); computed with :func:`lambda_max_estimate` (12 steps from
        :func:`start_vector`; :func:`lambda_max_preconditioned`, 10 steps, for ``icc``)
        when needed and not given.
    seed : int, optional
        Selects the Lanczos start vector.
    lower : float, optional
        For ``chebyshev`` and ``icc``: the interval's lower end as a fraction of the
        estimate (:func:`chebyshev_interval`; default 0.1, the smoother's).

    Attributes
    ----------
    kind, nu : as given.
    omega : float or None
        The weight used (None for ``chebyshev``).
    lam_max : float or None
        The estimate used (None for ``sor``; of ``lambda_max(M^-1 A)`` for ``icc``).
    interval : tuple of float or None
        ``(lo, hi)`` for ``chebyshev`` and ``icc``.
    M : IncompleteCholesky or None
        The ICC(0) preconditioner of ``icc`` (its ``shift`` says whether ``A`` needed one).
    why : str
        One line: which weight or interval, and why.

    Raises
    ------
    ValueError
        On an unknown ``kind``, ``nu < 1``, a bad or unsafe ``omega``, a bad ``A``, or (for
        ``icc``) an estimate of ``lambda_max(M^-1 A)`` that is not usable (one line).

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> A = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(50, 50), format="csr")
    >>> sm = Smoother(A, "chebyshev", nu=3)
    >>> x = sm.smooth(np.ones(50))
    >>> bool(np.linalg.norm(1 - A @ x) < np.sqrt(50))  # the residual went down
    True
    """

    def __init__(self, A, kind: str = "jacobi", *, nu: int = 5, omega="auto",
                 lam_max: float | None = None, seed: int = 0,
                 lower: float = CHEB_LOWER):
        if kind not in SMOOTHERS:
            raise ValueError(f"Unrecognized smoother {kind!r}; expected one of {SMOOTHERS}")
        self.kind = kind
        self.nu = check_int("nu", nu, 1)
        A = matrix_entries(A, csr=True)
        self.A = A
        self._Dinv = inverse_diagonal(A)
        self.omega: float | None = None
        self.lam_max: float | None = None
        self.interval: tuple[float, float] | None = None
        if kind == "sor":
            self.omega, self.why = sor_weight(omega)
            # PyAMG's compiled sweeps take 32-bit indices.
            self._csr32 = (A.indptr.astype(np.int32), A.indices.astype(np.int32), A.data)
            return
        if kind in ("chebyshev", "icc") and omega != "auto":
            raise ValueError(f"expected omega = 'auto' for the {kind} smoother (its "
                             f"weights come from the interval), got omega = {omega!r}")
        self.M = IncompleteCholesky(A) if kind == "icc" else None
        self._precond = self.M.solve if kind == "icc" else self._dinv
        if lam_max is None:
            x0 = start_vector(A.shape[0], seed=seed)
            lam_max = (lambda_max_preconditioned(A.__matmul__, self.M.solve, x0,
                                                 steps=ICC_STEPS) if kind == "icc"
                       else lambda_max_estimate(A.__matmul__, self._Dinv, x0))
        self.lam_max = _positive_estimate(lam_max)
        if kind == "jacobi":
            self.omega, self.why = jacobi_weight(omega, self.lam_max)
            self._wDinv = self.omega * self._Dinv
        else:
            self.interval = chebyshev_interval(self.lam_max, lower=lower)
            lo, hi = self.interval
            M = "M^-1 A), M = ICC(0)" if kind == "icc" else "D^-1 A)"
            if kind == "icc" and self.M.shift:
                M += f" of A + {self.M.shift:g} diag(A)"
            self.why = (f"Chebyshev degree {self.nu} on [{lo:.4g}, {hi:.4g}] = "
                        f"[{lower}, {SAFETY}] x lambda_max({M} ~ {self.lam_max:.4g}")

    def smooth(self, b, x=None, *, nu: int | None = None) -> np.ndarray:
        """``nu`` sweeps on ``A x = b`` from ``x`` (zero if None); returns the new ``x``.

        Parameters
        ----------
        b : numpy.ndarray, shape (n,) or (n, m)
            Right-hand side(s).
        x : numpy.ndarray, same shape as ``b``, optional
            Start (not modified).
        nu : int, optional
            Sweeps (default ``self.nu``); 0 returns ``x`` (or zeros).

        Returns
        -------
        numpy.ndarray, same shape as ``b``, float64
        """
        nu = self.nu if nu is None else nu
        b = np.asarray(b, dtype=np.float64)
        zero = x is None
        x = np.zeros_like(b) if zero else np.array(x, dtype=np.float64)
        if nu == 0:
            return x
        if self.kind == "jacobi":
            return self._jacobi(b, x, nu, zero)
        if self.kind in ("chebyshev", "icc"):
            return self._chebyshev(b, x, nu, zero)
        if b.ndim == 2:
            return np.column_stack([self._ssor(b[:, j], x[:, j], nu) for j in range(b.shape[1])])
        return self._ssor(b, x, nu)

    def _scale(self, v: np.ndarray, d: np.ndarray) -> np.ndarray:
        return d[:, None] * v if v.ndim == 2 else d * v

    def _dinv(self, v: np.ndarray) -> np.ndarray:
        return self._scale(v, self._Dinv)

    def _residual(self, b, x, zero: bool) -> np.ndarray:
        return b.copy() if zero else b - self.A @ x

    def _jacobi(self, b, x, nu, zero):
        for k in range(nu):
            # The first sweep from x = 0 needs no product with A.
            x += self._scale(self._residual(b, x, zero and k == 0), self._wDinv)
        return x

    def _chebyshev(self, b, x, nu, zero):
        x += chebyshev_iteration(self.A.__matmul__, self._precond,
                                 self._residual(b, x, zero), self.interval, nu)
        return x

    def _ssor(self, b, x, nu):
        from pyamg import amg_core  # compiled SOR sweeps (PyAMG is a dependency)

        indptr, indices, data = self._csr32
        w, n = self.omega, self.A.shape[0]
        x = np.ascontiguousarray(x)
        b = np.ascontiguousarray(b)
        for _ in range(nu):
            amg_core.sor_gauss_seidel(indptr, indices, data, x, b, 0, n, 1, w)
            amg_core.sor_gauss_seidel(indptr, indices, data, x, b, n - 1, -1, -1, w)
        return x

    def __repr__(self) -> str:
        return f"Smoother({self.kind!r}, nu={self.nu}: {self.why})"
