"""A user's own FEniCSx programs with TwoGridPC chosen by options only (issue 14, item 8).

The programs (tests/client_programs.py) are written as the FEniCSx tutorial writes them and
know nothing of nlss_fenicsx. Each is solved with TwoGridPC ``svd`` and ``sa`` with DEFAULT
``nlss_*`` options (and ``nlss`` on the Gmsh disk, with a model trained there at tiny size),
checked against MUMPS LU to 1e-6 relative, serially and under ``mpiexec -n 2`` (svd,
nlss), iteration counts pinned.

Every iterative solve stops on the TRUE relative residual ``||b - A x|| / ||b|| < 1e-10``
(``ksp_norm_type unpreconditioned``), tight enough that the 1e-6 comparison with LU is
meaningful on these sizes (condition numbers below 1e4), and the same test for every
method so that the iteration counts compare.
"""

import json

import numpy as np
import pytest

from nlss_fenicsx._fenicsx import MPI, PETSc
from tests import client_programs as cp
from tests.conftest import ROOT, run_mpi

RTOL = 1e-10
ACCURACY = 1e-6
COMM = MPI.COMM_SELF  # serial tests; the mpiexec ones run tests/mpi/client_solve.py
SOLVED = [name for name in cp.PROGRAMS if name != "heat"]

# Iterations at the CI sizes of cp.PROGRAMS (rtol 1e-10, true residual), as (lo, hi) around
# the serial count. Bands of +-1 where counts legitimately move: S is drawn from a seeded
# random start in node order, but serially it is smoothed by SciPy in float32 and on two
# ranks by PETSc in float64, and BLAS differs between machines; measured 2-rank svd counts
# differ from the serial ones by at most one (disk 12, neumann 44, hyperelastic 31).
PINNED = {
    ("poisson_disk", "svd"): (12, 14),
    ("poisson_disk", "sa"): (7, 9),
    ("poisson_disk", "nlss"): (27, 31),  # the tiny model below (r = 8); svd at r = 8: 26
    ("poisson_box", "svd"): (7, 9),
    ("poisson_box", "sa"): (7, 9),
    ("elasticity_tet", "svd"): (15, 17),
    ("elasticity_tet", "sa"): (10, 12),
    ("elasticity_hex", "svd"): (16, 18),
    ("elasticity_hex", "sa"): (11, 13),
    ("heat", "svd"): (10, 12),
    ("heat", "sa"): (6, 8),
    ("neumann", "svd"): (42, 45),
    ("neumann", "sa"): (8, 10),
    ("hyperelastic", "svd"): (30, 33),
    ("hyperelastic", "sa"): (12, 14),
}

# Known failures, each waiting on its owner (strict: the test says when it is fixed).
AWAITS: dict[tuple[str, str], str] = {}


def _case(name, coarse):
    reason = AWAITS.get((name, coarse))
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(name, coarse, marks=marks, id=f"{name}-{coarse}")


def _in_band(its: int, key) -> bool:
    lo, hi = PINNED[key]
    return lo <= its <= hi


@pytest.fixture(scope="module")
def programs():
    """Each program built once (serial), on first use."""
    cache = {}

    def get(name):
        if name not in cache:
            build, kwargs = cp.PROGRAMS[name]
            cache[name] = build(COMM, **kwargs)
        return cache[name]

    return get


def _run(program, options, **kw):
    run = cp.ksp_solve if program.nullspace else cp.solve
    return run(program, options, rtol=RTOL, **kw)


def _error(program, x, x_ref):
    if program.nullspace:  # the solution is defined up to a constant
        x, x_ref = cp.zero_mean(x, COMM), cp.zero_mean(x_ref, COMM)
    return cp.relative_error(x, x_ref, COMM)


@pytest.fixture(scope="module")
def lu(programs):
    """The MUMPS LU solution of each program (owned entries), computed once."""
    cache = {}

    def get(name):
        if name not in cache:
            res = _run(programs(name), cp.LU)
            assert res.converged, f"{name}: LU reason {res.reason}"
            cache[name] = res.x
        return cache[name]

    return get


# ------------------------------------------------------------------ the references


