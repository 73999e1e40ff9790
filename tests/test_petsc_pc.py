"""TwoGridPC: the native PCMG equals the SciPy two-grid, and it plugs into LinearProblem."""

import numpy as np
import pytest

from nlss_fenicsx import meshes, pdes
from nlss_fenicsx import petsc as npc
from nlss_fenicsx._fenicsx import PETSc, dolfinx
from nlss_fenicsx.coarse import svd_basis
from nlss_fenicsx.smoothing import smoothed_vectors
from nlss_fenicsx.twogrid import ConvergenceError, NotSPDError, TwoGrid, pcg


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
    ksp.solve(b, x)
    return ksp, x.getArray().copy()


@pytest.mark.parametrize("nu", [1, 2, 5])
def test_pcmg_operator_equals_scipy_twogrid(small_system, nu):
    S = smoothed_vectors(small_system.A_csr, 12, rng=0)
    P = svd_basis(S, 6)
    opts = npc.PCOptions(rank=6, K=12, nu=nu)
    B_petsc = _dense_of(_pc_for(small_system.A, npc.TwoGridPC(P=P, options=opts)),
                        small_system.n)
    tg = TwoGrid(small_system.A_csr, P, nu_pre=nu, nu_post=nu)
    B_ref = np.column_stack([tg.apply(e) for e in np.eye(small_system.n)])
    np.testing.assert_allclose(B_petsc, B_ref, rtol=0, atol=1e-12 * np.abs(B_ref).max())
    np.testing.assert_allclose(B_petsc, B_petsc.T, atol=1e-12 * np.abs(B_ref).max())
    assert np.linalg.eigvalsh(0.5 * (B_petsc + B_petsc.T)).min() > 0


def test_petsc_smoothing_equals_scipy(small_system):
    S_petsc = npc.smoothed_vectors_petsc(small_system.A, 9, sweeps=7, seed=4)
    S_scipy = smoothed_vectors(small_system.A_csr, 9, sweeps=7, rng=4)
    np.testing.assert_allclose(S_petsc, S_scipy, rtol=0, atol=1e-13)


@pytest.mark.parametrize("r", [8, 24, 48])
def test_petsc_and_scipy_paths_same_iterations(system32, r):
    S = smoothed_vectors(system32.A_csr, 48, rng=2)
    P = svd_basis(S, r)
    ksp, x = _ksp_solve(system32, npc.TwoGridPC(S=S, options=npc.PCOptions(rank=r, K=48)))
    assert ksp.getConvergedReason() > 0
    x_ref, info = pcg(system32.A_csr, system32.b, TwoGrid(system32.A_csr, P))
    assert info.converged
    assert abs(ksp.getIterationNumber() - info.iterations) <= 1
    np.testing.assert_allclose(x, x_ref, rtol=1e-4, atol=1e-8)


def test_full_rank_basis_is_exact(small_system):
    n = small_system.n
    Q = np.linalg.qr(np.random.default_rng(0).standard_normal((n, n)))[0]
    ksp, x = _ksp_solve(small_system, npc.TwoGridPC(P=Q, options=npc.PCOptions(rank=n, K=n)))
    assert ksp.getIterationNumber() == 1
    import scipy.sparse.linalg as spla

    ref = spla.spsolve(small_system.A_csr.tocsc(), small_system.b)
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-10 * np.abs(ref).max())


def test_sa_coarse_space_converges(system32):
    ksp, _ = _ksp_solve(system32, npc.TwoGridPC(options=npc.PCOptions(coarse="sa")))
    assert ksp.getConvergedReason() > 0
    assert ksp.getIterationNumber() < 200


def _linear_problem(prefix, options, family="screened_poisson", N=24):
    mesh = meshes.jittered_square(N, seed=2)
    prob = pdes.sample(family, mesh, rng=3)
    lp = dolfinx.fem.petsc.LinearProblem(prob.a, prob.L, bcs=prob.bcs,
                                         petsc_options_prefix=prefix, petsc_options=options)
    return prob, lp


