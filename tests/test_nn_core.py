"""Core of nlss_fenicsx.nn: losses against closed forms, the QR-headed MLP, checkpoints.

References are independent of the code under test: hand-computed values, exact SVDs,
dense NumPy two-grid operators, and the paper's Corollary 4.2 (the NLSS loss recovers the
leading left singular vectors in order, the subspace loss only their span).
"""

import os

import numpy as np
import pytest
import scipy.linalg as sla

torch = pytest.importorskip("torch")

from nlss_fenicsx.nn import (  # noqa: E402
    NLSSMLP,
    CheckpointError,
    MLPConfig,
    NLSSModel,
    captured_energy,
    nlss_loss,
    subspace_loss,
    twogrid_error_loss,
)
from nlss_fenicsx.nn.model import CHECKPOINT_FORMAT  # noqa: E402

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
    P12 = torch.eye(3, dtype=F64)[:, [0, 1]]
    P21 = torch.eye(3, dtype=F64)[:, [1, 0]]
    return S, P12, P21


def test_losses_hand_computed():
    S, P12, P21 = _tiny()
    # captured energy: (5 + 4) / 14 for either column order.
    assert float(captured_energy(P12, S)) == pytest.approx(9 / 14, abs=1e-15)
    assert float(captured_energy(P21, S)) == pytest.approx(9 / 14, abs=1e-15)
    # subspace loss: 1 - 9/14 = 5/14, order-blind.
    assert float(subspace_loss(P12, S)) == pytest.approx(5 / 14, abs=1e-15)
    assert float(subspace_loss(P21, S)) == pytest.approx(5 / 14, abs=1e-15)
    # NLSS, order (e1, e2): ((1 - 5/14) + (1 - 9/14)) / 2 = (9/14 + 5/14) / 2 = 1/2.
    assert float(nlss_loss(P12, S)) == pytest.approx(1 / 2, abs=1e-15)
    # NLSS, order (e2, e1): ((1 - 4/14) + (1 - 9/14)) / 2 = (10/14 + 5/14) / 2 = 15/28.
    assert float(nlss_loss(P21, S)) == pytest.approx(15 / 28, abs=1e-15)


def test_losses_batched_are_means_and_captured_energy_per_sample():
    S, P12, P21 = _tiny()
    P = torch.stack([P12, P21])
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
    S, P12, _ = _tiny()
    value = captured_energy(P12.numpy(), S.numpy())
    assert isinstance(value, float) and value == pytest.approx(9 / 14, abs=1e-15)
    batch = captured_energy(np.stack([P12.numpy()] * 3), np.stack([S.numpy()] * 3))
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


def test_twogrid_error_loss_exact_matches_numpy():
    A = _laplacian_2d(5)
    n = A.shape[0]
    P = np.random.default_rng(1).standard_normal((n, 6))
    ref = _twogrid_numpy(A, P, nu=2, omega=0.66)
    At, Pt = torch.from_numpy(A), torch.from_numpy(P)
    val = twogrid_error_loss(At, Pt, nu=2, omega=0.66)
    assert float(val) == pytest.approx(ref / n, rel=1e-12)
    raw = twogrid_error_loss(At, Pt, nu=2, omega=0.66, normalize=False)
    assert float(raw) == pytest.approx(ref, rel=1e-12)
    # An explicit smoother matrix gives the same value.
    SJ = np.linalg.matrix_power(np.eye(n) - 0.66 * A / np.diag(A)[:, None], 2)
    val_sj = twogrid_error_loss(At, Pt, torch.from_numpy(SJ))
    assert float(val_sj) == pytest.approx(ref / n, rel=1e-12)
    # Batched: mean over the batch (a sparse A is densified in exact mode).
    P2 = np.random.default_rng(2).standard_normal((n, 6))
    ref2 = _twogrid_numpy(A, P2, nu=2, omega=0.66)
    batch = twogrid_error_loss(At.to_sparse(), torch.from_numpy(np.stack([P, P2])), nu=2)
    assert float(batch) == pytest.approx((ref + ref2) / (2 * n), rel=1e-12)


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_twogrid_error_loss_hutchinson_is_unbiased():
    A = _laplacian_2d(5, seed=3)
    n = A.shape[0]
    P = torch.from_numpy(np.random.default_rng(4).standard_normal((n, 5)))
    exact = float(twogrid_error_loss(torch.from_numpy(A), P, nu=1))
    A_sparse = torch.from_numpy(A).to_sparse()
    g = torch.Generator().manual_seed(0)
    estimates = [
        float(twogrid_error_loss(A_sparse, P, probes=100, generator=g)) for _ in range(200)
    ]
    assert np.mean(estimates) == pytest.approx(exact, rel=0.03)
    assert np.std(estimates) > 0  # it is an estimate, not the exact value in disguise
    # CSR layout and dense A give the same estimate for the same probes.
    a = twogrid_error_loss(
        A_sparse.to_sparse_csr(), P, probes=50, generator=torch.Generator().manual_seed(9)
    )
    b = twogrid_error_loss(
        torch.from_numpy(A), P, probes=50, generator=torch.Generator().manual_seed(9)
    )
    assert float(a) == pytest.approx(float(b), rel=1e-12)


