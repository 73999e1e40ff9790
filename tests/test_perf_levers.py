"""Each performance lever keeps the mathematics: P orthonormal, PCG converging, and the
int8 model's basis close to the float32 model's (principal angles bounded)."""

import numpy as np
import pytest
import scipy.linalg as sla
import torch

from nlss_fenicsx import meshes, pdes
from nlss_fenicsx.bench.methods import MethodSpec, run_method
from nlss_fenicsx.nn.data import DataConfig, instance, instance_seed
from nlss_fenicsx.nn.train import TrainConfig, train
from nlss_fenicsx.smoothing import smoothed_vectors
from nlss_fenicsx.twogrid import TwoGrid, pcg


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("perf") / "m.pt"
    cfg = TrainConfig(N=12, K=16, r_max=16, hidden=(64, 64), steps=60, n_eval=2,
                      eval_every=60, ckpt_every=60)
    train(cfg, path, progress=False, log=lambda *_: None)
    torch.set_num_threads(previous)
    return path


def _reference_smoothing(A, S0, sweeps, omega=0.66):
    """The authors' order of operations: normalise every column after every sweep."""
    S = S0.copy()
    dinv = omega / A.diagonal()
    for _ in range(sweeps):
        S = S - dinv[:, None] * (A @ S)
        S = S / np.linalg.norm(S, axis=0)
    return S


@pytest.mark.parametrize("sweeps", [1, 7, 8, 10, 30])
def test_deferred_normalisation_equals_per_sweep(sweeps):
    gp, _ = instance(DataConfig(N=10, K=6), 3)
    S0 = np.random.default_rng(1).standard_normal((gp.A.shape[0], 6))
    ref = _reference_smoothing(gp.A, S0, sweeps)
    np.testing.assert_allclose(smoothed_vectors(gp.A, 6, sweeps=sweeps, S0=S0), ref,
                               rtol=0, atol=1e-12)
    S32 = smoothed_vectors(gp.A, 6, sweeps=sweeps, S0=S0, dtype=np.float32)
    assert S32.dtype == np.float32
    np.testing.assert_allclose(S32, ref, rtol=0, atol=2e-5)


def test_int8_basis_orthonormal_close_to_float32_and_converges(model_path):
    from nlss_fenicsx.nn.inference import load_model

    model = load_model(model_path)
    worst = 0.0
    for i in range(4):
        gp, S = instance(DataConfig(N=12, K=16), instance_seed(77, i))
        S = S.astype(np.float64)
        for r in (4, 8, 16):
            P32 = model.basis(S, r)
            P8 = model.basis(S, r, precision="int8")
            np.testing.assert_allclose(P8.T @ P8, np.eye(r), atol=1e-5)
            angle = np.degrees(sla.subspace_angles(P32, P8).max())
            worst = max(worst, angle)
            its = [pcg(gp.A, gp.b, TwoGrid(gp.A, P))[1] for P in (P32, P8)]
            assert all(info.converged for info in its)
            assert abs(its[0].iterations - its[1].iterations) <= 1
    print(f"largest principal angle int8 vs float32: {worst:.3f} degrees")
    # Measured: 1.1 degrees on this small model (its layers are below INT8_MIN_WEIGHTS, so
    # only the head is int8), 0.54 degrees on the N=64 paper-size model with the full int8
    # first layer (diffusion, r=48; Cholesky QR against float32 with Householder QR).
    assert worst < 5.0


def test_pc_defaults_int8_and_float32_smoothing_solve(model_path):
    system = pdes.assemble(pdes.sample("diffusion", meshes.jittered_square(12, seed=5), rng=5))
    recs = {p: run_method(system, MethodSpec(name="nlss", rank=8, K=16, model=str(model_path),
                                             precision=p)) for p in ("int8", "float32")}
    for rec in recs.values():
        assert rec.converged and rec.rel_residual < 1e-6
    assert abs(recs["int8"].iterations - recs["float32"].iterations) <= 1


