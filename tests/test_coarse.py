"""nlss_fenicsx.coarse (and bases, spectral, basisfile): every coarse kind against an
independent reference, the basis file, the near-nullspace, and the dispatcher's refusals.

References: numpy.linalg.svd / eigh on dense matrices, the 5-point stencil's known
eigenvectors, dense loops for the graph Laplacian. The MPI side (distributed rows equal the
serial ones; a failure on one rank is the same error on all) is in tests/mpi/
coarse_collective.py, run at the end of this file under mpiexec -n 2 and -n 3.
"""

import json
import pathlib

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from nlss_fenicsx import coarse, grid, spectral
from nlss_fenicsx.bases import append_near_nullspace
from nlss_fenicsx.basisfile import BASIS_FORMAT
from nlss_fenicsx.coarse import (
    COARSE_KINDS,
    coarse_basis,
    load_basis,
    sa_amg_basis,
    save_basis,
    sine_basis,
    svd_basis,
    svd_basis_from_gram,
)
from nlss_fenicsx.smoothing import smoothed_vectors
from nlss_fenicsx.twogrid import TwoGrid, pcg
from tests.conftest import ROOT, run_mpi
from tests.core_matrices import laplacian, vector_laplacian


def synthetic(n, K, sigma, seed=0):
    """S = Q1 diag(sigma) Q2^T with known singular values."""
    rng = np.random.default_rng(seed)
    Q1 = np.linalg.qr(rng.standard_normal((n, K)))[0]
    Q2 = np.linalg.qr(rng.standard_normal((K, K)))[0]
    return (Q1 * sigma) @ Q2.T


def grid_instance(N=12, seed=0, family="diffusion", jitter=0.35, unit=False):
    pts = grid.jittered_points(N, seed=seed, jitter=jitter)
    tri = grid.delaunay_triangles(pts)
    coef = ({"g": np.ones(len(tri))} if unit
            else grid.coefficient_draws(family, "default", len(tri), seed))
    return grid.assemble_p1(family, pts, tri, coef, boundary=grid.boundary_mask(N)).A


def projector(V):
    return V @ np.linalg.pinv(V)


def assert_same_span(P, Q, atol=1e-8):
    np.testing.assert_allclose(projector(P), projector(Q), atol=atol)


@pytest.fixture(autouse=True)
def _fresh_reference_cache():
    coarse.clear_reference_cache()
    yield
    coarse.clear_reference_cache()


# ------------------------------------------------------------------ svd


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


def test_svd_basis_rejects_nonfinite_complex_and_1d():
    with pytest.raises(ValueError, match="2-D"):
        svd_basis(np.ones(5), 1)
    with pytest.raises(ValueError, match="finite"):
        svd_basis(np.full((5, 2), np.nan), 1)
    with pytest.raises(ValueError, match="expected a real S"):
        svd_basis(np.ones((5, 2)) * 1j, 1)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 40), K=st.integers(1, 16), r_frac=st.floats(0.0, 1.0),
       decades=st.floats(0.0, 6.0), seed=st.integers(0, 2**32 - 1))
def test_property_svd_basis_is_orthonormal_nested_and_optimal(n, K, r_frac, decades, seed):
    rng = np.random.default_rng(seed)
    S = rng.standard_normal((n, K)) * np.logspace(0, -decades, K)
    R = min(n, K)
    r = 1 + int(r_frac * (R - 1))
    full = svd_basis(S, R)
    P = svd_basis(S, r)
    np.testing.assert_allclose(P.T @ P, np.eye(r), atol=1e-10)
    np.testing.assert_array_equal(P, full[:, :r])  # the rank-r basis is a prefix

    def energy(Q):  # captured energy ||Q^T S||_F^2 / ||S||_F^2
        return np.linalg.norm(Q.T @ S) ** 2 / np.linalg.norm(S) ** 2

    sig2 = np.linalg.svd(S, compute_uv=False) ** 2
    assert abs(energy(P) - sig2[:r].sum() / sig2.sum()) <= 1e-10
    Q = np.linalg.qr(rng.standard_normal((n, r)))[0]  # any other orthonormal basis
    assert energy(Q) <= energy(P) + 1e-10


