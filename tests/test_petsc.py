"""TwoGridPC: the native PCMG equals the SciPy TwoGrid for each smoother, it plugs into
LinearProblem, its options cannot poison the process, the inner PCMG's options are the
user's, errors are the right ones, and a checkpoint's settings are used (issue 18)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from nlss_fenicsx import la, meshes, pdes
from nlss_fenicsx import petsc as npc
from nlss_fenicsx._fenicsx import MPI, PETSc, dolfinx, ufl
from nlss_fenicsx.coarse import svd_basis
from nlss_fenicsx.options import TwoGridOptions
from nlss_fenicsx.smoothing import smoothed_vectors
from nlss_fenicsx.twogrid import ConvergenceError, NotSPDError, TwoGrid, pcg
from tests.conftest import ROOT

TWOGRID = {"ksp_type": "cg", "pc_type": "python",
           "pc_python_type": "nlss_fenicsx.petsc.TwoGridPC"}


@pytest.fixture(scope="module")
def small_system():
    return pdes.assemble(pdes.sample("diffusion", meshes.jittered_square(7, seed=0), rng=0))


@pytest.fixture(scope="module")
def system32():
    return pdes.assemble(pdes.sample("anisotropic", meshes.jittered_square(32, seed=1), rng=1,
                                     preset="code"))


def _pc_for(A, ctx):
    pc = PETSc.PC().create()
    pc.setOperators(A)
    pc.setType(PETSc.PC.Type.PYTHON)
    pc.setPythonContext(ctx)
    with npc.python_errors():
        pc.setUp()
    return pc


def _dense_of(pc, n):
    A = pc.getOperators()[0]
    x, y = A.createVecRight(), A.createVecLeft()
    B = np.zeros((n, n))
    for i in range(n):
        x.set(0.0)
        x.setValue(i, 1.0)
        x.assemble()
        pc.apply(x, y)
        B[:, i] = y.getArray()
    return B


def _ksp_solve(system, ctx, rtol=1e-6, maxit=10000):
    ksp = PETSc.KSP().create()
    ksp.setOperators(system.A)
    ksp.setType("cg")
    ksp.setTolerances(rtol=rtol, atol=0.0, max_it=maxit)
    ksp.setNormType(PETSc.KSP.NormType.UNPRECONDITIONED)
    ksp.getPC().setType(PETSc.PC.Type.PYTHON)
    ksp.getPC().setPythonContext(ctx)
    b, x = system.A.createVecRight(), system.A.createVecLeft()
    b.setArray(system.b)
    with npc.python_errors():
        ksp.solve(b, x)
    return ksp, x.getArray().copy()


def _problem(prefix, options, family="screened_poisson", N=16, seed=2):
    prob = pdes.sample(family, meshes.jittered_square(N, seed=seed), rng=3)
    lp = dolfinx.fem.petsc.LinearProblem(prob.a, prob.L, bcs=prob.bcs,
                                         petsc_options_prefix=prefix,
                                         petsc_options={**TWOGRID, **options})
    return prob, lp


def _lu(prob):
    sysm = pdes.assemble(prob)
    return spla.spsolve(sysm.A_csr.tocsc(), sysm.b)


# ------------------------------------------------------------------ the operator


@pytest.mark.parametrize("smoother", ["jacobi", "chebyshev", "sor", "icc"])
@pytest.mark.parametrize("nu", [1, 3])
def test_pcmg_operator_equals_scipy_twogrid(small_system, smoother, nu):
    P = svd_basis(smoothed_vectors(small_system.A_csr, 12, rng=0), 6)
    ctx = npc.TwoGridPC(P=P, options=TwoGridOptions(r=6, K=12, nu=nu, smoother=smoother))
    B_petsc = _dense_of(_pc_for(small_system.A, ctx), small_system.n)
    tg = TwoGrid(small_system.A_csr, P, smoother=smoother, nu=nu, lam_max=ctx.lam_max)
    B_ref = tg.apply(np.eye(small_system.n))
    scale = np.abs(B_ref).max()
    np.testing.assert_allclose(B_petsc, B_ref, rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(B_petsc, B_petsc.T, atol=1e-12 * scale)
    assert np.linalg.eigvalsh(0.5 * (B_petsc + B_petsc.T)).min() > 0


def test_weight_is_the_papers_where_safe_and_from_the_estimate(small_system):
    ctx = npc.TwoGridPC(P=np.eye(small_system.n)[:, :4], options=TwoGridOptions(r=4, K=4))
    _pc_for(small_system.A, ctx)
    A = small_system.A_csr.toarray()
    d = np.sqrt(np.diag(A))
    exact = np.linalg.eigvalsh(A / np.outer(d, d))[-1]
    assert 0.95 * exact < ctx.lam_max <= exact * (1 + 1e-12)
    assert ctx.omega == 0.66 and "the paper's" in ctx.omega_reason


def test_explicit_unsafe_omega_is_refused_naming_the_estimate(small_system):
    with pytest.raises(ValueError, match=r"omega = 1.5 is unsafe for this matrix: "
                                         r"lambda_max\(D\^-1 A\) is estimated at"):
        _pc_for(small_system.A, npc.TwoGridPC(P=np.eye(small_system.n)[:, :4],
                                              options=TwoGridOptions(r=4, K=4, omega=1.5)))


def test_petsc_and_scipy_paths_same_iterations(system32):
    S = smoothed_vectors(system32.A_csr, 48, rng=2)
    for r in (8, 24, 48):
        ksp, x = _ksp_solve(system32, npc.TwoGridPC(S=S, options=TwoGridOptions(r=r, K=48)))
        assert ksp.getConvergedReason() > 0
        x_ref, info = pcg(system32.A_csr, system32.b, TwoGrid(system32.A_csr, svd_basis(S, r)))
        assert info.converged
        assert abs(ksp.getIterationNumber() - info.iterations) <= 1
        np.testing.assert_allclose(x, x_ref, rtol=1e-4, atol=1e-8)


def test_full_rank_basis_is_exact(small_system):
    n = small_system.n
    Q = np.linalg.qr(np.random.default_rng(0).standard_normal((n, n)))[0]
    ksp, x = _ksp_solve(small_system, npc.TwoGridPC(P=Q, options=TwoGridOptions(r=n, K=n)))
    assert ksp.getIterationNumber() == 1
    ref = spla.spsolve(small_system.A_csr.tocsc(), small_system.b)
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-10 * np.abs(ref).max())


@pytest.mark.parametrize("coarse", ["sa", "sine", "eig-ref", "eig"])
def test_every_coarse_kind_converges_to_lu(coarse):
    prob, lp = _problem(f"kind_{coarse.replace('-', '')}_", {"nlss_coarse": coarse,
                                                            "ksp_rtol": 1e-10}, N=12)
    la.attach_node_order(lp.A, prob.V)
    with npc.python_errors():
        uh = lp.solve()
    assert npc.check_converged(lp) < 60
    ref = _lu(prob)
    np.testing.assert_allclose(uh.x.array, ref, atol=1e-7 * np.abs(ref).max())


# ------------------------------------------------------------------ LinearProblem


def test_linear_problem_with_twogrid_matches_direct():
    options = {"ksp_rtol": 1e-10, "ksp_norm_type": "unpreconditioned",
               "nlss_coarse": "svd", "nlss_rank": 16, "nlss_K": 24, "nlss_sweeps": 10,
               "nlss_nu": 5, "nlss_omega": "auto"}
    prob, lp = _problem("user_model_", options, N=24)
    uh = lp.solve()
    npc.check_converged(lp.solver)
    ctx = lp.solver.getPC().getPythonContext()
    assert isinstance(ctx, npc.TwoGridPC)
    assert (ctx.options.r, ctx.options.K, ctx.coarse_size, ctx.omega) == (16, 24, 16, 0.66)
    ref = _lu(prob)
    np.testing.assert_allclose(uh.x.array, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    # Nothing of the PC's own PCMG settings is left in the options database.
    assert not any("nlss_mg_" in key for key in PETSc.Options().getAll())


def test_view_says_what_was_built_and_why(capsys, small_system):
    ctx = npc.TwoGridPC(options=TwoGridOptions(r=5, K=10))
    pc = _pc_for(small_system.A, ctx)
    ctx.view(pc)
    out = capsys.readouterr().out
    assert "coarse space: svd, coarse size 5" in out and "K=10" in out
    assert "omega = 0.66 (the paper's): safe" in out
    assert set(ctx.timings) == {"estimate", "smoothing", "inference", "setup"}
    viewer = PETSc.Viewer().createASCII("stdout")
    pc.view(viewer)
    viewer.flush()


def test_non_converging_solve_raises_with_reason(system32):
    ksp, _ = _ksp_solve(system32, npc.TwoGridPC(options=TwoGridOptions(r=4, K=8)), maxit=3)
    with pytest.raises(ConvergenceError, match="DIVERGED_MAX_IT"):
        npc.check_converged(ksp)


def test_linear_problem_non_convergence_is_reported_with_reason():
    _, lp = _problem("fails_", {"ksp_rtol": 1e-12, "ksp_max_it": 2, "nlss_rank": 4,
                                "nlss_K": 8}, N=12)
    lp.solve()
    with pytest.raises(ConvergenceError, match=r"DIVERGED_MAX_IT \(-3\) after 2 iterations"):
        npc.check_converged(lp)


# ------------------------------------------------------------------ options cannot poison


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("nlss_rank", 48.0, "nlss_rank: expected an integer in [1, 2147483647], got '48.0'"),
    ("nlss_rank", "abc", "nlss_rank: expected an integer in [1, 2147483647], got 'abc'"),
    ("nlss_omega", "fast", "nlss_omega: expected 'auto' or a number > 0, got 'fast'"),
    ("nlss_coarse", "magic", "nlss_coarse: expected one of svd, sa, sine, eig-ref, eig, "
                             "fixed, nlss, corrected; got 'magic'"),
    ("nlss_ranks", 4, "unknown option nlss_ranks"),
    ("pc_python_type", "nlss_fenicsx.petsc.TwoGridPc", "pc_python_type "
     "nlss_fenicsx.petsc.TwoGridPc: no such preconditioner"),
])
def test_bad_value_is_one_error_and_the_next_solver_gets_exactly_its_own(key, value, expected):
    tag = f"bad{abs(hash((key, str(value)))) % 10**6}_"
    _, bad = _problem(tag, {key: value}, N=6)
    with pytest.raises(ValueError) as info, npc.python_errors():
        bad.solve()
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)
    # The next solvers in this process: exactly what they asked for.
    prob = pdes.sample("diffusion", meshes.jittered_square(6, seed=0), rng=0)
    plain = dolfinx.fem.petsc.LinearProblem(
        prob.a, prob.L, bcs=prob.bcs, petsc_options_prefix=tag + "next_",
        petsc_options={"ksp_type": "cg", "pc_type": "jacobi", "ksp_rtol": 1e-9})
    plain.solve()
    assert plain.solver.getType() == "cg" and plain.solver.getPC().getType() == "jacobi"
    assert plain.solver.getTolerances()[0] == 1e-9
    _, good = _problem(tag + "good_", {"nlss_rank": "6", "nlss_K": "9"}, N=6)
    good.solve()
    ctx = good.solver.getPC().getPythonContext()
    assert (ctx.options.r, ctx.options.K, ctx.coarse_size) == (6, 9, 6)
    npc.check_converged(good)


def test_options_not_used_by_the_kind_are_one_warning_line():
    _, lp = _problem("unused_", {"nlss_coarse": "sa", "nlss_K": "8", "nlss_rank": "4"}, N=8)
    with pytest.warns(npc.OptionNotUsedWarning, match=r"^TwoGridPC: nlss_rank, nlss_K are not "
                                                      r"used by nlss_coarse sa \(ignored\)$"):
        lp.solve()
    npc.check_converged(lp)
    assert lp.solver.getPC().getPythonContext().describe()[-2] == \
        "  not used by sa: nlss_rank, nlss_K"


def test_small_problem_clips_k_and_rank_with_one_line():
    _, lp = _problem("tiny_", {}, N=3)
    with pytest.warns(UserWarning, match=r"\(n = 16 unknowns, nlss_coarse svd\): nlss_K "
                                         r"clipped to 16, nlss_rank clipped to 16$"):
        lp.solve()
    assert npc.check_converged(lp) <= 2  # coarse space = everything: exact


# ------------------------------------------------------------------ the inner PCMG


def test_user_mg_options_are_honoured_and_never_deleted():
    db = PETSc.Options()
    db["mguser_nlss_mg_mg_coarse_pc_type"] = "lu"  # set globally, before the problem
    try:
        prob, lp = _problem("mguser_", {"nlss_rank": 8, "nlss_K": 12, "ksp_rtol": 1e-10,
                                        "nlss_mg_pc_mg_multiplicative_cycles": "2",
                                        "nlss_mg_pc_mg_cycle_type": "w"}, N=10)
        uh = lp.solve()
        mg = lp.solver.getPC().getPythonContext().inner
        assert mg.getMGCoarseSolve().getPC().getType() == "lu"
        assert db.getAll()["mguser_nlss_mg_mg_coarse_pc_type"] == "lu"  # still there
        ref = _lu(prob)
        np.testing.assert_allclose(uh.x.array, ref, atol=1e-7 * np.abs(ref).max())
    finally:
        db.delValue("mguser_nlss_mg_mg_coarse_pc_type")


@pytest.mark.parametrize(("key", "value"), [("pc_type", "jacobi"), ("pc_mg_levels", "3"),
                                            ("pc_mg_galerkin", "both"), ("ksp_type", "gmres"),
                                            ("mg_levels_ksp_richardson_scale", "5"),
                                            ("mg_levels_pc_type", "none")])
def test_structural_mg_options_are_refused_in_one_line(key, value):
    _, lp = _problem(f"mgbad{key}_", {f"nlss_mg_{key}": value}, N=6)
    try:
        with pytest.raises(ValueError, match=f"^nlss_mg_{key} '{value}' is refused: the "
                                             "(inner PCMG|level smoother)"), npc.python_errors():
            lp.solve()
    finally:  # the PC leaves a user's option alone; the test removes its own
        del PETSc.Options()[f"mgbad{key}_nlss_mg_{key}"]


def test_a_petsc_error_is_reported_as_itself():
    _, lp = _problem("mgpetsc_", {"nlss_mg_mg_coarse_pc_type": "nonsense"}, N=6)
    with pytest.raises(PETSc.Error) as info, npc.python_errors():
        lp.solve()
    assert not isinstance(info.value, NotSPDError)
    assert any("inner PCMG" in note for note in getattr(info.value, "__notes__", []))


# ------------------------------------------------------------------ not SPD, bad input


def test_rank_deficient_basis_raises_not_spd(small_system):
    P = np.zeros((small_system.n, 3))
    P[0, 0] = P[1, 1] = 1.0  # third column zero: Ac singular
    with pytest.raises(NotSPDError, match=r"Ac = P\^T A P \(3 x 3\) is not symmetric positive"):
        _pc_for(small_system.A, npc.TwoGridPC(P=P, options=TwoGridOptions(r=3, K=3)))


def test_indefinite_symmetric_matrix_is_not_spd(small_system):
    A = small_system.A_csr.toarray()
    interior = np.ones(len(A), bool)
    interior[small_system.boundary_dofs] = False
    mu = np.linalg.eigvalsh(A[np.ix_(interior, interior)])
    As = A - 0.5 * (mu[0] + mu[1]) * np.diag(interior.astype(float))
    V = np.linalg.eigh(As)[1]
    M = PETSc.Mat().createAIJ(size=As.shape, csr=(lambda c: (c.indptr, c.indices, c.data))(
        sp.csr_matrix(As)), comm=PETSc.COMM_SELF)
    M.assemble()
    with pytest.raises(NotSPDError, match="Cholesky failed"):
        _pc_for(M, npc.TwoGridPC(P=V[:, :3], options=TwoGridOptions(r=3, K=3)))


def _with_value(A_csr, value, row=40):
    """A PETSc copy with one off-diagonal entry of ``row`` replaced (diagonal kept)."""
    B = sp.csr_matrix(A_csr, copy=True)
    k = next(k for k in range(B.indptr[row], B.indptr[row + 1])
             if B.indices[k] != row and B.data[k] != 0)
    B.data[k] = value
    M = PETSc.Mat().createAIJ(size=B.shape, csr=(B.indptr, B.indices, B.data),
                              comm=PETSc.COMM_SELF)
    M.assemble()
    return M


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nonfinite_matrix_is_a_clear_error(small_system, value):
    A = _with_value(small_system.A_csr, value)
    with pytest.raises(ValueError, match="NaN or Inf"):
        _pc_for(A, npc.TwoGridPC(options=TwoGridOptions(r=4, K=8)))
    # SOR needs no estimate and a given P no S: the coarse operator is the first to see it.
    with pytest.raises(NotSPDError, match="NaN or Inf"):
        _pc_for(A, npc.TwoGridPC(P=np.ones((small_system.n, 1)),
                                 options=TwoGridOptions(r=1, smoother="sor")))


def test_nonsymmetric_matrix_is_not_spd(small_system):
    A_csr = sp.lil_matrix(small_system.A_csr, copy=True)
    A_csr[40, 41] = A_csr[40, 41] - 1.0  # breaks symmetry, keeps the diagonal
    A = _with_value(A_csr.tocsr(), A_csr[40, 41], row=40)
    P = svd_basis(smoothed_vectors(small_system.A_csr, 8, rng=0), 4)
    with pytest.raises(NotSPDError, match=r"\(4 x 4\) is not symmetric positive definite.*"
                                          r"not symmetric"):
        _pc_for(A, npc.TwoGridPC(P=P, options=TwoGridOptions(r=4, K=8)))


@pytest.mark.filterwarnings("ignore::nlss_fenicsx.petsc.OptionNotUsedWarning")
def test_nlss_without_model_or_node_order_is_a_clear_error(small_system):
    with pytest.raises(ValueError, match="nlss_coarse nlss needs nlss_model PATH"):
        _pc_for(small_system.A, npc.TwoGridPC(options=TwoGridOptions(coarse="nlss", r=4, K=8)))
    for coarse in ("sine", "fixed", "nlss"):
        _, lp = _problem(f"noorder{coarse}_", {"nlss_coarse": coarse, "nlss_rank": 4,
                                               "nlss_model": "m.pt", "nlss_basis": "b.npz"},
                         N=6)
        with pytest.raises(ValueError, match=rf"^nlss_coarse {coarse} needs the node order of "
                                             r"the dofs: call nlss_fenicsx.petsc."
                                             r"attach_node_order\(problem.A, V\)"):
            with npc.python_errors():
                lp.solve()


def test_keyboard_interrupt_during_setup_propagates(small_system, monkeypatch):
    import nlss_fenicsx.coarse

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(nlss_fenicsx.coarse, "coarse_basis", interrupted)
    ctx = npc.TwoGridPC(options=TwoGridOptions(r=4, K=8))
    with pytest.raises(KeyboardInterrupt):
        _pc_for(small_system.A, ctx)
    assert ctx.inner is None  # nothing half-built kept


# ------------------------------------------------------------------ vector problems


def _elasticity(cell, n=4):
    from tests import client_programs as cp

    return cp, cp.elasticity_program(n=n, cell=cell)


@pytest.mark.parametrize("cell", ["tetrahedron", "hexahedron"])
def test_elasticity_default_options_converge_with_the_near_nullspace(cell):
    cp, program = _elasticity(cell)
    ref = cp.solve(program, cp.LU)
    for coarse in ("svd", "sa"):
        with npc.python_errors():
            got = cp.solve(program, cp.twogrid(coarse), rtol=1e-10)
        assert got.converged, (coarse, got.reason)
        assert cp.relative_error(got.x, ref.x, MPI.COMM_WORLD) < 1e-6
        ctx = got.pc
        if coarse == "svd":
            assert ctx.coarse_size == 48 + 6  # the six rigid-body modes appended
        if cell == "hexahedron":  # 0.66 would diverge here; auto picks a safe weight
            assert ctx.omega < 0.66 and "would diverge" in ctx.omega_reason


@pytest.mark.parametrize("coarse", ["svd", "sa", "eig"])
def test_pure_neumann_with_its_nullspace_attached(coarse):
    """A semi-definite A (constant nullspace attached): Ac may be singular (sa's P holds the
    constant), the coarse solve is then a Cholesky of Ac with null(Ac) pinned (PETSc's
    PCSVD took 77 s at r = 1,100); the solution is A's."""
    mesh = dolfinx.mesh.create_unit_square(MPI.COMM_WORLD, 12, 12)
    V = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    u, v = ufl.TrialFunction(V), ufl.TestFunction(V)
    x = ufl.SpatialCoordinate(mesh)
    A = dolfinx.fem.petsc.assemble_matrix(dolfinx.fem.form(
        ufl.inner(ufl.grad(u), ufl.grad(v)) * ufl.dx))
    A.assemble()
    b = dolfinx.fem.petsc.assemble_vector(dolfinx.fem.form((x[0] - 0.5) * v * ufl.dx))
    nullspace = PETSc.NullSpace().create(constant=True, comm=mesh.comm)
    A.setNullSpace(nullspace)
    nullspace.remove(b)
    ksp = PETSc.KSP().create(mesh.comm)
    ksp.setOperators(A)
    ksp.setType("cg")
    ksp.setTolerances(rtol=1e-10)
    ksp.setNormType(PETSc.KSP.NormType.UNPRECONDITIONED)
    ksp.getPC().setType("python")
    ksp.getPC().setPythonContext(npc.TwoGridPC(options=TwoGridOptions(coarse=coarse)))
    xs = A.createVecRight()
    with npc.python_errors():
        ksp.solve(b, xs)
    assert npc.check_converged(ksp) < 30
    inner = ksp.getPC().getPythonContext().inner
    assert inner.getMGCoarseSolve().getPC().getType() == "cholesky"
    Ac, ac_solve = inner.getMGCoarseSolve().getOperators()
    pins = (la.petsc_to_csr(ac_solve) - la.petsc_to_csr(Ac)).toarray()
    assert np.count_nonzero(pins) == (0 if coarse == "svd" else 1)  # sa, eig: P holds 1
    dense = la.petsc_to_csr(A).toarray()
    n = len(dense)
    ref = np.linalg.solve(dense + np.ones((n, n)) / n, b.getArray())  # the mean-zero solution
    got = xs.getArray() - xs.getArray().mean()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-8 * np.abs(ref).max())


