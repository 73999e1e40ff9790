"""The GNN baseline: graph inputs, message passing, QR head, training, checkpoints, solves."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from nlss_fenicsx import meshes, pdes
from nlss_fenicsx.bench.methods import MethodSpec, run_method
from nlss_fenicsx.cli import main as cli_main
from nlss_fenicsx.nn import CheckpointError, MLPConfig, NLSSModel
from nlss_fenicsx.nn.data import DataConfig, instance
from nlss_fenicsx.nn.gnn import (
    EDGE_FEATURES,
    NLSSGNN,
    GNNConfig,
    GNNModel,
    GNNTrainConfig,
    _batch_loss,
    _instance_tensors,
    graph_from_csr,
    scatter_sum,
    train_gnn,
)
from nlss_fenicsx.nn.inference import clear_model_cache, load_model

TINY = dict(N=8, K=8, r_max=8, width=32, layers=2, lr=1e-3, n_eval=1, eval_every=5,
            ckpt_every=5)
QUIET = dict(progress=False, log=lambda *_: None)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread. Idle OpenMP threads spin-waiting on a loaded 2-core
    machine made these steps up to 1000x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_gnn(tmp_path_factory):
    path = tmp_path_factory.mktemp("gnn") / "tiny_gnn.pt"
    model = train_gnn(GNNTrainConfig(steps=10, **TINY), path, **QUIET)
    return path, model


@pytest.fixture(scope="module")
def graph6():
    problem, S = instance(DataConfig(N=6, K=8), seed=3)
    return problem.A, torch.from_numpy(S), *graph_from_csr(problem.A)


def test_output_is_orthonormal_finite_and_nested(graph6):
    A, S, ei, ea = graph6
    torch.manual_seed(0)
    net = NLSSGNN(GNNConfig(n=49, K=8, r_max=8, width=32, layers=3)).eval()
    with torch.no_grad():
        P = net(S, ei, ea)
        P4 = net(S, ei, ea, r=4)
    assert P.shape == (49, 8) and torch.isfinite(P).all()
    torch.testing.assert_close(P.T @ P, torch.eye(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(P4, P[:, :4], atol=1e-5, rtol=0)  # truncation is nested
    # A batch of two different graphs gives what each gives alone.
    problem2, S2 = instance(DataConfig(N=6, K=8), seed=4)
    ei2, ea2 = graph_from_csr(problem2.A)
    with torch.no_grad():
        Pb = net(torch.stack([S, torch.from_numpy(S2)]), [ei, ei2], [ea, ea2])
        P2 = net(torch.from_numpy(S2), ei2, ea2)
    assert Pb.shape == (2, 49, 8)
    torch.testing.assert_close(Pb[0], P, atol=1e-5, rtol=0)
    torch.testing.assert_close(Pb[1], P2, atol=1e-5, rtol=0)


def test_edge_features_cover_every_nonzero_including_the_diagonal(graph6):
    A, _, ei, ea = graph6
    n = A.shape[0]
    assert ei.shape == (2, A.nnz) and ea.shape == (A.nnz, EDGE_FEATURES)
    src, dst = ei.numpy()
    diag = src == dst
    assert diag.sum() == n  # one self-loop per node
    np.testing.assert_array_equal(ea[:, 2].numpy(), diag.astype(np.float32))
    np.testing.assert_allclose(ea[diag, 0].numpy(), 1.0, rtol=1e-6)
    assert ea[:, 0].abs().max() <= 1.0 + 1e-6  # |a_ij| <= sqrt(a_ii a_jj) for SPD A
    # Channel 1 is a_ij / max|a|: scattering it back rebuilds A (receiver = row).
    rebuilt = sp.csr_matrix((ea[:, 1].double().numpy(), (dst, src)), shape=A.shape)
    np.testing.assert_allclose((rebuilt * abs(A).max()).toarray(), A.toarray(), rtol=1e-6,
                               atol=1e-7 * abs(A).max())
    # Stored zeros are not edges; a non-positive diagonal is refused.
    coo = A.tocoo()
    padded = sp.csr_matrix((np.append(coo.data, 0.0), (np.append(coo.row, 0),
                                                        np.append(coo.col, n - 1))))
    assert padded.nnz == A.nnz + 1 and graph_from_csr(padded)[0].shape[1] == A.nnz
    with pytest.raises(ValueError, match="positive diagonal"):
        graph_from_csr(-A)


def test_index_add_aggregation_equals_dense_adjacency_product(graph6):
    A, _, ei, ea = graph6
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((A.shape[0], 5)))
    src, dst = ei
    a = ea[:, 1].double() * float(abs(A).max())  # a_ij
    agg = scatter_sum(a[:, None] * x[src], dst, A.shape[0])  # message m_ij = a_ij x_j
    np.testing.assert_allclose(agg.numpy(), A.toarray() @ x.numpy(), rtol=1e-6, atol=1e-6)
    ones = scatter_sum(torch.ones(len(dst), 1, dtype=torch.float64), dst, A.shape[0])
    np.testing.assert_array_equal(ones.numpy().ravel(), np.diff(A.indptr))  # degree + 1
    # The layer's split first Linear equals the Linear of the concatenation [h_i, h_j, e_ij].
    torch.manual_seed(1)
    layer = NLSSGNN(GNNConfig(n=49, K=8, r_max=4, width=16, layers=1)).layers[0].double()
    h = torch.randn(A.shape[0], 16, dtype=torch.float64)
    e = torch.randn(len(dst), 16, dtype=torch.float64)
    ref = layer.edge_out(layer.act(layer.edge_in(torch.cat([h[dst], h[src], e], dim=-1))))
    torch.testing.assert_close(layer.messages(h, e, src, dst), ref)


def test_loss_decreases_on_a_fixed_instance():
    cfg = GNNTrainConfig(N=6, K=8, r_max=4, width=32, layers=2)
    items = [_instance_tensors(cfg, 5)]
    assert cfg.loss_probes is None  # n = 49: exact dense loss
    torch.manual_seed(0)
    net = NLSSGNN(cfg.gnn)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(51):
        loss = _batch_loss(net, cfg, items, torch.device("cpu"), None)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert np.isfinite(losses).all()
    assert losses[50] < 0.8 * losses[0], (losses[0], losses[50])


def test_checkpoint_round_trip_and_load_model_dispatch(tiny_gnn, tmp_path):
    path, model = tiny_gnn
    md = model.metadata
    assert (md["arch"], md["n"], md["K"], md["r_max"], md["N"], md["pde"], md["loss"]) == \
        ("gnn", 81, 8, 8, 8, "diffusion", "twogrid")
    assert [h["step"] for h in md["extra"]["history"]] == [5, 10]
    assert md["extra"]["train_seconds"] > 0
    loaded = GNNModel.load(path)
    assert loaded.step == 10 and loaded.optimizer_state is not None
    for k, v in model.net.state_dict().items():
        assert torch.equal(v, loaded.net.state_dict()[k]), k
    copy = loaded.save(tmp_path / "copy.pt")
    again = GNNModel.load(copy)
    for k, v in model.net.state_dict().items():
        assert torch.equal(v, again.net.state_dict()[k]), k
    problem, S = instance(DataConfig(N=8, K=8), seed=11)
    np.testing.assert_array_equal(model.basis(S, 5, A=problem.A), again.basis(S, 5, A=problem.A))
    clear_model_cache()
    assert isinstance(load_model(path), GNNModel)
    mlp_path = NLSSModel(MLPConfig(n=81, K=8, r_max=8, hidden=(8,))).save(tmp_path / "mlp.pt")
    assert isinstance(load_model(mlp_path), NLSSModel)
    with pytest.raises(CheckpointError, match="not an nlss_fenicsx model checkpoint"):
        NLSSModel.load(path)
    with pytest.raises(CheckpointError, match="not an nlss_fenicsx GNN checkpoint"):
        GNNModel.load(mlp_path)
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="needs the operator"):
        model.basis(S, 4)
    with pytest.raises(CheckpointError, match="n=81"):
        model.check_compatible(n=49, K=8)


def test_basis_maps_grid_order_back_to_dof_order(tiny_gnn):
    _, model = tiny_gnn
    problem, S = instance(DataConfig(N=8, K=8), seed=12)
    perm = np.random.default_rng(0).permutation(81)  # grid node g -> "dof" perm[g]
    A_dof = sp.csr_matrix(problem.A[np.argsort(perm)][:, np.argsort(perm)])
    S_dof = np.empty_like(S)
    S_dof[perm] = S
    P_dof = model.basis(S_dof, 6, grid_order=perm, A=A_dof)
    np.testing.assert_allclose(P_dof[perm], model.basis(S, 6, A=problem.A), atol=1e-6)


def test_training_resumes_exactly_and_refuses_other_settings(tmp_path):
    cfg = GNNTrainConfig(steps=4, **{**TINY, "ckpt_every": 2, "eval_every": 2})
    straight = train_gnn(cfg, tmp_path / "a.pt", **QUIET)
    half = GNNTrainConfig(**{**cfg.as_dict(), "steps": 2})
    train_gnn(half, tmp_path / "b.pt", **QUIET)
    with pytest.raises(CheckpointError, match=r"different settings \(steps\)"):
        train_gnn(cfg, tmp_path / "b.pt", **QUIET)
    part = GNNModel.load(tmp_path / "b.pt")
    opt = torch.optim.Adam(part.net.parameters(), lr=cfg.lr)
    opt.load_state_dict(part.optimizer_state)
    part.metadata["extra"]["train_config"] = cfg.as_dict()
    part.save(tmp_path / "c.pt", step=2, optimizer=opt)
    resumed = train_gnn(cfg, tmp_path / "c.pt", **QUIET)
    assert resumed.step == 4
    for k, v in straight.net.state_dict().items():
        assert torch.equal(v, resumed.net.state_dict()[k]), k


def test_configs_reject_bad_values():
    with pytest.raises(ValueError, match="r_max <= K"):
        GNNConfig(n=49, K=8, r_max=9)
    with pytest.raises(ValueError, match="width must be a positive integer"):
        GNNConfig(n=49, K=8, r_max=8, width=0)
    with pytest.raises(ValueError, match="K <= n"):
        GNNConfig(n=4, K=8, r_max=8)
    with pytest.raises(ValueError, match="probes"):
        GNNTrainConfig(N=6, K=8, r_max=8, probes=0)
    assert GNNTrainConfig().loss_probes == 8  # N=64: Hutchinson
    assert GNNTrainConfig(N=8, K=8, r_max=8).loss_probes is None


def test_gnn_solves_through_scipy_and_petsc_paths(tiny_gnn):
    path, _ = tiny_gnn
    system = pdes.assemble(pdes.sample("diffusion", meshes.jittered_square(8, seed=0), rng=0))
    for r in (4, 8):
        ref = run_method(system, MethodSpec(name="gnn", rank=r, K=8, model=str(path),
                                            path="scipy"))
        rec = run_method(system, MethodSpec(name="gnn", rank=r, K=8, model=str(path),
                                            path="petsc"))
        for out in (ref, rec):
            assert out.converged and out.rel_residual < 1e-6 and out.method.startswith("GNN")
        assert abs(rec.iterations - ref.iterations) <= 1


def test_cli_trains_a_gnn(tmp_path, capsys):
    out = tmp_path / "cli_gnn.pt"
    args = ["train", "--arch", "gnn", "--N", "4", "--K", "4", "--rank", "4", "--hidden", "16",
            "--steps", "2", "--out", str(out), "--no-progress"]
    assert cli_main(args) == 0
    text = capsys.readouterr().out
    assert "GNN width 16" in text  # --lr left unset: the paper's GNN rate, below
    model = GNNModel.load(out)
    assert model.config.width == 16 and model.metadata["extra"]["train_config"]["lr"] == 1e-4
    assert cli_main([*args[:-3], "--hidden", "16,16", "--out", str(out)]) == 2
    assert "--hidden WIDTH" in capsys.readouterr().err
