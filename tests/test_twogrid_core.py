"""The NumPy/SciPy core: smoothing, coarse bases, the two-grid operator and PCG.

Every check is against an independent reference: a column-by-column dense Jacobi loop,
numpy.linalg.svd, the dense two-grid formula ``B = (I - E) A^{-1}`` and spsolve. Test
matrices are built here (finite-difference Laplacians, random SPD), without dolfinx.
"""

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from hypothesis import given, settings
from hypothesis import strategies as st

from nlss_fenicsx.coarse import sa_amg_basis, svd_basis, svd_basis_from_gram
from nlss_fenicsx.smoothing import gaussian_start, smoothed_vectors
from nlss_fenicsx.twogrid import (
    ConvergenceError,
    IndefiniteError,
    NotSPDError,
    PCGInfo,
    TwoGrid,
    pcg,
)

# ---------------------------------------------------------------------------- fixtures


def laplacian(m: int, *, seed: int | None = None, sigma: float = 1.5) -> sp.csr_matrix:
    """5-point operator on an m x m interior grid with Dirichlet boundary, A = G^T W G.

    ``seed=None`` gives the constant-coefficient Laplacian; otherwise each edge gets the
    log-normal conductivity ``exp(sigma N(0, 1))``.
    """
    D1 = sp.diags([np.ones(m), -np.ones(m)], [0, -1], shape=(m + 1, m))
    I = sp.identity(m)
    G = sp.vstack([sp.kron(I, D1), sp.kron(D1, I)]).tocsr()
    if seed is None:
        w = np.ones(G.shape[0])
    else:
        w = np.exp(sigma * np.random.default_rng(seed).standard_normal(G.shape[0]))
    return (G.T @ sp.diags(w) @ G).tocsr()


def random_dd_spd(n: int, rng: np.random.Generator) -> sp.csr_matrix:
    """Random symmetric, strictly diagonally dominant matrix with positive diagonal.

    Then eigenvalues of D^{-1} A lie in (0, 2), so Jacobi with omega = 0.66 is A-norm
    convergent and the two-grid operator is SPD.
    """
    density = rng.uniform(0.2, 1.0)
    off = rng.standard_normal((n, n)) * (rng.random((n, n)) < density)
    off = np.triu(off, 1)
    off = off + off.T
    diag = np.abs(off).sum(axis=1) + rng.uniform(0.5, 2.0, n)
    return sp.csr_matrix(off + np.diag(diag))


def dense_twogrid(A, P, nu_pre=5, nu_post=5, omega=0.66) -> np.ndarray:
    """Gold reference: B = (I - E) A^{-1}, E = S^nu_post (I - P Ac^-1 P^T A) S^nu_pre."""
    A = A.toarray() if sp.issparse(A) else np.asarray(A)
    P = P.toarray() if sp.issparse(P) else np.asarray(P)
    n = A.shape[0]
    I = np.eye(n)
    Sm = I - omega * A / np.diag(A)[:, None]
    C = I - P @ np.linalg.solve(P.T @ A @ P, P.T @ A)
    E = np.linalg.matrix_power(Sm, nu_post) @ C @ np.linalg.matrix_power(Sm, nu_pre)
    return np.linalg.solve(A, (I - E).T).T  # (I - E) A^{-1}, A symmetric


def rel(X, Y) -> float:
    return float(np.linalg.norm(X - Y) / np.linalg.norm(Y))


# ---------------------------------------------------------------------------- smoothing


def test_smoothed_vectors_shape_unit_columns_layout():
    A = laplacian(8)
    S = smoothed_vectors(A, 6, rng=0)
    assert S.shape == (64, 6)
    assert S.dtype == np.float64 and S.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(S, axis=0), 1.0, rtol=1e-14)


def test_smoothed_vectors_match_columnwise_dense_loop():
    A = laplacian(7, seed=3)
    K, sweeps, omega = 5, 7, 0.7
    S = smoothed_vectors(A, K, sweeps=sweeps, omega=omega, rng=11)

    Ad = A.toarray()
    d = np.diag(Ad)
    S0 = gaussian_start(11, A.shape[0], K).astype(np.float64)
    ref = np.empty_like(S0)
    for j in range(K):
        s = S0[:, j].copy()
        for _ in range(sweeps):
            s = s - omega * (Ad @ s) / d
            s = s / np.linalg.norm(s)
        ref[:, j] = s
    np.testing.assert_allclose(S, ref, rtol=0, atol=1e-12)