def test_unknown_precision_is_rejected():
    from nlss_fenicsx.petsc import PCOptions

    with pytest.raises(ValueError, match="Unrecognized nlss_precision 'fp8'"):
        PCOptions(precision="fp8")


def test_gaussian_start_is_standard_normal_and_reproducible():
    from scipy import stats

    from nlss_fenicsx.smoothing import gaussian_start

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


@pytest.mark.parametrize("dtype, tol", [(np.float32, 5e-6), (np.float64, 1e-13)])
@pytest.mark.parametrize("cond", [1.5, 40.0, 2e3, 1e9])
def test_cholesky_qr_equals_householder_and_stays_orthonormal(dtype, tol, cond):
    """orthonormal_rows (Cholesky QR, with a second pass and a Householder fallback) gives
    the same positive-diagonal QR factor as Householder QR, orthonormal at any condition."""
    from nlss_fenicsx.nn.model import orthonormal_rows

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
    # Same span as X whatever the condition: X = Q (Q^T X).
    resid = np.linalg.norm(X - Q @ (Q.T @ X)) / np.linalg.norm(X)
    assert resid < (1e-5 if dtype == np.float32 else 1e-12)


def test_cholesky_qr_rank_deficient_falls_back_to_householder():
    from nlss_fenicsx.nn.model import orthonormal_rows

    X = np.random.default_rng(0).standard_normal((200, 6))
    X[:, 3] = X[:, 1]  # exactly rank 5: Cholesky of X^T X fails or is singular
    Q = orthonormal_rows(np.ascontiguousarray(X.T)).T
    assert np.all(np.isfinite(Q))
    np.testing.assert_allclose(Q.T @ Q, np.eye(6), atol=1e-10)


def test_int8_fast_path_matches_torch_features_and_permutation(model_path):
    """basis(int8) fuses the permutation and input scaling into NumPy; the batched torch
    entry point Int8MLP.__call__ must give the same P (in grid order)."""
    from nlss_fenicsx.nn.inference import load_model

    model = load_model(model_path)
    gp, S = instance(DataConfig(N=12, K=16), instance_seed(5, 0))
    n = S.shape[0]
    order = np.random.default_rng(0).permutation(n)  # a dof order != grid order
    S_dof = np.empty_like(S)
    S_dof[order] = S
    P = model.basis(S_dof.astype(np.float64), 8, grid_order=order, precision="int8")
    P_grid = model.int8()(torch.from_numpy(S), r=8).numpy()
    np.testing.assert_allclose(P[order], P_grid, atol=1e-6)
    assert P.dtype == np.float64 and P.shape == (n, 8)


def _small_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(30, 20), torch.nn.LayerNorm(20),
                               torch.nn.GELU(), torch.nn.Linear(20, 50))


def test_backward_adam_equals_torch_fused_adam_bit_for_bit():
    from nlss_fenicsx.nn.optim import BackwardAdam

    a, b = _small_net(), _small_net()
    ref = torch.optim.Adam(a.parameters(), lr=1e-2, fused=True)
    opt = BackwardAdam(b.parameters(), lr=1e-2)
    X = torch.randn(7, 30, generator=torch.Generator().manual_seed(1))
    for t in range(6):
        ref.zero_grad()
        (a(X + t) ** 2).mean().backward()
        ref.step()
        (b(X + t) ** 2).mean().backward()
        assert all(p.grad is None for p in b.parameters())  # freed inside backward
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    # State dicts are interchangeable with torch.optim.Adam's, both ways.
    for key, st in ref.state_dict()["state"].items():
        mine = opt.state_dict()["state"][key]
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(st[name], mine[name])
    other = BackwardAdam(_small_net().parameters())
    other.load_state_dict(ref.state_dict())
    torch.optim.Adam(_small_net().parameters(), fused=True).load_state_dict(opt.state_dict())
    with pytest.raises(ValueError, match="optimizer state has 6 parameters; the model has 2"):
        BackwardAdam(torch.nn.Linear(3, 3).parameters()).load_state_dict(ref.state_dict())
    opt.remove()  # hooks gone: backward leaves parameters and gradients alone
    before = [p.detach().clone() for p in b.parameters()]
    (b(X) ** 2).mean().backward()
    assert all(torch.equal(p, q) for p, q in zip(b.parameters(), before, strict=True))
    assert all(p.grad is not None for p in b.parameters())


