"""nn/model.py: the paper's MLP with QR head (orthonormal output, positive diag(R), nested
ranks, scale-free input, He initialisation) and NLSSModel.basis in dof order."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nlss_fenicsx.nn.losses import nlss_loss  # noqa: E402
from nlss_fenicsx.nn.model import (  # noqa: E402
    NLSSMLP,
    MLPConfig,
    NLSSModel,
    input_features,
    qr_positive,
)

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
    with pytest.raises(ValueError, match="hidden widths must be positive"):
        MLPConfig(n=81, K=8, r_max=8, hidden=(4, 0))
    with pytest.raises(TypeError):
        MLPConfig(n=81, K=8, r_max=8, activation="gelu")  # GELU only: no activation field
    assert MLPConfig(n=81, K=8, r_max=8, hidden=[4, 5]).hidden == (4, 5)


def test_model_output_orthonormal_with_positive_diagonal_of_r():
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
    assert CFG.num_parameters() == expected  # counted without building the network
    assert MLPConfig(n=81, K=8, r_max=8, hidden=(5,), layernorm=False).num_parameters() == \
        sum(p.numel() for p in NLSSMLP(MLPConfig(n=81, K=8, r_max=8, hidden=(5,),
                                                 layernorm=False)).parameters())


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
    P = model.basis(S_dof, 5, grid_order)  # node_order: node i lives at dof grid_order[i]
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
    bad = S.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        model.basis(bad, 4)


def test_qr_positive_is_the_unique_qr_with_positive_diagonal():
    g = torch.Generator().manual_seed(4)
    X = torch.randn(2, 30, 5, dtype=torch.float64, generator=g)
    Q = qr_positive(X)
    R = Q.mT @ X
    torch.testing.assert_close(Q.mT @ Q, torch.eye(5, dtype=torch.float64).expand(2, 5, 5))
    torch.testing.assert_close(R, R.triu())
    assert torch.all(torch.diagonal(R, dim1=-2, dim2=-1) > 0)
    # Unique: flipping the sign of a column of X flips that column of Q only.
    flipped = X.clone()
    flipped[..., 2] *= -1
    Qf = qr_positive(flipped)
    torch.testing.assert_close(Qf[..., 2], -Q[..., 2])
    torch.testing.assert_close(Qf[..., [0, 1, 3, 4]], Q[..., [0, 1, 3, 4]])


def test_input_features_scale_columns_to_sqrt_n_and_keep_zero_columns():
    S = torch.tensor([[3.0, 0.0], [4.0, 0.0]])
    x = input_features(S)
    assert x.shape == (1, 4)
    np.testing.assert_allclose(x.numpy().reshape(2, 2), [[0.6 * 2**0.5, 0], [0.8 * 2**0.5, 0]],
                               rtol=1e-6)