# ------------------------------------------------------------------ a checkpoint's settings


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import torch

    from nlss_fenicsx.nn.train import TrainConfig, train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        path = tmp_path_factory.mktemp("models") / "tiny.pt"
        train(TrainConfig(N=8, K=8, r_max=6, hidden=(16,), steps=3, n_eval=2, sweeps=7),
              path, progress=False, log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    return path


def test_model_settings_fill_what_the_user_did_not_give(tiny_model, capsys):
    prob, lp = _problem("frommodel_", {"nlss_coarse": "nlss", "nlss_model": str(tiny_model),
                                       "ksp_rtol": 1e-8}, family="diffusion", N=8)
    la.attach_node_order(lp.A, prob.V)
    with npc.python_errors():
        uh = lp.solve()
    npc.check_converged(lp)
    ctx = lp.solver.getPC().getPythonContext()
    assert (ctx.options.K, ctx.options.r, ctx.options.sweeps, ctx.coarse_size) == (8, 6, 7, 6)
    # Defaults: the int8 backend for the network, float32 smoothing of S (serial).
    assert ctx.options.precision == "int8" and ctx.S.dtype == np.float32
    assert ("  from the model: nlss_K=8, nlss_rank=6, nlss_sweeps=7, omega of S=0.66"
            in ctx.describe())
    ref = _lu(prob)
    np.testing.assert_allclose(uh.x.array, ref, atol=1e-6 * np.abs(ref).max())


@pytest.mark.parametrize(("given", "expected"), [
    ({"nlss_K": 72}, "nlss_K 72 contradicts"),
    ({"nlss_rank": 7}, "nlss_rank 7 exceeds r_max=6"),
    ({"nlss_pde": "anisotropic"}, "nlss_pde anisotropic contradicts"),
])
def test_a_setting_contradicting_the_model_is_refused(tiny_model, given, expected):
    prob, lp = _problem(f"contra{len(given)}{list(given)[0]}_",
                        {"nlss_coarse": "nlss", "nlss_model": str(tiny_model), **given},
                        family="diffusion", N=8)
    la.attach_node_order(lp.A, prob.V)
    with pytest.raises(ValueError, match=expected), npc.python_errors():
        lp.solve()


def test_model_for_another_n_is_refused(tiny_model):
    prob, lp = _problem("othern_", {"nlss_coarse": "nlss", "nlss_model": str(tiny_model)},
                        family="diffusion", N=10)
    la.attach_node_order(lp.A, prob.V)
    with pytest.raises(ValueError, match="trained for n=81 unknowns; the problem has n=121"):
        with npc.python_errors():
            lp.solve()


# ------------------------------------------------------------------ import order


def _fresh(code: str):
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env={"PYTHONPATH": str(ROOT),
                                                      "OMP_NUM_THREADS": "1",
                                                      "PATH": "/usr/bin:/bin"})
    return proc


