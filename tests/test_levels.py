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
