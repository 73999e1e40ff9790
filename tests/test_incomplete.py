"""nlss_fenicsx.incomplete (ICC(0) in SciPy) and the CG-Lanczos estimate of lambda_max(M^-1 A).

References: the right-looking dense IC(0) of tests/core_matrices.dense_ic0 (another
elimination order than the package's row-by-row one; the factor is unique), dense solves,
and exact eigenvalues of L^-1 A L^-T from numpy.linalg.eigvalsh.
"""

import numpy as np
import pytest
import scipy.sparse as sp

from nlss_fenicsx import grid
from nlss_fenicsx.incomplete import IncompleteCholesky, ic0
from nlss_fenicsx.relaxation import lambda_max_estimate, lambda_max_preconditioned, start_vector
from tests.core_matrices import dense_ic0, laplacian, random_dd_spd

# Kershaw's SPD matrix: its IC(0) has a negative pivot (Kershaw, J. Comput. Phys. 26, 1978).
KERSHAW = np.array([[3.0, -2, 0, 2], [-2, 3, -2, 0], [0, -2, 3, -2], [2, 0, -2, 3]])


def paper_instance(family: str, N: int, seed: int = 0) -> sp.csr_matrix:
    pts = grid.jittered_points(N, seed=seed)
    tri = grid.delaunay_triangles(pts)
    coef = grid.coefficient_draws(family, "default", len(tri), np.random.default_rng(seed))
    return grid.assemble_p1(family, pts, tri, coef, boundary=grid.boundary_mask(N)).A


def _matrices():
    out = {f: paper_instance(f, 8, seed=3) for f in grid.FAMILIES}
    out["laplacian"] = laplacian(6, seed=1)
    out["dd"] = random_dd_spd(20, np.random.default_rng(0))
    return out


MATRICES = _matrices()


@pytest.mark.parametrize("name", sorted(MATRICES))
def test_ic0_equals_the_dense_right_looking_factor(name):
    A = MATRICES[name]
    L, alpha = ic0(A)
    assert alpha == 0.0
    ref = dense_ic0(A)
    np.testing.assert_allclose(L.toarray(), ref, atol=1e-12 * np.abs(ref).max())
    # L L^T reproduces A on A's pattern (and L has the pattern of tril(A)).
    R = (L @ L.T - A).toarray()
    Ad = A.toarray()
    assert np.abs(R[Ad != 0]).max() <= 1e-12 * np.abs(Ad).max()
    assert not np.any(L.toarray()[(np.tril(Ad) == 0)])


def test_breakdown_is_shifted_or_refused_in_one_line():
    with pytest.raises(ValueError, match=r"ICC\(0\) broke down at row 3 \(pivot -5.000e\+00"):
        ic0(KERSHAW, shift=False)
    L, alpha = ic0(KERSHAW)
    assert alpha == 0.25  # the smallest of 2^-10 .. 1 that works
    np.testing.assert_allclose(L.toarray(), dense_ic0(KERSHAW, alpha), atol=1e-14)
    M = IncompleteCholesky(KERSHAW)
    assert M.shift == alpha
    Md = L.toarray() @ L.toarray().T
    assert np.linalg.eigvalsh(Md).min() > 0  # M is SPD after the shift
    with pytest.raises(ValueError, match=r"positive diagonal for ICC\(0\), got A\[1, 1\] = -1"):
        ic0(sp.diags([1.0, -1.0]))


def test_solve_is_the_inverse_of_l_lt():
    A = MATRICES["anisotropic"]
    M = IncompleteCholesky(A)
    L = M.L.toarray()
    B = np.random.default_rng(1).standard_normal((A.shape[0], 3))
    np.testing.assert_allclose(M.solve(B), np.linalg.solve(L @ L.T, B), rtol=1e-10,
                               atol=1e-12)
    np.testing.assert_allclose(M.solve(B[:, 0]), M.solve(B)[:, 0], atol=1e-14)


@pytest.mark.parametrize("family", grid.FAMILIES)
def test_cg_lanczos_estimate_from_below_and_close(family):
    A = paper_instance(family, 16, seed=5)
    M = IncompleteCholesky(A)
    Li = np.linalg.inv(M.L.toarray())
    exact = np.linalg.eigvalsh(Li @ A.toarray() @ Li.T).max()
    est = lambda_max_preconditioned(A.__matmul__, M.solve, start_vector(A.shape[0]))
    assert 0.9 * exact < est <= exact * (1 + 1e-12)


def test_cg_lanczos_with_the_diagonal_equals_plain_lanczos():
    """M = D: CG's residual r_0 = x0 is the Lanczos vector D^-1/2 x0 of D^-1/2 A D^-1/2."""
    A = laplacian(8, seed=2)
    x0 = start_vector(A.shape[0], seed=3)
    d = A.diagonal()
    for steps in (1, 4, 9):
        a = lambda_max_preconditioned(A.__matmul__, lambda r: r / d, x0, steps=steps)
        b = lambda_max_estimate(A.__matmul__, 1 / d, x0 / np.sqrt(d), steps=steps)
        assert abs(a - b) <= 1e-10 * b


def test_cg_lanczos_is_exact_on_an_invariant_space():
    A = sp.diags([1.0, 1.0, 3.0, 3.0]).tocsr()
    est = lambda_max_preconditioned(A.__matmul__, lambda r: r, np.ones(4), steps=10)
    assert abs(est - 3.0) < 1e-12


@pytest.mark.parametrize(
    ("precond", "x0", "match"),
    [
        (lambda r: -r, np.ones(5), r"not usable: r\^T M\^-1 r = -5.000e\+00 at CG step 0"),
        (lambda r: r, np.zeros(5), "nonzero, finite start vector"),
        (lambda r: r * np.nan, np.ones(5), "not usable"),
    ],
)
def test_cg_lanczos_refuses_an_unusable_estimate(precond, x0, match):
    A = laplacian(2, seed=None)[:5, :5]
    with pytest.raises(ValueError, match=match):
        lambda_max_preconditioned(A.__matmul__, precond, x0)


def test_cg_lanczos_refuses_an_indefinite_A():
    A = sp.diags([1.0, -2.0, 1.0]).tocsr()
    with pytest.raises(ValueError, match=r"p\^T A p = .* \(expected an SPD A\)"):
        lambda_max_preconditioned(A.__matmul__, lambda r: r, np.array([0.0, 1.0, 0.0]))
