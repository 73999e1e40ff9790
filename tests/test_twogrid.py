"""nlss_fenicsx.twogrid: TwoGrid against the dense two-grid formula, SPD for every smoother
on any SPD matrix, the one coarse SPD check, and bad input.

Gold reference: B = (I - E) A^-1 with E = G_post (I - P Ac^-1 P^T A) G_pre and the dense
textbook smoother matrices G (tests/core_matrices.py).
"""

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from hypothesis import given, settings
from hypothesis import strategies as st

from nlss_fenicsx import grid
from nlss_fenicsx.coarse import svd_basis
from nlss_fenicsx.relaxation import SMOOTHERS
from nlss_fenicsx.smoothing import smoothed_vectors
from nlss_fenicsx.twogrid import NotSPDError, TwoGrid, check_coarse_spd, pcg
from tests.core_matrices import (
    dense_jacobi_twogrid,
    dense_smoother,
    dense_twogrid,
    lambda_max_dinv_a,
    laplacian,
    random_dd_spd,
    random_spd,
    rel,
    vector_laplacian,
)


def _bases(A, r):
    n = A.shape[0]
    rng = np.random.default_rng(7)
    return {
        "svd": svd_basis(smoothed_vectors(A, 2 * r, rng=0), r),
        "random": rng.standard_normal((n, r)),
        "sparse": sp.csr_matrix(np.kron(np.eye(r), np.ones((n // r, 1)))),
    }


def _dense_reference(tg: TwoGrid) -> np.ndarray:
    sm = tg.smoother
    kw = {"omega": sm.omega, "interval": sm.interval}
    return dense_twogrid(tg.A, tg.P, dense_smoother(tg.A, sm.kind, tg.nu_pre, **kw),
                         dense_smoother(tg.A, sm.kind, tg.nu_post, **kw))


def _assert_spd(B, tol=1e-10):
    scale = np.linalg.norm(B, 2)
    assert np.linalg.norm(B - B.T, 2) <= tol * scale
    assert np.linalg.eigvalsh(0.5 * (B + B.T)).min() > tol * scale


# ------------------------------------------------------------------ the paper's operator


@pytest.mark.parametrize("basis", ["svd", "random", "sparse"])
@pytest.mark.parametrize(("nu_pre", "nu_post", "omega"), [(5, 5, 0.66), (2, 3, 0.8), (0, 1, 0.5)])
def test_twogrid_matches_dense_reference(basis, nu_pre, nu_post, omega):
    A = laplacian(6, seed=5)  # n = 36
    P = _bases(A, 6)[basis]
    tg = TwoGrid(A, P, nu_pre=nu_pre, nu_post=nu_post, omega=omega)
    ref = dense_jacobi_twogrid(A, P, nu_pre, nu_post, omega)
    assert rel(tg.as_dense(), ref) < 1e-10
    cols = np.column_stack([tg.apply(e) for e in np.eye(A.shape[0])])
    assert rel(cols, ref) < 1e-10


def test_twogrid_symmetric_positive_definite():
    for seed in range(3):
        A = laplacian(6, seed=seed)
        tg = TwoGrid(A, svd_basis(smoothed_vectors(A, 16, rng=seed), 8))
        assert tg.symmetric
        _assert_spd(tg.as_dense())


@pytest.mark.parametrize("family", grid.FAMILIES)
def test_auto_weight_is_the_papers_on_the_paper_families(family):
    """omega="auto" (the default) keeps omega = 0.66 on the paper's problems, so the
    two-grid operator, and every iteration count, is the one with omega = 0.66."""
    N = 16
    pts = grid.jittered_points(N, seed=2)
    tri = grid.delaunay_triangles(pts)
    coef = grid.coefficient_draws(family, "default", len(tri), 2)
    gp = grid.assemble_p1(family, pts, tri, coef, boundary=grid.boundary_mask(N))
    P = svd_basis(smoothed_vectors(gp.A, 32, rng=0), 16)
    auto, paper = TwoGrid(gp.A, P), TwoGrid(gp.A, P, omega=0.66)
    assert auto.omega == 0.66 and "paper" in auto.smoother.why
    np.testing.assert_array_equal(auto.apply(gp.b), paper.apply(gp.b))
    assert pcg(gp.A, gp.b, auto)[1].iterations == pcg(gp.A, gp.b, paper)[1].iterations


# ------------------------------------------------------------------ every smoother, any SPD A


def _spd_zoo():
    rng = np.random.default_rng(3)
    return {
        "laplacian": laplacian(6, seed=1),
        "dd": random_dd_spd(24, rng),
        "spd": sp.csr_matrix(random_spd(20, rng, 3.0)),
        "hexlike": vector_laplacian(10, 0.3),  # omega = 0.66 Jacobi diverges here
        "hexlike_scaled": vector_laplacian(8, 0.35, seed=1),
    }


ZOO = _spd_zoo()


@pytest.mark.parametrize("smoother", SMOOTHERS)
@pytest.mark.parametrize("name", sorted(ZOO))
@pytest.mark.parametrize("nu", [1, 2, 5])
def test_twogrid_is_spd_for_every_smoother(smoother, name, nu):
    A = ZOO[name]
    n = A.shape[0]
    P = np.linalg.qr(np.random.default_rng(nu).standard_normal((n, max(2, n // 6))))[0]
    tg = TwoGrid(A, P, smoother=smoother, nu=nu)
    B = tg.as_dense()
    assert rel(B, _dense_reference(tg)) < 1e-9
    _assert_spd(B)


def test_the_paper_weight_would_make_the_hexlike_operator_indefinite():
    """Why "auto" exists: with omega = 0.66 forced past the check, the dense two-grid
    operator of the hexahedral-like matrix is indefinite (DIVERGED_INDEFINITE_PC in PETSc);
    the default is SPD, and an explicit 0.66 is refused in one line."""
    A = ZOO["hexlike"]
    assert 0.66 * lambda_max_dinv_a(A) > 2.0
    P = np.linalg.eigh(A.toarray())[1][:, :4]  # a good (smooth) coarse space
    B = dense_jacobi_twogrid(A, P, 5, 5, 0.66)
    assert np.linalg.eigvalsh(0.5 * (B + B.T)).min() < 0
    _assert_spd(TwoGrid(A, P).as_dense())
    with pytest.raises(ValueError, match=r"omega = 0.66 is unsafe .* lambda_max\(D\^-1 A\) is "
                                         r"estimated at 3\.\d+"):
        TwoGrid(A, P, omega=0.66)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(4, 24), r_frac=st.floats(0.0, 1.0), nu=st.integers(1, 4),
       smoother=st.sampled_from(SMOOTHERS), decades=st.floats(0.0, 4.0),
       seed=st.integers(0, 2**32 - 1))
def test_property_twogrid_spd_for_general_spd_matrices(n, r_frac, nu, smoother, decades, seed):
    rng = np.random.default_rng(seed)
    A = random_spd(n, rng, decades)
    r = 1 + int(r_frac * (n - 1))
    # Well-conditioned but not orthonormal: Q diag(e^U(-1,1)) W.
    Q = np.linalg.qr(rng.standard_normal((n, r)))[0]
    W = np.linalg.qr(rng.standard_normal((r, r)))[0]
    P = (Q * np.exp(rng.uniform(-1, 1, r))) @ W
    tg = TwoGrid(sp.csr_matrix(A), P, smoother=smoother, nu=nu)
    B = tg.as_dense()
    _assert_spd(B, tol=1e-9)
    assert rel(B, _dense_reference(tg)) < 1e-7


@settings(max_examples=25, deadline=None)
@given(n=st.integers(5, 30), r_frac=st.floats(0.0, 1.0), seed=st.integers(0, 2**32 - 1))
def test_property_twogrid_is_spd_on_diagonally_dominant(n, r_frac, seed):
    rng = np.random.default_rng(seed)
    A = random_dd_spd(n, rng)
    r = 1 + int(r_frac * (n - 1))
    P = np.linalg.qr(rng.standard_normal((n, r)))[0]
    tg = TwoGrid(A, P)
    B = tg.as_dense()
    _assert_spd(B)
    assert rel(B, dense_jacobi_twogrid(A, P, omega=tg.omega)) < 1e-8


# ------------------------------------------------------------------ behaviour


def test_twogrid_block_apply_and_linear_operator():
    A = laplacian(6, seed=1)
    tg = TwoGrid(A, _bases(A, 6)["random"], nu_pre=2, nu_post=4)
    R = np.random.default_rng(0).standard_normal((36, 3))
    Z = tg.apply(R)
    np.testing.assert_allclose(Z, np.column_stack([tg.apply(c) for c in R.T]), atol=1e-13)

    M = tg.aspreconditioner()
    assert isinstance(M, spla.LinearOperator)
    assert M.shape == (36, 36) and M.dtype == np.float64
    np.testing.assert_allclose(M.matvec(R[:, 0]), Z[:, 0], atol=1e-13)
    np.testing.assert_allclose(M @ R, Z, atol=1e-13)
    # The adjoint swaps the sweep counts: it is the transpose of the dense operator.
    B = tg.as_dense()
    np.testing.assert_allclose(M.rmatvec(R[:, 1]), B.T @ R[:, 1], atol=1e-11)
    assert not tg.symmetric


def test_twogrid_square_orthonormal_basis_is_exact():
    A = laplacian(8, seed=2)
    n = A.shape[0]
    Q = np.linalg.qr(np.random.default_rng(0).standard_normal((n, n)))[0]
    tg = TwoGrid(A, Q)
    assert rel(tg.as_dense(), np.linalg.inv(A.toarray())) < 1e-10
    b = np.random.default_rng(1).standard_normal(n)
    x, info = pcg(A, b, tg)
    assert info.converged and info.iterations == 1
    np.testing.assert_allclose(x, spla.spsolve(A.tocsc(), b), rtol=1e-10)


def test_iterations_do_not_increase_with_rank():
    ranks = (8, 16, 32, 64)
    its = np.zeros(len(ranks))
    for seed in range(3):
        A = laplacian(33, seed=seed)
        S = smoothed_vectors(A, 72, rng=seed)
        b = np.random.default_rng(seed).standard_normal(A.shape[0])
        for k, r in enumerate(ranks):
            its[k] += pcg(A, b, TwoGrid(A, svd_basis(S, r)), check=True)[1].iterations
    its /= 3
    assert np.all(np.diff(its) <= 0), its


@pytest.mark.parametrize("smoother", ["chebyshev", "sor"])
def test_stronger_smoothers_need_fewer_iterations(smoother):
    A = laplacian(24, seed=0)
    P = svd_basis(smoothed_vectors(A, 32, rng=0), 16)
    b = np.random.default_rng(0).standard_normal(A.shape[0])
    jac = pcg(A, b, TwoGrid(A, P, nu=2), check=True)[1].iterations
    other = pcg(A, b, TwoGrid(A, P, smoother=smoother, nu=2), check=True)[1].iterations
    assert other < jac


def test_twogrid_timings_and_repr():
    A = laplacian(5)
    tg = TwoGrid(A, np.eye(25)[:, :5])
    assert set(tg.timings) == {"setup"} and tg.timings["setup"] >= 0
    assert tg.Ac.shape == (5, 5)
    assert "n=25, r=5" in repr(tg) and "smoother='jacobi'" in repr(tg)
    tg = TwoGrid(A, np.eye(25)[:, :5], lam_max=2.0, smoother="chebyshev")
    assert tg.smoother.lam_max == 2.0 and tg.omega is None


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("P", "kwargs", "match"),
    [
        (np.ones((24, 3)), {}, r"n = 25 rows to match A \(25 x 25\), got shape \(24, 3\)"),
        (np.ones(25), {}, r"got shape \(25,\)"),
        (np.ones((25, 26)), {}, "r <= n = 25 columns, got r = 26"),
        (np.full((25, 2), np.nan), {}, "finite"),
        (np.eye(25)[:, :3] * (1 + 1j), {}, "expected a real P, got dtype complex128"),
        (spla.aslinearoperator(np.eye(25)[:, :3]), {}, "P as a NumPy array"),
        (np.eye(25)[:, :3], {"nu_pre": -1}, "nu_pre >= 0, got nu_pre = -1"),
        (np.eye(25)[:, :3], {"nu_post": 1.5}, "nu_post to be an integer"),
        (np.eye(25)[:, :3], {"nu": 0}, r"nu >= 1 .* nu_pre = nu_post = 0 .* singular"),
        (np.eye(25)[:, :3], {"omega": -0.1}, "omega > 0, got omega = -0.1"),
        (np.eye(25)[:, :3], {"omega": 1e300}, "omega = 1e\\+300 is unsafe"),
        (np.eye(25)[:, :3], {"smoother": "ilu"}, "Unrecognized smoother 'ilu'"),
    ],
)
def test_twogrid_validation(P, kwargs, match):
    with pytest.raises(ValueError, match=match):
        TwoGrid(laplacian(5), P, **kwargs)


def test_twogrid_refuses_what_it_cannot_use():
    A = laplacian(4)
    P = np.eye(16)[:, :2]
    with pytest.raises(ValueError, match="expected A as a SciPy sparse matrix or a NumPy "
                                         "array .* got a SciPy LinearOperator"):
        TwoGrid(spla.aslinearoperator(A), P)
    with pytest.raises(ValueError, match="expected a real A, got dtype complex128"):
        TwoGrid(A * (1 + 0j), P)
    with pytest.raises(ValueError, match=r"non-empty system, got A of shape \(0, 0\)"):
        TwoGrid(sp.csr_matrix((0, 0)), np.zeros((0, 1)))
    with pytest.raises(ValueError, match="finite entries"):
        TwoGrid(A.multiply(np.inf).tocsr(), P)
    tg = TwoGrid(A, P)
    with pytest.raises(ValueError, match="expected a real v"):
        tg.apply(np.ones(16) * 1j)


def test_twogrid_rejects_nonsymmetric_and_bad_diagonal():
    A = laplacian(4).tolil()
    A[0, 1] = -2.0
    with pytest.raises(ValueError, match="symmetric A"):
        TwoGrid(A.tocsr(), np.eye(16)[:, :2])
    with pytest.raises(ValueError, match="positive, finite diagonal"):
        TwoGrid(-laplacian(4), np.eye(16)[:, :2])
    tg = TwoGrid(laplacian(4), np.eye(16)[:, :2])
    with pytest.raises(ValueError, match=r"expected v of shape \(16,\) or \(16, m\)"):
        tg.apply(np.ones(15))


# ------------------------------------------------------------------ the one SPD check


def test_coarse_operator_not_spd_is_reported():
    A = laplacian(6)
    msg = (r"Ac = P\^T A P \(3 x 3\) is not symmetric positive definite; A must be SPD and P "
           "of full column rank")
    P = np.random.default_rng(0).standard_normal((36, 3))
    P[:, 1] = 0.0  # zero column
    with pytest.raises(NotSPDError, match=msg):
        TwoGrid(A, P)
    P[:, 1] = P[:, 0]  # repeated column: singular, Cholesky may survive on rounding
    with pytest.raises(NotSPDError, match="not symmetric positive definite"):
        TwoGrid(A, P)
    # Positive diagonal but indefinite: the smooth modes have negative energy.
    lam, V = np.linalg.eigh(A.toarray())
    shifted = (A - sp.identity(36) * (lam[0] + lam[1])).tocsr()
    with pytest.raises((NotSPDError, ValueError), match="SPD"):
        TwoGrid(shifted, V[:, :3])
    assert issubclass(NotSPDError, ValueError)


def test_check_coarse_spd_against_dense_cholesky():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((6, 6))
    Ac = X @ X.T + 6 * np.eye(6)
    c, lower = check_coarse_spd(Ac)
    L = np.tril(c) if lower else np.triu(c).T
    np.testing.assert_allclose(L @ L.T, Ac, rtol=1e-12)
    np.testing.assert_allclose(L, np.linalg.cholesky(Ac), rtol=1e-12)
    np.testing.assert_array_equal(check_coarse_spd(sp.csr_matrix(Ac))[0], c)
    cases = [
        (np.diag([1.0, -1.0]), "leading minor of order 2 is not positive"),
        (np.array([[1.0, 0.5], [0.0, 1.0]]), r"not symmetric: max\|Ac - Ac\^T\| = 5.000e-01"),
        (np.diag([1.0, np.nan]), "NaN or Inf"),
        (np.diag([1.0, 1e-30]), "numerically singular: smallest Cholesky pivot 1.000e-30"),
    ]
    for bad, match in cases:
        with pytest.raises(NotSPDError, match=match):
            check_coarse_spd(bad)
    for bad, match in ((np.ones((2, 3)), "square"), (np.zeros((0, 0)), "non-empty"),
                       (np.eye(2) * 1j, "real Ac")):
        with pytest.raises(ValueError, match=match):
            check_coarse_spd(bad)


# ------------------------------------------------------------------ the icc smoother


def _extreme_eigenvalues_of_ba(A, tg) -> tuple[float, float]:
    """Smallest and largest eigenvalue of B A (self-adjoint in the A inner product), by
    Lanczos on the pencil (A B A, A): B is SPD iff the smallest is positive."""
    lu = spla.splu(A.tocsc())
    op = spla.LinearOperator(A.shape, matvec=lambda v: A @ tg.apply(A @ v))
    a_inv = spla.LinearOperator(A.shape, matvec=lu.solve)
    return tuple(spla.eigsh(op, k=1, M=A, Minv=a_inv, which=w, tol=1e-4,
                            return_eigenvectors=False)[0] for w in ("SA", "LA"))


def test_icc_two_level_is_spd_where_undamped_icc_is_indefinite():
    """Anisotropic, N = 128: lambda_max(M^-1 A) = 2.64 for M = ICC(0), so undamped ICC(0)
    (Richardson weight 1 = Chebyshev degree 1 on [0.1, 1.1] x 1/0.6) makes the two-level
    operator indefinite (CG would report convergence to a wrong answer); the icc smoother's
    estimated interval keeps it SPD with B A's spectrum in (0, 1]."""
    from nlss_fenicsx.spectral import sine_basis

    N = 128
    pts = grid.jittered_points(N, seed=101)
    tri = grid.delaunay_triangles(pts)
    coef = grid.coefficient_draws("anisotropic", "default", len(tri), np.random.default_rng(101))
    A = grid.assemble_p1("anisotropic", pts, tri, coef, boundary=grid.boundary_mask(N)).A
    P = sine_basis(N, 16)
    tg = TwoGrid(A, P, smoother="icc", nu=1)
    assert tg.smoother.lam_max > 2.4 and tg.smoother.M.shift == 0.0
    lo, hi = _extreme_eigenvalues_of_ba(A, tg)
    assert 0.0 < lo and hi < 1.0 + 1e-6
    undamped = TwoGrid(A, P, smoother="icc", nu=1, lam_max=1 / 0.6, seed=0)
    assert abs(2.0 / sum(undamped.smoother.interval) - 1.0) < 1e-12  # weight 1
    assert _extreme_eigenvalues_of_ba(A, undamped)[0] < -1.0


@pytest.mark.parametrize("family", grid.FAMILIES)
@pytest.mark.parametrize("nu", [1, 2])
def test_icc_twogrid_equals_the_dense_formula_on_the_paper_families(family, nu):
    N = 10
    pts = grid.jittered_points(N, seed=4)
    tri = grid.delaunay_triangles(pts)
    coef = grid.coefficient_draws(family, "default", len(tri), np.random.default_rng(4))
    A = grid.assemble_p1(family, pts, tri, coef, boundary=grid.boundary_mask(N)).A
    P = np.linalg.qr(np.random.default_rng(0).standard_normal((A.shape[0], 8)))[0]
    tg = TwoGrid(A, P, smoother="icc", nu=nu)
    B = tg.as_dense()
    assert rel(B, _dense_reference(tg)) < 1e-9
    _assert_spd(B)


def test_icc_default_degree_is_one():
    A = laplacian(5)
    P = np.eye(A.shape[0])[:, ::4]
    assert TwoGrid(A, P, smoother="icc").nu_pre == 1
    assert TwoGrid(A, P).nu_pre == 5
