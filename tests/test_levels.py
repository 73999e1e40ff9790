"""nlss_fenicsx.levels: ICC(0) in PETSc, its lambda_max(M^-1 A) estimate, the coarse check.

References: the SciPy ICC(0) and CG-Lanczos of the core (nlss_fenicsx.incomplete,
relaxation.lambda_max_preconditioned), which the dense tests of tests/test_incomplete.py
check against textbook formulas; exact eigenvalues from numpy.linalg.eigvalsh.
"""

import numpy as np
import pytest
import scipy.sparse as sp

from nlss_fenicsx import levels
from nlss_fenicsx._fenicsx import PETSc
from nlss_fenicsx.incomplete import IncompleteCholesky
from nlss_fenicsx.relaxation import lambda_max_preconditioned, start_vector
from nlss_fenicsx.twogrid import NotSPDError
from tests.test_incomplete import MATRICES


def _aij(A):
    A = sp.csr_matrix(A)
    return PETSc.Mat().createAIJ(A.shape, csr=(A.indptr, A.indices, A.data),
                                 comm=PETSc.COMM_SELF)


@pytest.mark.parametrize("name", sorted(MATRICES))
@pytest.mark.parametrize("steps", [3, 10])
def test_native_estimate_equals_the_scipy_cg_lanczos(name, steps):
    A = MATRICES[name]
    M = _aij(A)
    pc = levels.icc_preconditioner(M)
    try:
        got = levels.lambda_max_pc(M, pc, steps=steps)
    finally:
        pc.destroy()
    ref = lambda_max_preconditioned(A.__matmul__, IncompleteCholesky(A).solve,
                                    start_vector(A.shape[0]), steps=steps)
    assert abs(got - ref) <= 1e-6 * ref  # the same recurrences; rounding differs
    Li = np.linalg.inv(IncompleteCholesky(A).L.toarray())
    exact = np.linalg.eigvalsh(Li @ A.toarray() @ Li.T).max()
    assert got <= exact * (1 + 1e-12)


def test_native_estimate_refuses_an_indefinite_matrix():
    M = _aij(sp.diags([2.0, -1.0, 3.0, 1.0]))
    pc = PETSc.PC().create(PETSc.COMM_SELF)
    pc.setOperators(M, M)
    pc.setType(PETSc.PC.Type.NONE)
    pc.setUp()
    with pytest.raises(ValueError, match=r"estimate is not usable: CG stopped with "
                                         r"DIVERGED_INDEFINITE_MAT"):
        levels.lambda_max_pc(M, pc)


def test_coarse_check_dense_and_refusal():
    from mpi4py import MPI

    good = PETSc.Mat().createDense((2, 2), array=np.array([[2.0, -1.0], [-1.0, 2.0]]),
                                   comm=PETSc.COMM_SELF)
    assert levels.check_coarse(MPI.COMM_SELF, good) is True
    bad = PETSc.Mat().createDense((2, 2), array=np.array([[1.0, 2.0], [2.0, 1.0]]),
                                  comm=PETSc.COMM_SELF)
    with pytest.raises(NotSPDError, match="Cholesky failed"):
        levels.check_coarse(MPI.COMM_SELF, bad)


@pytest.mark.parametrize("nullity", [1, 2])
def test_a_singular_coarse_operator_is_pinned_and_solves_consistent_systems(nullity):
    """Pure-Neumann Laplacians (one chain, or two disjoint chains: nullity 1 or 2)."""
    from mpi4py import MPI

    blocks = []
    for _ in range(nullity):
        L = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(8, 8)).tolil()
        L[0, 0] = L[-1, -1] = 1.0
        blocks.append(L)
    Ac = sp.block_diag(blocks).toarray()
    dense = PETSc.Mat().createDense(Ac.shape, array=Ac.copy(), comm=PETSc.COMM_SELF)
    checked, pinned = levels.check_coarse(MPI.COMM_SELF, dense, singular=True, pin=True)
    M = pinned.getDenseArray().copy()
    assert checked and np.linalg.eigvalsh(M).min() > 0  # SPD
    assert np.linalg.matrix_rank(M - Ac) == nullity  # only diagonal pins added
    lam, V = np.linalg.eigh(Ac)
    b = Ac @ np.random.default_rng(0).standard_normal(Ac.shape[0])  # consistent
    y = np.linalg.solve(M, b)
    assert np.allclose(Ac @ y, b, atol=1e-12 * np.abs(b).max())
    # differs from the pseudo-inverse solution only in null(Ac)
    d = y - np.linalg.pinv(Ac) @ b
    assert np.allclose(d - V[:, :nullity] @ (V[:, :nullity].T @ d), 0, atol=1e-10)
    spd = PETSc.Mat().createDense((2, 2), array=np.array([[2.0, -1.0], [-1.0, 2.0]]),
                                  comm=PETSc.COMM_SELF)
    assert levels.check_coarse(MPI.COMM_SELF, spd, singular=True, pin=True)[1] is spd


