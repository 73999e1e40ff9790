"""Property-based tests (hypothesis) on small random inputs.

Already in test_twogrid_core.py: TwoGrid is SPD for random diagonally dominant SPD
matrices with the default nu=5, omega=0.66 and a random full-rank P
(test_property_twogrid_is_spd), and svd_basis is orthonormal (test_property_svd_basis_
orthonormal). Added here: TwoGrid is SPD for general (not diagonally dominant) SPD
matrices with random symmetric sweep counts and any omega inside the smoother's
convergence bound; svd_basis is nested and optimal (its captured energy is the sum of the
leading squared singular values, at least that of any other orthonormal basis); captured
energy lies in [0, 1] and never decreases along a nested basis.
"""

import numpy as np
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nlss_fenicsx.coarse import svd_basis
from nlss_fenicsx.nn.losses import captured_energy
from nlss_fenicsx.twogrid import TwoGrid

SETTINGS = settings(max_examples=25, deadline=None)
SEEDS = st.integers(0, 2**32 - 1)


def random_spd(n: int, rng: np.random.Generator, decades: float) -> np.ndarray:
    """Q diag(lambda) Q^T with eigenvalues spread over ``decades``: SPD, not diagonally
    dominant in general (its diagonal is positive, as for any SPD matrix)."""
    Q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    lam = np.logspace(0, -decades, n) * rng.uniform(0.5, 2.0)
    A = (Q * lam) @ Q.T
    return 0.5 * (A + A.T)


def random_S(n, K, rng, decades):
    return rng.standard_normal((n, K)) * np.logspace(0, -decades, K)


@SETTINGS
@given(n=st.integers(4, 24), r_frac=st.floats(0.0, 1.0), nu=st.integers(0, 5),
       w_frac=st.floats(0.05, 0.95), decades=st.floats(0.0, 4.0), seed=SEEDS)
def test_twogrid_spd_for_general_spd_matrices(n, r_frac, nu, w_frac, decades, seed):
    rng = np.random.default_rng(seed)
    A = random_spd(n, rng, decades)
    # Damped Jacobi is A-norm convergent for omega < 2 / lambda_max(D^-1 A).
    d = np.diag(A)
    lam_max = np.linalg.eigvalsh(A / np.sqrt(np.outer(d, d))).max()
    omega = w_frac * 2.0 / lam_max
    r = 1 + int(r_frac * (n - 1))
    P = np.linalg.qr(rng.standard_normal((n, r)))[0]
    B = TwoGrid(sp.csr_matrix(A), P, nu_pre=nu, nu_post=nu, omega=omega).as_dense()
    scale = np.linalg.norm(B, 2)
    assert np.linalg.norm(B - B.T, 2) <= 1e-9 * scale
    if nu == 0:  # no smoothing: B = P Ac^-1 P^T, positive semi-definite of rank r
        ev = np.linalg.eigvalsh(0.5 * (B + B.T))
        assert ev.min() >= -1e-9 * scale and np.sum(ev > 1e-9 * scale) == r
    else:
        assert np.linalg.eigvalsh(0.5 * (B + B.T)).min() > 0


@SETTINGS
@given(n=st.integers(1, 40), K=st.integers(1, 16), r_frac=st.floats(0.0, 1.0),
       decades=st.floats(0.0, 6.0), seed=SEEDS)
def test_svd_basis_is_nested_and_optimal(n, K, r_frac, decades, seed):
    rng = np.random.default_rng(seed)
    S = random_S(n, K, rng, decades)
    R = min(n, K)
    r = 1 + int(r_frac * (R - 1))
    full = svd_basis(S, R)
    P = svd_basis(S, r)
    np.testing.assert_array_equal(P, full[:, :r])  # the rank-r basis is a prefix
    sig2 = np.linalg.svd(S, compute_uv=False) ** 2
    e = captured_energy(P, S)
    assert abs(e - sig2[:r].sum() / sig2.sum()) <= 1e-10
    Q = np.linalg.qr(rng.standard_normal((n, r)))[0]  # any other orthonormal basis
    assert captured_energy(Q, S) <= e + 1e-10


@SETTINGS
@given(n=st.integers(1, 40), K=st.integers(1, 16), k_frac=st.floats(0.0, 1.0),
       decades=st.floats(0.0, 6.0), basis=st.sampled_from(["svd", "random"]), seed=SEEDS)
def test_captured_energy_in_unit_interval_and_monotone_in_rank(n, K, k_frac, decades, basis,
                                                                seed):
    rng = np.random.default_rng(seed)
    S = random_S(n, K, rng, decades)
    if basis == "svd":
        P = svd_basis(S, min(n, K))
    else:
        P = np.linalg.qr(rng.standard_normal((n, 1 + int(k_frac * (n - 1)))))[0]
    k = P.shape[1]
    energies = np.array([captured_energy(P[:, :r], S) for r in range(1, k + 1)])
    assert np.all(energies >= -1e-12) and np.all(energies <= 1 + 1e-12)
    assert np.all(np.diff(energies) >= -1e-12)
    if k == n:  # a complete orthonormal basis captures everything
        assert abs(energies[-1] - 1.0) <= 1e-10
    # The torch route (float64, batched) gives the same numbers.
    Pt = torch.from_numpy(P)[None]
    St = torch.from_numpy(S)[None]
    tor = torch.stack([captured_energy(Pt[:, :, :r], St)[0] for r in range(1, k + 1)])
    np.testing.assert_allclose(tor.numpy(), energies, rtol=0, atol=1e-12)
