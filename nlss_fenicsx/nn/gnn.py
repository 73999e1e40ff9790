"""The GNN baseline (Luz et al. 2020 style): a message-passing network on the graph of ``A``.

The paper compares NeuraLSP with a graph neural network trained on the loss of Luz et al.
(2020), the two-grid error-propagation norm :math:`\\|S_J C S_J\\|_F^2` (Jacobi smoother
:math:`S_J`, Galerkin coarse correction :math:`C`). Following the authors' code, the GNN
sees the rows of ``S`` as node inputs and the entries ``a_ij`` as edge inputs, runs five
message-passing layers of width 488 and decodes a dense ``n x r`` basis. It is written in
plain PyTorch: aggregation is a sum with :meth:`torch.Tensor.index_add_` (no
``torch_scatter``).

Pieces:

* :func:`graph_from_csr` -- edge list and edge features from a SciPy matrix.
* :class:`NLSSGNN` -- the torch module: ``(S, edge_index, edge_attr) -> P`` (orthonormal).
* :class:`GNNModel` -- the module plus checkpoint metadata, with the NumPy entry point
  :meth:`GNNModel.basis` (which, unlike the MLP's, needs ``A``).
* :func:`train_gnn` / :class:`GNNTrainConfig` -- training on a fresh instance per step,
  resumable, with atomic checkpoints; :func:`train_gnn_cli` is ``nlss-fenicsx train
  --arch gnn``.

Checkpoint format (one ``torch.save`` dictionary, loadable with ``weights_only=True``; the
tag differs from the MLP's so :func:`nlss_fenicsx.nn.inference.load_model` can dispatch)::

    {"format": "nlss_fenicsx.GNNModel", "format_version": 1,
     "state_dict": {...}, "metadata": {...}, "optimizer": dict | None, "step": int | None}
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from nlss_fenicsx.nn.data import TEST_SEED_OFFSET, DataConfig, instance, instance_seed
from nlss_fenicsx.nn.losses import twogrid_error_loss
from nlss_fenicsx.nn.model import (
    CheckpointError,
    NLSSModel,
    _plain,
    finish_load,
    read_checkpoint,
    write_checkpoint,
)
from nlss_fenicsx.nn.train import peak_rss_mib, run_steps

__all__ = [
    "EDGE_FEATURES",
    "GNNConfig",
    "GNNModel",
    "GNNTrainConfig",
    "NLSSGNN",
    "graph_from_csr",
    "scatter_sum",
    "train_gnn",
    "train_gnn_cli",
]

CHECKPOINT_FORMAT = "nlss_fenicsx.GNNModel"
CHECKPOINT_VERSION = 1
EDGE_FEATURES = 3  # a_ij / sqrt(a_ii a_jj), a_ij / max|a|, [i == j]
EXACT_LOSS_MAX_N = 1024  # above this the training loss is a Hutchinson estimate
DEFAULT_PROBES = 8
PAPER_LR = 1e-4  # the paper's (and the authors' code's) Adam learning rate for the GNN

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


def _orthonormalize(raw: torch.Tensor) -> torch.Tensor:
    """Reduced QR with ``diag(R) >= 0`` (unique and continuous, as in the MLP's head)."""
    Q, R = torch.linalg.qr(raw, mode="reduced")
    signs = torch.sign(torch.diagonal(R, dim1=-2, dim2=-1))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return Q * signs.unsqueeze(-2)


# --------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GNNConfig:
    """Architecture of :class:`NLSSGNN`.

    Parameters
    ----------
    n : int
        Number of unknowns (nodes), ``(N + 1)**2`` on the paper's meshes.
    K : int
        Number of smoothed vectors (node input features).
    r_max : int
        Number of basis columns decoded per node; ``1 <= r_max <= K``.
    width : int, default 488
        Width of node and edge states (the authors' code).
    layers : int, default 5
        Number of message-passing layers.

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
        for name in ("n", "K", "r_max", "width", "layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"GNNConfig.{name} must be a positive integer; got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.K > self.n:
            raise ValueError(f"GNNConfig needs K <= n (no more smoothed vectors than unknowns); "
                             f"got K={self.K}, n={self.n}")
        if self.r_max > self.K:
            raise ValueError(f"GNNConfig needs 1 <= r_max <= K (the rank trained for is at most "
                             f"K); got r_max={self.r_max}, K={self.K}")

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
    """Encoder: Linear -> LayerNorm -> GELU -> Linear."""
    return nn.Sequential(nn.Linear(n_in, width), nn.LayerNorm(width), nn.GELU(),
                         nn.Linear(width, width))


class NLSSGNN(nn.Module):
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

    Node input scaling: as in :class:`nlss_fenicsx.nn.NLSSMLP`, each column of ``S`` is
    scaled to unit 2-norm and multiplied by ``sqrt(n)`` (entries O(1) whatever the scale
    of ``S``); all-zero columns stay zero. Edge inputs are those of :func:`graph_from_csr`.

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
        """He initialisation of every Linear layer, zero biases, unit LayerNorms."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()

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
        r = cfg.r_max if r is None else int(r)
        if not 1 <= r <= cfg.r_max:
            raise ValueError(f"r must satisfy 1 <= r <= r_max={cfg.r_max}; got r={r}")
        if S.ndim not in (2, 3) or tuple(S.shape[-2:]) != (cfg.n, cfg.K):
            raise ValueError(f"model was built for S of shape (batch, {cfg.n}, {cfg.K}) or "
                             f"({cfg.n}, {cfg.K}); got S of shape {tuple(S.shape)}")
        unbatched = S.ndim == 2
        if unbatched:
            S = S.unsqueeze(0)
        B = S.shape[0]
        src, dst, ea = self._union_graph(B, edge_index, edge_attr)
        S = S.to(self.head.weight.dtype)
        norms = torch.linalg.vector_norm(S, dim=-2, keepdim=True)
        norms = torch.where(norms > 0, norms, torch.ones_like(norms))
        h = self.node_encoder((S * (math.sqrt(cfg.n) / norms)).reshape(B * cfg.n, cfg.K))
        e = self.edge_encoder(ea)
        for layer in self.layers:
            h, e = layer(h, e, src, dst)
        x = self.decoder(h)
        raw = nn.functional.linear(x, self.head.weight[:r], self.head.bias[:r])
        P = _orthonormalize(raw.reshape(B, cfg.n, r))
        return P[0] if unbatched else P


# --------------------------------------------------------------------------------------
# Model with metadata and checkpoints
# --------------------------------------------------------------------------------------


def _check_grid_order(grid_order, n: int) -> np.ndarray:
    grid_order = np.asarray(grid_order)
    if (grid_order.shape != (n,) or not np.issubdtype(grid_order.dtype, np.integer)
            or not np.array_equal(np.sort(grid_order), np.arange(n))):
        raise ValueError(f"grid_order must be a permutation of range({n}); got an array of "
                         f"shape {grid_order.shape} and dtype {grid_order.dtype}")
    return grid_order


class GNNModel:
    """The GNN baseline with the metadata its checkpoint carries (mirrors ``NLSSModel``).

    Parameters
    ----------
    config : GNNConfig
    N : int, optional
        Mesh resolution trained on (``n = (N + 1)**2``).
    pde : str, optional
        PDE family.
    preset : str, optional
        Coefficient preset of the family.
    extra : dict, optional
        Further plain-python metadata (training config, history, timings).
    net : NLSSGNN, optional
        An existing network; a freshly initialised one by default.

    Attributes
    ----------
    net : NLSSGNN
    metadata : dict
        ``arch='gnn', n, K, r_max, N, pde, preset, loss='twogrid', version,
        torch_version, config, extra``.
    path : pathlib.Path or None
    step : int or None
    optimizer_state : dict or None

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> A = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(9, 9), format="csr")
    >>> model = GNNModel(GNNConfig(n=9, K=4, r_max=3, width=16, layers=2))
    >>> P = model.basis(np.random.default_rng(0).standard_normal((9, 4)), 2, A=A)
    >>> P.shape, bool(np.allclose(P.T @ P, np.eye(2), atol=1e-5))
    ((9, 2), True)
    """

    def __init__(self, config: GNNConfig, *, N: int | None = None, pde: str | None = None,
                 preset: str | None = None, extra: dict[str, Any] | None = None,
                 net: NLSSGNN | None = None) -> None:
        from nlss_fenicsx import __version__

        if net is None:
            net = NLSSGNN(config)
        elif net.config != config:
            raise ValueError(f"net was built for {net.config}, which differs from {config}")
        self.config = config
        self.net = net
        self.metadata: dict[str, Any] = _plain({
            "arch": "gnn", "n": config.n, "K": config.K, "r_max": config.r_max, "N": N,
            "pde": pde, "preset": preset, "loss": "twogrid", "version": __version__,
            "torch_version": torch.__version__, "config": config.to_dict(),
            "extra": dict(extra or {}),
        }, "metadata")
        self.path: Path | None = None
        self.step: int | None = None
        self.optimizer_state: dict[str, Any] | None = None

    def __repr__(self) -> str:
        m, c = self.metadata, self.config
        return (f"GNNModel(n={c.n}, K={c.K}, r_max={c.r_max}, width={c.width}, "
                f"layers={c.layers}, pde={m['pde']!r}, parameters={self.num_parameters()})")

    # Same accessors, checks and messages as the MLP's (they read only config, metadata,
    # path and net).
    n = NLSSModel.n
    K = NLSSModel.K
    r_max = NLSSModel.r_max
    check_compatible = NLSSModel.check_compatible
    num_parameters = NLSSModel.num_parameters
    to = NLSSModel.to

    def basis(self, S: np.ndarray, r: int, grid_order: np.ndarray | None = None,
              A=None) -> np.ndarray:
        """Coarse basis ``P`` (``n x r``, orthonormal, float64, dof order) from ``S`` and ``A``.

        Parameters
        ----------
        S : numpy.ndarray
            Smoothed vectors, shape ``(n, K)``, in dof order.
        r : int
            Rank, ``1 <= r <= r_max``.
        grid_order : numpy.ndarray of int, optional
            ``grid_order[g]`` is the dof of grid node ``g``; ``S`` and ``A`` are permuted to
            grid order for the network and ``P`` is mapped back. ``None``: dof order is
            grid order.
        A : scipy.sparse matrix
            The operator in dof order (``pdes.System.A_csr``). Required: the GNN's graph.

        Returns
        -------
        numpy.ndarray
            ``P`` of shape ``(n, r)``, float64.

        Raises
        ------
        ValueError
            If ``A`` is missing or not ``n x n``, ``S`` is not ``(n, K)``, ``r`` is out of
            range, or ``grid_order`` is not a permutation.
        """
        cfg = self.config
        if A is None:
            raise ValueError("the GNN coarse space needs the operator: call "
                             "GNNModel.basis(S, r, grid_order=..., A=A_csr)")
        A = sp.csr_matrix(A)
        if A.shape != (cfg.n, cfg.n):
            raise ValueError(f"model was trained for n={cfg.n}; got A of shape {A.shape}")
        S = np.asarray(S)
        if S.ndim != 2 or S.shape != (cfg.n, cfg.K):
            raise ValueError(f"model was trained for n={cfg.n}, K={cfg.K}; got S of shape "
                             f"{S.shape}")
        if isinstance(r, bool) or not isinstance(r, int | np.integer) or not 1 <= r <= cfg.r_max:
            raise ValueError(f"r must satisfy 1 <= r <= r_max={cfg.r_max}; got r={r!r}")
        if grid_order is not None:
            grid_order = _check_grid_order(grid_order, cfg.n)
            S = S[grid_order]
            A = A[grid_order][:, grid_order]
        edge_index, edge_attr = graph_from_csr(A)
        param = next(self.net.parameters())
        with torch.inference_mode():
            S_t = torch.as_tensor(np.ascontiguousarray(S), dtype=param.dtype, device=param.device)
            P_grid = self.net(S_t, edge_index.to(param.device), edge_attr.to(param.device),
                              r=int(r)).cpu().numpy().astype(np.float64)
        if grid_order is None:
            return P_grid
        P = np.empty_like(P_grid)
        P[grid_order] = P_grid
        return P

    # ---------------------------------------------------------------- checkpoints
    def save(self, path: str | os.PathLike, *, optimizer: torch.optim.Optimizer | None = None,
             step: int | None = None, extra: dict[str, Any] | None = None) -> Path:
        """Write a checkpoint atomically (temporary file in the same folder, then rename).

        Parameters
        ----------
        path : str or os.PathLike
            Destination; its folder must exist.
        optimizer : torch.optim.Optimizer, optional
            Its ``state_dict`` is stored so that training can resume.
        step : int, optional
            Training step to record.
        extra : dict, optional
            Merged into ``metadata['extra']`` of the written file (``self`` is unchanged).

        Returns
        -------
        pathlib.Path
        """
        return write_checkpoint(path, CHECKPOINT_FORMAT, self, optimizer=optimizer, step=step,
                                extra=extra)

    @classmethod
    def load(cls, path: str | os.PathLike, *, map_location: Any = "cpu") -> GNNModel:
        """Read a checkpoint written by :meth:`save`.

        Raises
        ------
        CheckpointError
            If the file is missing, truncated or corrupt, of another format or format
            version, lacks required entries, or its weights do not fit its config.
        """
        path = Path(path)
        payload = read_checkpoint(path, CHECKPOINT_FORMAT, map_location=map_location)
        metadata = payload["metadata"]
        try:
            config = GNNConfig(**metadata["config"])
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path} has an invalid config: {exc}") from exc
        model = cls(config, N=metadata.get("N"), pde=metadata.get("pde"),
                    preset=metadata.get("preset"), extra=metadata.get("extra"))
        return finish_load(model, payload, path, map_location)


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GNNTrainConfig:
    """Everything that defines a GNN training run (stored in the checkpoint).

    Defaults follow the authors' code: N=64, K=72, r_max=72, 1000 steps of one fresh
    instance each, Adam with learning rate 1e-4, width 488, 5 layers, loss
    :math:`\\|S_J C S_J\\|_F^2 / n` with one weighted-Jacobi sweep (``nu``) on each side.

    ``probes=None`` uses the exact dense loss when ``n <= 1024`` and a Hutchinson
    estimate with 8 Rademacher probes above (N=64: n=4225); an integer forces that many
    probes. ``omega`` is the Jacobi weight of both the smoothing of ``S`` and the loss.
    """

    pde: str = "diffusion"
    N: int = 64
    K: int = 72
    r_max: int = 72
    steps: int = 1000
    lr: float = PAPER_LR
    batch: int = 1
    seed: int = 0
    preset: str = "default"
    width: int = 488
    layers: int = 5
    nu: int = 1
    omega: float = 0.66
    sweeps: int = 10
    probes: int | None = None
    n_eval: int = 2
    eval_every: int = 100
    ckpt_every: int = 100

    def __post_init__(self):
        for name in ("steps", "batch", "eval_every", "ckpt_every", "r_max", "n_eval"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.nu < 0:
            raise ValueError(f"nu must be >= 0, got {self.nu}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.probes is not None and self.probes < 1:
            raise ValueError(f"probes must be a positive integer or None, got {self.probes}")
        self.data  # noqa: B018 - validates pde, preset, N and K
        self.gnn  # noqa: B018 - validates r_max, width and layers

    @property
    def data(self) -> DataConfig:
        return DataConfig(pde=self.pde, N=self.N, K=self.K, sweeps=self.sweeps,
                          omega=self.omega, preset=self.preset)

    @property
    def gnn(self) -> GNNConfig:
        return GNNConfig(n=(self.N + 1) ** 2, K=self.K, r_max=self.r_max, width=self.width,
                         layers=self.layers)

    @property
    def loss_probes(self) -> int | None:
        """Probes the loss uses: ``None`` (exact) or a count (Hutchinson)."""
        if self.probes is not None:
            return self.probes
        return None if (self.N + 1) ** 2 <= EXACT_LOSS_MAX_N else DEFAULT_PROBES

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GNNTrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _instance_tensors(cfg: GNNTrainConfig, seed: int):
    """One instance in grid order: ``S`` (n, K), the graph of A, and A as float64 torch COO."""
    problem, S = instance(cfg.data, seed)
    edge_index, edge_attr = graph_from_csr(problem.A)
    coo = problem.A.tocoo()
    A_t = torch.sparse_coo_tensor(np.stack([coo.row, coo.col]).astype(np.int64),
                                  coo.data.astype(np.float64), coo.shape,
                                  check_invariants=False).coalesce()
    return torch.from_numpy(S), edge_index, edge_attr, A_t


def _batch_loss(net, cfg: GNNTrainConfig, items, device, generator) -> torch.Tensor:
    """Mean two-grid loss over a list of instances (one forward for the whole batch)."""
    S = torch.stack([it[0] for it in items]).to(device)
    P = net(S, [it[1].to(device) for it in items], [it[2].to(device) for it in items])
    losses = [twogrid_error_loss(it[3].to(device), P[b].double(), nu=cfg.nu, omega=cfg.omega,
                                 probes=cfg.loss_probes, generator=generator)
              for b, it in enumerate(items)]
    return torch.stack(losses).mean()


def _resume_gnn(out: Path, cfg: GNNTrainConfig, device) -> GNNModel | None:
    if not out.exists():
        return None
    try:
        model = GNNModel.load(out, map_location=device)
    except CheckpointError as err:
        raise CheckpointError(f"cannot resume from {out}: {err}; delete it or choose another "
                              "--out") from err
    saved = model.metadata.get("extra", {}).get("train_config")
    if saved is None or GNNTrainConfig.from_dict(saved) != cfg:
        diff = sorted(k for k, v in cfg.as_dict().items() if (saved or {}).get(k) != v)
        raise CheckpointError(f"checkpoint {out} was trained with different settings "
                              f"({', '.join(diff) or 'unknown'}); use another --out or the "
                              "same settings to resume")
    return model


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def train_gnn(cfg: GNNTrainConfig, out: str | Path, *, device: str = "cpu", resume: bool = True,
              progress: bool = True, log=print) -> GNNModel:
    """Train (or resume) the GNN baseline and write its checkpoint to ``out``.

    Step ``t`` draws instance ``instance_seed(seed, t)`` (``batch`` consecutive ones per
    step) with :func:`nlss_fenicsx.nn.data.instance` (A and S in grid order), and takes an
    Adam step on :func:`nlss_fenicsx.nn.losses.twogrid_error_loss` evaluated in float64
    (Hutchinson probes drawn from a per-step seed, so a resumed run is the same run).
    Every ``eval_every`` steps the loss on ``n_eval`` held-out instances (fixed probes) is
    recorded in the history.

    Parameters
    ----------
    cfg : GNNTrainConfig
    out : path
        Checkpoint file (its folder is created); written atomically every
        ``cfg.ckpt_every`` steps, at the end and on interruption (Ctrl-C, SIGTERM). An
        existing file with the same settings is resumed; other settings raise
        :class:`~nlss_fenicsx.nn.model.CheckpointError`.
    device : {'cpu', 'cuda'} or torch.device
    resume : bool
        Continue from ``out`` if it exists (else start over and overwrite).
    progress : bool
        Show a progress bar with the loss.
    log : callable
        Where evaluation lines go (when there is no progress bar).

    Returns
    -------
    GNNModel
        The trained model; ``metadata['extra']`` holds ``train_config``, ``history``,
        ``train_seconds``, ``peak_rss_mib`` and ``device``.
    """

    out = Path(out)
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA device")
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = _resume_gnn(out, cfg, device) if resume else None
    start = 0
    if model is None:
        model = GNNModel(cfg.gnn, N=cfg.N, pde=cfg.pde, preset=cfg.preset,
                         extra={"train_config": cfg.as_dict()})
    else:
        start = int(model.step or 0)
    net = model.net.to(device)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    if model.optimizer_state is not None:
        opt.load_state_dict(model.optimizer_state)
    extra = dict(model.metadata.get("extra", {}))
    history = list(extra.get("history", []))
    elapsed = float(extra.get("train_seconds", 0.0))

    def batch_at(t: int) -> list:
        return [_instance_tensors(cfg, instance_seed(cfg.seed, t * cfg.batch + k))
                for k in range(cfg.batch)]

    held_out = [_instance_tensors(cfg, instance_seed(cfg.seed + TEST_SEED_OFFSET, i))
                for i in range(cfg.n_eval)]

    def save(step: int, seconds: float) -> None:
        extra.update(history=history, train_seconds=elapsed + seconds,
                     peak_rss_mib=peak_rss_mib(), device=str(device))
        model.save(out, optimizer=opt, step=step, extra=extra)

    def step_fn(items: list, step: int) -> float:
        loss = _batch_loss(net, cfg, items, device,
                           _generator(device, instance_seed(cfg.seed + 7, step)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.item())

    def eval_fn(step: int, loss: float) -> str:
        net.eval()
        with torch.no_grad():
            ev = float(_batch_loss(net, cfg, held_out, device,
                                   _generator(device, cfg.seed + 11)))
        net.train()
        history.append({"step": step, "loss": loss, "eval_loss": ev})
        return f"step {step}: loss {loss:.4f}, held-out loss {ev:.4f}"

    step, _ = run_steps(start=start, steps=cfg.steps, batch_at=batch_at, step_fn=step_fn,
                        eval_fn=eval_fn, eval_every=cfg.eval_every, ckpt_every=cfg.ckpt_every,
                        save=save, where=out, desc=f"train {cfg.pde} gnn", progress=progress,
                        log=log)
    net.eval()
    model.step = step
    model.metadata["extra"] = extra
    return model


def train_gnn_cli(args) -> int:
    """``nlss-fenicsx train --arch gnn``: build a :class:`GNNTrainConfig` from ``args``.

    Mapping of the shared ``train`` options: ``--hidden W`` is the GNN width (one integer;
    default 488); ``--rank`` is ``r_max``; ``--lr`` defaults to the paper's GNN rate 1e-4;
    ``--loss`` does not apply (the GNN trains on the two-grid loss) and ``--loss subspace``
    or ``--protocol dataset`` is an error. Default output:
    ``models/{pde}_N{N}_K{K}_r{rank}_gnn.pt``.

    Returns
    -------
    int
        Exit status 0; bad input raises ``ValueError`` (the CLI prints one line, exit 2).
    """
    width = GNNTrainConfig.width
    if args.hidden:
        try:
            width = int(str(args.hidden).strip())
        except ValueError:
            raise ValueError(f"--arch gnn takes --hidden WIDTH (one integer, the width of the "
                             f"message-passing layers); got {args.hidden!r}") from None
    if getattr(args, "protocol", "code") != "code":
        raise ValueError("--arch gnn trains on a fresh instance per step (--protocol code); "
                         f"got --protocol {args.protocol}")
    if getattr(args, "loss", "nlss") != "nlss":
        raise ValueError(f"--arch gnn trains on the two-grid loss ||S_J C S_J||_F^2; "
                         f"--loss {args.loss} does not apply")
    lr = PAPER_LR if args.lr is None else args.lr
    cfg = GNNTrainConfig(pde=args.pde, N=args.N, K=args.K, r_max=args.rank, steps=args.steps,
                         lr=lr, batch=args.batch, seed=args.seed, preset=args.preset,
                         width=width)
    out = args.out or Path(f"models/{args.pde}_N{args.N}_K{args.K}_r{args.rank}_gnn.pt")
    t0 = time.perf_counter()
    model = train_gnn(cfg, out, device=args.device, resume=not args.restart,
                      progress=not args.no_progress)
    extra = model.metadata["extra"]
    last = extra["history"][-1] if extra.get("history") else {}
    print(f"wrote {out}: GNN width {cfg.width}, {cfg.layers} layers, "
          f"{model.num_parameters():,} parameters, step {model.step}, "
          f"{extra.get('train_seconds', 0):.1f} s training "
          f"({time.perf_counter() - t0:.1f} s wall), peak RSS {peak_rss_mib():.0f} MiB")
    if last:
        print(f"held-out two-grid loss ||S_J C S_J||_F^2/n: {last['eval_loss']:.4f} "
              f"({cfg.n_eval} instances, {'exact' if cfg.loss_probes is None else 'Hutchinson'})")
    return 0
