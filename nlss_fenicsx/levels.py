"""PETSc set-up of level smoothers that need more than options: ICC(0) and its estimate.

The ``icc`` smoother of :class:`nlss_fenicsx.petsc.TwoGridPC` (``nlss_smoother icc``) is a
Chebyshev polynomial in ``M^-1 A`` with ``M`` = ICC(0) (see :mod:`nlss_fenicsx.relaxation`).
Its interval needs ``lambda_max(M^-1 A)``, so ``M`` is factored first
(:func:`icc_preconditioner`), the estimate taken with it (:func:`lambda_max_pc`, the same
CG-Lanczos as the SciPy core's :func:`~nlss_fenicsx.relaxation.lambda_max_preconditioned`,
distributed), and the factored PC then handed to the inner PCMG's level smoother (no second
factorisation).

The inner PCMG's options: :func:`mg_defaults` (what the package sets for each smoother) and
:func:`check_mg_options` (what a user may add under ``<prefix>nlss_mg_``: the coarse solver and
the cycle, not the level smoother, whose guarantee the package's options keep).
"""

from __future__ import annotations

import numpy as np

from nlss_fenicsx import la
from nlss_fenicsx._fenicsx import PETSc
from nlss_fenicsx.lanczos import start_vector

__all__ = ["DENSE_CHECK_MAX", "MG_OPTIONS", "check_coarse", "check_coarse_solver",
           "check_mg_options", "icc_preconditioner", "lambda_max_pc", "mg_defaults",
           "reuse_key", "set_up_with_options"]

# Dense check of Ac (gathered to every rank) up to this size; above it (sa on large
# problems) symmetry is checked in PETSc and the factorisation reports the rest.
DENSE_CHECK_MAX = 2000


def icc_preconditioner(A) -> PETSc.PC:
    """Set up ICC(0) of ``A``: ``PCICC`` on one rank, block Jacobi with ICC(0) per rank.

    PETSc's defaults are kept: natural ordering, no fill, and the positive-definite
    (Manteuffel) shift that makes ``M`` SPD when the factorisation would break down.
    Collective.

    Parameters
    ----------
    A : petsc4py.PETSc.Mat
        SPD matrix (AIJ), global size ``(n, n)``.

    Returns
    -------
    petsc4py.PETSc.PC
        Set up; the caller destroys it.

    Raises
    ------
    petsc4py.PETSc.Error
        If PETSc cannot factor ``A`` (e.g. a zero or NaN diagonal).
    ValueError
        If ``A`` has a nullspace attached (semi-definite: ICC(0) and its estimate break down).
    """
    nullspace = A.getNullSpace()
    if nullspace is not None and bool(nullspace.handle):  # the same on every rank
        raise ValueError("nlss_smoother icc needs a nonsingular A, but this A has a nullspace "
                         "attached (semi-definite); use nlss_smoother jacobi, chebyshev or sor")
    comm = A.getComm()
    pc = PETSc.PC().create(comm=comm)
    pc.setOperators(A, A)
    if comm.getSize() == 1:
        pc.setType(PETSc.PC.Type.ICC)
    else:
        pc.setType(PETSc.PC.Type.BJACOBI)
        pc.setUp()
        for sub in pc.getBJacobiSubKSP():
            sub.setType(PETSc.KSP.Type.PREONLY)
            sub.getPC().setType(PETSc.PC.Type.ICC)
    pc.setUp()
    return pc