@pytest.mark.parametrize("name", SOLVED)
def test_lu_reference_solves_the_assembled_system(programs, lu, name):
    # The reference itself: LinearProblem's LU solution satisfies the system assembled
    # independently (the tutorial's explicit route), to round-off.
    prog = programs(name)
    A, b, _ = cp.assemble_system(prog)
    x = A.createVecRight()
    x.array[:] = lu(name)
    r = b.copy()
    A.mult(x, r)
    r.aypx(-1.0, b)
    assert r.norm() <= 1e-11 * b.norm(), f"{name}: LU residual {r.norm() / b.norm():.2e}"
    if prog.nullspace:  # consistent right-hand side: b is orthogonal to the constant
        assert abs(b.sum()) <= 1e-12 * b.norm() * np.sqrt(b.getSize())
    assert prog.n == b.getSize()


@pytest.mark.parametrize("name", SOLVED)
def test_gamg_reference_matches_lu(programs, lu, name):
    # GAMG, the tutorial's iterative choice (with the rigid-body near-nullspace on the
    # elasticity programs): converges and agrees with LU; its count is the yardstick below.
    prog = programs(name)
    res = _run(prog, cp.GAMG)
    assert res.converged, f"{name}: GAMG reason {res.reason}"
    assert _error(prog, res.x, lu(name)) <= ACCURACY
    assert res.iterations <= 40


# ------------------------------------------------------------------ TwoGridPC, default options


@pytest.mark.parametrize(("name", "coarse"),
                         [_case(name, coarse) for name in SOLVED for coarse in ("svd", "sa")])
def test_twogrid_default_options_match_lu(programs, lu, name, coarse):
    prog = programs(name)
    res = _run(prog, cp.twogrid(coarse))
    assert res.converged, (f"{name} with {coarse}: KSP reason {res.reason} after "
                           f"{res.iterations} iterations")
    err = _error(prog, res.x, lu(name))
    assert err <= ACCURACY, f"{name} with {coarse}: relative error {err:.2e} vs LU"
    assert _in_band(res.iterations, (name, coarse)), (
        f"{name} with {coarse}: {res.iterations} iterations, pinned {PINNED[name, coarse]}")


@pytest.mark.parametrize("coarse", ["svd", "sa"])
def test_heat_loop_reuses_one_ksp(programs, coarse):
    # One KSP for every time step: the PC is set up once (A does not change) and each
    # step still matches LU's step.
    prog = programs("heat")
    ref = cp.heat_run(prog, cp.LU, rtol=RTOL)
    runs = cp.heat_run(prog, cp.twogrid(coarse), rtol=RTOL)
    assert len(runs) == prog.extra["steps"] == len(ref)
    ctx = runs[0].pc
    assert ctx is not None and all(r.pc is ctx for r in runs)
    P0 = ctx.P
    for step, (r, q) in enumerate(zip(runs, ref, strict=True)):
        assert r.converged, f"heat {coarse} step {step}: reason {r.reason}"
        assert cp.relative_error(r.x, q.x, COMM) <= ACCURACY
        assert _in_band(r.iterations, ("heat", coarse)), (
            f"heat {coarse} step {step}: {r.iterations} iterations, pinned "
            f"{PINNED['heat', coarse]}")
    assert ctx.P is P0, "the PC rebuilt its coarse space although A did not change"
    # The solution decays (no source, u = 0 on the boundary): a sanity check on the loop.
    norms = [np.linalg.norm(q.x) for q in ref]
    assert all(b < a for a, b in zip(norms, norms[1:], strict=False))


def _within_gamg_factor(n, cell, coarse, rtol):
    prog = cp.elasticity_program(COMM, n=n, cell=cell)
    gamg = cp.solve(prog, cp.GAMG, rtol=rtol)
    ours = cp.solve(prog, cp.twogrid(coarse), rtol=rtol)
    assert gamg.converged and ours.converged, (gamg.reason, ours.reason)
    assert cp.relative_error(ours.x, gamg.x, COMM) <= 1e3 * rtol
    return ours.iterations, gamg.iterations


