"""nlss_fenicsx.smoothing: S against a column-by-column dense Jacobi loop with the authors'
per-sweep normalisation, the Box-Muller start against N(0, 1), and bad input.
"""

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy import stats

from nlss_fenicsx import grid
from nlss_fenicsx.relaxation import jacobi_weight
from nlss_fenicsx.smoothing import gaussian_start, normalize_columns, smoothed_vectors
from tests.core_matrices import lambda_max_dinv_a, laplacian, vector_laplacian


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

    s32 = smoothed_vectors(A, 3, rng=2, dtype=np.float32)
    assert s32.dtype == np.float32
    np.testing.assert_allclose(s32, smoothed_vectors(A, 3, rng=2), atol=1e-5)

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
        (sp.diags([1.0, 1.0, 1.0, np.inf]), {}, "expected A to have finite entries"),
        (sp.identity(4) * (1 + 1j), {}, "expected a real A, got dtype complex128"),
        (sp.csr_matrix((0, 0)), {}, r"non-empty system, got A of shape \(0, 0\)"),
        (sp.identity(4), {"omega": "fast"}, "omega = 'auto' or a finite omega > 0"),
        (sp.identity(4), {"omega": True}, "omega = 'auto' or a finite omega > 0"),
        (sp.identity(4), {"S0": np.ones((4, 2)) * 1j}, "expected a real S0"),
        (sp.identity(4), {"S0": np.full((4, 2), np.nan)}, "S0 to have finite entries"),
        (sp.identity(4), {"S0": np.ones((3, 2))}, r"S0 of shape \(4, 2\)"),
        (sp.identity(4) * 2.0, {"K": 5}, r"expected K <= n = 4 \(rows of A\), got K = 5"),
    ],
)
def test_smoothed_vectors_validation(A, kwargs, match):
    kwargs = {"K": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        smoothed_vectors(A, **kwargs)


def _reference_smoothing(A, S0, sweeps, omega=0.66):
    """The authors' order of operations: normalise every column after every sweep."""
    S = S0.copy()
    dinv = omega / A.diagonal()
    for _ in range(sweeps):
        S = S - dinv[:, None] * (A @ S)
        S = S / np.linalg.norm(S, axis=0)
    return S


def _grid_instance(N=10, seed=3):
    pts = grid.jittered_points(N, seed=seed)
    tri = grid.delaunay_triangles(pts)
    coef = grid.coefficient_draws("diffusion", "default", len(tri), seed)
    return grid.assemble_p1("diffusion", pts, tri, coef, boundary=grid.boundary_mask(N)).A


@pytest.mark.parametrize("sweeps", [1, 7, 8, 10, 30])
def test_deferred_normalisation_equals_per_sweep(sweeps):
    A = _grid_instance()
    S0 = np.random.default_rng(1).standard_normal((A.shape[0], 6))
    ref = _reference_smoothing(A, S0, sweeps)
    np.testing.assert_allclose(smoothed_vectors(A, 6, sweeps=sweeps, S0=S0), ref,
                               rtol=0, atol=1e-12)
    s32 = smoothed_vectors(A, 6, sweeps=sweeps, S0=S0, dtype=np.float32)
    assert s32.dtype == np.float32
    np.testing.assert_allclose(s32, ref, rtol=0, atol=2e-5)


def test_gaussian_start_is_standard_normal_and_reproducible():
    Z = gaussian_start(3, 4225, 72)
    assert Z.shape == (4225, 72) and Z.dtype == np.float32 and Z.flags.c_contiguous
    np.testing.assert_array_equal(Z, gaussian_start(np.random.default_rng(3), 4225, 72))
    assert not np.array_equal(Z, gaussian_start(4, 4225, 72))
    z = Z.ravel().astype(np.float64)
    assert abs(z.mean()) < 0.01 and abs(z.var() - 1.0) < 0.01
    assert abs(stats.skew(z)) < 0.02 and abs(stats.kurtosis(z)) < 0.05
    # Kolmogorov-Smirnov against N(0, 1) on all 304,200 draws (fixed seed).
    assert stats.kstest(z, "norm").pvalue > 0.01
    # The cosine and sine halves of Box-Muller are independent: no correlation.
    half = z.size // 2
    assert abs(np.corrcoef(z[:half], z[half:2 * half])[0, 1]) < 0.01
    assert gaussian_start(0, 3, 5).shape == (3, 5)  # odd n*K


def test_auto_weight_equals_the_paper_weight_where_safe_and_is_safe_elsewhere():
    A = _grid_instance()
    np.testing.assert_array_equal(smoothed_vectors(A, 4, rng=1, omega="auto"),
                                  smoothed_vectors(A, 4, rng=1))
    H = vector_laplacian(20, 0.3)  # 0.66 diverges: S would fill with the top mode
    S_paper = smoothed_vectors(H, 4, rng=0, sweeps=60)
    S_auto = smoothed_vectors(H, 4, rng=0, sweeps=60, omega="auto")

    def rayleigh(S):  # energy per column: small for smooth vectors
        return float(np.mean(np.einsum("ij,ij->j", S, H @ S)))

    assert rayleigh(S_auto) < 0.2 * rayleigh(S_paper)
    assert 0.66 * lambda_max_dinv_a(H) > 2.0
    assert jacobi_weight("auto", lambda_max_dinv_a(H))[0] < 0.45


def test_divergent_weight_is_an_error_not_nan():
    with pytest.raises(ValueError, match=r"S are not finite after \d+ Jacobi sweeps with "
                                         r"omega = 1e\+300 .*use omega = 'auto'"):
        smoothed_vectors(laplacian(5), 3, omega=1e300, rng=0)
    with pytest.raises(ValueError, match="not finite"):
        smoothed_vectors(laplacian(5), 3, omega=1e30, rng=0, dtype=np.float32)
    with pytest.raises(ValueError, match="finite columns"):
        normalize_columns(np.full((3, 2), np.inf))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nonfinite_A(value):
    A = laplacian(5).tolil()
    A[3, 4] = A[4, 3] = value
    with pytest.raises(ValueError, match="expected A to have finite entries, got NaN or Inf"):
        smoothed_vectors(A.tocsr(), 4, rng=0)
    with pytest.raises(ValueError, match="expected A to have finite entries"):
        smoothed_vectors(A.toarray(), 4, rng=0)  # dense A too


def test_linear_operator_refused():
    with pytest.raises(ValueError, match="got a SciPy LinearOperator"):
        smoothed_vectors(spla.aslinearoperator(laplacian(4)), 2)


def test_complex_omega_and_negative_seed_are_one_line():
    A = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(20, 20), format="csr")
    with pytest.raises(ValueError, match=r"expected omega = 'auto' or a finite omega > 0, got "
                                         r"omega = \(0.5\+1j\)"):
        smoothed_vectors(A, 2, omega=0.5 + 1j)
    with pytest.raises(ValueError, match="expected rng to be a seed >= 0, a Generator or None, "
                                         "got -1"):
        smoothed_vectors(A, 2, rng=-1)