def lambda_max_pc(A, pc, *, seed: int = 0, node_order: np.ndarray | None = None,
                  steps: int = 10) -> float:
    """Estimate ``lambda_max(M^-1 A)`` for a set-up PETSc preconditioner ``pc`` (``M^-1``).

    The CG-Lanczos estimate of :func:`nlss_fenicsx.relaxation.lambda_max_preconditioned`
    run natively: PETSc's ``KSPCG`` for ``steps`` iterations on ``A x = x0`` (no
    convergence test) and ``KSPComputeEigenvalues`` of its Lanczos tridiagonal matrix
    (the same recurrences; no Python per iteration). The start vector is
    :func:`nlss_fenicsx.relaxation.start_vector` in node order when one is given, as
    :func:`nlss_fenicsx.la.lambda_max_petsc` takes it. Collective; every rank returns the
    same value.

    Parameters
    ----------
    A : petsc4py.PETSc.Mat
        SPD, global size ``(n, n)``.
    pc : petsc4py.PETSc.PC
        Set up on ``A`` (e.g. :func:`icc_preconditioner`).
    seed : int
        Selects the start vector.
    node_order : numpy.ndarray, shape (n,), optional
        ``node_order[i]`` = global dof of input node ``i``.
    steps : int
        CG-Lanczos steps.

    Returns
    -------
    float
        From below, within 8 % of ``lambda_max(M^-1 A)`` on the paper's families (measured
        at N = 32-128 with 10 steps; the icc interval tolerates 17 %).

    Raises
    ------
    ValueError
        On every rank, when the estimate is not usable: CG met an indefinite ``M`` or
        ``A``, or a NaN/Inf, or the largest Ritz value is not positive.
    """
    n = A.getSize()[0]
    lo, hi = A.getOwnershipRange()
    node = np.arange(lo, hi)
    if node_order is not None:
        inverse = np.empty(n, dtype=np.int64)
        inverse[node_order] = np.arange(n)  # dof -> node
        node = inverse[lo:hi]
    b, x = A.createVecRight(), A.createVecLeft()
    b.setArray(start_vector(n, seed=seed)[node])
    ksp = PETSc.KSP().create(comm=A.getComm())
    try:
        ksp.setType(PETSc.KSP.Type.CG)
        ksp.setOperators(A, A)
        ksp.setPC(pc)
        ksp.setNormType(PETSc.KSP.NormType.NONE)  # no test: exactly `steps` iterations
        ksp.setTolerances(rtol=0.0, atol=0.0, max_it=steps)
        ksp.setComputeEigenvalues(True)
        ksp.solve(b, x)
        reason = ksp.getConvergedReason()
        ritz = np.real(ksp.computeEigenvalues()) if ksp.getIterationNumber() else []
    finally:
        for obj in (ksp, b, x):
            obj.destroy()
    theta = float(np.max(ritz)) if len(ritz) else float("nan")
    if reason < 0 and reason != PETSc.KSP.ConvergedReason.DIVERGED_MAX_IT:
        name = next((k for k in dir(PETSc.KSP.ConvergedReason)
                     if getattr(PETSc.KSP.ConvergedReason, k) == reason), str(reason))
        raise ValueError(f"the lambda_max(M^-1 A) estimate is not usable: CG stopped with "
                         f"{name} (expected SPD A and M)")
    if not (np.isfinite(theta) and theta > 0.0):
        raise ValueError(f"the lambda_max(M^-1 A) estimate is not usable: {theta!r}")
    return theta