@pytest.mark.parametrize("coarse", ["svd", "sa"])
def test_elasticity_within_gamg_factor(coarse):
    # Issue 14.3: with the rigid-body near-nullspace attached, svd and sa need at most
    # 1.5x GAMG's iterations on clamped 3D elasticity on tetrahedra (n = 2187 here: svd 27,
    # sa 13, GAMG 20; the slow test below and the benchmark: n = 14,739).
    ours, gamg = _within_gamg_factor(8, "tetrahedron", coarse, RTOL)
    assert ours <= 1.5 * gamg, f"{coarse}: {ours} iterations vs GAMG {gamg}"


@pytest.mark.slow
@pytest.mark.parametrize("coarse", [
    pytest.param("svd", marks=pytest.mark.xfail(strict=True, reason=(
        "B/A: at n = 14,739 default svd needs 47 iterations vs GAMG 16 (rtol 1e-6; near-"
        "nullspace used, coarse size 54); rank 144: 41, sweeps 100: 25, smoother sor: 24"))),
    "sa"])
@pytest.mark.parametrize("cell", ["tetrahedron", "hexahedron"])
def test_elasticity_issue_size_within_gamg_factor(coarse, cell):
    # The issue's size (n = 3 * 17^3 = 14,739) at the paper's rtol 1e-6. Measured: tets
    # svd 47, sa 11, GAMG 16; hexahedra svd 41, sa 8, GAMG 13 (both converge by default).
    ours, gamg = _within_gamg_factor(16, cell, coarse, 1e-6)
    assert ours <= 1.5 * gamg, f"{coarse} on {cell}: {ours} iterations vs GAMG {gamg}"


def test_hyperelastic_newton_with_twogrid(programs):
    # The whole Newton solve through a NonlinearProblem, TwoGridPC (svd) as its linear
    # solver, against Newton with LU; check_converged accepts the NonlinearProblem.
    from nlss_fenicsx.petsc import check_converged

    prog = programs("hyperelastic")
    lu_problem, u_lu = cp.newton_solve(prog, cp.LU)
    tg_problem, u_tg = cp.newton_solve(prog, cp.twogrid("svd"))
    check_converged(lu_problem)
    check_converged(tg_problem)
    assert tg_problem.solver.getIterationNumber() == lu_problem.solver.getIterationNumber()
    assert cp.relative_error(u_tg, u_lu, COMM) <= ACCURACY
    assert np.abs(u_lu).max() > 1e-3  # the load moved the beam: a real nonlinear solve


def test_check_converged_names_the_reason(programs):
    # A solve that stops early is never silent: check_converged on the LinearProblem
    # names PETSc's reason.
    from nlss_fenicsx.petsc import check_converged

    prog = programs("poisson_disk")
    res = cp.solve(prog, {**cp.twogrid("svd"), "ksp_max_it": 2}, rtol=RTOL)
    assert not res.converged
    with pytest.raises(RuntimeError, match="DIVERGED_(MAX_IT|ITS)"):
        check_converged(res.problem)
    assert check_converged(cp.solve(prog, cp.twogrid("svd"), rtol=RTOL).problem) > 0


# ------------------------------------------------------------------ the learned route


@pytest.fixture(scope="module")
def disk_model(tmp_path_factory, programs):
    """A tiny model trained on the disk mesh with the library's API (nn.train + sampler)."""
    from nlss_fenicsx import pdes
    from nlss_fenicsx.nn.train import TrainConfig, train

    if not hasattr(pdes, "smoothed_sampler"):
        pytest.fail("awaits helper B: nlss_fenicsx.pdes.smoothed_sampler")
    V = programs("poisson_disk").V
    sampler = pdes.smoothed_sampler(lambda t: cp.disk_instances(V, t), K=DISK_K, seed=0)
    cfg = TrainConfig(pde="diffusion", K=DISK_K, r_max=DISK_R, steps=DISK_STEPS,
                      hidden=(32, 32), eval_every=DISK_STEPS, ckpt_every=DISK_STEPS,
                      n_eval=2)
    out = tmp_path_factory.mktemp("disk_model") / "disk.pt"
    train(cfg, out, sampler=sampler, progress=False, log=lambda *a: None)
    return out


DISK_K, DISK_R, DISK_STEPS = 16, 8, 60


def _attach_order(V):
    from nlss_fenicsx import la

    return lambda problem: la.attach_node_order(problem.A, V)