@pytest.mark.parametrize("second", ["import dolfinx.fem.petsc", "from petsc4py import PETSc",
                                    "import nlss_fenicsx.petsc"])
def test_import_nlss_fenicsx_first_makes_the_stack_importable(second):
    proc = _fresh(f"import nlss_fenicsx, sys\nloaded = 'dolfinx' in sys.modules\n{second}\n"
                  "import json; print(json.dumps(loaded))")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) is False  # nothing heavy until asked for


# ------------------------------------------------------------------ determinism


def stage_digests() -> dict:
    """SHA-256 of mesh, A, b, S (serial and PETSc routes) and the PC's P for fixed seeds."""
    import hashlib

    from nlss_fenicsx._fenicsx import MPI as _MPI

    def sha(a):
        a = np.ascontiguousarray(a)
        return hashlib.sha256(a.dtype.str.encode() + str(a.shape).encode()
                              + a.tobytes()).hexdigest()

    mesh = meshes.jittered_square(8, seed=5, comm=_MPI.COMM_SELF)
    system = pdes.assemble(pdes.sample("anisotropic", mesh, rng=5))
    ctx = npc.TwoGridPC(options=TwoGridOptions(r=6, K=8, seed=5))
    _pc_for(system.A, ctx)
    return {"mesh_x": sha(mesh.geometry.x), "A": sha(system.A_csr.toarray()),
            "b": sha(system.b), "order": sha(system.node_order), "S_pc": sha(ctx.S),
            "P_pc": sha(ctx.P), "lam_max": repr(ctx.lam_max),
            "S_petsc": sha(la.smoothed_vectors_petsc(system.A, 8, seed=5,
                                                     node_order=system.node_order))}


