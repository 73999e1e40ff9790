"""nn/int8.py and nn/calibration.py: every piece of the quantised backend keeps the
mathematics (Cholesky QR = Householder QR, the lean first layer = the truncated SVD, the
NumPy tail = the torch layers, the affine head exact on its subspace), and the calibration
keeps a lean copy only when the basis does not move."""

import warnings

import numpy as np
import pytest
import scipy.linalg as sla

torch = pytest.importorskip("torch")

from nlss_fenicsx.nn.calibration import calibrate  # noqa: E402
from nlss_fenicsx.nn.data import DataConfig, FreshSampler  # noqa: E402
from nlss_fenicsx.nn.int8 import (  # noqa: E402
    INT8_MIN_WEIGHTS,
    Int8MLP,
    NumpyTail,
    features_numpy,
    first_layer_basis,
    from_calibration,
    large_linears,
    low_rank_first_layer,
    orthonormal_rows,
)
from nlss_fenicsx.nn.model import input_features  # noqa: E402
from nlss_fenicsx.nn.train import TrainConfig, train  # noqa: E402
from nlss_fenicsx.twogrid import TwoGrid, pcg  # noqa: E402

DATA = DataConfig(N=12, K=16)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A small MLP (N=12, K=16, hidden 64-64) trained for 60 steps."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = TrainConfig(N=12, K=16, r_max=16, hidden=(64, 64), steps=60, n_eval=2,
                          eval_every=60, ckpt_every=60)
        return train(cfg, tmp_path_factory.mktemp("int8") / "m.pt", progress=False,
                     log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def held():
    """Held-out instances of the training distribution: (problem, S) pairs."""
    sampler = FreshSampler(DATA, seed=0)
    return [sampler.test_instance(100 + i) for i in range(12)]


@pytest.mark.parametrize("dtype, tol", [(np.float32, 5e-6), (np.float64, 1e-13)])
@pytest.mark.parametrize("cond", [1.5, 40.0, 2e3, 1e9])
def test_cholesky_qr_equals_householder_and_stays_orthonormal(dtype, tol, cond):
    rng = np.random.default_rng(int(cond))
    n, r = 700, 24
    U = np.linalg.qr(rng.standard_normal((n, r)))[0]
    V = np.linalg.qr(rng.standard_normal((r, r)))[0]
    X = (U * np.geomspace(1.0, 1.0 / cond, r)) @ V
    Qt = orthonormal_rows(np.ascontiguousarray(X.T, dtype=dtype))
    assert Qt.dtype == dtype and Qt.shape == (r, n)
    Q = Qt.T.astype(np.float64)
    np.testing.assert_allclose(Q.T @ Q, np.eye(r), atol=tol * 10)
    Qh, R = np.linalg.qr(X)
    Qh = Qh * np.sign(np.diag(R))
    if cond < 1e3:  # the factor itself is well determined only for moderate cond(X)
        np.testing.assert_allclose(Q, Qh, atol=tol * cond * 10)
    resid = np.linalg.norm(X - Q @ (Q.T @ X)) / np.linalg.norm(X)  # same span as X
    assert resid < (1e-5 if dtype == np.float32 else 1e-12)


def test_cholesky_qr_rank_deficient_falls_back_to_householder():
    X = np.random.default_rng(0).standard_normal((200, 6))
    X[:, 3] = X[:, 1]  # exactly rank 5: Cholesky of X^T X fails or is singular
    Q = orthonormal_rows(np.ascontiguousarray(X.T)).T
    assert np.all(np.isfinite(Q))
    np.testing.assert_allclose(Q.T @ Q, np.eye(6), atol=1e-10)


def test_low_rank_first_layer_is_the_truncated_svd():
    rng = np.random.default_rng(0)
    h, m = 16, 500
    U = np.linalg.qr(rng.standard_normal((h, h)))[0]
    V = np.linalg.qr(rng.standard_normal((m, h)))[0]
    sig = np.geomspace(10.0, 0.01, h)
    lin = torch.nn.Linear(m, h)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy((U * sig) @ V.T))
    basis = first_layer_basis(lin, energy=0.9)
    energy = np.cumsum(sig ** 2) / np.sum(sig ** 2)
    k = int(np.searchsorted(energy, 0.9) + 1)
    assert basis.shape == (h, k)
    lean = low_rank_first_layer(lin, basis)
    assert lean[0].out_features == k and lean[1].in_features == k
    Wk = (U[:, :k] * sig[:k]) @ V[:, :k].T  # Eckart-Young: the best rank-k approximation
    W_lean = (lean[1].weight @ lean[0].weight).detach().double().numpy()
    np.testing.assert_allclose(W_lean, Wk, atol=1e-5)
    torch.testing.assert_close(lean[1].bias, lin.bias)
    assert first_layer_basis(lin, energy=0.999999) is None  # no gain: rank > h/2


