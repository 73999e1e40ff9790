r"""The GNN baseline (Luz et al. 2020 style): a message-passing network on the graph of ``A``.

The paper compares NeuraLSP with a graph neural network trained on the loss of Luz et al.
(2020), the two-grid error-propagation norm :math:`\\|G C G\\|_F^2` (Jacobi iteration
matrix :math:`G`, Galerkin coarse correction :math:`C`;
:func:`nlss_fenicsx.nn.losses.twogrid_loss`), hence its name :class:`TwoGridGNN`.
Following the authors' code, the GNN sees the rows of ``S`` as node inputs and the entries
``a_ij`` as edge inputs, runs five message-passing layers of width 488 and decodes a dense
``n x r`` basis. It is plain PyTorch: aggregation is a sum with
:meth:`torch.Tensor.index_add_` (no ``torch_scatter``).

* :func:`graph_from_csr` -- edge list and edge features from a SciPy matrix.
* :class:`TwoGridGNN` -- the torch module: ``(S, edge_index, edge_attr) -> P``.
* :class:`GNNModel` -- the module with its checkpoint settings and the NumPy entry point
  :meth:`GNNModel.basis` (which, unlike the MLP's, needs ``A``).

It is trained by :func:`nlss_fenicsx.nn.train.train` with ``TrainConfig(arch="gnn")``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from nlss_fenicsx.nn.base import LearnedModel, check_sizes
from nlss_fenicsx.nn.model import check_forward, he_init, input_features, qr_positive

__all__ = ["EDGE_FEATURES", "GNNConfig", "GNNModel", "TwoGridGNN", "graph_from_csr",
           "scatter_sum"]

EDGE_FEATURES = 3  # a_ij / sqrt(a_ii a_jj), a_ij / max|a|, [i == j]

_GraphInput = torch.Tensor | Sequence[torch.Tensor]  # one graph for the batch, or one each


# --------------------------------------------------------------------------------------
# Graph
# --------------------------------------------------------------------------------------


def graph_from_csr(A) -> tuple[torch.Tensor, torch.Tensor]:
    """Edge list and edge features of the graph of ``A`` (every stored nonzero, diagonal too).

    Explicitly stored zeros are dropped first, so the PETSc (dof-order) and grid-assembled
    (grid-order) views of the same matrix give the same graph.

    Parameters
    ----------
    A : scipy.sparse matrix or array_like
        Square matrix with a positive diagonal (SPD, or Dirichlet rows set to identity).

    Returns
    -------
    edge_index : torch.Tensor
        ``int64`` of shape ``(2, E)``, ``E = nnz(A)``: row 0 holds the sender ``j``
        (column), row 1 the receiver ``i`` (row) of entry ``a_ij`` (PyG's convention);
        messages are summed at the receiver. Self-loops ``(i, i)`` are included.
    edge_attr : torch.Tensor
        ``float32`` of shape ``(E, 3)``:

        0. ``a_ij / sqrt(a_ii a_jj)`` -- the symmetrically (Jacobi-)scaled entry, in
           ``[-1, 1]`` for SPD ``A``, 1 on the diagonal;
        1. ``a_ij / max_kl |a_kl|`` -- the entry relative to the largest, which keeps the
           coefficient contrast that the scaled entry divides out;
        2. ``1`` on the diagonal, ``0`` elsewhere.

        All three are invariant to ``A -> c A`` (``c > 0``), as is the training loss.

    Raises
    ------
    ValueError
        If ``A`` is not square or has a non-positive diagonal entry.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> ei, ea = graph_from_csr(sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(3, 3)))
    >>> tuple(ei.shape), tuple(ea.shape)
    ((2, 7), (7, 3))
    """
    A = sp.csr_matrix(A, copy=True)
    if A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be square; got shape {A.shape}")
    A.sum_duplicates()
    A.eliminate_zeros()
    d = A.diagonal()
    if not np.all(d > 0):
        bad = int(np.flatnonzero(~(d > 0))[0])
        raise ValueError(f"GNN edge features need a positive diagonal; a_ii = {d[bad]} at "
                         f"i = {bad}")
    coo = A.tocoo()
    i, j, a = coo.row.astype(np.int64), coo.col.astype(np.int64), coo.data.astype(np.float64)
    attr = np.stack([a / np.sqrt(d[i] * d[j]), a / np.abs(a).max(), (i == j).astype(float)],
                    axis=1)
    return torch.from_numpy(np.stack([j, i])), torch.from_numpy(attr.astype(np.float32))


def scatter_sum(messages: torch.Tensor, target: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """Sum the rows of ``messages`` into ``num_nodes`` bins: ``out[target[e]] += messages[e]``.

    Plain-torch stand-in for ``torch_scatter.scatter_add`` (differentiable; deterministic
    on CPU).

    Parameters
    ----------
    messages : torch.Tensor
        Shape ``(E, F)``.
    target : torch.Tensor
        ``int64`` of shape ``(E,)``, values in ``range(num_nodes)``.
    num_nodes : int

    Returns
    -------
    torch.Tensor
        Shape ``(num_nodes, F)``.

    Examples
    --------
    >>> import torch
    >>> scatter_sum(torch.ones(3, 1), torch.tensor([0, 2, 0]), 3).ravel().tolist()
    [2.0, 0.0, 1.0]
    """
    out = messages.new_zeros((num_nodes, messages.shape[-1]))
    return out.index_add_(0, target, messages)


# --------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GNNConfig:
    """Architecture of :class:`TwoGridGNN`.

    Parameters
    ----------
    n, K, r_max : int
        Graph nodes (unknowns), node input features (smoothed vectors) and basis columns
        decoded per node; ``1 <= r_max <= K <= n``.
    width : int, default 488
        Width of node and edge states (the authors' code).
    layers : int, default 5
        Number of message-passing layers.

    Raises
    ------
    ValueError
        If a size is not a positive integer or ``r_max <= K <= n`` fails.

    Examples
    --------
    >>> GNNConfig(n=49, K=8, r_max=8, width=32, layers=2).width
    32
    """

    n: int
    K: int
    r_max: int
    width: int = 488
    layers: int = 5

    def __post_init__(self) -> None:
        check_sizes(self, ("n", "K", "r_max", "width", "layers"))

    def to_dict(self) -> dict[str, Any]:
        """Plain-python form, as stored in checkpoints."""
        return asdict(self)


class _MessagePassing(nn.Module):
    """One layer: edge update (the message), sum at the receiver, node update.

    ``m_ij = MLP_e([h_i, h_j, e_ij])``, ``e_ij <- LN(e_ij + m_ij)``,
    ``h_i <- LN(h_i + MLP_v([h_i, sum_j e_ij]))``; each MLP is Linear -> GELU -> Linear.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.edge_in = nn.Linear(3 * width, width)  # columns: [h_i | h_j | e_ij]
        self.edge_out = nn.Linear(width, width)
        self.edge_norm = nn.LayerNorm(width)
        self.node_in = nn.Linear(2 * width, width)  # columns: [h_i | aggregated messages]
        self.node_out = nn.Linear(width, width)
        self.node_norm = nn.LayerNorm(width)
        self.act = nn.GELU()

    def messages(self, h: torch.Tensor, e: torch.Tensor, src: torch.Tensor,
                 dst: torch.Tensor) -> torch.Tensor:
        """``MLP_e([h_dst, h_src, e])`` for every edge, shape ``(E, width)``.

        The first Linear is split by input block, ``W [h_i; h_j; e] = W_1 h_i + W_2 h_j +
        W_3 e``, and ``W_1 h``, ``W_2 h`` are computed per node, then gathered: the same
        value as concatenating, at a third of the edge-wise cost (E is about 7 n).
        """
        w = h.shape[-1]
        W, b = self.edge_in.weight, self.edge_in.bias
        pre = (nn.functional.linear(h, W[:, :w])[dst]
               + nn.functional.linear(h, W[:, w:2 * w])[src]
               + nn.functional.linear(e, W[:, 2 * w:], b))
        return self.edge_out(self.act(pre))

    def forward(self, h: torch.Tensor, e: torch.Tensor, src: torch.Tensor,
                dst: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.edge_norm(e + self.messages(h, e, src, dst))
        agg = scatter_sum(e, dst, h.shape[0])
        h = self.node_norm(h + self.node_out(self.act(self.node_in(torch.cat([h, agg], -1)))))
        return h, e


def _mlp2(n_in: int, width: int) -> nn.Sequential:
    """Build an encoder: Linear -> LayerNorm -> GELU -> Linear."""
    return nn.Sequential(nn.Linear(n_in, width), nn.LayerNorm(width), nn.GELU(),
                         nn.Linear(width, width))


class TwoGridGNN(nn.Module):
    """Message-passing GNN with a QR head: ``(S, graph of A)`` -> orthonormal ``P``.

    Layers (``w = width``):

    * node encoder ``K -> w`` and edge encoder ``3 -> w`` (Linear, LayerNorm, GELU, Linear);
    * ``layers`` message-passing layers: messages ``m_ij = MLP([h_i, h_j, e_ij])`` become
      the new edge states (residual + LayerNorm), are summed at the receiving node with
      :func:`scatter_sum` (``index_add_``), and update the node states
      ``h_i <- LN(h_i + MLP([h_i, sum_j m_ij]))``;
    * decoder ``w -> w -> r_max`` per node (Linear, GELU, Linear): row ``i`` of the raw
      ``n x r`` basis; then a reduced QR with ``diag(R) >= 0``.

    At width 488, 5 layers, ``K = r_max = 72`` this has about 9.1M parameters (the
    authors' code's size; the paper's text quotes a 76.9M-parameter GNN). Linear weights
    use He initialisation with zero biases, as the MLP does.

    Node input scaling: :func:`~nlss_fenicsx.nn.model.input_features`, as in the MLP
    (each column of ``S`` scaled to norm ``sqrt(n)``). Edge inputs are those of
    :func:`graph_from_csr`.

    Nesting: the decoder's last Linear computes only its first ``r`` outputs when ``r`` is
    given, and QR (Gram-Schmidt) is nested, so ``forward(..., r=r)`` equals the first
    ``r`` columns of ``forward(...)`` up to rounding. The network is permutation
    equivariant (and so is QR under row permutations), so the node order does not matter;
    callers use grid order like the MLP for identical rounding.

    Parameters
    ----------
    config : GNNConfig
    """

    def __init__(self, config: GNNConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.node_encoder = _mlp2(config.K, w)
        self.edge_encoder = _mlp2(EDGE_FEATURES, w)
        self.layers = nn.ModuleList(_MessagePassing(w) for _ in range(config.layers))
        self.decoder = nn.Sequential(nn.Linear(w, w), nn.GELU())
        self.head = nn.Linear(w, config.r_max)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise the weights as the MLP's (:func:`~nlss_fenicsx.nn.model.he_init`)."""
        he_init(self)

    def _union_graph(self, B: int, edge_index: _GraphInput,
                     edge_attr: _GraphInput) -> tuple[torch.Tensor, ...]:
        """One disjoint-union graph of the batch: node ``g`` of sample ``b`` is ``b*n + g``."""
        n = self.config.n
        if isinstance(edge_index, torch.Tensor):
            edge_index, edge_attr = [edge_index] * B, [edge_attr] * B
        edge_index, edge_attr = list(edge_index), list(edge_attr)
        if len(edge_index) != B or len(edge_attr) != B:
            raise ValueError(f"expected one edge_index and edge_attr per sample ({B}); got "
                             f"{len(edge_index)} and {len(edge_attr)}")
        for ei, ea in zip(edge_index, edge_attr, strict=True):
            if ei.ndim != 2 or ei.shape[0] != 2 or ei.dtype != torch.int64:
                raise ValueError(f"edge_index must be int64 of shape (2, E); got "
                                 f"{ei.dtype} {tuple(ei.shape)}")
            if ea.shape != (ei.shape[1], EDGE_FEATURES):
                raise ValueError(f"edge_attr must have shape (E, {EDGE_FEATURES}) = "
                                 f"({ei.shape[1]}, {EDGE_FEATURES}); got {tuple(ea.shape)}")
            if ei.numel() and (int(ei.min()) < 0 or int(ei.max()) >= n):
                raise ValueError(f"edge_index has nodes outside range({n})")
        dtype = self.head.weight.dtype
        ei = torch.cat([e + b * n for b, e in enumerate(edge_index)], dim=1)
        ea = torch.cat(edge_attr).to(dtype)
        return ei[0], ei[1], ea

    def forward(self, S: torch.Tensor, edge_index: _GraphInput, edge_attr: _GraphInput,
                r: int | None = None) -> torch.Tensor:
        """Orthonormal basis from smoothed vectors and the graph of ``A``.

        Parameters
        ----------
        S : torch.Tensor
            Smoothed vectors, shape ``(batch, n, K)`` or ``(n, K)``, in the node order of
            the graph; cast to the network's dtype.
        edge_index : torch.Tensor or sequence of torch.Tensor
            ``(2, E)`` from :func:`graph_from_csr` (shared by the batch) or one per sample.
        edge_attr : torch.Tensor or sequence of torch.Tensor
            ``(E, 3)`` edge features, matching ``edge_index``.
        r : int, optional
            Number of columns to compute, ``1 <= r <= r_max``; default ``r_max``.

        Returns
        -------
        torch.Tensor
            ``P`` with orthonormal columns, shape ``(batch, n, r)`` (or ``(n, r)``).
        """
        cfg = self.config
        r = check_forward(cfg, S, r)
        unbatched = S.ndim == 2
        if unbatched:
            S = S.unsqueeze(0)
        B = S.shape[0]
        src, dst, ea = self._union_graph(B, edge_index, edge_attr)
        x = input_features(S, self.head.weight.dtype)  # the MLP's input scaling
        h = self.node_encoder(x.reshape(B * cfg.n, cfg.K))
        e = self.edge_encoder(ea)
        for layer in self.layers:
            h, e = layer(h, e, src, dst)
        x = self.decoder(h)
        raw = nn.functional.linear(x, self.head.weight[:r], self.head.bias[:r])
        P = qr_positive(raw.reshape(B, cfg.n, r))
        return P[0] if unbatched else P


# --------------------------------------------------------------------------------------
# Model with settings and checkpoints
# --------------------------------------------------------------------------------------


class GNNModel(LearnedModel):
    """The GNN baseline with the settings its checkpoint carries.

    Parameters
    ----------
    config : GNNConfig
    net : TwoGridGNN, optional
        An existing network; a freshly initialised one by default.
    **settings
        :class:`~nlss_fenicsx.nn.checkpoint.ModelSettings` fields (``loss`` is
        ``'twogrid'``).

    Notes
    -----
    ``save``, ``load`` and the attributes are those of
    :class:`~nlss_fenicsx.nn.base.LearnedModel`.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> A = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(9, 9), format="csr")
    >>> model = GNNModel(GNNConfig(n=9, K=4, r_max=3, width=16, layers=2))
    >>> P = model.basis(np.random.default_rng(0).standard_normal((9, 4)), 2, A=A)
    >>> P.shape, bool(np.allclose(P.T @ P, np.eye(2), atol=1e-5))
    ((9, 2), True)
    """

    ARCH = "gnn"
    DEFAULT_LOSS = "twogrid"
    config_type = GNNConfig
    network_type = TwoGridGNN

    def basis(self, S: np.ndarray, r: int, node_order: np.ndarray | None = None, *, A=None,
              dtype=np.float64) -> np.ndarray:
        """Coarse basis ``P`` (``n x r``, orthonormal, dof order) from ``S`` and ``A``.

        Parameters
        ----------
        S : numpy.ndarray
            Smoothed vectors, shape ``(n, K)``, in dof order.
        r : int
            Rank, ``1 <= r <= r_max``.
        node_order : numpy.ndarray of int, optional
            ``node_order[i]`` is the dof of input node ``i``; ``S`` and ``A`` are permuted
            to node order for the network and ``P`` is mapped back. The network is
            permutation equivariant, so this changes only rounding. ``None``: dof order.
        A : scipy.sparse matrix
            The operator in dof order (``pdes.System.A_csr``). Required: the GNN's graph.
        dtype : numpy dtype
            Of ``P``, the ``(n, r)`` result.

        Raises
        ------
        ValueError
            If ``A`` is missing or not ``n x n``, ``S`` is not a finite ``(n, K)`` array,
            ``r`` is out of range, or ``node_order`` is not a permutation.
        """
        S, r, order = self.check_input(S, r, node_order)
        cfg = self.config
        if A is None:
            raise ValueError("the GNN coarse space needs the operator: call "
                             "GNNModel.basis(S, r, node_order, A=A_csr)")
        A = sp.csr_matrix(A)
        if A.shape != (cfg.n, cfg.n):
            raise ValueError(f"model was trained for n={cfg.n}; got A of shape {A.shape}")
        if order is not None:
            S = S[order]
            A = A[order][:, order]
        edge_index, edge_attr = graph_from_csr(A)
        param = next(self.net.parameters())
        with torch.inference_mode():
            S_t = torch.as_tensor(np.ascontiguousarray(S), dtype=param.dtype, device=param.device)
            P_node = self.net(S_t, edge_index.to(param.device), edge_attr.to(param.device),
                              r=r).cpu().numpy().astype(dtype)
        return self.to_dof_order(P_node, order)
