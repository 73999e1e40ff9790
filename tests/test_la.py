"""la.py (and the private _errors.py it re-exports): PETSc views against SciPy/NumPy, node
order, near-nullspace rows, distributed smoothing and lambda_max against dense references,
reasons of non-convergence, unwrapping of Python errors raised inside PETSc."""

import numpy as np
import pytest
import scipy.linalg as sla
import scipy.sparse as sp

from nlss_fenicsx import la, meshes, pdes
from nlss_fenicsx._fenicsx import MPI, PETSc, dolfinx, ufl
from nlss_fenicsx.smoothing import gaussian_start, smoothed_vectors


@pytest.fixture(scope="module")
def system():
    return pdes.assemble(pdes.sample("diffusion", meshes.jittered_square(8, seed=0), rng=0))


def _petsc(A_csr):
    A_csr = sp.csr_matrix(A_csr)
    M = PETSc.Mat().createAIJ(size=A_csr.shape, csr=(A_csr.indptr, A_csr.indices, A_csr.data),
                              comm=PETSc.COMM_SELF)
    M.assemble()
    return M


def test_petsc_to_csr_drops_stored_zeros_and_equals_matvec(system):
    A = system.A
    x = np.random.default_rng(0).standard_normal(system.n)
    vx, vy = A.createVecs()
    vx.setArray(x)
    A.mult(vx, vy)
    csr = la.petsc_to_csr(A)
    np.testing.assert_allclose(csr @ x, vy.getArray(), rtol=1e-14, atol=1e-14)
    assert csr.nnz < A.getInfo()["nz_used"]  # the zeroed Dirichlet pattern is gone
    assert np.all(csr.data != 0)


def test_dense_from_rows_converts_float32_and_refuses_1d():
    rows = np.random.default_rng(1).standard_normal((7, 3)).astype(np.float32)
    M = la.dense_from_rows(MPI.COMM_SELF, rows, 7)
    np.testing.assert_array_equal(M.getDenseArray(), rows.astype(np.float64))
    with pytest.raises(ValueError, match="2-D block of rows"):
        la.dense_from_rows(MPI.COMM_SELF, rows[:, 0], 7)


def test_mat_from_rows_dense_and_sparse_and_wrong_rows(system):
    P = np.random.default_rng(2).standard_normal((system.n, 4))
    D = la.mat_from_rows(system.A, P)
    np.testing.assert_array_equal(D.getDenseArray(), P)
    S = la.mat_from_rows(system.A, sp.csr_matrix(P))
    assert S.getType() == PETSc.Mat.Type.SEQAIJ
    np.testing.assert_array_equal(la.petsc_to_csr(S).toarray(), P)
    with pytest.raises(ValueError, match=r"coarse basis must have this rank's 81 rows of A "
                                         r"\(n=81\) on every rank; got shape \(82, 4\)"):
        la.mat_from_rows(system.A, np.zeros((82, 4)))


def test_node_order_attached_by_assemble_equals_grid_order(system):
    order = la.node_order_of(system.A)
    np.testing.assert_array_equal(order, meshes.grid_order(system.V))
    np.testing.assert_array_equal(order, system.node_order)
    assert system.grid_order is system.node_order