def test_the_same_seed_is_bit_identical_here_and_in_a_fresh_process():
    here = stage_digests()
    assert stage_digests() == here
    code = ("import json; from tests.test_petsc import stage_digests; "
            "print(json.dumps(stage_digests()))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(ROOT),
                                                       "OMP_NUM_THREADS": "1",
                                                       "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == here


def test_eig_ref_uses_the_given_reference_operator(small_system):
    """TwoGridPC(reference=R): P spans the lowest eigenvectors of R off its Dirichlet rows
    (dense numpy.linalg.eigh of R's free block as the reference), not of A's pattern;
    a reference for another coarse kind is refused in one line."""
    from nlss_fenicsx.coarse import clear_reference_cache

    A = small_system.A_csr
    free = np.ones(A.shape[0], bool)
    free[small_system.boundary_dofs] = False
    rng = np.random.default_rng(0)
    # A reference with the same pattern and Dirichlet rows but other values than A.
    R = sp.csr_matrix(A, copy=True)
    R.data *= 1.0 + 0.5 * rng.random(R.nnz)
    R = (0.5 * (R + R.T)).tolil()
    R[np.flatnonzero(~free), :] = 0.0
    R[:, np.flatnonzero(~free)] = 0.0
    R[np.flatnonzero(~free), np.flatnonzero(~free)] = 1.0
    R = (R + 10 * sp.diags(free.astype(float))).tocsr()  # SPD, identity on Dirichlet rows
    r = 5
    w, V = np.linalg.eigh(R.toarray()[np.ix_(free, free)])
    P_ref = np.zeros((A.shape[0], r))
    P_ref[free] = V[:, :r]
    clear_reference_cache()
    ctx = npc.TwoGridPC(options=TwoGridOptions(coarse="eig-ref", r=r), reference=R)
    _pc_for(small_system.A, ctx)
    # Same span: the singular values of P_ref^T P are the cosines of the principal angles.
    assert np.linalg.svd(P_ref.T @ ctx.P, compute_uv=False) == pytest.approx(np.ones(r),
                                                                             abs=1e-8)
    assert ctx.timings["once"] > 0  # a new reference: the eigensolve ran
    default = npc.TwoGridPC(options=TwoGridOptions(coarse="eig-ref", r=r))
    _pc_for(small_system.A, default)
    assert np.linalg.svd(P_ref.T @ default.P, compute_uv=False).min() < 0.99
    with pytest.raises(ValueError, match="reference= is for eig-ref, not svd"):
        _pc_for(small_system.A, npc.TwoGridPC(options=TwoGridOptions(coarse="svd", r=r, K=8),
                                              reference=R))


# ------------------------------------------------------------------ many related solves


@pytest.mark.parametrize(("coarse", "smoother"), [("sine", "icc"), ("sine", "jacobi"),
                                                  ("svd", "icc")])
@pytest.mark.parametrize("in_place", [True, False])
def test_new_operator_values_reuse_p_and_solve_as_a_fresh_pc(coarse, smoother, in_place):
    """One KSP, operators changed per instance (same mesh, new coefficients). For a P that
    does not depend on A (sine, fixed) the PC keeps P and its PETSc matrix, and, when the
    values change in the same Mat (re-assembly in place), the PCMG too: only the estimate,
    Ac and the smoother are redone. The solve equals a fresh PC's. A P built from A (svd)
    is rebuilt."""
    mesh = meshes.jittered_square(12, seed=3)
    systems = [pdes.assemble(pdes.sample("anisotropic", mesh, rng=s)) for s in (4, 5)]
    opts = TwoGridOptions(coarse=coarse, r=8, K=16, smoother=smoother)

    def solve(ksp, A, b_values):
        ksp.setOperators(A)
        b, x = A.createVecRight(), A.createVecLeft()
        b.setArray(b_values)
        ksp.solve(b, x)
        return ksp.getIterationNumber(), x.getArray().copy()

    def new_ksp(ctx):
        ksp = PETSc.KSP().create()
        ksp.setType("cg")
        ksp.setTolerances(rtol=1e-8, atol=0.0)
        ksp.getPC().setType("python")
        ksp.getPC().setPythonContext(ctx)
        return ksp

    ctx = npc.TwoGridPC(options=opts)
    ksp = new_ksp(ctx)
    A0 = systems[0].A.duplicate(copy=True)
    npc.attach_node_order(A0, systems[0].node_order)
    solve(ksp, A0, systems[0].b)
    inner, P_mat = ctx.inner, ctx._P_mat  # held: their ids cannot be reused
    if in_place:
        systems[1].A.copy(A0, structure=PETSc.Mat.Structure.SAME_NONZERO_PATTERN)
    its, x = solve(ksp, A0 if in_place else systems[1].A, systems[1].b)
    assert (ctx._P_mat is P_mat) == (coarse == "sine")
    assert (ctx.inner is inner) == (coarse == "sine" and in_place)
    if coarse == "sine":
        assert ctx.timings["inference"] < 1e-3 and ctx.timings["smoothing"] < 1e-3
    fresh = npc.TwoGridPC(options=opts)
    its_fresh, x_fresh = solve(new_ksp(fresh), systems[1].A, systems[1].b)
    assert its == its_fresh
    np.testing.assert_allclose(x, x_fresh, rtol=0, atol=1e-10 * np.abs(x_fresh).max())
    assert ctx.lam_max == fresh.lam_max and ctx.omega_reason == fresh.omega_reason


def test_a_second_set_from_options_on_a_set_up_ksp_keeps_it_working(small_system):
    # petsc4py replaces the python context on a second setFromOptions (pc_python_type is in
    # the database) while PETSc still counts the PC as set up for the same operator.
    db = PETSc.Options()
    prefix = "again_"
    for key, value in {"ksp_type": "cg", "ksp_rtol": "1e-8", "pc_type": "python",
                       "pc_python_type": "nlss_fenicsx.petsc.TwoGridPC"}.items():
        db[prefix + key] = value
    ksp = PETSc.KSP().create(PETSc.COMM_SELF)
    try:
        ksp.setOptionsPrefix(prefix)
        ksp.setOperators(small_system.A)
        b = small_system.A.createVecRight()
        b.setArray(small_system.b)
        x = b.duplicate()
        its = []
        for _ in range(2):
            ksp.setFromOptions()
            x.set(0.0)
            with npc.python_errors():
                ksp.solve(b, x)
            its.append(npc.check_converged(ksp))
            exact = spla.spsolve(small_system.A_csr.tocsc(), small_system.b)
            assert np.linalg.norm(x.getArray() - exact) <= 1e-6 * np.linalg.norm(exact)
        assert its[0] == its[1]
    finally:
        ksp.destroy()
        for key in ("ksp_type", "ksp_rtol", "pc_type", "pc_python_type"):
            del db[prefix + key]


@pytest.mark.parametrize(("coarse", "limit"), [("eig", 35), ("eig-ref", 35), ("sine", 36)])
def test_a_rank_too_large_for_the_kind_is_clipped_to_one_it_can_build(coarse, limit):
    # N=7: 64 unknowns, 28 of them Dirichlet rows (36 interior: eig takes fewer than 36),
    # and (N-1)^2 = 36 interior sine modes. One note, then a solve; never a note then a
    # refusal.
    prob, lp = _problem(f"clip{coarse}_", {"nlss_coarse": coarse, "nlss_rank": 48,
                                           "ksp_rtol": 1e-8}, N=7)
    la.attach_node_order(lp.A, prob.V)
    with pytest.warns(UserWarning, match=f"nlss_rank clipped to {limit}$"):
        with npc.python_errors():
            uh = lp.solve()
    npc.check_converged(lp)
    assert lp.solver.getPC().getPythonContext().coarse_size == limit
    ref = _lu(prob)
    np.testing.assert_allclose(uh.x.array, ref, atol=1e-6 * np.abs(ref).max())