def test_low_rank_first_layer_is_the_truncated_svd():
    from nlss_fenicsx.nn.model import low_rank_first_layer

    rng = np.random.default_rng(0)
    h, m = 16, 500
    U = np.linalg.qr(rng.standard_normal((h, h)))[0]
    V = np.linalg.qr(rng.standard_normal((m, h)))[0]
    sig = np.geomspace(10.0, 0.01, h)
    lin = torch.nn.Linear(m, h)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy((U * sig) @ V.T))
    lean = low_rank_first_layer(lin, energy=0.9)
    energy = np.cumsum(sig ** 2) / np.sum(sig ** 2)
    k = int(np.searchsorted(energy, 0.9) + 1)
    assert lean[0].out_features == k and lean[1].in_features == k
    Wk = (U[:, :k] * sig[:k]) @ V[:, :k].T  # Eckart-Young: the best rank-k approximation
    W_lean = (lean[1].weight @ lean[0].weight).detach().double().numpy()
    np.testing.assert_allclose(W_lean, Wk, atol=1e-5)
    torch.testing.assert_close(lean[1].bias, lin.bias)
    x = torch.randn(3, m)
    torch.testing.assert_close(lean(x), x @ torch.from_numpy(Wk).float().T + lin.bias,
                               atol=1e-4, rtol=1e-4)
    assert low_rank_first_layer(lin, energy=0.999999) is None  # no gain: rank > h/2


def test_lean_first_layer_calibration_accepts_harmless_and_rejects_harmful(model_path,
                                                                          monkeypatch):
    """NLSSModel.int8 keeps the truncated first layer only if the basis does not move on
    instances of the model's own training distribution (its train_config). This small
    model's int8 rounding alone moves its basis by about 1 degree (the N=64 models: 0.5),
    so the bound is raised to 3 degrees here."""
    import nlss_fenicsx.nn.model as model_module
    from nlss_fenicsx.nn.model import NLSSModel

    monkeypatch.setattr(model_module, "LEAN_MAX_ANGLE", 3.0)
    monkeypatch.setattr(model_module, "LEAN_HEAD_DIRECTIONS", ())  # first layer only here
    LEAN_MAX_ANGLE = 3.0

    # The briefly trained small model: truncating its first layer turns the basis by tens
    # of degrees, so the calibration keeps the full layer.
    model = NLSSModel.load(model_path)
    q = model.int8()
    assert q.first_layer_rank is None and q.calibration["lean"] is False
    harmful = q.with_lean_first_layer(0.5)
    gp, S = instance(DataConfig(N=12, K=16), instance_seed(78, 0))
    x = torch.from_numpy(S)
    assert np.degrees(sla.subspace_angles(q(x, r=8).numpy(), harmful(x, r=8).numpy()).max()) \
        > LEAN_MAX_ANGLE

    # The same model with a first layer of rank 6 plus a tiny tail: rank 5 (80 % of the
    # energy) turns the basis too far and is refused; rank 6 (90 %) drops only the tail and
    # is accepted. The basis stays within the bound and the PCG iterations do not change.
    model = NLSSModel.load(model_path)
    lin = model.net.body[0]
    with torch.no_grad():
        W = lin.weight.double()
        U, sig, Vt = torch.linalg.svd(W, full_matrices=False)
        low = (U[:, :6] * sig[:6]) @ Vt[:6] + 1e-4 * sig[0] * (U[:, 6:] @ Vt[6:])
        lin.weight.copy_(low.float())
    q = model.int8()
    assert q.calibration["lean"] is True and q.first_layer_rank == 6
    assert q.calibration["tried"]["first layer at 0.8 energy"]["max_angle_deg"] > LEAN_MAX_ANGLE
    assert q.calibration["max_angle_deg"] <= LEAN_MAX_ANGLE
    with torch.no_grad():
        P32 = model.net(x, r=8).double().numpy()
    P = q(x, r=8).double().numpy()
    np.testing.assert_allclose(P.T @ P, np.eye(8), atol=1e-5)
    assert np.degrees(sla.subspace_angles(P32, P).max()) < 5.0
    its = [pcg(gp.A, gp.b, TwoGrid(gp.A, Q))[1] for Q in (P32, P)]
    assert all(info.converged for info in its)
    assert abs(its[0].iterations - its[1].iterations) <= 1