def test_node_order_on_any_mesh_and_missing_is_none():
    mesh = dolfinx.mesh.create_unit_square(MPI.COMM_WORLD, 5, 4)
    V = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    u, v = ufl.TrialFunction(V), ufl.TestFunction(V)
    A = dolfinx.fem.petsc.assemble_matrix(dolfinx.fem.form(ufl.inner(u, v) * ufl.dx))
    A.assemble()
    assert la.node_order_of(A) is None
    order = la.attach_node_order(A, V)
    # Input node i of create_unit_square sits at its generator's position: x, y from i.
    x = V.tabulate_dof_coordinates()[order, :2]
    i = np.arange(30)
    np.testing.assert_allclose(x, np.column_stack([(i % 6) / 5, (i // 6) / 4]), atol=1e-14)
    np.testing.assert_array_equal(la.node_order_of(A), order)


@pytest.mark.parametrize("bad", ["duplicate", "range", "float", "short"])
def test_node_order_must_be_a_permutation(system, bad):
    order = system.node_order.copy()
    if bad == "duplicate":
        order[0] = order[1]
    elif bad == "range":
        order[0] = 81
    elif bad == "float":
        order = order.astype(np.float64)
    else:
        order = order[:-1]
    A = system.A.duplicate(copy=True)
    with pytest.raises(ValueError, match=r"node order must be a permutation of range\(81\)"):
        la.attach_node_order(A, order)
    A.setAttr(la.NODE_ORDER_KEY, order)  # attached behind our back: caught when read
    with pytest.raises(ValueError, match=r"attached node order must be a permutation"):
        la.node_order_of(A)


def test_start_block_is_drawn_in_node_order():
    order = np.random.default_rng(3).permutation(50)
    Z = gaussian_start(7, 50, 4)
    full = la.start_block(7, 50, 4, 0, 50, order)
    np.testing.assert_array_equal(full[order], Z)  # dof order[i] gets node i's draw
    np.testing.assert_array_equal(la.start_block(7, 50, 4, 10, 30, order), full[10:30])
    np.testing.assert_array_equal(la.start_block(7, 50, 4, 0, 50), Z)


def test_near_nullspace_rows_and_constant():
    A = _petsc(sp.identity(6, format="csr"))
    assert la.near_nullspace_rows(A) is None
    vecs = [A.createVecLeft() for _ in range(2)]
    vecs[0].setArray(np.arange(6.0))
    vecs[1].setArray(np.ones(6) * 2)
    A.setNearNullSpace(PETSc.NullSpace().create(constant=True, vectors=vecs))
    B = la.near_nullspace_rows(A)
    np.testing.assert_array_equal(B, np.column_stack([np.ones(6), np.arange(6.0), 2 * np.ones(6)]))


def test_smoothed_vectors_petsc_equals_scipy(system):
    order = system.node_order
    S_petsc = la.smoothed_vectors_petsc(system.A, 9, sweeps=7, seed=4, node_order=order)
    S0 = la.start_block(4, 81, 9, 0, 81, order)
    S_scipy = smoothed_vectors(system.A_csr, 9, sweeps=7, S0=S0)
    np.testing.assert_allclose(S_petsc, S_scipy, rtol=0, atol=1e-13)


def test_smoothed_vectors_petsc_bad_input(system):
    bad = sp.csr_matrix(system.A_csr, copy=True)
    row = 40
    k = next(k for k in range(bad.indptr[row], bad.indptr[row + 1]) if bad.indices[k] != row)
    bad.data[k] = np.nan
    with pytest.raises(ValueError, match="A contains NaN or Inf"):
        la.smoothed_vectors_petsc(_petsc(bad), 8)
    neg = sp.csr_matrix(system.A_csr, copy=True)
    neg[5, 5] = -1.0
    with pytest.raises(ValueError, match="got 1 nonpositive, NaN or Inf diagonal"):
        la.smoothed_vectors_petsc(_petsc(neg), 8)


def test_lambda_max_petsc_from_below_and_close(system):
    A = system.A_csr.toarray()
    d = np.diag(A)
    exact = sla.eigvalsh(A / np.sqrt(np.outer(d, d)))[-1]
    est = la.lambda_max_petsc(system.A, seed=0, node_order=system.node_order)
    assert 0.95 * exact < est <= exact * (1 + 1e-12)


def _ksp(A, *, maxit, pc="jacobi"):
    ksp = PETSc.KSP().create(comm=PETSc.COMM_SELF)
    ksp.setOperators(A)
    ksp.setType("cg")
    ksp.getPC().setType(pc)
    ksp.setTolerances(rtol=1e-12, max_it=maxit)
    return ksp


def test_check_converged_names_the_reason(system):
    ksp = _ksp(system.A, maxit=2)
    b, x = system.A.createVecs()
    b.setArray(system.b)
    ksp.solve(b, x)
    with pytest.raises(RuntimeError, match=r"KSP did not converge: DIVERGED_MAX_IT \(-3\) "
                                           r"after 2 iterations"):
        la.check_converged(ksp)
    ksp.setTolerances(max_it=1000)
    ksp.solve(b, x)
    assert la.check_converged(ksp) == ksp.getIterationNumber() > 2
    with pytest.raises(TypeError, match="expects a KSP, a SNES, a LinearProblem or a "
                                        "NonlinearProblem; got int"):
        la.check_converged(3)


def test_check_converged_snes_and_nonlinear_problem():
    mesh = dolfinx.mesh.create_unit_interval(MPI.COMM_WORLD, 8)
    V = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    u, v = dolfinx.fem.Function(V), ufl.TestFunction(V)
    F = (ufl.inner(ufl.grad(u), ufl.grad(v)) + (u + u**3 - 1) * v) * ufl.dx
    problem = dolfinx.fem.petsc.NonlinearProblem(
        F, u, petsc_options_prefix="la_snes_",
        petsc_options={"snes_max_it": 1, "snes_rtol": 1e-14, "snes_atol": 0.0,
                       "ksp_type": "preonly", "pc_type": "lu"})
    problem.solve()
    with pytest.raises(RuntimeError, match=r"SNES did not converge: DIVERGED_MAX_IT"):
        la.check_converged(problem)
    problem.solver.setTolerances(max_it=20)
    problem.solve()
    assert la.check_converged(problem.solver) >= 1


class _Raising:
    def __init__(self, exc):
        self.exc = exc

    def setUp(self, pc):  # noqa: N802 - PETSc's name
        raise self.exc

    def apply(self, pc, x, y):
        x.copy(y)


@pytest.mark.parametrize("exc", [ValueError("bad nlss_rank"), KeyboardInterrupt()])
def test_python_errors_unwraps_what_petsc_wrapped(system, exc):
    ksp = _ksp(system.A, maxit=10, pc="python")
    ksp.getPC().setPythonContext(_Raising(exc))
    b, x = system.A.createVecs()
    with pytest.raises(PETSc.Error):
        ksp.solve(b, x)
    ksp.getPC().setPythonContext(_Raising(exc))
    with pytest.raises(type(exc)) as info, la.python_errors():
        ksp.solve(b, x)
    assert info.value is exc
    with pytest.raises(PETSc.Error), la.python_errors():  # PETSc's own errors stay
        PETSc.Mat().createAIJ((2, 3)).getDiagonal()


def test_raise_collectively_serial():
    la.raise_collectively(None, None)
    la.raise_collectively(MPI.COMM_SELF, None)
    with pytest.raises(ValueError, match="boom"):
        la.raise_collectively(MPI.COMM_SELF, ValueError("boom"))
    with pytest.raises(ValueError, match="inside"), la.collective(MPI.COMM_SELF):
        raise ValueError("inside")


def test_check_converged_before_any_solve_says_so():
    from nlss_fenicsx.krylov import ConvergenceError

    ksp = PETSc.KSP().create(PETSc.COMM_SELF)
    try:
        with pytest.raises(ConvergenceError, match=r"^KSP has not solved anything yet "
                                                   r"\(CONVERGED_ITERATING\): call solve"):
            la.check_converged(ksp)
    finally:
        ksp.destroy()