def check_coarse(comm, Ac, *, singular: bool = False, pin: bool = False):
    """Raise NotSPDError (every rank) unless ``Ac`` is SPD; False where only symmetry was checked.

    The PC's check of its Galerkin operator (moved here from :mod:`nlss_fenicsx.petsc`):
    up to :data:`DENSE_CHECK_MAX` rows ``Ac`` is gathered to every rank and checked by
    :func:`nlss_fenicsx.twogrid.check_coarse_spd`; above it only symmetry is checked in
    PETSc (the factorisation reports the rest).

    With a nullspace attached to A (``singular``), A is only semi-definite and so may be
    Ac (e.g. smoothed aggregation's P contains the constant): then Ac must be symmetric
    positive semi-definite. Its null vectors ``Z`` (eigenvalues below ``1e-10 lambda_max``)
    then give the coarse solver's matrix (``pin=True``): ``Ac + beta sum_k e_k e_k^T`` over
    ``m = dim null(Ac)`` pivots ``k`` where ``Z[k, :]`` is best conditioned (pivoted QR of
    ``Z^T``), ``beta`` the largest diagonal entry. That matrix is SPD, its Cholesky solve of
    a consistent right-hand side (``P^T r`` with ``r`` orthogonal to ``null(A)``) is the
    solution with ``y_k = 0``, and ``P y`` differs from the pseudo-inverse's only in
    ``null(A)``, which CG removes. Above the dense size it falls back to PCSVD (a dense SVD
    in PETSc: about a minute at r = 1,100 here).

    Parameters
    ----------
    comm : mpi4py communicator
    Ac : petsc4py.PETSc.Mat, shape (r, r)
    singular : bool
        ``A`` has a nullspace attached.

    pin : bool
        Also return the coarse solver's matrix (``Ac`` itself unless pinned, see above).

    Returns
    -------
    bool or (bool, petsc4py.PETSc.Mat)
        True when the dense check ran; with ``pin``, also the coarse solver's matrix.

    Raises
    ------
    nlss_fenicsx.twogrid.NotSPDError
        On every rank, naming the reason.
    """
    from nlss_fenicsx.twogrid import NotSPDError, check_coarse_spd

    r = Ac.getSize()[0]
    if r <= DENSE_CHECK_MAX:
        if Ac.getType() in (PETSc.Mat.Type.SEQDENSE, PETSc.Mat.Type.MPIDENSE):
            rows = np.array(Ac.getDenseArray())
        else:
            rows = la.petsc_to_csr(Ac).toarray()
        full = np.concatenate(comm.allgather(rows), axis=0)
        if not singular:
            check_coarse_spd(full)  # the same data on every rank: the same outcome
            return (True, Ac) if pin else True
        finite = np.isfinite(full).all()
        lam, Z = np.linalg.eigh(0.5 * (full + full.T)) if finite else ([-1.0], None)
        if not (np.abs(full - full.T).max() <= 1e-10 * np.abs(full).max()
                and lam[0] >= -1e-10 * max(lam[-1], 0.0)):
            raise NotSPDError(f"coarse operator Ac = P^T A P ({r} x {r}) is not symmetric "
                              "positive semi-definite although A has a nullspace attached; "
                              "A must be symmetric positive semi-definite")
        return (True, _pinned(Ac, full, lam, Z)) if pin else True
    AcT = Ac.transpose(PETSc.Mat())  # out of place
    scale = Ac.norm(PETSc.NormType.FROBENIUS)
    AcT.axpy(-1.0, Ac, structure=PETSc.Mat.Structure.DIFFERENT_NONZERO_PATTERN)
    asym = AcT.norm(PETSc.NormType.FROBENIUS)
    AcT.destroy()
    if not (np.isfinite(scale) and asym <= 1e-10 * scale):
        raise NotSPDError(f"coarse operator Ac = P^T A P ({r} x {r}) is not symmetric "
                          f"positive definite (|Ac - Ac^T|_F = {asym:.3e}, |Ac|_F = "
                          f"{scale:.3e}); A must be SPD and P of full column rank")
    return (False, Ac) if pin else False


def _pinned(Ac, full: np.ndarray, lam: np.ndarray, Z: np.ndarray):
    """``Ac + beta sum_k e_k e_k^T`` over pivots of ``null(Ac)`` (see :func:`check_coarse`)."""
    from scipy.linalg import qr

    Z = Z[:, lam <= 1e-10 * lam[-1]]
    if Z.shape[1] == 0:
        return Ac  # P misses null(A): Ac is SPD
    pivots = qr(Z.T, pivoting=True, mode="r")[1][:Z.shape[1]]
    pinned = Ac.duplicate(copy=True)
    lo, hi = pinned.getOwnershipRange()
    beta = float(np.diag(full).max())
    for k in pivots[(pivots >= lo) & (pivots < hi)]:
        pinned.setValue(int(k), int(k), beta, addv=PETSc.InsertMode.ADD_VALUES)
    pinned.assemble()
    return pinned


def set_up_with_options(target, prefix: str, wanted: dict) -> None:
    """Set ``target`` up from ``wanted`` options under ``prefix``, leaving the database as found.

    Keys already in the database are the user's and win; only the keys inserted here are
    removed afterwards (also on an error). ``target.setFromOptions()`` then ``setUp()``.

    Parameters
    ----------
    target : petsc4py.PETSc.PC or petsc4py.PETSc.KSP
        E.g. TwoGridPC's inner PCMG (prefix ``<pc prefix>nlss_mg_``) or its level smoother.
    prefix : str
        The inner PCMG's options prefix.
    wanted : dict of str to str or None
        Keys relative to ``prefix`` (:func:`mg_defaults`).

    Raises
    ------
    petsc4py.PETSc.Error
        From PETSc, with a note naming the prefix.
    """
    db = PETSc.Options()
    present = {k[len(prefix):] for k in db.getAll() if k.startswith(prefix)}
    inserted = [prefix + k for k in wanted if k not in present]
    for key in inserted:
        db[key] = wanted[key[len(prefix):]]
    try:
        target.setFromOptions()
        target.setUp()
    except PETSc.Error as err:
        err.add_note(f"raised while setting up TwoGridPC's inner PCMG (options prefix {prefix})")
        raise
    finally:
        for key in inserted:
            db.delValue(key)