# ------------------------------------------------------------------ the inner PCMG's options
def test_mg_options_structure_and_level_smoother_refused_coarse_honoured():
    levels.check_mg_options([("mg_coarse_pc_type", "lu"), ("mg_coarse_ksp_type", "preonly"),
                      ("pc_mg_cycle_type", "w"), ("pc_mg_multiplicative_cycles", "2"),
                      ("pc_type", "mg")])
    for key, value in [("pc_type", "jacobi"), ("pc_type", "MG"), ("pc_mg_levels", "3"),
                       ("pc_mg_galerkin", "both"), ("ksp_type", "cg")]:
        with pytest.raises(ValueError, match=f"nlss_mg_{key} '{value}' is refused: the inner"):
            levels.check_mg_options([(key, value)])
    # The level smoother's own options would undo its guarantee (a Richardson scale of 5 or
    # no level PC made CG report DIVERGED_INDEFINITE_PC on an SPD matrix), and a distinct
    # up-smoother makes the cycle non-symmetric.
    for key, value in [("mg_levels_ksp_richardson_scale", "5"), ("mg_levels_pc_type", "none"),
                       ("mg_levels_ksp_max_it", "3"), ("pc_mg_distinct_smoothup", "1")]:
        with pytest.raises(ValueError, match=f"nlss_mg_{key} '{value}' is refused: the level "
                                             "smoother is set by nlss_smoother"):
            levels.check_mg_options([(key, value)])
    with pytest.raises(ValueError, match="a Krylov coarse solve makes the preconditioner"):
        levels.check_mg_options([("mg_coarse_ksp_type", "cg")])
    for key, value in [("pc_mg_multiplicative_cycles", "0"),
                       ("pc_mg_multiplicative_cycles", "abc")]:
        with pytest.raises(ValueError, match=f"^nlss_mg_{key}: expected an integer >= 1, "
                                             f"got '{value}'$"):
            levels.check_mg_options([(key, value)])
    assert all(k.startswith(("mg_levels_", *levels.MG_OPTIONS)) or k == "pc_mg_galerkin"
               for k in levels.mg_defaults("sor", 2, omega=1.0, parallel=True))


def test_mg_defaults_per_smoother():
    j = levels.mg_defaults("jacobi", 3, omega=0.5)
    assert (j["mg_levels_ksp_type"], j["mg_levels_pc_type"],
            j["mg_levels_ksp_richardson_scale"], j["mg_levels_ksp_max_it"]) == \
        ("richardson", "jacobi", "0.5", "3")
    c = levels.mg_defaults("chebyshev", 2, interval=(0.2, 2.2))
    assert c["mg_levels_ksp_chebyshev_eigenvalues"] == "0.2,2.2"
    s = levels.mg_defaults("sor", 2, omega=1.0, parallel=True)
    assert "mg_levels_pc_sor_local_symmetric" in s and s["mg_coarse_pc_type"] == "redundant"
    assert levels.mg_defaults("jacobi", 1, omega=1.0)["mg_coarse_pc_type"] == "cholesky"
    assert levels.mg_defaults("jacobi", 1, omega=1.0, singular=True)["mg_coarse_pc_type"] == "svd"
    assert levels.mg_defaults("jacobi", 1, omega=1.0, singular=True,
                       parallel=True)["mg_coarse_redundant_pc_type"] == "svd"


def test_icc_refuses_a_matrix_with_a_nullspace_in_one_line():
    L = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(6, 6)).tolil()
    L[0, 0] = L[-1, -1] = 1.0  # pure Neumann: the constants are its nullspace
    M = _aij(L)
    M.setNullSpace(PETSc.NullSpace().create(constant=True, comm=PETSc.COMM_SELF))
    with pytest.raises(ValueError, match=r"^nlss_smoother icc needs a nonsingular A, but this "
                                         r"A has a nullspace attached .* jacobi, chebyshev"):
        levels.icc_preconditioner(M)
