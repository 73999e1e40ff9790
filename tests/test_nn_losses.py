"""nn/losses.py: the NLSS and subspace losses against closed forms and the paper's
Corollary 4.2 (exact SVD), the two-grid loss against a dense NumPy operator, gradients
against finite differences."""

import numpy as np
import pytest
import scipy.linalg as sla

torch = pytest.importorskip("torch")

from nlss_fenicsx.nn.losses import (  # noqa: E402
    captured_energy,
    nlss_loss,
    subspace_loss,
    twogrid_loss,
)

F64 = torch.float64


def _svd_matrix(n=30, sigma=(10.0, 8.0, 6.5, 5.0, 4.0, 3.0, 2.0, 1.5, 1.0, 0.5), seed=0):
    """S = U diag(sigma) V^T with known, well separated singular values."""
    g = torch.Generator().manual_seed(seed)
    K = len(sigma)
    U, _ = torch.linalg.qr(torch.randn(n, K, dtype=F64, generator=g))
    V, _ = torch.linalg.qr(torch.randn(K, K, dtype=F64, generator=g))
    sig = torch.tensor(sigma, dtype=F64)
    return (U * sig) @ V.T, U, sig


def _fit(loss_fn, S, k, seed=1):
    """Minimise loss_fn(qr(X), S) over a free n x k matrix X with L-BFGS."""
    torch.manual_seed(seed)
    X = torch.randn(S.shape[0], k, dtype=F64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [X],
        lr=1.0,
        max_iter=500,
        history_size=20,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = loss_fn(torch.linalg.qr(X)[0], S)
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    return torch.linalg.qr(X.detach())[0]


# ------------------------------------------------------------------ Corollary 4.2


def test_nlss_loss_recovers_ordered_singular_vectors():
    S, U, sig = _svd_matrix()
    k = 5
    P = _fit(nlss_loss, S, k)
    cos = (P * U[:, :k]).sum(dim=0).abs()
    assert torch.all(cos > 0.99), cos
    # The minimum value is the closed form (1/k) sum_l (1 - sum_{j<=l} s_j^2 / sum s^2).
    e = sig**2 / (sig**2).sum()
    expected = (1 - e[:k].cumsum(0)).mean()
    assert float(nlss_loss(P, S)) == pytest.approx(float(expected), rel=1e-7)


def test_subspace_loss_recovers_span_but_not_order():
    S, U, _ = _svd_matrix()
    k = 5
    P = _fit(subspace_loss, S, k)
    cos_angles = np.cos(sla.subspace_angles(P.numpy(), U[:, :k].numpy()))
    assert np.all(cos_angles > 0.99), cos_angles
    # The loss is blind to rotations inside the span: from this seed the columns end up
    # mixed, which is exactly what Eq. (4) is designed to prevent.
    cos = (P * U[:, :k]).sum(dim=0).abs()
    assert not torch.all(cos > 0.99), cos


# ------------------------------------------------------------------ loss values


def _tiny():
    # S = [[1, 2], [2, 0], [2, 1]]: ||S||_F^2 = 1+4+4+0+4+1 = 14.
    # Row energies: ||e1^T S||^2 = 1+4 = 5, ||e2^T S||^2 = 4+0 = 4.
    S = torch.tensor([[1.0, 2.0], [2.0, 0.0], [2.0, 1.0]], dtype=F64)
    P_12 = torch.eye(3, dtype=F64)[:, [0, 1]]
    P_21 = torch.eye(3, dtype=F64)[:, [1, 0]]
    return S, P_12, P_21


def test_losses_hand_computed():
    S, P_12, P_21 = _tiny()
    # captured energy: (5 + 4) / 14 for either column order.
    assert float(captured_energy(P_12, S)) == pytest.approx(9 / 14, abs=1e-15)
    assert float(captured_energy(P_21, S)) == pytest.approx(9 / 14, abs=1e-15)
    # subspace loss: 1 - 9/14 = 5/14, order-blind.
    assert float(subspace_loss(P_12, S)) == pytest.approx(5 / 14, abs=1e-15)
    assert float(subspace_loss(P_21, S)) == pytest.approx(5 / 14, abs=1e-15)
    # NLSS, order (e1, e2): ((1 - 5/14) + (1 - 9/14)) / 2 = (9/14 + 5/14) / 2 = 1/2.
    assert float(nlss_loss(P_12, S)) == pytest.approx(1 / 2, abs=1e-15)
    # NLSS, order (e2, e1): ((1 - 4/14) + (1 - 9/14)) / 2 = (10/14 + 5/14) / 2 = 15/28.
    assert float(nlss_loss(P_21, S)) == pytest.approx(15 / 28, abs=1e-15)


def test_losses_batched_are_means_and_captured_energy_per_sample():
    S, P_12, P_21 = _tiny()
    P = torch.stack([P_12, P_21])
    Sb = torch.stack([S, 3.0 * S])  # the losses are invariant to the scale of S
    assert float(nlss_loss(P, Sb)) == pytest.approx((1 / 2 + 15 / 28) / 2, abs=1e-15)
    assert float(subspace_loss(P, Sb)) == pytest.approx(5 / 14, abs=1e-15)
    ce = captured_energy(P, Sb)
    assert ce.shape == (2,)
    torch.testing.assert_close(ce, torch.full((2,), 9 / 14, dtype=F64))
    # One S shared by a batch of bases broadcasts.
    assert float(nlss_loss(P, S)) == pytest.approx((1 / 2 + 15 / 28) / 2, abs=1e-15)


def test_captured_energy_range_and_full_rank():
    g = torch.Generator().manual_seed(3)
    S = torch.randn(4, 40, 10, dtype=F64, generator=g)
    P, _ = torch.linalg.qr(torch.randn(4, 40, 6, dtype=F64, generator=g))
    ce = captured_energy(P, S)
    assert torch.all((ce >= 0) & (ce <= 1))
    Q, _ = torch.linalg.qr(torch.randn(40, 40, dtype=F64, generator=g))  # square: all of R^n
    torch.testing.assert_close(captured_energy(Q, S), torch.ones(4, dtype=F64))
    U = torch.linalg.svd(S[0], full_matrices=False)[0]  # spans range(S[0])
    assert float(captured_energy(U, S[0])) == pytest.approx(1.0, abs=1e-12)
    assert float(subspace_loss(U, S[0])) == pytest.approx(0.0, abs=1e-12)


def test_captured_energy_accepts_numpy():
    S, P_12, _ = _tiny()
    value = captured_energy(P_12.numpy(), S.numpy())
    assert isinstance(value, float) and value == pytest.approx(9 / 14, abs=1e-15)
    batch = captured_energy(np.stack([P_12.numpy()] * 3), np.stack([S.numpy()] * 3))
    assert isinstance(batch, np.ndarray) and batch.shape == (3,)


def test_nlss_loss_at_svd_is_closed_form_and_below_random():
    S, U, sig = _svd_matrix(seed=4)
    k = 4
    e = sig**2 / (sig**2).sum()
    expected = float((1 - e[:k].cumsum(0)).mean())
    assert float(nlss_loss(U[:, :k], S)) == pytest.approx(expected, rel=1e-12)
    g = torch.Generator().manual_seed(5)
    for _ in range(5):
        P, _ = torch.linalg.qr(torch.randn(S.shape[0], k, dtype=F64, generator=g))
        assert float(nlss_loss(P, S)) > expected


def test_loss_gradients_match_finite_differences():
    g = torch.Generator().manual_seed(6)
    S = torch.randn(2, 7, 4, dtype=F64, generator=g)
    P = torch.randn(2, 7, 3, dtype=F64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda P: nlss_loss(P, S), (P,))
    assert torch.autograd.gradcheck(lambda P: subspace_loss(P, S), (P,))


def test_losses_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="same number of rows"):
        nlss_loss(torch.zeros(5, 2), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="expected P"):
        subspace_loss(torch.zeros(5), torch.zeros(5, 3))


