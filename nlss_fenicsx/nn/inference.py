"""The learned coarse space inside the PETSc preconditioner.

``load_model`` keeps loaded checkpoints in memory (keyed by path, size and modification
time), so a model is read once per process, not once per solve: model loading is not a
per-instance cost. ``learned_basis`` gathers ``S`` to rank 0, runs the network there in
grid order, and scatters the rows of ``P`` back to their owners.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from nlss_fenicsx.nn.gnn import CHECKPOINT_FORMAT as GNN_FORMAT
from nlss_fenicsx.nn.gnn import GNNModel
from nlss_fenicsx.nn.model import CheckpointError, NLSSModel

__all__ = ["clear_model_cache", "learned_basis", "load_model"]

_CACHE: dict[str, tuple[tuple[int, int, int], NLSSModel | GNNModel]] = {}


def load_model(path: str | os.PathLike) -> NLSSModel | GNNModel:
    """Load a checkpoint once per process (reloaded if the file changes).

    Dispatches on the checkpoint's format tag: a GNN checkpoint gives a
    :class:`nlss_fenicsx.nn.gnn.GNNModel`, anything else an :class:`NLSSModel`.
    """
    # Keyed by the absolute path as given (string operations and one stat: this runs in
    # every solve's set-up); symlinks are resolved only to load.
    where = os.path.abspath(os.path.expanduser(os.fspath(path)))
    try:
        st = os.stat(where)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {Path(where).resolve()}") from None
    key = (st.st_size, st.st_mtime_ns, st.st_ino)
    hit = _CACHE.get(where)
    if hit is not None and hit[0] == key:
        return hit[1]
    p = Path(where).resolve()
    model = _model_class(p).load(p)
    model.net.eval()
    _CACHE[where] = (key, model)
    return model


def _model_class(path: Path) -> type[NLSSModel] | type[GNNModel]:
    """``GNNModel`` for a GNN checkpoint (by its format tag), else ``NLSSModel``."""
    import torch

    try:  # mmap: reads the small "format" entry without loading the weights
        fmt = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("format")
    except Exception:  # unreadable: NLSSModel.load raises the clear CheckpointError
        return NLSSModel
    return GNNModel if fmt == GNN_FORMAT else NLSSModel


def clear_model_cache() -> None:
    """Forget every loaded model."""
    _CACHE.clear()


def learned_basis(A, comm, S_local: np.ndarray, opts, grid_order: np.ndarray,
                  timings: dict | None = None) -> np.ndarray:
    """This rank's rows of ``P`` from the model in ``opts.model`` (float32 from an MLP,
    float64 from a GNN; the caller copies them into PETSc's float64 dense matrix).

    Parameters
    ----------
    A : petsc4py.PETSc.Mat
        The operator (for its size and row ownership).
    comm : mpi4py.MPI.Comm
    S_local : numpy.ndarray
        This rank's rows of ``S`` (dof order).
    opts : nlss_fenicsx.petsc.PCOptions
    grid_order : numpy.ndarray
        ``grid_order[g]`` is the global dof of grid node ``g``.
    timings : dict, optional
        Receives this rank's seconds in ``gather`` (S to rank 0), ``model`` (the network
        on rank 0, grid-order permutations included) and ``scatter`` (rows of P back to
        their owners). Rank 0's figures are the meaningful ones: elsewhere ``model`` is
        about 0 and ``scatter`` includes the wait for rank 0's model.
    """
    n = A.getSize()[0]
    model = None
    error = None
    if comm.rank == 0:
        try:
            model = load_model(opts.model)
            model.check_compatible(n=n, K=opts.K, pde=opts.pde)
            if opts.rank > model.r_max:
                raise CheckpointError(f"nlss_rank {opts.rank} exceeds the model's r_max "
                                      f"{model.r_max} ({opts.model})")
            if isinstance(model, GNNModel) and comm.size > 1:
                raise ValueError("gnn coarse space is serial-only (its graph is built from "
                                 "the whole matrix on one rank); run it without mpiexec")
        except (CheckpointError, ValueError) as err:
            error = err
    if comm.size > 1:
        error = comm.bcast(error, root=0)
    if error is not None:
        raise error
    if comm.size == 1:  # serial: no gather or scatter (and no pickled copies of S and P)
        t0 = time.perf_counter()
        P = _model_basis(model, A, S_local, opts, grid_order)
        if timings is not None:
            timings.update(gather=0.0, model=time.perf_counter() - t0, scatter=0.0)
        return P
    t0 = time.perf_counter()
    blocks = comm.gather(np.ascontiguousarray(S_local), root=0)
    if comm.rank == 0:
        S = np.concatenate(blocks, axis=0)  # ranks own consecutive row ranges
    t1 = time.perf_counter()
    if comm.rank == 0:
        P = _model_basis(model, A, S, opts, grid_order)
    t2 = time.perf_counter()
    if comm.rank == 0:
        bounds = np.cumsum([0] + [len(b) for b in blocks])
        parts = [P[bounds[i]:bounds[i + 1]] for i in range(comm.size)]
    else:
        parts = None
    P_local = comm.scatter(parts, root=0)
    if timings is not None:
        timings.update(gather=t1 - t0, model=t2 - t1, scatter=time.perf_counter() - t2)
    return P_local


def _model_basis(model, A, S, opts, grid_order):
    """The model's ``P`` for the whole ``S`` (dof order), on the rank that holds both."""
    if isinstance(model, GNNModel):  # the GNN also needs A (serial: all rows)
        from nlss_fenicsx.petsc import petsc_to_csr

        return model.basis(S, opts.rank, grid_order=grid_order, A=petsc_to_csr(A))
    # float32: P is copied into PETSc's float64 dense matrix anyway, which converts it.
    return model.basis(S, opts.rank, grid_order=grid_order,
                       precision=getattr(opts, "precision", "float32"), dtype=np.float32)