def test_numpy_tail_equals_the_torch_layers():
    torch.manual_seed(3)
    body = torch.nn.Sequential(
        torch.nn.Linear(40, 24), torch.nn.LayerNorm(24), torch.nn.GELU(),
        torch.nn.Sequential(torch.nn.Linear(24, 16), torch.nn.GELU()),
        torch.nn.Linear(16, 12, bias=False), torch.nn.LayerNorm(12, elementwise_affine=False),
    ).eval()
    with torch.no_grad():
        body[1].weight.uniform_(0.5, 2.0)
        body[1].bias.uniform_(-1.0, 1.0)
    x = torch.randn(3, 40)
    prefix, tail = NumpyTail.split(body)
    assert len(prefix) == 0 and len(tail.steps) == 7
    with torch.no_grad():
        ref = body(x).numpy()
    got = tail(x.numpy())
    assert got.dtype == np.float32 and got.shape == (3, 12)
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6)
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch.ao announces its move to torchao
        warnings.simplefilter("ignore")
        q = quantize_dynamic(body, {"0"}, dtype=torch.qint8)  # the first layer int8
    prefix, tail = NumpyTail.split(q)
    assert len(prefix) == 1 and len(tail.steps) == 6
    with torch.no_grad():
        np.testing.assert_allclose(tail(prefix(x).numpy()), q(x).numpy(), rtol=0, atol=2e-6)
    odd = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU(approximate="tanh"))
    assert NumpyTail.split(odd) == (odd, None)  # a module it does not know: torch does all


def test_only_large_linears_are_quantised():
    side = int(np.sqrt(INT8_MIN_WEIGHTS))
    body = torch.nn.Sequential(torch.nn.Linear(side, side), torch.nn.GELU(),
                               torch.nn.Sequential(torch.nn.Linear(side, 8)),
                               torch.nn.Linear(8, 8))
    assert large_linears(body) == {"0"}


def test_int8_basis_maps_node_order_and_matches_the_features(model, held):
    q = Int8MLP(model.net)
    _, S = held[0]
    n = S.shape[0]
    order = np.random.default_rng(0).permutation(n)  # node i lives at dof order[i]
    S_dof = np.empty_like(S)
    S_dof[order] = S
    np.testing.assert_allclose(features_numpy(S), input_features(torch.from_numpy(S)).numpy(),
                               rtol=1e-6)
    P = q.basis(S_dof.astype(np.float64), 8, order)
    np.testing.assert_allclose(P[order], q.basis(S, 8), atol=1e-6)
    assert P.dtype == np.float64 and P.shape == (n, 8)
    np.testing.assert_allclose(P.T @ P, np.eye(8), atol=2e-6)
    P_f32 = q.basis(S_dof.astype(np.float64), 8, order, dtype=np.float32)
    assert P_f32.dtype == np.float32
    np.testing.assert_array_equal(P_f32.astype(np.float64), P)  # no second rounding


def test_affine_head_is_exact_on_its_subspace(model, held):
    """with_affine_head(mean, Q) applies the head to mean + Q Q^T (y - mean): with Q
    spanning R^h it is the head itself; with Q = [] the constant basis of its mean."""
    q = Int8MLP(model.net)
    n, r = model.config.n, 8
    S = held[1][1]
    y = torch.from_numpy(q.head_input(S))
    h = y.shape[1]
    mean = torch.randn(h, generator=torch.Generator().manual_seed(0))
    Q = torch.linalg.qr(torch.randn(h, h, generator=torch.Generator().manual_seed(1)))[0]
    W, b = model.net.head.weight.detach()[: r * n], model.net.head.bias.detach()[: r * n]
    x = torch.from_numpy(features_numpy(S))
    ref = (y @ W.T + b).numpy()
    tol = 1e-4 * float((y @ W.T).abs().max())
    full = q.with_affine_head(mean, Q)
    assert full.head_directions == h
    np.testing.assert_allclose(full.raw(x, r), ref, rtol=1e-4, atol=tol)
    const = q.with_affine_head(y[0], Q[:, :0])  # mean = this y: exact for this input
    np.testing.assert_allclose(const.raw(x, r), ref, rtol=1e-4, atol=tol)
    x2 = torch.from_numpy(features_numpy(held[2][1]))
    np.testing.assert_array_equal(const.raw(x2, r), const.raw(x, r))  # ignores its input
    assert q.head_directions is None  # the original is unchanged