# ------------------------------------------------------------------ two-grid loss


def _laplacian_2d(m, seed=0):
    """5-point Laplacian on an m x m grid plus a random positive diagonal shift (SPD)."""
    T = 2 * np.eye(m) - np.eye(m, k=1) - np.eye(m, k=-1)
    A = np.kron(T, np.eye(m)) + np.kron(np.eye(m), T)
    return A + np.diag(np.random.default_rng(seed).uniform(0.0, 0.5, m * m))


def _twogrid_numpy(A, P, nu, omega):
    n = A.shape[0]
    SJ = np.linalg.matrix_power(np.eye(n) - omega * A / np.diag(A)[:, None], nu)
    C = np.eye(n) - P @ np.linalg.solve(P.T @ A @ P, P.T @ A)
    M = SJ @ C @ SJ
    return np.sum(M**2)


def test_twogrid_loss_exact_matches_numpy():
    A = _laplacian_2d(5)
    n = A.shape[0]
    P = np.random.default_rng(1).standard_normal((n, 6))
    ref = _twogrid_numpy(A, P, nu=2, omega=0.66)
    At, Pt = torch.from_numpy(A), torch.from_numpy(P)
    val = twogrid_loss(At, Pt, nu=2, omega=0.66)
    assert float(val) == pytest.approx(ref / n, rel=1e-12)
    raw = twogrid_loss(At, Pt, nu=2, omega=0.66, normalize=False)
    assert float(raw) == pytest.approx(ref, rel=1e-12)
    # nu = 0: no smoothing, E = C, a projector of rank n - r: ||C||_F^2 >= n - r.
    C = twogrid_loss(At, Pt, nu=0, normalize=False)
    assert float(C) == pytest.approx(_twogrid_numpy(A, P, nu=0, omega=0.66), rel=1e-12)
    assert float(C) >= n - 6 - 1e-9
    # Batched: mean over the batch (a sparse A is densified in exact mode).
    P2 = np.random.default_rng(2).standard_normal((n, 6))
    ref2 = _twogrid_numpy(A, P2, nu=2, omega=0.66)
    batch = twogrid_loss(At.to_sparse(), torch.from_numpy(np.stack([P, P2])), nu=2)
    assert float(batch) == pytest.approx((ref + ref2) / (2 * n), rel=1e-12)