def test_smoothed_vectors_deterministic():
    A = laplacian(6, seed=0)
    a = smoothed_vectors(A, 4, rng=5)
    np.testing.assert_array_equal(a, smoothed_vectors(A, 4, rng=5))
    np.testing.assert_array_equal(a, smoothed_vectors(A, 4, rng=np.random.default_rng(5)))
    assert not np.allclose(a, smoothed_vectors(A, 4, rng=6))


def test_smoothed_vectors_are_smooth():
    A = laplacian(16, seed=1)
    R = np.random.default_rng(0).standard_normal((A.shape[0], 16))
    S = smoothed_vectors(A, 16, rng=0)

    def quotient(X):
        return np.mean(np.linalg.norm(A @ X, axis=0) / np.linalg.norm(X, axis=0))

    assert quotient(S) < 0.2 * quotient(R)


def test_smoothed_vectors_zero_sweeps_float32_and_annihilated_columns():
    A = laplacian(5)
    raw = gaussian_start(2, 25, 3).astype(np.float64)
    np.testing.assert_array_equal(smoothed_vectors(A, 3, sweeps=0, rng=2), raw)

    S32 = smoothed_vectors(A, 3, rng=2, dtype=np.float32)
    assert S32.dtype == np.float32
    np.testing.assert_allclose(S32, smoothed_vectors(A, 3, rng=2), atol=1e-5)

    # omega = 1 on 2 I kills every vector exactly in one sweep: zeros, not NaN.
    S = smoothed_vectors(sp.identity(10, format="csr") * 2.0, 2, sweeps=2, omega=1.0, rng=0)
    np.testing.assert_array_equal(S, 0.0)


