"""nlss_fenicsx.krylov: PCG against spsolve, its history against the true residual, and
its refusals (indefinite operators, bad tolerances, complex or empty input).
"""

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from nlss_fenicsx.coarse import svd_basis
from nlss_fenicsx.krylov import ConvergenceError, IndefiniteError, PCGInfo, pcg
from nlss_fenicsx.smoothing import smoothed_vectors
from nlss_fenicsx.twogrid import TwoGrid
from tests.core_matrices import laplacian


def _svd_basis(A, r):
    return svd_basis(smoothed_vectors(A, 2 * r, rng=0), r)


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
    tg = TwoGrid(A, _svd_basis(A, 10))
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
    tg = TwoGrid(A, _svd_basis(A, 10))
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
        ({"rtol": 0.0}, "0 < rtol < 1, got rtol = 0.0"),
        ({"rtol": -1e-6}, "0 < rtol < 1"),
        ({"rtol": 1.0}, "0 < rtol < 1, got rtol = 1.0"),
        ({"rtol": 5.0}, "0 < rtol < 1"),
        ({"rtol": np.nan}, "0 < rtol < 1"),
        ({"rtol": "1e-6"}, "rtol to be a number"),
        ({"b": np.ones(16) * 1j}, "expected a real b, got dtype complex128"),
        ({"x0": np.ones(16) * 1j}, "expected a real x0"),
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


def test_pcg_refuses_complex_and_empty_systems():
    A = laplacian(4)
    with pytest.raises(ValueError, match="expected a real A, got dtype complex128"):
        pcg(A * (1 + 1j), np.ones(16))
    with pytest.raises(ValueError, match="expected a real A"):
        pcg(spla.aslinearoperator(A.astype(complex)), np.ones(16))
    with pytest.raises(ValueError, match=r"non-empty system, got A of shape \(0, 0\)"):
        pcg(sp.csr_matrix((0, 0)), np.zeros(0))
    # A LinearOperator is a valid A for PCG (only products are needed).
    x, info = pcg(spla.aslinearoperator(A), np.ones(16), rtol=1e-10)
    assert info.converged
    np.testing.assert_allclose(A @ x, 1.0, atol=1e-8)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_pcg_refuses_a_nonfinite_matrix(value):
    A = laplacian(4).tolil()
    A[2, 3] = A[3, 2] = value
    for M in (A.tocsr(), A.toarray()):  # sparse and dense A
        with pytest.raises(ValueError, match="expected A to have finite entries, got NaN or Inf"):
            pcg(M, np.ones(16))