def test_twogrid_loss_rejects_bad_arguments():
    A = torch.eye(4, dtype=F64)
    with pytest.raises(ValueError, match="expected P of shape"):
        twogrid_loss(A, torch.zeros(4, dtype=F64))
    with pytest.raises(ValueError, match="nu must be >= 0"):
        twogrid_loss(A, torch.eye(4, dtype=F64)[:, :2], nu=-1)
    with pytest.raises(ValueError, match="probes must be a positive integer"):
        twogrid_loss(A, torch.eye(4, dtype=F64)[:, :2], probes=0)
    with pytest.raises(ValueError, match="does not match P"):
        twogrid_loss(torch.eye(5, dtype=F64), torch.eye(4, dtype=F64)[:, :2])


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_twogrid_loss_hutchinson_is_unbiased():
    A = _laplacian_2d(5, seed=3)
    n = A.shape[0]
    P = torch.from_numpy(np.random.default_rng(4).standard_normal((n, 5)))
    exact = float(twogrid_loss(torch.from_numpy(A), P, nu=1))
    A_sparse = torch.from_numpy(A).to_sparse()
    g = torch.Generator().manual_seed(0)
    estimates = [
        float(twogrid_loss(A_sparse, P, probes=100, generator=g)) for _ in range(200)
    ]
    assert np.mean(estimates) == pytest.approx(exact, rel=0.03)
    assert np.std(estimates) > 0  # it is an estimate, not the exact value in disguise
    # CSR layout and dense A give the same estimate for the same probes.
    a = twogrid_loss(
        A_sparse.to_sparse_csr(), P, probes=50, generator=torch.Generator().manual_seed(9)
    )
    b = twogrid_loss(
        torch.from_numpy(A), P, probes=50, generator=torch.Generator().manual_seed(9)
    )
    assert float(a) == pytest.approx(float(b), rel=1e-12)


def test_twogrid_loss_gradients():
    A = _laplacian_2d(3)
    P = torch.from_numpy(np.random.default_rng(5).standard_normal((9, 3))).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda P: twogrid_loss(torch.from_numpy(A), P, nu=2), (P,)
    )
    loss = twogrid_loss(
        torch.from_numpy(A).to_sparse(), P, probes=8, generator=torch.Generator().manual_seed(0)
    )
    loss.backward()
    assert P.grad is not None and torch.isfinite(P.grad).all() and P.grad.abs().sum() > 0