def test_linear_problem_with_twogrid_matches_direct():
    options = {"ksp_type": "cg", "ksp_rtol": 1e-10, "ksp_norm_type": "unpreconditioned",
               "pc_type": "python", "pc_python_type": "nlss_fenicsx.petsc.TwoGridPC",
               "nlss_coarse": "svd", "nlss_rank": 16, "nlss_K": 24, "nlss_sweeps": 10,
               "nlss_nu": 5, "nlss_omega": 0.66}
    prob, lp = _linear_problem("user_model_", options)
    uh = lp.solve()
    npc.check_converged(lp.solver)
    ctx = lp.solver.getPC().getPythonContext()
    assert isinstance(ctx, npc.TwoGridPC)
    assert ctx.options.rank == 16 and ctx.options.K == 24 and ctx.coarse_size == 16
    sysm = pdes.assemble(prob)
    import scipy.sparse.linalg as spla

    ref = spla.spsolve(sysm.A_csr.tocsc(), sysm.b)
    # LinearProblem's space and ours share the dof numbering (same V).
    np.testing.assert_allclose(uh.x.array, ref, rtol=0,
                               atol=1e-5 * np.abs(ref).max())
    # The PC's private PCMG options were removed from the global database.
    assert not any("nlss_mg_" in key for key in PETSc.Options().getAll())


def test_view_reports_what_was_built(capsys, small_system):
    ctx = npc.TwoGridPC(options=npc.PCOptions(rank=5, K=10))
    pc = _pc_for(small_system.A, ctx)
    ctx.view(pc)
    out = capsys.readouterr().out
    assert "coarse space: svd, coarse size 5" in out and "K=10" in out
    assert set(ctx.timings) == {"smoothing", "inference", "setup"}
    assert all(t >= 0 for t in ctx.timings.values())


def test_non_converging_solve_raises_with_reason(system32):
    ksp, _ = _ksp_solve(system32, npc.TwoGridPC(options=npc.PCOptions(rank=4, K=8)), maxit=3)
    with pytest.raises(ConvergenceError, match="DIVERGED_MAX_IT"):
        npc.check_converged(ksp)


def test_linear_problem_non_convergence_is_reported_with_reason():
    # ksp_error_if_not_converged is not relied on: PETSc keeps a static KSPSolve nesting
    # level that an exception escaping a PC callback leaves raised, after which
    # DIVERGED_MAX_IT no longer errors in that process. check_converged always does.
    options = {"ksp_type": "cg", "ksp_rtol": 1e-12, "ksp_max_it": 2,
               "pc_type": "python", "pc_python_type": "nlss_fenicsx.petsc.TwoGridPC",
               "nlss_rank": 4, "nlss_K": 8}
    _, lp = _linear_problem("fails_", options, N=12)
    lp.solve()
    with pytest.raises(ConvergenceError, match=r"DIVERGED_MAX_IT \(-3\) after 2 iterations"):
        npc.check_converged(lp.solver)


def test_rank_deficient_basis_raises_not_spd(small_system):
    P = np.zeros((small_system.n, 3))
    P[0, 0] = P[1, 1] = 1.0  # third column zero: Ac singular
    with pytest.raises(PETSc.Error) as info:
        _pc_for(small_system.A, npc.TwoGridPC(P=P, options=npc.PCOptions(rank=3, K=3)))
    assert isinstance(info.value.__cause__, NotSPDError)


def test_option_validation():
    with pytest.raises(ValueError, match="Unrecognized nlss_coarse 'amg'"):
        npc.PCOptions(coarse="amg")
    with pytest.raises(ValueError, match="nlss_rank must be <= nlss_K"):
        npc.PCOptions(rank=80, K=72)
    opt = PETSc.Options()
    opt["bad_nlss_coarse"] = "magic"
    try:
        with pytest.raises(ValueError, match="magic"):
            npc.PCOptions.from_petsc("bad_")
    finally:
        del opt["bad_nlss_coarse"]


def test_nlss_without_model_is_a_clear_error(small_system):
    with pytest.raises(PETSc.Error) as info:
        _pc_for(small_system.A, npc.TwoGridPC(options=npc.PCOptions(coarse="nlss", rank=4,
                                                                    K=8)))
    assert "nlss_model" in str(info.value.__cause__)
