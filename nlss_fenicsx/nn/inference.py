"""The learned coarse space inside the PETSc preconditioner.

``load_model`` keeps loaded checkpoints in memory (keyed by path, size and modification
time), so a model is read once per process, not once per solve: model loading is not a
per-instance cost. ``learned_basis`` gathers ``S`` to rank 0, runs the network there in
grid order, and scatters the rows of ``P`` back to their owners.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from nlss_fenicsx.nn.model import CheckpointError, NLSSModel

__all__ = ["clear_model_cache", "learned_basis", "load_model"]

_CACHE: dict[str, tuple[tuple[int, int], NLSSModel]] = {}


def load_model(path: str | os.PathLike) -> NLSSModel:
    """Load a checkpoint once per process (reloaded if the file changes)."""
    p = Path(path).expanduser().resolve()
    try:
        st = p.stat()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {p}") from None
    key = (st.st_size, st.st_mtime_ns)
    hit = _CACHE.get(str(p))
    if hit is not None and hit[0] == key:
        return hit[1]
    model = NLSSModel.load(p)
    model.net.eval()
    _CACHE[str(p)] = (key, model)
    return model


def clear_model_cache() -> None:
    """Forget every loaded model."""
    _CACHE.clear()


def learned_basis(A, comm, S_local: np.ndarray, opts, grid_order: np.ndarray) -> np.ndarray:
    """This rank's rows of ``P`` from the model in ``opts.model``.

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
        except (CheckpointError, ValueError) as err:
            error = err
    error = comm.bcast(error, root=0)
    if error is not None:
        raise error
    blocks = comm.gather(np.ascontiguousarray(S_local), root=0)
    if comm.rank == 0:
        S = np.concatenate(blocks, axis=0)  # ranks own consecutive row ranges
        P = model.basis(S, opts.rank, grid_order=grid_order)
        bounds = np.cumsum([0] + [len(b) for b in blocks])
        parts = [P[bounds[i]:bounds[i + 1]] for i in range(comm.size)]
    else:
        parts = None
    return comm.scatter(parts, root=0)