def test_twogrid_error_loss_gradients():
    A = _laplacian_2d(3)
    P = torch.from_numpy(np.random.default_rng(5).standard_normal((9, 3))).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda P: twogrid_error_loss(torch.from_numpy(A), P, nu=2), (P,)
    )
    loss = twogrid_error_loss(
        torch.from_numpy(A).to_sparse(), P, probes=8, generator=torch.Generator().manual_seed(0)
    )
    loss.backward()
    assert P.grad is not None and torch.isfinite(P.grad).all() and P.grad.abs().sum() > 0


# ------------------------------------------------------------------ model

CFG = MLPConfig(n=81, K=8, r_max=8, hidden=(32, 32))


def _net(seed=0):
    torch.manual_seed(seed)
    return NLSSMLP(CFG)


def _S(batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, CFG.n, CFG.K, generator=g)


def test_config_validation():
    with pytest.raises(ValueError, match="r_max=9, K=8"):
        MLPConfig(n=81, K=8, r_max=9)
    with pytest.raises(ValueError, match="K=100, n=81"):
        MLPConfig(n=81, K=100, r_max=8)
    with pytest.raises(ValueError, match="r_max"):
        MLPConfig(n=81, K=8, r_max=0)
    with pytest.raises(ValueError, match="Unrecognized activation"):
        MLPConfig(n=81, K=8, r_max=8, activation="swish")
    assert MLPConfig(n=81, K=8, r_max=8, hidden=[4, 5]).hidden == (4, 5)


def test_model_output_orthonormal_with_positive_R_diagonal():
    net = _net()
    S = _S()
    with torch.no_grad():
        P = net(S)
    assert P.shape == (3, CFG.n, CFG.r_max)
    eye = torch.eye(CFG.r_max).expand(3, -1, -1)
    torch.testing.assert_close(P.transpose(-1, -2) @ P, eye, atol=1e-5, rtol=0)
    assert net(S[0]).shape == (CFG.n, CFG.r_max)  # unbatched input
    # P is the Q of a QR of the head's output, the column-major (r_max, n) layout, with
    # diag(R) >= 0: R = P^T raw is upper triangular and P R reproduces raw.
    with torch.no_grad():
        x = S / S.norm(dim=1, keepdim=True) * CFG.n**0.5
        raw = net.head(net.body(x.reshape(3, -1))).reshape(3, CFG.r_max, CFG.n).mT
        R = P.mT @ raw
    torch.testing.assert_close(R, R.triu(), atol=1e-4, rtol=0)
    assert torch.all(torch.diagonal(R, dim1=-2, dim2=-1) > 0)
    torch.testing.assert_close(P @ R.triu(), raw, atol=1e-4, rtol=1e-4)


def test_model_truncation_is_exact_prefix():
    net = _net()
    S = _S()
    with torch.no_grad():
        full = net(S)
        for r in (1, 5, 8):
            torch.testing.assert_close(net(S, r=r), full[..., :r], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="r_max=8"):
        net(S, r=9)


def test_model_input_scaling_makes_column_scale_irrelevant():
    net = _net()
    S = _S()
    scales = torch.tensor([1e-3, 1.0, 7.0, 1e4, 2.0, 0.5, 3.0, 1e2])
    with torch.no_grad():
        torch.testing.assert_close(net(S * scales), net(S), atol=1e-5, rtol=0)


def test_model_he_init_and_parameter_count():
    net = _net()
    first = net.body[0]
    assert first.weight.std().item() == pytest.approx(np.sqrt(2 / (CFG.n * CFG.K)), rel=0.05)
    assert torch.count_nonzero(first.bias) == 0 and torch.count_nonzero(net.head.bias) == 0
    nin = CFG.n * CFG.K
    expected = (nin * 32 + 32 + 64) + (32 * 32 + 32 + 64) + (32 * CFG.n * 8 + CFG.n * 8)
    assert NLSSModel(CFG, net=net).num_parameters() == expected


