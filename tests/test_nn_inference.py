"""nn/inference.py: load_model picks the backend explicitly (int8 by default, the calibrated
copy stored in the checkpoint; float32 on request; the GNN float32 with A), caches per
file, refuses unusable checkpoints in one line, and gives the same PCG iterations with
int8 as with float32."""

import shutil

import numpy as np
import pytest
import scipy.linalg as sla
import scipy.sparse as sp

torch = pytest.importorskip("torch")

from nlss_fenicsx.nn import inference  # noqa: E402
from nlss_fenicsx.nn.checkpoint import FORMAT, FORMAT_VERSION, CheckpointError  # noqa: E402
from nlss_fenicsx.nn.data import DataConfig, FreshSampler  # noqa: E402
from nlss_fenicsx.nn.gnn import GNNModel  # noqa: E402
from nlss_fenicsx.nn.inference import Predictor, clear_model_cache, load_model  # noqa: E402
from nlss_fenicsx.nn.int8 import from_calibration  # noqa: E402
from nlss_fenicsx.nn.model import NLSSModel  # noqa: E402
from nlss_fenicsx.nn.train import TrainConfig, train  # noqa: E402
from nlss_fenicsx.twogrid import TwoGrid, pcg  # noqa: E402

QUIET = dict(progress=False, log=lambda *_: None)


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """A small MLP (N=12, K=16, 60 steps) and a tiny GNN (N=8, 10 steps)."""
    root = tmp_path_factory.mktemp("inference")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(TrainConfig(N=12, K=16, r_max=16, hidden=(64, 64), steps=60, n_eval=2,
                          eval_every=60, ckpt_every=60), root / "mlp.pt", **QUIET)
        train(TrainConfig(arch="gnn", N=8, K=8, r_max=8, hidden=(32, 32), steps=10, lr=1e-3,
                          n_eval=1, eval_every=5, ckpt_every=5), root / "gnn.pt", **QUIET)
    finally:
        torch.set_num_threads(threads)
    clear_model_cache()
    return root / "mlp.pt", root / "gnn.pt"


def test_int8_is_the_default_close_to_float32_with_the_same_pcg_iterations(paths):
    p8, p32 = load_model(paths[0]), load_model(paths[0], precision="float32")
    assert (p8.precision, p32.precision) == ("int8", "float32")
    assert p8.needs_A is False and p8.settings.K == 16 and p8.settings.N == 12
    sampler = FreshSampler(DataConfig(N=12, K=16), seed=0)
    worst, counts = 0.0, []
    for i in range(4):
        problem, S = sampler.test_instance(50 + i)
        S = S.astype(np.float64)
        for r in (4, 8, 16):
            P_f32, P8 = p32.basis(S, r), p8.basis(S, r)
            np.testing.assert_allclose(P8.T @ P8, np.eye(r), atol=1e-5)
            worst = max(worst, float(np.degrees(sla.subspace_angles(P_f32, P8).max())))
            its = [pcg(problem.A, problem.b, TwoGrid(problem.A, P))[1] for P in (P_f32, P8)]
            assert all(info.converged for info in its)
            counts.append((its[0].iterations, its[1].iterations))
    print(f"int8 vs float32: largest principal angle {worst:.2f} degrees; PCG iterations "
          f"(float32, int8): {counts}")
    assert worst < 5.0
    assert all(abs(a - b) <= 1 for a, b in counts)


def test_the_int8_backend_is_the_copy_calibrated_at_the_end_of_training(paths):
    predictor = load_model(paths[0])
    model = NLSSModel.load(paths[0])
    assert predictor.calibration is not None and "full_int8_angle_deg" in predictor.calibration
    q = from_calibration(model.net, model.int8_calibration)
    S = FreshSampler(DataConfig(N=12, K=16), seed=0).test_instance(70)[1]
    np.testing.assert_array_equal(predictor.basis(S, 8), q.basis(S, 8))
    # Float32 is the network as trained: NLSSModel.basis itself.
    np.testing.assert_array_equal(load_model(paths[0], precision="float32").basis(S, 8),
                                  model.basis(S, 8))


def test_dtype_and_node_order(paths):
    predictor = load_model(paths[0])
    S = FreshSampler(DataConfig(N=12, K=16), seed=0).test_instance(71)[1].astype(np.float64)
    order = np.random.default_rng(2).permutation(S.shape[0])
    S_dof = np.empty_like(S)
    S_dof[order] = S
    P_f64 = predictor.basis(S_dof, 8, node_order=order)
    P_f32 = predictor.basis(S_dof, 8, node_order=order, dtype=np.float32)
    assert P_f32.dtype == np.float32 and P_f64.dtype == np.float64
    np.testing.assert_array_equal(P_f32.astype(np.float64), P_f64)
    np.testing.assert_allclose(P_f64[order], predictor.basis(S, 8), atol=1e-6)