@pytest.mark.parametrize(
    ("A", "kwargs", "match"),
    [
        (sp.random(4, 5, density=1.0, random_state=0), {}, r"square.*\(4, 5\)"),
        (sp.identity(4), {"K": 0}, "K >= 1, got K = 0"),
        (sp.identity(4), {"K": 2.0}, "integer"),
        (sp.identity(4), {"sweeps": -1}, "sweeps >= 0, got sweeps = -1"),
        (sp.identity(4), {"omega": 0.0}, "omega > 0, got omega = 0.0"),
        (sp.identity(4), {"omega": np.nan}, "omega > 0"),
        (sp.identity(4), {"dtype": np.int64}, "floating dtype"),
        (sp.diags([1.0, 0.0, 2.0, 1.0]), {}, r"positive, finite diagonal.*A\[1, 1\] = 0.0"),
        (sp.diags([1.0, 1.0, -2.0, 1.0]), {}, r"A\[2, 2\] = -2.0"),
        (sp.diags([1.0, 1.0, 1.0, np.inf]), {}, r"A\[3, 3\] = inf"),
    ],
)
def test_smoothed_vectors_validation(A, kwargs, match):
    kwargs = {"K": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        smoothed_vectors(A, **kwargs)


# ---------------------------------------------------------------------------- coarse bases


def synthetic(n, K, sigma, seed=0):
    """S = Q1 diag(sigma) Q2^T with known singular values."""
    rng = np.random.default_rng(seed)
    Q1 = np.linalg.qr(rng.standard_normal((n, K)))[0]
    Q2 = np.linalg.qr(rng.standard_normal((K, K)))[0]
    return (Q1 * sigma) @ Q2.T


def test_svd_basis_orthonormal_and_matches_numpy():
    S = synthetic(200, 10, np.linspace(3.0, 0.3, 10))
    P = svd_basis(S, 6)
    assert P.shape == (200, 6)
    np.testing.assert_allclose(P.T @ P, np.eye(6), atol=1e-10)
    U = np.linalg.svd(S, full_matrices=False)[0][:, :6]
    assert np.all(np.abs(np.sum(P * U, axis=0)) > 1 - 1e-8)


def test_svd_basis_spans_the_dominant_subspace_of_smoothed_vectors():
    A = laplacian(12, seed=2)
    S = smoothed_vectors(A, 24, rng=0)
    for r in (1, 5, 24):
        P = svd_basis(S, r)
        U = np.linalg.svd(S, full_matrices=False)[0][:, :r]
        np.testing.assert_allclose(P @ P.T, U @ U.T, atol=1e-8)


def test_svd_basis_sign_convention_and_determinism():
    S = synthetic(50, 6, np.linspace(2.0, 1.0, 6), seed=4)
    P = svd_basis(S, 4)
    np.testing.assert_array_equal(P, svd_basis(S.copy(), 4))
    # u_j = S v_j / sigma_j with the largest-|entry| of each v_j positive.
    V = S.T @ P
    assert np.all(V[np.argmax(np.abs(V), axis=0), np.arange(4)] > 0)
    # -S = (-U) Sigma V^T: V keeps its signs, so the basis flips.
    np.testing.assert_allclose(svd_basis(-S, 4), -P, atol=1e-12)


@pytest.mark.parametrize("use_allreduce", [False, True])
def test_svd_basis_from_gram_row_split_equals_svd_basis(use_allreduce):
    S = smoothed_vectors(laplacian(10, seed=1), 16, rng=3)
    blocks = np.array_split(S, 3, axis=0)  # three "ranks"
    G = sum(Sb.T @ Sb for Sb in blocks)  # what the first all-reduce gives
    for r in (4, 16):
        parts = [svd_basis_from_gram(G, Sb, r) for Sb in blocks]
        if use_allreduce:
            # The second all-reduce sums the ranks' U_local^T U_local from the first pass.
            C = sum(U.T @ U for U in parts)
            parts = [svd_basis_from_gram(G, Sb, r, allreduce=lambda x, C=C: C) for Sb in blocks]
        P = np.vstack(parts)
        np.testing.assert_allclose(P, svd_basis(S, r), atol=1e-9)
        np.testing.assert_allclose(P.T @ P, np.eye(r), atol=1e-10)


def test_svd_basis_from_gram_second_pass_restores_orthonormality():
    S = synthetic(300, 12, np.logspace(0, -6, 12), seed=1)
    G = S.T @ S
    once = svd_basis_from_gram(G, S, 12)
    twice = svd_basis_from_gram(G, S, 12, allreduce=lambda x: x)
    assert np.abs(once.T @ once - np.eye(12)).max() > 1e-9  # the Gram route's loss
    np.testing.assert_allclose(twice.T @ twice, np.eye(12), atol=1e-12)
    np.testing.assert_allclose(twice[:, :6], svd_basis(S, 6), atol=1e-10)


def test_svd_basis_from_gram_rank_deficient_and_shape_errors():
    S = synthetic(40, 5, np.array([1.0, 0.5, 0.25, 0.0, 0.0]))
    with pytest.raises(ValueError, match="numerical rank >= r = 4"):
        svd_basis_from_gram(S.T @ S, S, 4)
    assert svd_basis_from_gram(S.T @ S, S, 3).shape == (40, 3)
    with pytest.raises(ValueError, match=r"K = 5 columns.*got shape \(40, 4\)"):
        svd_basis_from_gram(S.T @ S, S[:, :4], 2)
    with pytest.raises(ValueError, match=r"1 <= r <= K for G of shape \(5, 5\) = 5, got r = 6"):
        svd_basis_from_gram(S.T @ S, S, 6)


@pytest.mark.parametrize(
    ("shape", "r", "match"),
    [
        ((30, 8), 0, r"1 <= r <= min\(n, K\) .* = 8, got r = 0"),
        ((30, 8), 9, r"for S of shape \(30, 8\) = 8, got r = 9"),
        ((5, 8), 6, r"for S of shape \(5, 8\) = 5, got r = 6"),
        ((30, 8), 2.5, "integer rank"),
        ((30, 8), True, "integer rank"),
    ],
)
def test_svd_basis_bad_rank(shape, r, match):
    with pytest.raises(ValueError, match=match):
        svd_basis(np.ones(shape), r)


def test_svd_basis_rejects_nonfinite_and_1d():
    with pytest.raises(ValueError, match="2-D"):
        svd_basis(np.ones(5), 1)
    with pytest.raises(ValueError, match="finite"):
        svd_basis(np.full((5, 2), np.nan), 1)


def test_sa_amg_basis_shape_determinism_and_two_grid():
    A = laplacian(20, seed=4)
    n = A.shape[0]
    state = np.random.get_state()  # noqa: NPY002
    P = sa_amg_basis(A)
    after = np.random.get_state()  # noqa: NPY002
    assert np.array_equal(state[1], after[1]) and state[2] == after[2]  # global RNG untouched
    assert sp.issparse(P) and P.format == "csr"
    assert P.shape[0] == n and 1 <= P.shape[1] < n
    Q = sa_amg_basis(A)
    assert (P != Q).nnz == 0

    b = np.random.default_rng(0).standard_normal(n)
    x, info = pcg(A, b, TwoGrid(A, P), check=True)
    assert info.iterations < 25
    assert np.linalg.norm(b - A @ x) / np.linalg.norm(b) < 1e-6


def test_sa_amg_basis_too_small():
    with pytest.raises(ValueError, match="coarse level"):
        sa_amg_basis(laplacian(3))
    with pytest.raises(ValueError, match="square"):
        sa_amg_basis(sp.random(4, 5, density=1.0, random_state=0))


# ---------------------------------------------------------------------------- two-grid


def _bases(A, r):
    n = A.shape[0]
    rng = np.random.default_rng(7)
    return {
        "svd": svd_basis(smoothed_vectors(A, 2 * r, rng=0), r),
        "random": rng.standard_normal((n, r)),
        "sparse": sp.csr_matrix(np.kron(np.eye(r), np.ones((n // r, 1)))),
    }


@pytest.mark.parametrize("basis", ["svd", "random", "sparse"])
@pytest.mark.parametrize(("nu_pre", "nu_post", "omega"), [(5, 5, 0.66), (2, 3, 0.8), (0, 1, 0.5)])
def test_twogrid_matches_dense_reference(basis, nu_pre, nu_post, omega):
    A = laplacian(6, seed=5)  # n = 36
    P = _bases(A, 6)[basis]
    tg = TwoGrid(A, P, nu_pre=nu_pre, nu_post=nu_post, omega=omega)
    ref = dense_twogrid(A, P, nu_pre, nu_post, omega)
    assert rel(tg.as_dense(), ref) < 1e-10
    cols = np.column_stack([tg.apply(e) for e in np.eye(A.shape[0])])
    assert rel(cols, ref) < 1e-10


def test_twogrid_symmetric_positive_definite():
    for seed in range(3):
        A = laplacian(6, seed=seed)
        tg = TwoGrid(A, svd_basis(smoothed_vectors(A, 16, rng=seed), 8))
        B = tg.as_dense()
        assert tg.symmetric
        assert rel(B, B.T) < 1e-10
        assert np.linalg.eigvalsh(0.5 * (B + B.T)).min() > 0


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


def test_twogrid_timings_and_repr():
    A = laplacian(5)
    tg = TwoGrid(A, np.eye(25)[:, :5])
    assert set(tg.timings) == {"setup"} and tg.timings["setup"] >= 0
    assert tg.Ac.shape == (5, 5)
    assert "n=25, r=5" in repr(tg)


@pytest.mark.parametrize(
    ("P", "kwargs", "match"),
    [
        (np.ones((24, 3)), {}, r"n = 25 rows to match A \(25 x 25\), got shape \(24, 3\)"),
        (np.ones(25), {}, r"got shape \(25,\)"),
        (np.ones((25, 26)), {}, "r <= n = 25 columns, got r = 26"),
        (np.full((25, 2), np.nan), {}, "finite"),
        (np.eye(25)[:, :3], {"nu_pre": -1}, "nu_pre >= 0, got nu_pre = -1"),
        (np.eye(25)[:, :3], {"nu_post": 1.5}, "nu_post to be an integer"),
        (np.eye(25)[:, :3], {"omega": -0.1}, "omega > 0, got omega = -0.1"),
    ],
)
def test_twogrid_validation(P, kwargs, match):
    with pytest.raises(ValueError, match=match):
        TwoGrid(laplacian(5), P, **kwargs)


def test_twogrid_rejects_nonsymmetric_and_bad_diagonal():
    A = laplacian(4).tolil()
    A[0, 1] = -2.0
    with pytest.raises(ValueError, match="symmetric A"):
        TwoGrid(A.tocsr(), np.eye(16)[:, :2])
    with pytest.raises(ValueError, match="positive, finite diagonal"):
        TwoGrid(-laplacian(4), np.eye(16)[:, :2])
    tg = TwoGrid(laplacian(4), np.eye(16)[:, :2])
    with pytest.raises(ValueError, match=r"expected r of shape \(16,\) or \(16, m\)"):
        tg.apply(np.ones(15))


def test_coarse_operator_not_spd_is_reported():
    A = laplacian(6)
    msg = r"Ac = P\^T A P \(3 x 3\) is not symmetric positive definite; A must be SPD and P full"
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
    with pytest.raises(NotSPDError, match=msg):
        TwoGrid(shifted, V[:, :3])
    assert issubclass(NotSPDError, ValueError)


# ---------------------------------------------------------------------------- PCG


@pytest.mark.parametrize("residual", ["true", "recursive"])
def test_pcg_matches_spsolve(residual):
    A = laplacian(20, seed=3)
    b = np.random.default_rng(0).standard_normal(A.shape[0])
    ref = spla.spsolve(A.tocsc(), b)
    tg = TwoGrid(A, svd_basis(smoothed_vectors(A, 32, rng=0), 16))
    for M in (tg, None):
        x, info = pcg(A, b, M, rtol=1e-8, residual=residual)
        assert info.converged and info.reason == "converged"
        assert info.residual_kind == residual
        assert len(info.residuals) == info.iterations + 1
        assert np.linalg.norm(b - A @ x) / np.linalg.norm(b) == pytest.approx(
            info.final_residual, rel=1e-12
        )
        assert info.final_residual < 1e-8
        assert np.linalg.norm(x - ref) / np.linalg.norm(ref) < 1e-5


def test_pcg_history_is_the_true_residual():
    A = laplacian(12, seed=6)
    n = A.shape[0]
    b = np.random.default_rng(1).standard_normal(n)
    x0 = np.random.default_rng(2).standard_normal(n)
    tg = TwoGrid(A, svd_basis(smoothed_vectors(A, 16, rng=0), 8))
    _, full = pcg(A, b, tg, x0=x0, rtol=1e-10)
    assert full.converged and full.iterations > 5
    for k in range(full.iterations + 1):
        xk, info = pcg(A, b, tg, x0=x0, rtol=1e-10, maxiter=k)
        true = np.linalg.norm(b - A @ xk) / np.linalg.norm(b)
        assert full.residuals[k] == pytest.approx(true, rel=1e-12)
        assert info.residuals == full.residuals[: k + 1]


def test_pcg_maxiter_reports_and_check_raises():
    A = laplacian(16, seed=0)
    b = np.ones(A.shape[0])
    x, info = pcg(A, b, maxiter=3)
    assert not info.converged and info.reason == "maxiter" and info.iterations == 3
    assert info.final_residual == pytest.approx(np.linalg.norm(b - A @ x) / np.linalg.norm(b))
    with pytest.raises(ConvergenceError, match=r"after 3 iterations, final relative") as err:
        info.raise_if_failed()
    assert err.value.info is info
    with pytest.raises(ConvergenceError, match="maxiter"):
        pcg(A, b, maxiter=3, check=True)
    _, rec = pcg(A, b, maxiter=3, residual="recursive")
    assert rec.final_residual == pytest.approx(info.final_residual, rel=1e-8)
    assert PCGInfo(0, (0.0,), True, "zero_rhs").raise_if_failed().converged


@pytest.mark.parametrize("residual", ["true", "recursive"])
def test_pcg_unreachable_tolerance_stagnates_early(residual):
    A = laplacian(16, seed=0)
    b = np.ones(A.shape[0])
    x, info = pcg(A, b, rtol=1e-17, residual=residual)
    assert not info.converged and info.reason == "stagnated"
    assert info.iterations < 2 * A.shape[0]  # well before the default maxiter = 10 n
    assert info.final_residual < 1e-12
    assert info.final_residual == pytest.approx(np.linalg.norm(b - A @ x) / np.linalg.norm(b))
    with pytest.raises(ConvergenceError, match="stagnated"):
        info.raise_if_failed()


def test_pcg_is_scale_invariant():
    A = laplacian(10, seed=1)
    b = np.random.default_rng(0).standard_normal(A.shape[0])
    tg = TwoGrid(A, _bases(A, 10)["svd"])
    x, info = pcg(A, b, tg)
    for scale in (1e-200, 1e200):
        xs, infos = pcg(A, scale * b, tg)
        assert infos.iterations == info.iterations
        np.testing.assert_allclose(infos.residuals, info.residuals, rtol=1e-8)
        np.testing.assert_allclose(xs / scale, x, rtol=1e-10, atol=1e-14)


def test_pcg_indefinite_and_nonfinite():
    n = 20
    b = np.ones(n)
    with pytest.raises(IndefiniteError, match=r"p\^T A p = .* <= 0, A is not SPD"):
        pcg(-laplacian(4), np.ones(16))
    mixed = sp.diags(np.r_[np.ones(n // 2), -np.ones(n // 2)]).tocsr()
    with pytest.raises(IndefiniteError):
        pcg(mixed, b)
    A = laplacian(4)
    with pytest.raises(IndefiniteError, match="preconditioner M is not SPD"):
        pcg(A, np.ones(16), lambda r: -r)
    with pytest.raises(FloatingPointError):
        pcg(A, np.ones(16), lambda r: np.full_like(r, np.nan))
    assert issubclass(IndefiniteError, ValueError)


def test_pcg_zero_rhs_and_converged_start():
    A = laplacian(5)
    x, info = pcg(A, np.zeros(25), x0=np.ones(25))
    np.testing.assert_array_equal(x, 0.0)
    assert info == PCGInfo(0, (0.0,), True, "zero_rhs", 1e-6, "true")
    sol = spla.spsolve(A.tocsc(), np.ones(25))
    x, info = pcg(A, np.ones(25), x0=sol)
    assert info.converged and info.iterations == 0


def test_pcg_accepts_every_preconditioner_form():
    A = laplacian(10, seed=2)
    b = np.random.default_rng(3).standard_normal(A.shape[0])
    tg = TwoGrid(A, _bases(A, 10)["svd"])
    B = tg.as_dense()
    forms = [tg, tg.aspreconditioner(), tg.apply, B, sp.csr_matrix(B)]
    results = [pcg(A, b, M, rtol=1e-10) for M in forms]
    for x, info in results[1:]:
        assert info.iterations == results[0][1].iterations
        np.testing.assert_allclose(x, results[0][0], rtol=1e-7, atol=1e-12)
    with pytest.raises(TypeError, match="expected M"):
        pcg(A, b, "jacobi")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"b": np.ones(5)}, r"b of shape \(16,\) to match A, got shape \(5,\)"),
        ({"b": np.full(16, np.nan)}, "finite"),
        ({"rtol": 0.0}, "rtol > 0"),
        ({"maxiter": -1}, "maxiter >= 0"),
        ({"residual": "exact"}, "Unrecognized residual 'exact'"),
        ({"x0": np.ones(3)}, r"x0 of shape \(16,\)"),
        ({"M": np.eye(3)}, r"M of shape \(16, 16\)"),
    ],
)
def test_pcg_validation(kwargs, match):
    kwargs = {"b": np.ones(16), **kwargs}
    with pytest.raises(ValueError, match=match):
        pcg(laplacian(4), **kwargs)


# ---------------------------------------------------------------------------- properties


@settings(max_examples=25, deadline=None)
@given(n=st.integers(5, 30), r_frac=st.floats(0.0, 1.0), seed=st.integers(0, 2**32 - 1))
def test_property_twogrid_is_spd(n, r_frac, seed):
    rng = np.random.default_rng(seed)
    A = random_dd_spd(n, rng)
    r = 1 + int(r_frac * (n - 1))
    # Well-conditioned but not orthonormal: Q diag(e^U(-1,1)) W.
    Q = np.linalg.qr(rng.standard_normal((n, r)))[0]
    W = np.linalg.qr(rng.standard_normal((r, r)))[0]
    P = (Q * np.exp(rng.uniform(-1, 1, r))) @ W
    B = TwoGrid(A, P).as_dense()
    assert rel(B, B.T) < 1e-10
    assert np.linalg.eigvalsh(0.5 * (B + B.T)).min() > 1e-10 * np.linalg.norm(B, 2)
    assert rel(B, dense_twogrid(A, P)) < 1e-8


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 40),
    K=st.integers(1, 20),
    r_frac=st.floats(0.0, 1.0),
    decades=st.floats(0.0, 8.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_svd_basis_orthonormal(n, K, r_frac, decades, seed):
    rng = np.random.default_rng(seed)
    S = rng.standard_normal((n, K)) * np.logspace(0, -decades, K)
    r = 1 + int(r_frac * (min(n, K) - 1))
    P = svd_basis(S, r)
    assert P.shape == (n, r)
    np.testing.assert_allclose(P.T @ P, np.eye(r), atol=1e-10)