def test_disk_nlss_matches_lu(programs, lu, disk_model):
    # Default options but the model: K, sweeps, omega and the rank come from it (the
    # default rank 48 is clipped to its r_max). A model worth its name is about as good as
    # the exact SVD subspace of the same rank (measured: nlss 29, svd r = 8: 26).
    prog = programs("poisson_disk")
    res = cp.solve(prog, cp.twogrid("nlss", model=str(disk_model)), rtol=RTOL,
                   prepare=_attach_order(prog.V))
    assert res.converged, f"nlss on the disk: reason {res.reason}"
    assert _error(prog, res.x, lu("poisson_disk")) <= ACCURACY
    assert _in_band(res.iterations, ("poisson_disk", "nlss")), res.iterations
    assert res.pc.coarse_size == DISK_R
    svd = cp.solve(prog, cp.twogrid("svd", rank=DISK_R, K=DISK_K), rtol=RTOL)
    assert res.iterations <= 1.25 * svd.iterations, (res.iterations, svd.iterations)


# ------------------------------------------------------------------ under mpiexec -n 2


@pytest.fixture(scope="module")
def mpi_runs(disk_model):
    """One ``mpiexec -n 2`` run: every program with svd, the disk also with nlss."""
    proc = run_mpi(2, ROOT / "tests" / "mpi" / "client_solve.py", "svd,nlss",
                   ",".join(cp.PROGRAMS), str(disk_model), timeout=300)
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.mpi
@pytest.mark.parametrize("name", list(cp.PROGRAMS))
def test_mpi_svd_matches_lu_and_serial_counts(mpi_runs, name):
    record = mpi_runs[name]["svd"]
    assert all(r > 0 for r in record["reason"]), record
    assert record["error"] <= ACCURACY, record
    for its in record["its"]:
        assert _in_band(its, (name, "svd")), (its, PINNED[name, "svd"])


@pytest.mark.mpi
def test_mpi_disk_nlss_same_iterations_as_serial(programs, mpi_runs, disk_model):
    # The network sees the nodes in the mesh's input order, which does not depend on the
    # partition: the same model gives the same iterations on 1 and 2 ranks.
    prog = programs("poisson_disk")
    serial = cp.solve(prog, cp.twogrid("nlss", model=str(disk_model)), rtol=RTOL,
                      prepare=_attach_order(prog.V))
    got = mpi_runs["poisson_disk"]["nlss"]
    assert got["reason"][0] > 0 and got["error"] <= ACCURACY, got
    assert abs(got["its"][0] - serial.iterations) <= 1, (got["its"], serial.iterations)


def test_twogrid_leaves_no_options_behind(programs):
    # A KSP configured under its own prefix, whose options are removed after
    # setFromOptions: after a TwoGridPC solve (set-up, inner PCMG included) the global
    # database holds nothing under that prefix. (dolfinx's LinearProblem itself leaves its
    # options behind with this petsc4py: its delValue under a pushed prefix deletes nothing.)
    res = cp.ksp_solve(programs("neumann"), cp.twogrid("svd"), rtol=RTOL)
    prefix = res.problem.getOptionsPrefix()
    leftover = [k for k in PETSc.Options().getAll() if k.startswith(prefix)]
    assert res.converged and leftover == []


def test_pinned_keys_cover_every_program():
    keys = {name for name, _ in PINNED}
    assert keys == set(cp.PROGRAMS)


def test_benchmark_script_writes_its_table(tmp_path):
    # benchmarks/bench_client_programs.py at CI size on one program: results.json and
    # tables.md written, LU first as the reference, svd's row agreeing with LU.
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_client_programs", ROOT / "benchmarks" / "bench_client_programs.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--size", "ci", "--programs", "poisson_box", "--methods", "svd", "lu",
                       "--repeat", "1", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    row = results["programs"]["poisson_box"]
    assert row["n"] == 13**3 and set(row["methods"]) == {"svd", "lu"}
    svd = row["methods"]["svd"]
    assert svd["reason"] > 0 and svd["error"] <= 1e-5 and 5 <= svd["its"] <= 9
    table = (tmp_path / "tables.md").read_text()
    assert "| poisson_box | 2197 |" in table and "nlss" not in table.split("\n")[4]