def test_model_learns_a_fixed_S():
    # Gradients reach the weights through the QR head: overfitting one S raises the
    # captured energy of the rank-2 prefix towards the SVD optimum.
    net = _net()
    S = _S(batch=1, seed=2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    with torch.no_grad():
        before = float(nlss_loss(net(S), S))
    for _ in range(30):
        opt.zero_grad()
        loss = nlss_loss(net(S), S)
        loss.backward()
        opt.step()
    assert loss.item() < before - 0.05


def test_basis_maps_dof_order():
    model = NLSSModel(CFG, net=_net())
    rng = np.random.default_rng(0)
    grid_order = rng.permutation(CFG.n)  # grid node g lives at dof grid_order[g]
    S_grid = rng.standard_normal((CFG.n, CFG.K))
    S_dof = np.empty_like(S_grid)
    S_dof[grid_order] = S_grid
    P = model.basis(S_dof, 5, grid_order)
    with torch.no_grad():
        P_grid = model.net(torch.from_numpy(S_grid).float(), r=5).double().numpy()
    assert P.dtype == np.float64 and P.shape == (CFG.n, 5)
    np.testing.assert_array_equal(P[grid_order], P_grid)
    np.testing.assert_allclose(P.T @ P, np.eye(5), atol=1e-5)
    # Without grid_order dof order is taken as grid order.
    np.testing.assert_array_equal(model.basis(S_grid, 5), P_grid)


def test_basis_rejects_wrong_sizes():
    model = NLSSModel(CFG, net=_net())
    S = np.zeros((CFG.n, CFG.K))
    with pytest.raises(ValueError, match=r"n=81, K=8; got S of shape \(1089, 8\)"):
        model.basis(np.zeros((1089, 8)), 4)
    with pytest.raises(ValueError, match=r"n=81, K=8; got S of shape \(81, 72\)"):
        model.basis(np.zeros((81, 72)), 4)
    for r in (0, 9):
        with pytest.raises(ValueError, match="r_max=8"):
            model.basis(S, r)
    with pytest.raises(ValueError, match="permutation"):
        model.basis(S, 4, np.zeros(CFG.n, dtype=int))


# ------------------------------------------------------------------ checkpoints


def _trained_model():
    torch.manual_seed(0)
    model = NLSSModel(CFG, N=8, pde="diffusion", preset="code", loss="nlss", extra={"seed": 0})
    opt = torch.optim.Adam(model.net.parameters(), lr=1e-3)
    S = _S(batch=2)
    loss = nlss_loss(model.net(S), S)
    loss.backward()
    opt.step()
    return model, opt


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    model, opt = _trained_model()
    path = tmp_path / "model.pt"
    model.save(path, optimizer=opt, step=7, extra={"rng": np.int64(3)})
    assert os.listdir(tmp_path) == ["model.pt"]  # atomic: no temporary file left behind
    loaded = NLSSModel.load(path)
    state, state2 = model.net.state_dict(), loaded.net.state_dict()
    assert state.keys() == state2.keys()
    assert all(torch.equal(state[k], state2[k]) for k in state)
    expected_meta = {**model.metadata, "extra": {"seed": 0, "rng": 3}}
    assert loaded.metadata == expected_meta
    assert loaded.config == model.config and loaded.step == 7 and loaded.path == path
    assert model.metadata["extra"] == {"seed": 0}  # save(extra=...) does not mutate
    # The optimizer state resumes.
    opt2 = torch.optim.Adam(loaded.net.parameters(), lr=1e-3)
    opt2.load_state_dict(loaded.optimizer_state)
    S = np.random.default_rng(1).standard_normal((CFG.n, CFG.K))
    np.testing.assert_array_equal(loaded.basis(S, 8), model.basis(S, 8))
    # Overwriting an existing checkpoint is atomic as well.
    loaded.save(path)
    assert os.listdir(tmp_path) == ["model.pt"] and NLSSModel.load(path).step is None


def test_checkpoint_compatibility_errors(tmp_path):
    model, _ = _trained_model()
    path = model.save(tmp_path / "m.pt")
    loaded = NLSSModel.load(path)
    loaded.check_compatible(n=81, K=8, pde="diffusion")
    with pytest.raises(
        CheckpointError, match=r"m\.pt was trained for n=81; the problem has n=4225"
    ):
        loaded.check_compatible(n=4225, K=8)
    with pytest.raises(CheckpointError, match=r"K=8, pde='diffusion'.*K=72, pde='anisotropic'"):
        loaded.check_compatible(K=72, pde="anisotropic")
    with pytest.raises(ValueError, match=r"n=81, K=8; got S of shape \(100, 8\)"):
        loaded.basis(np.zeros((100, 8)), 2)


def test_checkpoint_unreadable_files(tmp_path):
    model, _ = _trained_model()
    path = model.save(tmp_path / "m.pt")
    data = path.read_bytes()

    missing = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match="nope.pt does not exist"):
        NLSSModel.load(missing)

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.pt is truncated or corrupt"):
        NLSSModel.load(truncated)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        NLSSModel.load(garbage)

    other = tmp_path / "other.pt"
    torch.save({"format": "something-else", "state_dict": {}}, other)
    with pytest.raises(CheckpointError, match="not an nlss_fenicsx model checkpoint"):
        NLSSModel.load(other)

    partial = tmp_path / "partial.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "format_version": 1}, partial)
    with pytest.raises(CheckpointError, match=r"lacks required entries \['state_dict', 'metad"):
        NLSSModel.load(partial)


def test_checkpoint_rejects_unsaveable_metadata_before_writing(tmp_path):
    model, _ = _trained_model()
    with pytest.raises(TypeError, match="unsupported type object"):
        model.save(tmp_path / "m.pt", extra={"bad": object()})
    assert os.listdir(tmp_path) == []