# ------------------------------------------------------------------ sa


def test_sa_amg_basis_shape_determinism_and_two_grid():
    A = laplacian(20, seed=4)
    n = A.shape[0]
    state = np.random.get_state()  # noqa: NPY002
    P = sa_amg_basis(A)
    after = np.random.get_state()  # noqa: NPY002
    assert np.array_equal(state[1], after[1]) and state[2] == after[2]  # global RNG untouched
    assert sp.issparse(P) and P.format == "csr"
    assert P.shape[0] == n and 1 <= P.shape[1] < n
    assert (P != sa_amg_basis(A)).nnz == 0
    assert (coarse_basis("sa", A, r=1) != P).nnz == 0  # the dispatcher: r is not used

    b = np.random.default_rng(0).standard_normal(n)
    x, info = pcg(A, b, TwoGrid(A, P), check=True)
    assert info.iterations < 25
    assert np.linalg.norm(b - A @ x) / np.linalg.norm(b) < 1e-6


def test_sa_amg_basis_near_nullspace_and_block_size():
    A = vector_laplacian(60, 0.3)  # three unknowns per node
    n = A.shape[0]
    B = np.kron(np.ones((n // 3, 1)), np.eye(3))  # a constant per component
    P = sa_amg_basis(A, B=B, block_size=3)
    # Smoothed aggregation keeps its candidates in the range of the tentative prolongator:
    # with block aggregation every coarse "node" carries 3 columns.
    assert P.shape[1] % 3 == 0
    P1 = coarse_basis("sa", A, r=1, near_nullspace=B, block_size=3)
    assert (P1 != P).nnz == 0
    b = np.random.default_rng(0).standard_normal(n)
    assert pcg(A, b, TwoGrid(A, P), check=True)[1].converged
    # Dependent or zero candidates (a repeated mode, a zero column) add nothing: the same
    # span, a full-rank P and an SPD Ac (they used to make Ac singular).
    redundant = np.hstack([B, B[:, :1], np.zeros((n, 1)), 2.0 * B[:, 1:2]])
    P2 = sa_amg_basis(A, B=redundant, block_size=3)
    assert P2.shape == P.shape
    assert pcg(A, b, TwoGrid(A, P2), check=True)[1].converged


def test_sa_amg_basis_refusals():
    with pytest.raises(ValueError, match="coarse level"):
        sa_amg_basis(laplacian(3))
    with pytest.raises(ValueError, match="square"):
        sa_amg_basis(sp.random(4, 5, density=1.0, random_state=0))
    with pytest.raises(ValueError, match="expected a real A, got dtype complex128"):
        sa_amg_basis(laplacian(6) * (1 + 1j))
    with pytest.raises(ValueError, match="multiple of block_size = 3"):
        sa_amg_basis(laplacian(5), block_size=3)
    with pytest.raises(ValueError, match=r"near-nullspace B with n = 36 rows"):
        sa_amg_basis(laplacian(6), B=np.ones((35, 1)))
    with pytest.raises(ValueError, match="nonzero near-nullspace B, got only zero vectors"):
        sa_amg_basis(laplacian(6), B=np.zeros((36, 2)))


# ------------------------------------------------------------------ sine


def test_sine_basis_orthonormal_and_ordered():
    for N, r in ((4, 9), (16, 48), (33, 100)):
        P = sine_basis(N, r)
        assert P.shape == ((N + 1) ** 2, r)
        np.testing.assert_allclose(P.T @ P, np.eye(r), atol=1e-12)
        assert np.all(P[grid.boundary_mask(N)] == 0.0)  # Dirichlet modes
    ab = spectral.sine_modes(16, 48)
    assert np.all(np.diff((ab**2).sum(axis=1)) >= 0)
    with pytest.raises(ValueError, match=r"r <= \(N - 1\)\^2 = 9 interior sine modes"):
        sine_basis(4, 10)


def test_sine_columns_are_eigenvectors_of_the_unjittered_p1_stiffness():
    """Jitter 0, unit coefficients: P1 on right triangles is the 5-point stencil (the
    hypotenuse edges carry no coupling), whose eigenvectors are the sine modes, with
    eigenvalues 4 - 2 cos(a pi / N) - 2 cos(b pi / N)."""
    N = 12
    A = grid_instance(N, jitter=0.0, unit=True)
    interior = ~grid.boundary_mask(N)
    Ai = A[interior][:, interior].toarray()
    np.testing.assert_allclose(np.diag(Ai), 4.0, atol=1e-12)
    assert set(np.round(Ai[~np.eye(len(Ai), dtype=bool)], 12)) <= {0.0, -1.0}
    P = sine_basis(N, 30)
    ab = spectral.sine_modes(N, 30)
    lam = 4 - 2 * np.cos(ab[:, 0] * np.pi / N) - 2 * np.cos(ab[:, 1] * np.pi / N)
    np.testing.assert_allclose(A @ P, P * lam, atol=1e-12)
    # Ordered by a^2 + b^2 (the continuous eigenvalue): here they are exactly the 30 lowest
    # eigenvalues of the matrix too (at coarse N high modes can swap, e.g. N=16, r=48).
    np.testing.assert_allclose(np.sort(lam), np.linalg.eigvalsh(Ai)[:30], atol=1e-10)


def test_sine_through_the_dispatcher_maps_node_order_to_dofs():
    N = 10
    n = (N + 1) ** 2
    A = grid_instance(N)
    perm = np.random.default_rng(0).permutation(n)  # node i -> dof perm[i]
    A_dof = A[np.argsort(perm)][:, np.argsort(perm)]  # the same matrix in dof order
    P = coarse_basis("sine", A_dof, r=12, node_order=perm)
    np.testing.assert_array_equal(P[perm], sine_basis(N, 12))
    with pytest.raises(ValueError, match="needs the node order"):
        coarse_basis("sine", A, r=12)
    with pytest.raises(ValueError, match="permutation of range"):
        coarse_basis("sine", A, r=12, node_order=np.zeros(n, dtype=int))
    with pytest.raises(ValueError, match=r"n = \(N \+ 1\)\^2 .* got n = 33: .*unit-square"):
        coarse_basis("sine", vector_laplacian(11), r=4, node_order=np.arange(33))


# ------------------------------------------------------------------ eig and eig-ref


def free_block_eigh(M, N):
    """numpy.linalg.eigh of the block off the Dirichlet (identity) rows, padded with 0."""
    free = np.flatnonzero(~grid.boundary_mask(N))
    M = M.toarray() if sp.issparse(M) else M
    lam, W = np.linalg.eigh(M[np.ix_(free, free)])
    V = np.zeros((M.shape[0], len(free)))
    V[free] = W
    return lam, V


def test_eig_matches_numpy_eigh():
    A = grid_instance(10, seed=1)
    lam, V = free_block_eigh(A, 10)
    assert np.sum(np.linalg.eigvalsh(A.toarray()) < lam[14]) > 15  # unit Dirichlet modes
    P = coarse_basis("eig", A, r=15)
    np.testing.assert_allclose(P.T @ P, np.eye(15), atol=1e-12)
    assert lam[15] - lam[14] > 1e-6  # a gap: the span is defined
    assert_same_span(P, V[:, :15])
    # Column by column, up to the sign convention (largest-magnitude entry positive).
    signs = np.sign(V[np.argmax(np.abs(V[:, :15]), axis=0), np.arange(15)])
    np.testing.assert_allclose(P, V[:, :15] * signs, atol=1e-8)


def test_lowest_eigenvectors_arpack_route_matches_dense():
    A = grid_instance(40, seed=2)  # n = 1681 > DENSE_LIMIT: shift-invert ARPACK
    assert A.shape[0] > spectral.DENSE_LIMIT
    V = spectral.lowest_eigenvectors(A, 8)
    lam, W = np.linalg.eigh(A.toarray())
    assert lam[8] - lam[7] > 1e-6
    assert_same_span(V, W[:, :8], atol=1e-7)
    np.testing.assert_array_equal(V, spectral.lowest_eigenvectors(A, 8))  # deterministic


def test_pattern_laplacian_against_a_dense_loop():
    A = grid_instance(6, seed=3).tolil()
    A[7, 8] = A[8, 7] = 0.0  # a stored zero is still part of the pattern
    A = A.tocsr()
    L = spectral.pattern_laplacian(A).toarray()
    n = A.shape[0]
    Ad = A.toarray()
    dirichlet = [i for i in range(n) if not np.any(np.delete(Ad[i], i))]
    ref = np.zeros((n, n))
    coo = A.tocoo()
    for i, j in zip(coo.row, coo.col, strict=True):
        if i != j:
            ref[i, i] += 1.0  # every edge counts in the degree, Dirichlet ones too
            if i not in dirichlet and j not in dirichlet:
                ref[i, j] = -1.0
    for d in dirichlet:
        ref[d, :] = ref[:, d] = 0.0
        ref[d, d] = 1.0
    np.testing.assert_array_equal(L, ref)
    assert len(dirichlet) == 4 * 6


@pytest.mark.parametrize("with_reference", [False, True])
def test_eig_ref_equals_dense_eigensolve_and_is_computed_once_per_mesh(with_reference,
                                                                       monkeypatch):
    N = 12
    ref = grid.reference_operator("diffusion", N, seed=0) if with_reference else None
    calls = []
    solve = spectral.lowest_eigenvectors

    def counted(M, r):
        calls.append(r)
        return solve(M, r)

    monkeypatch.setattr(spectral, "lowest_eigenvectors", counted)
    A0, A1 = grid_instance(N, seed=0), None
    # A second instance on the same mesh: other coefficients, the same pattern.
    pts = grid.jittered_points(N, seed=0)
    tri = grid.delaunay_triangles(pts)
    coef = grid.coefficient_draws("diffusion", "default", len(tri), 99)
    A1 = grid.assemble_p1("diffusion", pts, tri, coef, boundary=grid.boundary_mask(N)).A
    t0, t1 = {}, {}
    P0 = coarse_basis("eig-ref", A0, r=10, reference=ref, timings=t0)
    P1 = coarse_basis("eig-ref", A1, r=8, reference=ref, timings=t1)
    assert calls == [10]  # computed once, reused (r = 8 <= 10 is a truncation)
    assert t0["once"] > 0.0 and t1["once"] == 0.0
    np.testing.assert_array_equal(P1, P0[:, :8])
    M = ref if with_reference else spectral.pattern_laplacian(A0)
    lam, V = free_block_eigh(M, N)
    assert lam[10] - lam[9] > 1e-6
    assert_same_span(P0, V[:, :10])
    # Another mesh, or more columns than cached: computed again.
    coarse_basis("eig-ref", grid_instance(N, seed=5), r=10,
                 reference=grid.reference_operator("diffusion", N, seed=5) if with_reference
                 else None)
    coarse_basis("eig-ref", A0, r=12, reference=ref)
    assert calls == [10, 10, 12]


def test_eig_ref_reference_is_part_of_the_key():
    A = grid_instance(8)
    P_pattern = coarse_basis("eig-ref", A, r=5)
    P_ref = coarse_basis("eig-ref", A, r=5, reference=grid.reference_operator("anisotropic", 8))
    assert not np.allclose(projector(P_pattern), projector(P_ref), atol=1e-3)


def test_mean_coefficients_are_the_expectations():
    rng = np.random.default_rng(0)
    for family in grid.FAMILIES:
        for preset in ("paper", "code"):
            draws = [grid.coefficient_draws(family, preset, 4000, rng) for _ in range(5)]
            mean = grid.mean_coefficients(family, preset, 4000)
            for key in ("g", "kappa", "K"):
                if key in mean:
                    emp = np.mean([d[key].mean(axis=0) for d in draws], axis=0)
                    np.testing.assert_allclose(emp, mean[key][0], rtol=0.08,
                                               atol=0.01 * np.max(mean[key][0]))
            if "alpha" in mean:
                emp = np.mean([grid.coefficient_draws(family, preset, 1, rng)["alpha"]
                               for _ in range(4000)])
                assert emp == pytest.approx(mean["alpha"], rel=0.05)


# ------------------------------------------------------------------ fixed (basis files)


def test_basis_file_round_trip_and_fixed_kind(tmp_path):
    N = 10
    n = (N + 1) ** 2
    P_nodes = sine_basis(N, 20)
    path = tmp_path / "sine.npz"
    meta = save_basis(path, P_nodes, meta={"kind": "sine", "family": None, "mesh": "square"})
    assert meta == {"kind": "sine", "family": None, "mesh": "square", "n": n, "r_max": 20,
                    "order": "node", "format": BASIS_FORMAT}
    P, back = load_basis(path)
    np.testing.assert_array_equal(P, P_nodes)
    assert back == meta
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sine.npz"]  # nothing else left
    perm = np.random.default_rng(1).permutation(n)
    A = grid_instance(N)
    A_dof = A[np.argsort(perm)][:, np.argsort(perm)]
    P_dof = coarse_basis("fixed", A_dof, r=7, node_order=perm, basis_file=path)
    np.testing.assert_array_equal(P_dof[perm], P_nodes[:, :7])


def test_basis_file_mismatch_is_refused_in_one_line(tmp_path):
    path = tmp_path / "b.npz"
    save_basis(path, sine_basis(10, 20))
    A = grid_instance(10)
    order = np.arange(A.shape[0])
    cases = [
        (grid_instance(8), np.arange(81), {}, r"b.npz: built for n = 121, but A has n = 81"),
        (A, order, {"r": 21}, r"b.npz: holds r_max = 20 columns, asked for r = 21"),
        (A, None, {}, "fixed needs the node order"),
        (A, order, {"basis_file": None}, "fixed needs a basis file .option nlss_basis"),
        (A, order, {"basis_file": tmp_path / "none.npz"}, "none.npz: not found"),
    ]
    for A_, order_, kw, match in cases:
        kw = {"r": 5, "basis_file": path, **kw}
        with pytest.raises(ValueError, match=match) as err:
            coarse_basis("fixed", A_, node_order=order_, **kw)
        assert "\n" not in str(err.value)


def test_damaged_basis_files(tmp_path):
    good = tmp_path / "good.npz"
    save_basis(good, np.eye(6)[:, :3])
    raw = good.read_bytes()
    cases = {
        "trunc.npz": (raw[: len(raw) // 2], "unreadable or truncated|not a basis file"),
        "text.npz": (b"hello", "unreadable or truncated|not a basis file"),
    }
    for name, (data, match) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=rf"basis file .*{name}: ({match})"):
            load_basis(tmp_path / name)
    np.savez(tmp_path / "other.npz", X=np.ones(3))
    with pytest.raises(ValueError, match=r"not a basis file \(members \['X'\]"):
        load_basis(tmp_path / "other.npz")
    meta = {"format": "something/1", "n": 2, "r_max": 1, "order": "node"}
    np.savez(tmp_path / "fmt.npz", P=np.ones((2, 1)), meta=np.array(json.dumps(meta)))
    with pytest.raises(ValueError, match="format 'something/1'"):
        load_basis(tmp_path / "fmt.npz")
    meta["format"] = BASIS_FORMAT
    np.savez(tmp_path / "nan.npz", P=np.full((2, 1), np.nan), meta=np.array(json.dumps(meta)))
    with pytest.raises(ValueError, match="NaN or Inf"):
        load_basis(tmp_path / "nan.npz")
    np.savez(tmp_path / "shape.npz", P=np.ones((3, 1)), meta=np.array(json.dumps(meta)))
    with pytest.raises(ValueError, match=r"P of shape \(3, 1\) .* n = 2, r_max = 1"):
        load_basis(tmp_path / "shape.npz")
    with pytest.raises(ValueError, match="not a file"):
        load_basis(tmp_path)


def test_save_basis_refusals(tmp_path):
    path = tmp_path / "b.npz"
    with pytest.raises(ValueError, match="r_max = 3 contradicts P of shape"):
        save_basis(path, np.ones((4, 2)), meta={"r_max": 3})
    with pytest.raises(ValueError, match="order 'node'"):
        save_basis(path, np.ones((4, 2)), meta={"order": "dof"})
    with pytest.raises(ValueError, match="plain JSON"):
        save_basis(path, np.ones((4, 2)), meta={"where": pathlib.Path("x")})
    with pytest.raises(ValueError, match="finite"):
        save_basis(path, np.full((4, 2), np.inf))
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ nlss (a model passed in)


class FakeModel:
    """Stands in for nn.inference.load_model(...): records what it was given."""

    def __init__(self, needs_A=False, result=None, error=None):
        self.needs_A = needs_A
        self.result, self.error = result, error
        self.calls = []

    def basis(self, S, r, *, node_order=None, A=None):
        self.calls.append({"S": S, "r": r, "node_order": node_order, "A": A})
        if self.error is not None:
            raise self.error
        return svd_basis(S, r) if self.result is None else self.result


def test_nlss_passes_s_order_and_a_to_the_model_and_times_it():
    A = grid_instance(8)
    n = A.shape[0]
    S = smoothed_vectors(A, 16, rng=0)
    order = np.random.default_rng(0).permutation(n)
    for needs_A in (False, True):
        model = FakeModel(needs_A=needs_A)
        timings = {}
        P = coarse_basis("nlss", A, r=6, S=S, model=model, node_order=order, timings=timings)
        np.testing.assert_array_equal(P, svd_basis(S, 6))
        (call,) = model.calls
        np.testing.assert_array_equal(call["S"], S)
        np.testing.assert_array_equal(call["node_order"], order)
        assert call["r"] == 6 and (call["A"] is not None) == needs_A
        assert set(timings) == {"gather", "model", "scatter"}
        assert all(v >= 0 for v in timings.values())


def test_nlss_refusals():
    A = grid_instance(6)
    S = smoothed_vectors(A, 8, rng=0)
    n = A.shape[0]
    cases = [
        ({"model": None}, "nlss needs model"),
        ({"model": FakeModel(error=ValueError("bad model input"))}, "bad model input"),
        ({"model": FakeModel(result=np.ones((n - 1, 4)))}, r"model's basis with n = 49 rows"),
        ({"model": FakeModel(result=np.full((n, 4), np.nan))}, "model's basis to have finite"),
        ({"model": FakeModel(), "S": None}, "nlss needs S"),
        ({"model": FakeModel(), "S": S[:-1]}, r"S with this rank's 49 rows of A"),
    ]
    for kw, match in cases:
        kw = {"S": S, **kw}
        with pytest.raises(ValueError, match=match):
            coarse_basis("nlss", A, r=4, **kw)


# ------------------------------------------------------------------ near-nullspace


def test_append_near_nullspace():
    rng = np.random.default_rng(0)
    n = 40
    P = np.linalg.qr(rng.standard_normal((n, 5)))[0]
    B = rng.standard_normal((n, 3))
    B[:, 2] = P[:, 0] - 2 * B[:, 0]  # in span(P, B[:, 0]): adds nothing new
    Q = append_near_nullspace(P, B)
    assert Q.shape == (n, 7)
    np.testing.assert_array_equal(Q[:, :5], P)  # P kept as it is
    np.testing.assert_allclose(Q.T @ Q, np.eye(7), atol=1e-12)
    np.testing.assert_allclose(projector(Q) @ B, B, atol=1e-10)  # B inside span(Q)
    np.testing.assert_array_equal(append_near_nullspace(P, P[:, :2] @ np.ones((2, 1))), P)


@pytest.mark.parametrize("kind", ["svd", "sine", "eig-ref", "eig"])
def test_dispatcher_appends_the_near_nullspace(kind):
    N = 8
    A = grid_instance(N)
    n = A.shape[0]
    S = smoothed_vectors(A, 16, rng=0)
    B = np.column_stack([np.ones(n), np.arange(n) / n])  # e.g. constant and linear modes
    P = coarse_basis(kind, A, r=6, S=S, node_order=np.arange(n), near_nullspace=B)
    base = coarse_basis(kind, A, r=6, S=S, node_order=np.arange(n))
    assert P.shape == (n, 8)
    np.testing.assert_allclose(P[:, :6], base, atol=1e-12)
    np.testing.assert_allclose(P.T @ P, np.eye(8), atol=1e-10)
    np.testing.assert_allclose(projector(P) @ B, B, atol=1e-9)
    with pytest.raises(ValueError, match=r"near_nullspace with this rank's 81 rows"):
        coarse_basis(kind, A, r=6, S=S, node_order=np.arange(n), near_nullspace=B[:-1])


# ------------------------------------------------------------------ the dispatcher


@pytest.mark.parametrize(
    ("kind", "kwargs", "match"),
    [
        ("magic", {}, r"Unrecognized coarse kind 'magic'; expected one of \('svd', 'sa'"),
        ("svd", {}, "svd needs S"),
        ("svd", {"S": np.ones((81, 4)), "r": 5}, r"r <= K = 4 \(columns of S\) for svd"),
        ("svd", {"S": np.ones((81, 4)) * 1j}, "expected a real S"),
        ("eig", {"r": 0}, "r >= 1"),
        ("eig", {"r": 49}, r"r < 49 \(unknowns that are not Dirichlet rows\) for eig,"),
        ("eig-ref", {"r": 60}, "r < 49 .* for eig-ref"),
        ("eig", {"A": "matrix"}, "A_local as a SciPy sparse matrix"),
        ("eig", {"A": sp.identity(81, format="csr") * 1j}, "expected a real A_local"),
        ("eig", {"A": sp.random(81, 80, density=0.1, random_state=0)}, "square A serially"),
        ("eig-ref", {"reference": sp.identity(80)}, "reference with 81 columns"),
    ],
)
def test_dispatcher_refusals(kind, kwargs, match):
    A = kwargs.pop("A", grid_instance(8))
    kwargs = {"r": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        coarse_basis(kind, A, **kwargs)


def test_every_kind_gives_a_working_two_grid():
    """Each kind's P in the paper's two-grid: PCG converges, and the eig oracle beats the
    10-sweep SVD (its rank-r space is the best one for the coarse solve)."""
    N = 16
    A = grid_instance(N, seed=4)
    n = A.shape[0]
    b = np.random.default_rng(0).standard_normal(n)
    S = smoothed_vectors(A, 32, rng=0)
    its = {}
    for kind in COARSE_KINDS:
        if kind in ("fixed", "nlss"):
            continue
        P = coarse_basis(kind, A, r=16, S=S, node_order=np.arange(n))
        its[kind] = pcg(A, b, TwoGrid(A, P), check=True)[1].iterations
    assert its["eig"] <= its["svd"]
    assert its["eig-ref"] <= its["svd"] and its["sine"] <= its["svd"]


# ------------------------------------------------------------------ MPI


@pytest.mark.mpi
@pytest.mark.parametrize("nprocs", [2, 3])
def test_distributed_rows_equal_serial_and_errors_are_collective(nprocs, tmp_path):
    proc = run_mpi(nprocs, ROOT / "tests" / "mpi" / "coarse_collective.py", str(tmp_path),
                   timeout=240)
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    report = json.loads(line)
    errors = report["errors"]
    assert len(errors) == nprocs
    for other in errors[1:]:
        assert other == errors[0]  # the same one line on every rank
    for case, err in errors[0].items():
        assert err is not None and "\n" not in err, case
    assert report["max_diff"] < 1e-9, report


def test_sa_amg_basis_refuses_what_it_cannot_use_in_one_line():
    import scipy.sparse.linalg as spla

    A = laplacian(6)
    with pytest.raises(ValueError, match="LinearOperator"):
        sa_amg_basis(spla.aslinearoperator(A))
    bad = A.copy().astype(float)
    bad.data[0] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        sa_amg_basis(bad)
    with pytest.raises(ValueError, match=r"expected an SPD A \(positive diagonal\), got A\[0, 0\]"):
        sa_amg_basis(-A)