def _angle(P, Q):
    return float(np.degrees(sla.subspace_angles(P, Q).max()))


def test_calibration_rejects_a_harmful_lean_copy_and_accepts_a_harmless_one(model, held):
    """A briefly trained small model: truncating its first layer turns the basis by tens of
    degrees, so the calibration keeps the full int8 copy. The same model with a first
    layer of rank 6 plus a tiny tail: rank 5 (80 % of the energy) is refused, rank 6 (90 %)
    drops only the tail and is kept; its basis stays within the bound and the PCG
    iterations do not change. (The bound is 3 degrees here: the int8 head alone turns this
    small model's basis by about 1 degree.)"""
    fit = [S for _, S in held[:2]]
    test = [S for _, S in held[2:4]]
    cal = calibrate(model.net, fit, test, max_angle=3.0, head_directions=())
    assert cal["lean"] is False and cal["first_layer_basis"] is None
    assert cal["full_int8_angle_deg"] < 5.0
    assert all(t["max_angle_deg"] > 3.0 for t in cal["tried"].values())

    net = type(model.net)(model.config)
    net.load_state_dict(model.net.state_dict())
    lin = net.body[0]
    with torch.no_grad():
        U, sig, Vt = torch.linalg.svd(lin.weight.double(), full_matrices=False)
        low = (U[:, :6] * sig[:6]) @ Vt[:6] + 1e-4 * sig[0] * (U[:, 6:] @ Vt[6:])
        lin.weight.copy_(low.float())
    cal = calibrate(net, fit, test, max_angle=3.0, head_directions=())
    assert cal["lean"] is True and cal["first_layer_rank"] == 6
    assert cal["tried"]["first layer at 0.8 energy"]["max_angle_deg"] > 3.0
    assert cal["max_angle_deg"] <= 3.0
    q = from_calibration(net, cal)  # what a checkpoint's loader rebuilds
    assert q.first_layer_rank == 6 and q.head_directions is None
    problem, S = held[4]
    with torch.no_grad():
        P_f32 = net.eval()(torch.from_numpy(S), r=8).double().numpy()
    P = q.basis(S, 8)
    np.testing.assert_allclose(P.T @ P, np.eye(8), atol=1e-5)
    assert _angle(P_f32, P) < 5.0
    its = [pcg(problem.A, problem.b, TwoGrid(problem.A, B))[1] for B in (P_f32, P)]
    assert all(info.converged for info in its)
    assert abs(its[0].iterations - its[1].iterations) <= 1


def test_calibration_with_affine_heads_records_its_choice_and_is_rebuilt_exactly(model, held):
    """With head directions allowed and a generous bound, the first candidate (the leanest)
    is taken; from_calibration rebuilds that very copy (bit-identical bases)."""
    fit = [S for _, S in held[:10]]  # at least 8: the head's first 8 directions
    cal = calibrate(model.net, fit, [held[10][1]], max_angle=90.0)
    assert cal["lean"] is True and cal["head_directions"] == 8
    assert cal["head_mean"].shape == (64,) and cal["head_basis"].shape == (64, 8)
    assert next(iter(cal["tried"])) == cal["choice"]
    q = from_calibration(model.net, cal)
    ref = Int8MLP(model.net)
    if cal["first_layer_basis"] is not None:
        ref = ref.with_lean_first_layer(cal["first_layer_basis"])
    ref = ref.with_affine_head(cal["head_mean"], cal["head_basis"])
    S = held[11][1]
    np.testing.assert_array_equal(q.basis(S, 4), ref.basis(S, 4))
