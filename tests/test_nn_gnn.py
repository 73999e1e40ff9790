"""nn/gnn.py: the GNN baseline's graph inputs, message passing against a dense adjacency
product, orthonormal nested output, and learning on the two-grid loss."""

import numpy as np
import pytest
import scipy.sparse as sp

torch = pytest.importorskip("torch")

from nlss_fenicsx.nn.data import DataConfig, instance  # noqa: E402
from nlss_fenicsx.nn.gnn import (  # noqa: E402
    EDGE_FEATURES,
    GNNConfig,
    GNNModel,
    TwoGridGNN,
    graph_from_csr,
    scatter_sum,
)
from nlss_fenicsx.nn.losses import twogrid_loss  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread (idle OpenMP threads spin on a loaded machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def graph6():
    problem, S = instance(DataConfig(N=6, K=8), seed=3)
    return problem.A, torch.from_numpy(S), *graph_from_csr(problem.A)


def test_output_is_orthonormal_finite_and_nested(graph6):
    A, S, ei, ea = graph6
    torch.manual_seed(0)
    net = TwoGridGNN(GNNConfig(n=49, K=8, r_max=8, width=32, layers=3)).eval()
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
    layer = TwoGridGNN(GNNConfig(n=49, K=8, r_max=4, width=16, layers=1)).layers[0].double()
    h = torch.randn(A.shape[0], 16, dtype=torch.float64)
    e = torch.randn(len(dst), 16, dtype=torch.float64)
    ref = layer.edge_out(layer.act(layer.edge_in(torch.cat([h[dst], h[src], e], dim=-1))))
    torch.testing.assert_close(layer.messages(h, e, src, dst), ref)


def test_twogrid_loss_decreases_on_a_fixed_instance(graph6):
    A, S, ei, ea = graph6
    coo = A.tocoo()
    A_t = torch.sparse_coo_tensor(np.stack([coo.row, coo.col]), coo.data, coo.shape,
                                  check_invariants=True).coalesce()
    torch.manual_seed(0)
    net = TwoGridGNN(GNNConfig(n=49, K=8, r_max=4, width=32, layers=2))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(51):
        loss = twogrid_loss(A_t, net(S, ei, ea).double(), nu=1)  # exact: n = 49
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert np.isfinite(losses).all()
    assert losses[50] < 0.8 * losses[0], (losses[0], losses[50])


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="r_max <= K"):
        GNNConfig(n=49, K=8, r_max=9)
    with pytest.raises(ValueError, match="width must be a positive integer"):
        GNNConfig(n=49, K=8, r_max=8, width=0)
    with pytest.raises(ValueError, match="K <= n"):
        GNNConfig(n=4, K=8, r_max=8)


def test_forward_rejects_bad_graphs_and_shapes(graph6):
    _, S, ei, ea = graph6
    net = TwoGridGNN(GNNConfig(n=49, K=8, r_max=4, width=8, layers=1))
    with pytest.raises(ValueError, match=r"S of shape \(batch, 49, 8\)"):
        net(S[:, :4], ei, ea)
    with pytest.raises(ValueError, match="r_max=4; got r=5"):
        net(S, ei, ea, r=5)
    with pytest.raises(ValueError, match=r"edge_attr must have shape \(E, 3\)"):
        net(S, ei, ea[:, :2])
    with pytest.raises(ValueError, match="nodes outside range"):
        net(S, ei + 1, ea)
    with pytest.raises(ValueError, match="one edge_index and edge_attr per sample"):
        net(torch.stack([S, S]), [ei], [ea])


def test_model_basis_checks_its_input(graph6):
    A, S, _, _ = graph6
    model = GNNModel(GNNConfig(n=49, K=8, r_max=4, width=8, layers=1))
    with pytest.raises(ValueError, match="needs the operator"):
        model.basis(S.numpy(), 2)
    with pytest.raises(ValueError, match=r"got A of shape \(48, 48\)"):
        model.basis(S.numpy(), 2, A=A[:48, :48])
    with pytest.raises(ValueError, match="node_order must be a permutation"):
        model.basis(S.numpy(), 2, np.zeros(49, dtype=int), A=A)
    P = model.basis(S.numpy(), 3, A=A)
    np.testing.assert_allclose(P.T @ P, np.eye(3), atol=1e-5)