def test_affine_head_is_exact_on_its_subspace(model_path):
    """with_affine_head(mean, Q): the head applied to mean + Q Q^T (y - mean), as base + D c.
    With Q spanning all of R^h it is the head itself (float32) on the int8 body's output;
    with Q = [] it is the constant basis of the mean input."""
    from nlss_fenicsx.nn.model import Int8MLP, NLSSModel

    model = NLSSModel.load(model_path)
    q = Int8MLP(model.net)
    n, r = model.config.n, 8
    gp, S = instance(DataConfig(N=12, K=16), instance_seed(79, 0))
    St = torch.from_numpy(S)
    y = q.head_input(St)
    h = y.shape[1]
    mean = torch.randn(h, generator=torch.Generator().manual_seed(0))
    Q = torch.linalg.qr(torch.randn(h, h, generator=torch.Generator().manual_seed(1)))[0]
    W, b = model.net.head.weight.detach()[: r * n], model.net.head.bias.detach()[: r * n]
    from nlss_fenicsx.nn.model import _features

    x = _features(St, q.config, torch.float32)
    full_affine = q.with_affine_head(mean, Q)
    assert full_affine.head_directions == h
    np.testing.assert_allclose(full_affine.raw(x, r), (y @ W.T + b).numpy(), rtol=1e-4,
                               atol=1e-4 * float((y @ W.T).abs().max()))
    const = q.with_affine_head(y[0], Q[:, :0])  # mean = this y: exact for this input
    np.testing.assert_allclose(const.raw(x, r), (y @ W.T + b).numpy(), rtol=1e-4,
                               atol=1e-4 * float((y @ W.T).abs().max()))
    gp2, S2 = instance(DataConfig(N=12, K=16), instance_seed(79, 1))
    x2 = _features(torch.from_numpy(S2), q.config, torch.float32)
    np.testing.assert_array_equal(const.raw(x2, r), const.raw(x, r))  # ignores its input
    assert q.head_directions is None and q._affine is None  # the original is unchanged


def test_numpy_tail_equals_the_torch_layers():
    """The small layers after the int8 ones run in NumPy (_NumpyTail): same outputs as the
    torch modules to float32 rounding, after a quantised prefix as well; a module it does
    not know leaves everything to torch."""
    from torch.ao.quantization import quantize_dynamic

    from nlss_fenicsx.nn.model import _NumpyTail, _quiet_quantization

    torch.manual_seed(3)
    body = torch.nn.Sequential(
        torch.nn.Linear(40, 24), torch.nn.LayerNorm(24), torch.nn.GELU(),
        torch.nn.Sequential(torch.nn.Linear(24, 16), torch.nn.ReLU()),
        torch.nn.Linear(16, 12, bias=False), torch.nn.LayerNorm(12, elementwise_affine=False),
        torch.nn.Tanh()).eval()
    with torch.no_grad():
        body[1].weight.uniform_(0.5, 2.0)
        body[1].bias.uniform_(-1.0, 1.0)
    x = torch.randn(3, 40)
    prefix, tail = _NumpyTail.split(body)
    assert len(prefix) == 0 and len(tail.steps) == 8
    with torch.no_grad():
        ref = body(x).numpy()
    got = tail(x.numpy())
    assert got.dtype == np.float32 and got.shape == (3, 12)
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6)
    with _quiet_quantization():  # the first layer int8, as in Int8MLP
        q = quantize_dynamic(body, {"0"}, dtype=torch.qint8)
    prefix, tail = _NumpyTail.split(q)
    assert len(prefix) == 1 and len(tail.steps) == 7
    with torch.no_grad():
        ref_q = q(x).numpy()
        got_q = tail(prefix(x).numpy())
    np.testing.assert_allclose(got_q, ref_q, rtol=0, atol=2e-6)
    odd = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU(approximate="tanh"))
    assert _NumpyTail.split(odd) == (odd, None)


