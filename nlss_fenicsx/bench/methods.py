"""One solve of one assembled instance by one method, timed phase by phase.

Phases (DESIGN.md section 4), seconds from :func:`time.perf_counter`:

``smoothing``  building S (two-grid methods with S only)
``inference``  building the coarse basis P from S (or from A for SA-AMG)
``setup``      everything else before the iteration: Ac and its Cholesky factor for the
               two-grid methods, the preconditioner set-up for the peers, the
               factorisation for the direct solver
``solve``      the Krylov iteration to ||b - A x|| / ||b|| < rtol (or the triangular solves)
``total``      the sum

Two-grid methods run through :class:`nlss_fenicsx.petsc.TwoGridPC` (``path="petsc"``) or
the SciPy reference :class:`nlss_fenicsx.twogrid.TwoGrid` + :func:`~nlss_fenicsx.twogrid.pcg`
(``path="scipy"``). The peers are the solvers a user would otherwise pick: Jacobi-CG,
ICC(0)-CG, PETSc GAMG-CG (PETSc), PyAMG smoothed aggregation V-cycle as the CG
preconditioner, and a sparse direct Cholesky (PETSc).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from nlss_fenicsx._fenicsx import PETSc

__all__ = [
    "PEERS",
    "TWOGRID_COARSE",
    "MethodSpec",
    "Record",
    "run_method",
]

TWOGRID_COARSE = ("svd", "sa", "nlss", "subspace", "gnn")
PEERS = ("jacobi", "icc", "pyamg", "gamg", "cholesky")


@dataclass(frozen=True)
class MethodSpec:
    """What to run. ``name`` is a two-grid coarse space or a peer name."""

    name: str
    rank: int = 48
    K: int = 72
    sweeps: int = 10
    nu: int = 5
    omega: float = 0.66
    rtol: float = 1e-6
    path: str = "petsc"
    model: str | None = None
    seed: int = 0
    maxiter: int = 10000
    precision: str = "int8"

    def __post_init__(self):
        if self.name not in TWOGRID_COARSE + PEERS:
            raise ValueError(f"Unrecognized method {self.name!r}; expected one of "
                             f"{TWOGRID_COARSE + PEERS}")
        if self.path not in ("petsc", "scipy"):
            raise ValueError(f"Unrecognized path {self.path!r}; expected 'petsc' or 'scipy'")

    @property
    def label(self) -> str:
        if self.name in PEERS:
            return {"jacobi": "Jacobi-CG", "icc": "ICC(0)-CG", "pyamg": "PyAMG-SA-CG",
                    "gamg": "GAMG-CG", "cholesky": "Cholesky"}[self.name]
        label = {"svd": "SVD", "sa": "SA-AMG", "nlss": "NLSS", "subspace": "Subspace",
                 "gnn": "GNN"}[self.name]
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
        d = asdict(self)
        d.pop("x")
        if d["history"] is None:  # only present when asked for
            d.pop("history")
        return d


def _phases(smoothing=0.0, inference=0.0, setup=0.0, solve=0.0) -> dict:
    p = {"smoothing": smoothing, "inference": inference, "setup": setup, "solve": solve}
    p["total"] = sum(p.values())
    return p


def _rel_res(A_csr, x, b) -> float:
    nb = np.linalg.norm(b)
    return float(np.linalg.norm(b - A_csr @ x) / (nb if nb > 0 else 1.0))


def _ksp(A, ksp_type: str, rtol: float, maxiter: int, prefix: str):
    ksp = PETSc.KSP().create(comm=A.getComm())
    ksp.setOptionsPrefix(prefix)
    ksp.setOperators(A)
    ksp.setType(ksp_type)
    ksp.setTolerances(rtol=rtol, atol=0.0, max_it=maxiter)
    if ksp_type == "cg":
        ksp.setNormType(PETSc.KSP.NormType.UNPRECONDITIONED)
    return ksp


def _run_ksp(system, ksp, history: bool = False
             ) -> tuple[np.ndarray, float, float, int, list[float] | None]:
    from nlss_fenicsx.petsc import check_converged

    if history:
        ksp.setConvergenceHistory(reset=True)
    b = system.A.createVecRight()
    b.setArray(system.b)
    x = system.A.createVecLeft()
    try:
        t0 = time.perf_counter()
        ksp.setUp()
        t1 = time.perf_counter()
        ksp.solve(b, x)
        t2 = time.perf_counter()
    except PETSc.Error as err:
        # An error raised inside the Python PC reaches us wrapped: surface the real one.
        if isinstance(err.__cause__, ValueError | RuntimeError):
            raise err.__cause__ from None
        raise
    its = check_converged(ksp)
    out = x.getArray().copy()
    hist = None
    if history:
        nb = np.linalg.norm(system.b)
        hist = [float(h) for h in np.asarray(ksp.getConvergenceHistory()) / (nb if nb > 0 else 1.0)]
    for v in (b, x):
        v.destroy()
    return out, t1 - t0, t2 - t1, its, hist


def _twogrid_petsc(system, spec: MethodSpec, history: bool = False, **given) -> Record:
    from nlss_fenicsx.petsc import PCOptions, TwoGridPC

    opts = PCOptions(coarse=spec.name, model=spec.model, rank=spec.rank, K=spec.K,
                     sweeps=spec.sweeps, nu=spec.nu, omega=spec.omega, seed=spec.seed,
                     precision=spec.precision)
    ksp = _ksp(system.A, "cg", spec.rtol, spec.maxiter, "nlss_bench_")
    pc = ksp.getPC()
    pc.setType(PETSc.PC.Type.PYTHON)
    ctx = TwoGridPC(options=opts, **given)
    pc.setPythonContext(ctx)
    try:
        x, _setup_total, t_solve, its, hist = _run_ksp(system, ksp, history)
    finally:
        ksp.destroy()
    t = ctx.timings
    return Record(method=spec.label, rank=spec.rank if spec.name != "sa" else None,
                  iterations=its, converged=True, rel_residual=_rel_res(system.A_csr, x, system.b),
                  phases=_phases(t["smoothing"], t["inference"], t["setup"], t_solve),
                  coarse_size=ctx.coarse_size, x=x, history=hist)


def _twogrid_scipy(system, spec: MethodSpec, history: bool = False) -> Record:
    from nlss_fenicsx.coarse import sa_amg_basis, svd_basis
    from nlss_fenicsx.smoothing import smoothed_vectors
    from nlss_fenicsx.twogrid import TwoGrid, pcg

    A = system.A_csr
    t0 = time.perf_counter()
    S = None
    if spec.name != "sa":
        S = smoothed_vectors(A, spec.K, sweeps=spec.sweeps, omega=spec.omega, rng=spec.seed)
    t1 = time.perf_counter()
    if spec.name == "svd":
        P = svd_basis(S, spec.rank)
    elif spec.name == "sa":
        P = sa_amg_basis(A, seed=spec.seed)
    else:
        from nlss_fenicsx.nn.gnn import GNNModel
        from nlss_fenicsx.nn.inference import load_model

        model = load_model(spec.model)
        model.check_compatible(n=A.shape[0], K=spec.K)
        # The GNN reads the graph of A; the MLP has an int8 inference copy.
        extra = {"A": A} if isinstance(model, GNNModel) else {"precision": spec.precision}
        P = model.basis(S, spec.rank, grid_order=system.grid_order, **extra)
    t2 = time.perf_counter()
    tg = TwoGrid(A, P, nu_pre=spec.nu, nu_post=spec.nu, omega=spec.omega)
    t3 = time.perf_counter()
    x, info = pcg(A, system.b, tg, rtol=spec.rtol, maxiter=spec.maxiter)
    t4 = time.perf_counter()
    info.raise_if_failed()
    # setup: Ac and its Cholesky factor (TwoGrid's own timing, without input checks).
    return Record(method=spec.label, rank=spec.rank if spec.name != "sa" else None,
                  iterations=info.iterations, converged=info.converged,
                  rel_residual=_rel_res(A, x, system.b),
                  phases=_phases(t1 - t0, t2 - t1, tg.timings["setup"], t4 - t3),
                  coarse_size=P.shape[1], x=x,
                  history=list(info.residuals) if history else None)


def _peer(system, spec: MethodSpec, history: bool = False) -> Record:
    A = system.A
    if spec.name == "pyamg":
        import pyamg

        from nlss_fenicsx.twogrid import pcg

        state = np.random.get_state()  # noqa: NPY002 - PyAMG uses the global RNG
        np.random.seed(spec.seed)  # noqa: NPY002
        t0 = time.perf_counter()
        ml = pyamg.smoothed_aggregation_solver(system.A_csr, B=np.ones((system.n, 1)))
        M = ml.aspreconditioner(cycle="V")
        t1 = time.perf_counter()
        np.random.set_state(state)  # noqa: NPY002
        x, info = pcg(system.A_csr, system.b, M, rtol=spec.rtol, maxiter=spec.maxiter)
        t2 = time.perf_counter()
        info.raise_if_failed()
        return Record(method=spec.label, rank=None, iterations=info.iterations,
                      converged=True, rel_residual=_rel_res(system.A_csr, x, system.b),
                      phases=_phases(setup=t1 - t0, solve=t2 - t1),
                      coarse_size=ml.levels[1].A.shape[0] if len(ml.levels) > 1 else None,
                      x=x, history=list(info.residuals) if history else None)
    if spec.name == "cholesky":
        ksp = _ksp(A, "preonly", spec.rtol, 1, "nlss_bench_")
        ksp.getPC().setType(PETSc.PC.Type.CHOLESKY)
    else:
        ksp = _ksp(A, "cg", spec.rtol, spec.maxiter, "nlss_bench_")
        ksp.getPC().setType({"jacobi": PETSc.PC.Type.JACOBI, "icc": PETSc.PC.Type.ICC,
                             "gamg": PETSc.PC.Type.GAMG}[spec.name])
    try:
        x, t_setup, t_solve, its, hist = _run_ksp(system, ksp, history)
    finally:
        ksp.destroy()
    rel_res = _rel_res(system.A_csr, x, system.b)
    if history and spec.name == "cholesky":
        hist = [1.0, rel_res]  # preonly keeps no history: start and result of the one solve
    return Record(method=spec.label, rank=None, iterations=its, converged=True,
                  rel_residual=rel_res, phases=_phases(setup=t_setup, solve=t_solve), x=x,
                  history=hist)


def run_method(system, spec: MethodSpec, *, history: bool = False, **given) -> Record:
    """Solve ``system`` with ``spec`` and time each phase (serial).

    ``history=True`` records the relative residual of every iteration in
    ``Record.history``. ``given`` passes ``P=`` or ``S=`` through to
    :class:`~nlss_fenicsx.petsc.TwoGridPC`. Raises
    :class:`~nlss_fenicsx.twogrid.ConvergenceError` if the solve does not converge, and
    ValueError on NaN or Inf in ``b`` or ``A`` (checked before anything is timed).
    """
    if not np.all(np.isfinite(system.b)):
        raise ValueError(f"expected a finite right-hand side b, got "
                         f"{int(np.count_nonzero(~np.isfinite(system.b)))} NaN or Inf entries")
    if not np.all(np.isfinite(system.A_csr.data)):
        raise ValueError("expected a finite matrix A, got NaN or Inf entries")
    if spec.name in PEERS:
        return _peer(system, spec, history)
    if spec.path == "scipy":
        return _twogrid_scipy(system, spec, history)
    return _twogrid_petsc(system, spec, history, **given)