def check_coarse_solver(mg, dense_checked: bool) -> None:
    """Raise RuntimeError (one line) if the coarse solver of the PCMG ``mg`` failed to set up.

    Parameters
    ----------
    mg : petsc4py.PETSc.PC
        A set-up PCMG.
    dense_checked : bool
        Whether ``Ac`` passed the dense SPD check (else the message suggests it may not be SPD).

    Raises
    ------
    RuntimeError
        Naming PETSc's failure reason.
    """
    reason = mg.getMGCoarseSolve().getPC().getFailedReason()
    if reason != 0:
        name = next((k for k in dir(PETSc.PC.FailedReason)
                     if getattr(PETSc.PC.FailedReason, k) == reason), str(reason))
        hint = "" if dense_checked else " (Ac = P^T A P may not be SPD)"
        raise RuntimeError(f"the coarse solver of TwoGridPC's inner PCMG failed: {name}{hint}")


def reuse_key(A, opts, order, *, given_P: bool = False):
    """Return what a two-grid P depends on when not on A's values, else None.

    TwoGridPC keeps ``P`` (and its PETSc matrix) across set-ups whose key is equal: for
    ``sine``, ``fixed`` or a given ``P``, without a near-nullspace (which is appended to
    ``P`` and may change with ``A``).

    Parameters
    ----------
    A : petsc4py.PETSc.Mat
    opts : nlss_fenicsx.options.TwoGridOptions
    order : numpy.ndarray or None
        The node order attached to ``A``.
    given_P : bool
        The PC was given ``P``.

    Returns
    -------
    tuple or None
    """
    if not given_P and opts.coarse not in ("sine", "fixed"):
        return None
    nns = A.getNearNullSpace()
    if nns is not None and bool(nns.handle):
        return None
    ns = A.getNullSpace()
    return (opts, A.getSizes(), A.getBlockSize(), ns is not None and bool(ns.handle),
            None if order is None else order.tobytes())


# Options of the inner PCMG (under <prefix>nlss_mg_) that a user may set: the coarse solver
# and the cycle; the level smoother is the package's (nlss_smoother, nlss_nu, nlss_omega).
MG_OPTIONS = ("mg_coarse_", "pc_mg_cycle_type", "pc_mg_multiplicative_cycles", "pc_mg_log")


def check_mg_options(items) -> None:
    """Refuse options of the inner PCMG that would change its structure.

    Parameters
    ----------
    items : iterable of (str, str or None)
        Keys under ``<prefix>nlss_mg_`` (without it) and their values.

    Raises
    ------
    ValueError
        For a key that is not one of :data:`MG_OPTIONS` (``pc_type`` is accepted only as
        ``mg``): the inner PCMG must keep its two levels, its interpolation ``P`` and its
        Galerkin coarse operator; for the level smoother's options (``mg_levels_*``,
        ``pc_mg_distinct_smoothup``: the package's smoother options keep it convergent, and
        the cycle symmetric); for a Krylov coarse solve (``mg_coarse_ksp_type`` other than
        ``preonly``); and for a cycle count below 1 (a singular preconditioner).

    Examples
    --------
    >>> check_mg_options([("mg_coarse_pc_type", "lu"), ("pc_mg_cycle_type", "w")])
    >>> check_mg_options([("pc_type", "jacobi")])
    Traceback (most recent call last):
    ...
    ValueError: nlss_mg_pc_type 'jacobi' is refused: the inner PCMG of TwoGridPC takes only \
nlss_mg_mg_coarse_*, nlss_mg_pc_mg_cycle_type, nlss_mg_pc_mg_multiplicative_cycles, \
nlss_mg_pc_mg_log
    """
    for key, value in items:
        if key == "pc_type" and value == "mg":
            continue
        if key.startswith("mg_levels_") or key == "pc_mg_distinct_smoothup":
            raise ValueError(f"nlss_mg_{key} {value!r} is refused: the level smoother is set "
                             "by nlss_smoother, nlss_nu and nlss_omega, which keep it convergent "
                             "(and the two-level operator SPD) for this matrix")
        if key == "mg_coarse_ksp_type" and str(value).lower() != "preonly":
            raise ValueError(f"nlss_mg_{key} {value!r} is refused: a Krylov coarse solve makes "
                             "the preconditioner nonlinear, which CG does not allow; choose the "
                             "coarse solver with nlss_mg_mg_coarse_pc_type")
        if not key.startswith(MG_OPTIONS):
            allowed = ", ".join("nlss_mg_" + o + ("*" if o.endswith("_") else "")
                                for o in MG_OPTIONS)
            raise ValueError(f"nlss_mg_{key} {value!r} is refused: the inner PCMG of "
                             f"TwoGridPC takes only {allowed}")
        # No cycle makes the preconditioner singular: CG would then report convergence on
        # a zero preconditioned residual (a wrong answer).
        if key == "pc_mg_multiplicative_cycles":
            text = str(value).strip()
            if not (text.isdigit() and int(text) >= 1):
                raise ValueError(f"nlss_mg_{key}: expected an integer >= 1, got {value!r}")