def test_only_large_linears_are_quantised():
    from nlss_fenicsx.nn.model import INT8_MIN_WEIGHTS, _large_linears

    side = int(np.sqrt(INT8_MIN_WEIGHTS))
    body = torch.nn.Sequential(torch.nn.Linear(side, side), torch.nn.GELU(),
                               torch.nn.Sequential(torch.nn.Linear(side, 8)),
                               torch.nn.Linear(8, 8))
    assert _large_linears(body) == {"0"}


def test_float32_basis_and_its_copy_into_petsc(model_path):
    """basis(dtype=float32) is the float64 result before its conversion; dense_from_rows
    converts it while copying, to the same float64 matrix."""
    from nlss_fenicsx._fenicsx import MPI
    from nlss_fenicsx.nn.inference import load_model
    from nlss_fenicsx.petsc import dense_from_rows

    model = load_model(model_path)
    gp, S = instance(DataConfig(N=12, K=16), instance_seed(5, 3))
    order = np.random.default_rng(2).permutation(S.shape[0])
    S_dof = np.empty_like(S)
    S_dof[order] = S
    P64 = model.basis(S_dof, 8, grid_order=order, precision="int8")
    P32 = model.basis(S_dof, 8, grid_order=order, precision="int8", dtype=np.float32)
    assert P32.dtype == np.float32 and P64.dtype == np.float64
    np.testing.assert_array_equal(P32.astype(np.float64), P64)
    np.testing.assert_allclose(P32.T.astype(np.float64) @ P32, np.eye(8), atol=2e-6)
    M = dense_from_rows(MPI.COMM_SELF, P32, P32.shape[0])
    np.testing.assert_array_equal(M.getDenseArray(), P64)
    M.destroy()
    with pytest.raises(ValueError, match="2-D block of rows"):
        dense_from_rows(MPI.COMM_SELF, P32[:, 0], P32.shape[0])


@pytest.mark.parametrize("bad", ["duplicate", "range", "float", "short"])
def test_grid_order_must_be_a_permutation(model_path, bad):
    from nlss_fenicsx.nn.inference import load_model

    model = load_model(model_path)
    gp, S = instance(DataConfig(N=12, K=16), instance_seed(5, 4))
    n = S.shape[0]
    order = np.random.default_rng(4).permutation(n)
    if bad == "duplicate":
        order[0] = order[1]
    elif bad == "range":
        order[0] = n
    elif bad == "float":
        order = order.astype(np.float64)
    else:
        order = order[:-1]
    with pytest.raises(ValueError, match=f"grid_order must be a permutation of range\\({n}\\)"):
        model.basis(S, 4, grid_order=order, precision="int8")


def test_load_model_cache_by_absolute_path_and_file_identity(model_path, tmp_path,
                                                            monkeypatch):
    """One load per file: relative and absolute spellings share it; a rewritten file is
    read again."""
    import shutil

    from nlss_fenicsx.nn.inference import clear_model_cache, load_model

    clear_model_cache()
    copy = tmp_path / "m.pt"
    shutil.copy(model_path, copy)
    monkeypatch.chdir(tmp_path)
    first = load_model("m.pt")
    assert load_model(copy) is first
    assert load_model(str(tmp_path / "." / "m.pt")) is first
    tmp = tmp_path / "new.pt"
    shutil.copy(model_path, tmp)
    tmp.replace(copy)  # a new file (new inode) under the same name
    assert load_model(copy) is not first
    clear_model_cache()