@pytest.mark.parametrize("bad", ["duplicate", "range", "float", "short"])
def test_node_order_must_be_a_permutation(paths, bad):
    predictor = load_model(paths[0])
    n = predictor.settings.n
    S = np.ones((n, 16))
    order = np.random.default_rng(4).permutation(n)
    if bad == "duplicate":
        order[0] = order[1]
    elif bad == "range":
        order[0] = n
    elif bad == "float":
        order = order.astype(np.float64)
    else:
        order = order[:-1]
    for p in (predictor, load_model(paths[0], precision="float32")):
        with pytest.raises(ValueError, match=rf"node_order must be a permutation of range\({n}\)"):
            p.basis(S, 4, node_order=order)


def test_bad_input_is_a_value_error_that_depends_on_the_input_only(paths):
    predictor = load_model(paths[0])
    S = np.ones((169, 16))
    cases = [((np.ones((100, 16)), 4), r"n=169, K=16; got S of shape \(100, 16\)"),
             ((S, 0), "r must satisfy 1 <= r <= r_max=16; got r=0"),
             ((S, 17), "r_max=16; got r=17")]
    nan = S.copy()
    nan[5, 5] = np.nan
    cases.append(((nan, 4), "S has NaN or Inf entries"))
    for args, match in cases:
        for _ in range(2):  # the same error every time (a dispatcher may broadcast it)
            with pytest.raises(ValueError, match=match):
                predictor.basis(*args)


def test_gnn_needs_the_operator_runs_float32_and_its_basis_converges(paths):
    predictor = load_model(paths[1])  # int8 asked for (the default), float32 given
    assert predictor.needs_A and predictor.precision == "float32"
    assert isinstance(predictor.model, GNNModel) and predictor.settings.loss == "twogrid"
    problem, S = FreshSampler(DataConfig(N=8, K=8), seed=0).test_instance(12)
    with pytest.raises(ValueError, match="needs the operator"):
        predictor.basis(S, 4)
    perm = np.random.default_rng(0).permutation(81)  # node i -> "dof" perm[i]
    inv = np.argsort(perm)
    A_dof = sp.csr_matrix(problem.A[inv][:, inv])
    S_dof = np.empty_like(S)
    S_dof[perm] = S
    P_dof = predictor.basis(S_dof, 6, node_order=perm, A=A_dof)
    np.testing.assert_allclose(P_dof[perm], predictor.basis(S, 6, A=problem.A), atol=1e-6)
    b_dof = np.empty_like(problem.b)
    b_dof[perm] = problem.b
    for r in (4, 8):
        P = predictor.basis(S_dof, r, node_order=perm, A=A_dof)
        _, info = pcg(A_dof, b_dof, TwoGrid(A_dof, P))
        assert info.converged and info.residuals[-1] < 1e-6


def test_cache_by_absolute_path_file_identity_and_precision(paths, tmp_path, monkeypatch):
    clear_model_cache()
    copy = tmp_path / "m.pt"
    shutil.copy(paths[0], copy)
    monkeypatch.chdir(tmp_path)
    first = load_model("m.pt")
    assert load_model(copy) is first
    assert load_model(str(tmp_path / "." / "m.pt")) is first
    assert load_model(copy, precision="float32") is not first
    fresh = tmp_path / "new.pt"
    shutil.copy(paths[0], fresh)
    fresh.replace(copy)  # a new file (new inode) under the same name
    assert load_model(copy) is not first
    clear_model_cache()


def test_unusable_checkpoints_are_one_line_at_load(paths, tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found: .*missing.pt"):
        load_model(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(paths[0].read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="bad.pt is truncated or corrupt"):
        load_model(bad)
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(CheckpointError, match="dir.pt is a directory"):
        load_model(tmp_path / "dir.pt")
    # Weights that are NaN (a diverged run written by something else): refused at load,
    # before any basis is computed (a solver loads before any collective step).
    payload = torch.load(paths[0], weights_only=True)
    payload["state_dict"]["body.0.weight"][0, 0] = float("nan")
    torch.save(payload, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=r"non-finite weights \(NaN or Inf in "
                                              r"state_dict\['body.0.weight'\]\)") as info:
        load_model(tmp_path / "nan.pt")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="Unrecognized precision 'fp8'"):
        load_model(paths[0], precision="fp8")
    assert payload["format"] == FORMAT and payload["format_version"] == FORMAT_VERSION


def test_no_quantisation_falls_back_to_float32_with_one_warning(paths, monkeypatch):
    def unavailable(*_):
        raise RuntimeError("no quantized engine")

    monkeypatch.setattr(inference, "from_calibration", unavailable)
    model = NLSSModel.load(paths[0])
    with pytest.warns(RuntimeWarning, match="int8 inference unavailable"):
        predictor = Predictor(model, "int8")
    assert predictor.precision == "float32"
    S = np.ones((169, 16))
    np.testing.assert_array_equal(predictor.basis(S, 4), model.basis(S, 4))
