"""One solve of one assembled instance by one method, timed phase by phase.

Phases (DESIGN.md section 4), seconds from :func:`time.perf_counter`:

``smoothing``  building S (the coarse spaces built from S: svd, the learned ones)
``inference``  building the coarse basis P (from S, from A, or read from a cache)
``setup``      everything else before the iteration: for the two-grid methods the
               smoother's weight check (an estimate of lambda_max(D^-1 A)), Ac and its
               Cholesky factor; the preconditioner set-up for the peers; the
               factorisation for the direct solver
``solve``      the Krylov iteration to ||b - A x|| / ||b|| < rtol (or the triangular solves)
``total``      the sum of the four
``once``       (eig-ref only) work done once per mesh and cached, not in ``total``

Two-grid methods run through :class:`nlss_fenicsx.petsc.TwoGridPC` (``path="petsc"``),
which builds P with :func:`nlss_fenicsx.coarse.coarse_basis`, or through the SciPy
reference (``path="scipy"``): the same dispatcher, then
:class:`nlss_fenicsx.twogrid.TwoGrid` and :func:`~nlss_fenicsx.twogrid.pcg`. The learned
methods (NLSS, Subspace, GNN) are one coarse kind, ``nlss``, told apart by their model.
The peers are the solvers a user would otherwise pick: Jacobi-CG, ICC(0)-CG, PETSc
GAMG-CG, PyAMG smoothed aggregation V-cycle as the CG preconditioner, and a sparse direct
Cholesky (PETSc).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from nlss_fenicsx._fenicsx import PETSc

__all__ = ["LEARNED", "PEERS", "REFERENCES", "TWOGRID", "MethodSpec", "Record",
           "method_class", "run_method"]

LEARNED = ("nlss", "subspace", "gnn")
TWOGRID = (*LEARNED, "svd", "sa", "sine", "eig-ref", "eig", "fixed")
PEERS = ("jacobi", "icc", "pyamg", "gamg", "cholesky")
_PEER_LABELS = {"jacobi": "Jacobi-CG", "icc": "ICC(0)-CG", "pyamg": "PyAMG-SA-CG",
                "gamg": "GAMG-CG", "cholesky": "Cholesky"}
_TWOGRID_LABELS = {"nlss": "NLSS", "subspace": "Subspace", "gnn": "GNN", "svd": "SVD",
                   "sa": "SA-AMG", "sine": "sine", "eig-ref": "eig-ref",
                   "eig": "eig (oracle)", "fixed": "fixed basis"}
_PAPER_SWEEPS = 10
REFERENCES = ("pattern", "family")  # eig-ref's reference operator


def method_class(name: str) -> str:
    """``"learned"``, ``"twogrid"`` (non-learned), ``"oracle"`` or ``"peer"``.

    ``eig`` (the instance's own lowest eigenvectors) is an oracle: it needs an eigensolve
    of the very matrix being solved, so it is a bound, not a practical method.

    Examples
    --------
    >>> [method_class(m) for m in ("nlss", "sine", "eig", "gamg")]
    ['learned', 'twogrid', 'oracle', 'peer']
    """
    if name in LEARNED:
        return "learned"
    if name == "eig":
        return "oracle"
    if name in TWOGRID:
        return "twogrid"
    if name in PEERS:
        return "peer"
    raise ValueError(f"Unrecognized method {name!r}; expected one of {TWOGRID + PEERS}")


@dataclass(frozen=True)
class MethodSpec:
    """What to run: a two-grid coarse space (``TWOGRID``) or a peer solver (``PEERS``).

    Attributes
    ----------
    name : str
        Method name; the learned ones need ``model`` (a checkpoint path).
    rank : int
        Coarse rank r (not used by ``sa`` and the peers).
    K, sweeps, omega : int, int, float or "auto"
        Smoothed vectors: K columns, ``sweeps`` Jacobi sweeps of weight ``omega`` (the
        paper's 72, 10, 0.66). ``omega`` is also the two-grid smoother's weight
        (``"auto"``: 0.66 where it is safe, see :mod:`nlss_fenicsx.relaxation`).
    nu : int
        Pre- and post-smoothing sweeps of the two-grid cycle.
    smoother : str
        The two-grid cycle's smoother (``jacobi`` as in the paper).
    rtol, maxiter : float, int
        Stop at ``||b - A x|| / ||b|| < rtol``; fail after ``maxiter`` iterations.
    path : str
        ``"petsc"`` (TwoGridPC) or ``"scipy"`` (TwoGrid + pcg), two-grid methods only.
    model : str or None
        Checkpoint of a learned method.
    seed : int
        Seed of the smoothed vectors' random start (and of PyAMG's set-up).
    precision : str
        Inference weights of an MLP model, ``"int8"`` or ``"float32"``.
    basis : str or None
        Basis file of the ``fixed`` coarse space.
    reference : str
        eig-ref's reference operator: ``"pattern"`` (the graph Laplacian of A's pattern,
        the PC's default) or ``"family"`` (the family's mean-coefficient matrix on the
        instance's mesh, given to :func:`run_method` as ``reference=``; see
        :func:`nlss_fenicsx.bench.instances.family_reference`).
    """

    name: str
    rank: int = 48
    K: int = 72
    sweeps: int = _PAPER_SWEEPS
    nu: int = 5
    omega: float | str = 0.66
    smoother: str = "jacobi"
    rtol: float = 1e-6
    path: str = "petsc"
    model: str | None = None
    seed: int = 0
    maxiter: int = 10000
    precision: str = "int8"
    basis: str | None = None
    reference: str = "pattern"

    def __post_init__(self):
        method_class(self.name)  # validates the name
        if self.path not in ("petsc", "scipy"):
            raise ValueError(f"Unrecognized path {self.path!r}; expected 'petsc' or 'scipy'")
        if self.name in LEARNED and not self.model:
            raise ValueError(f"method {self.name!r} needs model=PATH (a trained checkpoint)")
        if self.reference not in REFERENCES:
            raise ValueError(f"Unrecognized reference {self.reference!r}; expected one of "
                             f"{REFERENCES}")
        if self.name == "fixed" and not self.basis:
            raise ValueError("method 'fixed' needs basis=PATH (a basis file written by "
                             "`nlss-fenicsx basis`)")

    @property
    def coarse(self) -> str:
        """The coarse kind handed to the dispatcher (``nlss`` for every learned method)."""
        return "nlss" if self.name in LEARNED else self.name

    @property
    def ranked(self) -> bool:
        """Whether ``rank`` applies (two-grid with a coarse rank)."""
        return self.name in TWOGRID and self.name != "sa"

    @property
    def label(self) -> str:
        """Display name, e.g. ``SVD``, ``SVD (300 sweeps)``, ``NLSS (float32) (SciPy)``."""
        if self.name in PEERS:
            return _PEER_LABELS[self.name]
        label = _TWOGRID_LABELS[self.name]
        if self.sweeps != _PAPER_SWEEPS and self.name == "svd":
            label += f" ({self.sweeps} sweeps)"
        if self.name in ("nlss", "subspace") and self.precision != "int8":
            label += f" ({self.precision})"
        if self.name == "eig-ref" and self.reference == "family":
            label += " (mean coefficients)"
        return label + (" (SciPy)" if self.path == "scipy" else "")


@dataclass
class Record:
    """Result of one timed solve.

    ``history`` (only with ``run_method(..., history=True)``) holds the relative residuals
    ``||r_k|| / ||b||`` for ``k = 0 .. iterations``: PETSc's residual history for the KSP
    paths (CG's recursively updated, unpreconditioned residual), the true residuals of
    :func:`~nlss_fenicsx.twogrid.pcg` for the SciPy paths, and ``[1, final]`` for the
    direct solver.
    """

    method: str
    rank: int | None
    iterations: int
    converged: bool
    rel_residual: float
    phases: dict = field(default_factory=dict)
    coarse_size: int | None = None
    x: np.ndarray | None = None
    history: list[float] | None = None

    def as_dict(self) -> dict:
        """JSON-ready fields (without the solution ``x``)."""
        d = asdict(self)
        d.pop("x")
        if d["history"] is None:  # only present when asked for
            d.pop("history")
        return d


def _phases(smoothing=0.0, inference=0.0, setup=0.0, solve=0.0, once=None) -> dict:
    p = {"smoothing": smoothing, "inference": inference, "setup": setup, "solve": solve}
    p["total"] = sum(p.values())
    if once is not None:
        p["once"] = once
    return p


def _ksp(A, ksp_type: str, rtol: float, maxiter: int):
    ksp = PETSc.KSP().create(comm=A.getComm())
    ksp.setOptionsPrefix("nlss_bench_")
    ksp.setOperators(A)
    ksp.setType(ksp_type)
    ksp.setTolerances(rtol=rtol, atol=0.0, max_it=maxiter)
    if ksp_type == "cg":
        ksp.setNormType(PETSc.KSP.NormType.UNPRECONDITIONED)
    return ksp


def _run_ksp(system, ksp, history: bool = False):
    """``(x, rel_residual, setup s, solve s, iterations, history)`` of one KSP solve.

    ``x`` holds this rank's entries; the true relative residual ``||b - A x|| / ||b||``
    is computed by PETSc over all ranks, and a ``ConvergenceError`` raised (on every rank)
    unless it is below the KSP's rtol: PETSc stops on CG's recursive residual, which keeps
    falling below what rounding lets the true one reach. Destroys ``ksp`` and its vectors;
    a PETSc error caused by an error inside a Python PC is replaced by that error.
    """
    from nlss_fenicsx.krylov import ConvergenceError
    from nlss_fenicsx.petsc import check_converged

    if history:
        ksp.setConvergenceHistory(reset=True)
    b = system.A.createVecRight()
    b.setArray(system.b)
    x = system.A.createVecLeft()
    res = system.A.createVecLeft()
    try:
        t0 = time.perf_counter()
        ksp.setUp()
        t1 = time.perf_counter()
        ksp.solve(b, x)
        t2 = time.perf_counter()
        its = check_converged(ksp)
        nb = b.norm()
        nb = nb if nb > 0 else 1.0
        system.A.mult(x, res)
        res.aypx(-1.0, b)  # res = b - A x
        hist = [float(h) / nb for h in ksp.getConvergenceHistory()] if history else None
        rel, rtol = float(res.norm() / nb), ksp.getTolerances()[0]
        if not rel < rtol:
            raise ConvergenceError(f"KSP {ksp.getType()} did not reach rtol = {rtol:g}: the "
                                   f"true relative residual is {rel:.3e} after {its} "
                                   "iterations (the tolerance is below the attainable "
                                   "accuracy)", None)
        return x.getArray().copy(), rel, t1 - t0, t2 - t1, its, hist
    except PETSc.Error as err:
        if isinstance(err.__cause__, ValueError | RuntimeError):
            raise err.__cause__ from None
        raise
    finally:
        for obj in (b, x, res, ksp):
            obj.destroy()


def _pc_options(spec: MethodSpec):
    """Build the TwoGridPC options of a two-grid ``spec``.

    Every setting the coarse kind uses is given explicitly, so none is taken from a
    checkpoint and none is reported unused.
    """
    from nlss_fenicsx.options import OPTION_NAMES, TwoGridOptions, parse_options

    values = {"coarse": spec.coarse, "model": spec.model, "r": spec.rank, "K": spec.K,
              "sweeps": spec.sweeps, "nu": spec.nu, "omega": spec.omega,
              "smoother": spec.smoother, "seed": spec.seed, "basis": spec.basis,
              "precision": None if spec.name == "gnn" else spec.precision}
    kind = TwoGridOptions(coarse=spec.coarse)
    return parse_options({OPTION_NAMES[k]: str(v) for k, v in values.items()
                          if v is not None and kind.uses(k)})


def _twogrid_petsc(system, spec: MethodSpec, history: bool, given: dict) -> Record:
    from nlss_fenicsx.petsc import TwoGridPC

    ksp = _ksp(system.A, "cg", spec.rtol, spec.maxiter)
    pc = ksp.getPC()
    pc.setType(PETSc.PC.Type.PYTHON)
    ctx = TwoGridPC(options=_pc_options(spec), **given)
    pc.setPythonContext(ctx)
    x, rel_res, _, t_solve, its, hist = _run_ksp(system, ksp, history)
    t = ctx.timings
    return Record(method=spec.label, rank=spec.rank if spec.ranked else None,
                  iterations=its, converged=True, rel_residual=rel_res,
                  phases=_phases(t["smoothing"], t["inference"] - t.get("once", 0.0),
                                 t["setup"] + t.get("estimate", 0.0), t_solve, t.get("once")),
                  coarse_size=ctx.coarse_size, x=x, history=hist)


_NEEDS_S = ("svd", "nlss")  # the kinds built from the smoothed vectors S


def _twogrid_scipy(system, spec: MethodSpec, history: bool, reference=None) -> Record:
    from nlss_fenicsx.coarse import coarse_basis
    from nlss_fenicsx.smoothing import smoothed_vectors
    from nlss_fenicsx.twogrid import TwoGrid, pcg

    A = system.A_csr
    model = None
    if spec.coarse == "nlss":  # loaded (and cached) before the clock starts
        from nlss_fenicsx.nn.inference import load_model

        model = load_model(spec.model, precision=spec.precision)
    S, t_smooth = None, 0.0
    if spec.coarse in _NEEDS_S:
        t0 = time.perf_counter()
        S = smoothed_vectors(A, spec.K, sweeps=spec.sweeps, omega=spec.omega, rng=spec.seed)
        t_smooth = time.perf_counter() - t0
    t1 = time.perf_counter()
    timings: dict = {}
    P = coarse_basis(spec.coarse, A, r=spec.rank, S=S, model=model,
                     node_order=system.grid_order, reference=reference, seed=spec.seed,
                     basis_file=spec.basis, timings=timings)
    t2 = time.perf_counter()
    tg = TwoGrid(A, P, smoother=spec.smoother, nu=spec.nu, omega=spec.omega)
    t3 = time.perf_counter()
    x, info = pcg(A, system.b, tg, rtol=spec.rtol, maxiter=spec.maxiter)
    t4 = time.perf_counter()
    info.raise_if_failed()
    once = timings.get("once")
    return Record(method=spec.label, rank=spec.rank if spec.ranked else None,
                  iterations=info.iterations, converged=info.converged,
                  rel_residual=_rel_res(A, x, system.b),
                  phases=_phases(t_smooth, t2 - t1 - (once or 0.0), t3 - t2, t4 - t3, once),
                  coarse_size=P.shape[1], x=x,
                  history=list(info.residuals) if history else None)


def _rel_res(A_csr, x, b) -> float:
    nb = np.linalg.norm(b)
    return float(np.linalg.norm(b - A_csr @ x) / (nb if nb > 0 else 1.0))


def _pyamg(system, spec: MethodSpec, history: bool) -> Record:
    import pyamg

    from nlss_fenicsx.twogrid import pcg

    state = np.random.get_state()  # noqa: NPY002 - PyAMG uses the global RNG
    np.random.seed(spec.seed)  # noqa: NPY002
    try:
        t0 = time.perf_counter()
        ml = pyamg.smoothed_aggregation_solver(system.A_csr, B=np.ones((system.n, 1)))
        M = ml.aspreconditioner(cycle="V")
        t1 = time.perf_counter()
    finally:
        np.random.set_state(state)  # noqa: NPY002
    x, info = pcg(system.A_csr, system.b, M, rtol=spec.rtol, maxiter=spec.maxiter)
    t2 = time.perf_counter()
    info.raise_if_failed()
    return Record(method=spec.label, rank=None, iterations=info.iterations,
                  converged=True, rel_residual=_rel_res(system.A_csr, x, system.b),
                  phases=_phases(setup=t1 - t0, solve=t2 - t1),
                  coarse_size=ml.levels[1].A.shape[0] if len(ml.levels) > 1 else None,
                  x=x, history=list(info.residuals) if history else None)


def _peer(system, spec: MethodSpec, history: bool, parallel: bool) -> Record:
    if spec.name == "pyamg":
        return _pyamg(system, spec, history)
    if spec.name == "cholesky":
        ksp = _ksp(system.A, "preonly", spec.rtol, 1)
        ksp.getPC().setType(PETSc.PC.Type.CHOLESKY)
        if parallel:  # PETSc's own Cholesky is sequential
            ksp.getPC().setFactorSolverType("mumps")
    else:
        ksp = _ksp(system.A, "cg", spec.rtol, spec.maxiter)
        pc = ksp.getPC()
        if spec.name == "icc" and parallel:  # ICC(0) on each rank's diagonal block
            pc.setType(PETSc.PC.Type.BJACOBI)
            ksp.setUp()
            for sub in pc.getBJacobiSubKSP():
                sub.getPC().setType(PETSc.PC.Type.ICC)
        else:
            pc.setType({"jacobi": PETSc.PC.Type.JACOBI, "icc": PETSc.PC.Type.ICC,
                        "gamg": PETSc.PC.Type.GAMG}[spec.name])
    x, rel_res, t_setup, t_solve, its, hist = _run_ksp(system, ksp, history)
    if history and spec.name == "cholesky":
        hist = [1.0, rel_res]  # preonly keeps no history: start and result of the one solve
    return Record(method=spec.label, rank=None, iterations=its, converged=True,
                  rel_residual=rel_res, phases=_phases(setup=t_setup, solve=t_solve), x=x,
                  history=hist)


def _check_input(system, spec: MethodSpec, comm) -> None:
    """Check finite A and b on every rank, and a method that runs on ``comm.size`` ranks.

    Raises the same ValueError on every rank (no rank waits for another that failed).
    """
    local = np.array([np.count_nonzero(~np.isfinite(system.b)),
                      np.count_nonzero(~np.isfinite(system.A_csr.data))])
    bad_b, bad_A = (comm.allreduce(local) if comm.size > 1 else local).tolist()
    if bad_b:
        raise ValueError(f"expected a finite right-hand side b, got {bad_b} NaN or Inf "
                         "entries")
    if bad_A:
        raise ValueError("expected a finite matrix A, got NaN or Inf entries")
    if comm.size > 1 and (spec.name == "pyamg" or (spec.name in TWOGRID
                                                   and spec.path == "scipy")):
        what = "PyAMG-SA-CG" if spec.name == "pyamg" else "the SciPy path (path='scipy')"
        raise ValueError(f"{what} runs on one MPI rank, got {comm.size}: use the PETSc path "
                         "or run without mpiexec")


def _check_reference(spec: MethodSpec, reference) -> None:
    if reference is not None and spec.name != "eig-ref":
        raise ValueError(f"reference= applies to eig-ref only, got method {spec.name!r}")
    if spec.name == "eig-ref" and (spec.reference == "family") != (reference is not None):
        raise ValueError("eig-ref with reference='family' needs reference= (the family's "
                         "mean-coefficient matrix in dof order, bench.instances.family_reference)"
                         if reference is None else "reference= given to eig-ref with "
                         "reference='pattern'; use MethodSpec(reference='family')")


def run_method(system, spec: MethodSpec, *, history: bool = False, reference=None,
               **given) -> Record:
    """Solve ``system`` with ``spec`` and time each phase.

    Runs on the communicator of ``system.A``: the PETSc path and the PETSc peers
    (Jacobi, ICC(0) as block Jacobi with ICC(0) per rank, GAMG, Cholesky through MUMPS)
    also under ``mpiexec``; the SciPy path and PyAMG on one rank only.

    Parameters
    ----------
    system : nlss_fenicsx.pdes.System
        The assembled instance (n unknowns; ``A_csr`` and ``b`` hold this rank's rows).
    spec : MethodSpec
        The method and its settings.
    history : bool
        Record the relative residual of every iteration in ``Record.history``.
    reference : scipy.sparse matrix, shape (n_local, n), optional
        eig-ref's reference operator (this rank's rows, dof order), required with
        ``spec.reference == "family"``
        (:func:`nlss_fenicsx.bench.instances.family_reference`) and refused otherwise.
        The eigensolve is cached per mesh; its seconds are ``phases["once"]``, not in
        ``total`` (call :func:`nlss_fenicsx.coarse.clear_reference_cache` first to time it).
    **given
        ``P=`` (this rank's rows, n_local x r) or ``S=`` (n_local x K) passed through to
        :class:`~nlss_fenicsx.petsc.TwoGridPC` (PETSc path only).

    Returns
    -------
    Record
        Iterations, final true relative residual (over all ranks), phases in seconds,
        this rank's entries of the solution.

    Raises
    ------
    ValueError
        NaN or Inf in ``b`` or ``A`` (checked on every rank before anything is timed), a
        bad setting, or a serial-only method on several ranks: the same on every rank.
    nlss_fenicsx.twogrid.ConvergenceError
        The solve did not reach ``rtol`` within ``maxiter`` iterations, or the true
        relative residual is not below ``rtol`` (a tolerance below the attainable accuracy).
    nlss_fenicsx.twogrid.NotSPDError
        The coarse operator ``Ac = P^T A P`` is not symmetric positive definite.
    """
    comm = system.A.getComm().tompi4py()
    _check_input(system, spec, comm)
    _check_reference(spec, reference)
    if spec.name in PEERS:
        return _peer(system, spec, history, comm.size > 1)
    if spec.path == "scipy":
        if given:
            raise ValueError(f"P= and S= apply to the PETSc path only, got {sorted(given)}")
        return _twogrid_scipy(system, spec, history, reference)
    if reference is not None:
        given["reference"] = reference
    return _twogrid_petsc(system, spec, history, given)