def mg_defaults(smoother: str, nu: int, *, omega: float | None = None,
                interval: tuple[float, float] | None = None, parallel: bool = False,
                singular: bool = False) -> dict[str, str | None]:
    """Return the inner PCMG's settings as PETSc options (keys without ``nlss_mg_``).

    Parameters
    ----------
    smoother : {"jacobi", "chebyshev", "sor", "icc"}
        ``jacobi``: Richardson scaled by ``omega`` + PCJACOBI; ``chebyshev``: KSPCHEBYSHEV
        on ``interval`` of ``D^-1 A`` + PCJACOBI (no eigenvalue estimate of its own);
        ``sor``: Richardson + local symmetric SOR with weight ``omega`` (symmetric SOR on
        one rank); ``icc``: KSPCHEBYSHEV on ``interval`` of ``M^-1 A`` + PCICC (ICC(0),
        PETSc's positive-definite shift; block Jacobi with ICC(0) per rank in parallel);
        for ``nu = 1`` the same operator as Richardson scaled by ``2 / (lo + hi)``.
    nu : int
        Sweeps (the level KSP's iterations), before and after the coarse correction.
    omega : float, optional
        Weight for ``jacobi`` and ``sor``.
    interval : (float, float), optional
        ``(lo, hi)`` for ``chebyshev`` and ``icc``.
    parallel : bool
        Coarse solve redundant (a Cholesky on every rank) instead of plain Cholesky.
    singular : bool
        ``A`` has a nullspace (semi-definite): the coarse solve is a pseudo-inverse (PCSVD)
        instead of a Cholesky factorisation.

    Returns
    -------
    dict
        Option name to value (``None`` for a flag).

    Examples
    --------
    >>> mg_defaults("jacobi", 5, omega=0.66)["mg_levels_ksp_richardson_scale"]
    '0.66'
    """
    levels: dict[str, str | None] = {"mg_levels_ksp_max_it": str(nu),
                                     "mg_levels_ksp_norm_type": "none"}
    if smoother == "jacobi":
        levels.update(mg_levels_ksp_type="richardson", mg_levels_pc_type="jacobi",
                      mg_levels_ksp_richardson_scale=repr(float(omega)))
    elif smoother in ("chebyshev", "icc"):
        lo, hi = interval
        levels.update(mg_levels_ksp_type="chebyshev", mg_levels_pc_type="jacobi",
                      mg_levels_ksp_chebyshev_eigenvalues=f"{lo!r},{hi!r}",
                      mg_levels_ksp_chebyshev_esteig_steps="0")
        if smoother == "icc" and parallel:
            levels.update(mg_levels_pc_type="bjacobi", mg_levels_sub_pc_type="icc")
        elif smoother == "icc":
            levels["mg_levels_pc_type"] = "icc"
        if smoother == "icc" and nu == 1:  # degree 1 = Richardson with weight 2 / (lo + hi):
            # the same operator, the simpler KSP
            del levels["mg_levels_ksp_chebyshev_eigenvalues"]
            del levels["mg_levels_ksp_chebyshev_esteig_steps"]
            levels.update(mg_levels_ksp_type="richardson",
                          mg_levels_ksp_richardson_scale=repr(2.0 / (lo + hi)))
    else:
        levels.update(mg_levels_ksp_type="richardson", mg_levels_pc_type="sor",
                      mg_levels_ksp_richardson_scale="1.0",
                      mg_levels_pc_sor_local_symmetric=None,
                      mg_levels_pc_sor_omega=repr(float(omega)))
    coarse: dict[str, str | None] = {"mg_coarse_ksp_type": "preonly",
                                     "mg_coarse_pc_factor_shift_type": "none"}
    solver = "svd" if singular else "cholesky"
    if parallel:
        coarse.update(mg_coarse_pc_type="redundant", mg_coarse_redundant_pc_type=solver)
    else:
        coarse["mg_coarse_pc_type"] = solver
    return {"pc_mg_galerkin": "none", **levels, **coarse}
