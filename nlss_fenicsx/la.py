"""PETSc linear-algebra helpers: SciPy and dense views, node order, near-nullspace, errors.

The PETSc-facing stage below :mod:`nlss_fenicsx.pdes` and :mod:`nlss_fenicsx.petsc`, as
DOLFINx keeps ``la/petsc.py`` beside ``fem/petsc.py``. Everything here works on the rows a
rank owns (PETSc's row distribution) and is collective over the matrix's communicator where
it says so.

Node order. ``node_order[i]`` is the global dof of input node ``i`` (the mesh's input node
index, which dolfinx keeps and which does not depend on the partition; see
:func:`nlss_fenicsx.meshes.node_order`). It is attached to the operator with
:func:`attach_node_order`, and it is what makes the random start of ``S`` and the learned
coarse space independent of the number of ranks. On the jittered unit square the input
node index is the grid index, so node order there equals grid order.

Collective errors. A check that fails on one rank only must not leave the other ranks
waiting in the next collective operation: :func:`collective` and
:func:`raise_collectively` turn any rank's exception into the same exception on every rank.
They, :func:`check_converged` and :func:`python_errors` live in the private
``nlss_fenicsx._errors`` (no petsc4py needed to import it) and are re-exported here.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from nlss_fenicsx._errors import (
    check_converged,
    collective,
    converged_reason_name,
    python_errors,
    raise_collectively,
)
from nlss_fenicsx._fenicsx import MPI, PETSc
from nlss_fenicsx.relaxation import lambda_max_estimate, start_vector
from nlss_fenicsx.smoothing import RENORM_EVERY, gaussian_start

__all__ = [
    "MESH_ID_KEY",
    "NODE_ORDER_KEY",
    "attach_grid_order",
    "attach_node_order",
    "check_converged",
    "collective",
    "converged_reason_name",
    "dense_from_rows",
    "lambda_max_petsc",
    "mat_from_rows",
    "near_nullspace_rows",
    "node_order_of",
    "petsc_to_csr",
    "python_errors",
    "raise_collectively",
    "smoothed_vectors_petsc",
    "start_block",
]

NODE_ORDER_KEY = "nlss_node_order"
MESH_ID_KEY = "nlss_mesh_id"  # meshes.mesh_id of the mesh, when attached from a space


def _comm_of(A):
    return A.getComm().tompi4py()


# ------------------------------------------------------------------ SciPy and dense views


def petsc_to_csr(A) -> sp.csr_matrix:
    """Copy the rows of a PETSc AIJ matrix that this rank owns into a SciPy CSR matrix.

    Parameters
    ----------
    A : petsc4py.PETSc.Mat
        An AIJ matrix (sequential or MPI), global size ``(n, n)``.

    Returns
    -------
    scipy.sparse.csr_matrix, shape (n_local, n), float64
        Global column indices. Stored zeros (the pattern of zeroed Dirichlet rows and
        columns) are dropped.
    """
    indptr, indices, data = A.getValuesCSR()
    out = sp.csr_matrix((data.copy(), indices.copy(), indptr.copy()),
                        shape=(A.getLocalSize()[0], A.getSize()[1]))
    out.eliminate_zeros()
    return out


def dense_from_rows(comm, rows: np.ndarray, n_global: int):
    """Build a dense PETSc matrix (MPI dense in parallel) whose owned rows are ``rows``.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm
    rows : numpy.ndarray, shape (n_local, k)
        This rank's rows, any layout and real dtype (float32 converts during the copy).
    n_global : int
        Global number of rows.

    Returns
    -------
    petsc4py.PETSc.Mat, shape (n_global, k)

    Raises
    ------
    ValueError
        If ``rows`` is not 2-D.
    """
    rows = np.asarray(rows)
    if not np.issubdtype(rows.dtype, np.floating):
        rows = np.asarray(rows, dtype=PETSc.ScalarType)
    if rows.ndim != 2:
        raise ValueError(f"expected a 2-D block of rows, got shape {rows.shape}")
    n_local, k = rows.shape
    M = PETSc.Mat().createDense(((n_local, n_global), (PETSc.DECIDE, k)), comm=comm)
    M.setUp()
    M.getDenseArray()[:] = rows
    M.assemble()
    return M


def mat_from_rows(A, P):
    """Build the PETSc matrix of a coarse basis from this rank's rows, checked collectively.

    Parameters
    ----------
    A : petsc4py.PETSc.Mat
        The operator whose row distribution ``P`` follows, global size ``(n, n)``.
    P : numpy.ndarray or scipy.sparse matrix, shape (n_local, k)
        This rank's rows (dense: a dense PETSc matrix; sparse: AIJ).

    Returns
    -------
    petsc4py.PETSc.Mat, shape (n, k)

    Raises
    ------
    ValueError
        On every rank, if some rank's block does not have that rank's number of rows of
        ``A``, or the ranks disagree on ``k``.
    """
    comm = _comm_of(A)
    lo, hi = A.getOwnershipRange()
    n_global = A.getSize()[0]
    with collective(comm):
        if not sp.issparse(P):
            P = np.asarray(P)
        if P.ndim != 2 or P.shape[0] != hi - lo:
            raise ValueError(f"coarse basis must have this rank's {hi - lo} rows of A (n="
                             f"{n_global}) on every rank; got shape {P.shape} on rank "
                             f"{comm.rank}")
    widths = sorted(set(comm.allgather(P.shape[1])))
    if len(widths) > 1:
        raise ValueError(f"coarse basis has different numbers of columns on the ranks: {widths}")
    if not sp.issparse(P):
        return dense_from_rows(comm, P, n_global)
    P = sp.csr_matrix(P)
    P_mat = PETSc.Mat().createAIJ(size=((hi - lo, n_global), (PETSc.DECIDE, P.shape[1])),
                                  csr=(P.indptr, P.indices, P.data), comm=comm)
    P_mat.assemble()
    return P_mat


# ------------------------------------------------------------------ node order


def attach_node_order(A, V_or_order) -> np.ndarray:
    """Attach the node order to ``A``: ``order[i]`` = global dof of input node ``i``.

    The learned coarse space presents ``S`` to its network in this order, and the random
    start of ``S`` is drawn in it, so both do not depend on the partition.

    Parameters
    ----------
    A : petsc4py.PETSc.Mat
        The operator (e.g. ``LinearProblem.A``), global size ``(n, n)``.
    V_or_order : dolfinx.fem.FunctionSpace or array_like of int, shape (n,)
        A function space (collective: :func:`nlss_fenicsx.meshes.node_order` is computed,
        works on any mesh) or an explicit global order, the same on every rank.

    Returns
    -------
    numpy.ndarray, shape (n,), int64
        The attached order.

    Raises
    ------
    ValueError
        On every rank, if the order is not a permutation of ``range(n)`` on some rank.
    """
    mesh = None
    if hasattr(V_or_order, "dofmap"):
        from nlss_fenicsx.meshes import mesh_id, node_order

        order, mesh = node_order(V_or_order), mesh_id(V_or_order.mesh)
    else:
        order = V_or_order
    order = _checked_order(_comm_of(A), order, A.getSize()[0], "node order")
    A.setAttr(NODE_ORDER_KEY, order)
    A.setAttr(MESH_ID_KEY, mesh)
    return order


def attach_grid_order(A, grid_order) -> np.ndarray:
    """Attach an explicit grid order (on the unit-square grid, grid order = node order).

    ``grid_order[i + (N+1) j]`` is the global dof of grid node ``(i, j)``
    (:func:`nlss_fenicsx.meshes.grid_order`). Same as :func:`attach_node_order` with an
    array; kept for code written for the jittered square.

    Parameters
    ----------
    A : petsc4py.PETSc.Mat
    grid_order : array_like of int, shape (n,)

    Returns
    -------
    numpy.ndarray, shape (n,), int64

    Raises
    ------
    ValueError
        If ``grid_order`` is not a permutation of ``range(n)`` (on any rank).
    """
    return attach_node_order(A, np.asarray(grid_order))


def node_order_of(A) -> np.ndarray | None:
    """Return the node order attached to ``A``, or ``None`` if none is. Collective.

    Parameters
    ----------
    A : petsc4py.PETSc.Mat

    Returns
    -------
    numpy.ndarray, shape (n,), int64, or None

    Raises
    ------
    ValueError
        On every rank, if some rank's attached order is not a permutation of ``range(n)``
        (or is missing on some ranks only).
    """
    comm = _comm_of(A)
    order = A.getAttr(NODE_ORDER_KEY)
    present = comm.allgather(order is not None)
    if not any(present):
        return None
    with collective(comm):
        if order is None:
            raise ValueError("a node order is attached to the operator on some ranks only; "
                             "attach it on every rank (attach_node_order is collective)")
    return _checked_order(comm, order, A.getSize()[0], "attached node order")


def _checked_order(comm, order, n: int, what: str) -> np.ndarray:
    with collective(comm):
        arr = np.asarray(order)
        if arr.ndim != 1 or arr.size != n:
            raise ValueError(f"{what} must be a permutation of range({n}); got shape "
                             f"{arr.shape}")
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{what} must be a permutation of range({n}); got dtype "
                             f"{arr.dtype}")
        arr = arr.astype(np.int64)
        seen = np.zeros(n, dtype=bool)
        inside = (arr >= 0) & (arr < n)
        seen[arr[inside]] = True
        if not (inside.all() and seen.all()):
            raise ValueError(f"{what} must be a permutation of range({n}); got "
                             f"{int((~inside).sum())} entries out of range and "
                             f"{int(n - seen.sum())} dofs missing")
    return arr


def start_block(seed, n: int, K: int, lo: int, hi: int,
                node_order: np.ndarray | None = None) -> np.ndarray:
    """Return rows ``lo:hi`` (dof order) of the random start of ``S``, drawn in node order.

    The global ``n x K`` block :func:`nlss_fenicsx.smoothing.gaussian_start` is drawn in
    node order (row ``i`` belongs to input node ``i``, i.e. to dof ``node_order[i]``), so
    the start of every dof, and hence ``S``, does not depend on how the dofs are numbered
    or partitioned. Without a node order the rows are taken in dof order.

    Parameters
    ----------
    seed : int or numpy.random.Generator
    n, K : int
        Global shape of the block.
    lo, hi : int
        This rank's row range (dof order).
    node_order : numpy.ndarray, shape (n,), optional

    Returns
    -------
    numpy.ndarray, shape (hi - lo, K), float32

    Examples
    --------
    >>> import numpy as np
    >>> order = np.array([2, 0, 1])
    >>> Z = start_block(0, 3, 2, 0, 3, order)
    >>> bool(np.array_equal(Z[order], start_block(0, 3, 2, 0, 3)))
    True
    """
    Z = gaussian_start(seed, n, K)
    if node_order is None:
        return Z[lo:hi]
    inverse = np.empty(n, dtype=np.int64)
    inverse[node_order] = np.arange(n)  # dof -> node
    return Z[inverse[lo:hi]]


# ------------------------------------------------------------------ near-nullspace


def near_nullspace_rows(A) -> np.ndarray | None:
    """Return this rank's rows of the near-nullspace set by ``A.setNearNullSpace``.

    Parameters
    ----------
    A : petsc4py.PETSc.Mat

    Returns
    -------
    numpy.ndarray, shape (n_local, m), float64, or None
        One column per vector (the constant vector first when the MatNullSpace has it),
        e.g. the six rigid-body modes of 3-D elasticity; ``None`` when none is attached.
    """
    nsp = A.getNearNullSpace()
    if nsp is None or not nsp.handle:
        return None
    cols = [v.getArray(readonly=True).copy() for v in nsp.getVecs()]
    if nsp.hasConstant():
        cols.insert(0, np.ones(A.getLocalSize()[0]))
    if not cols:
        return None
    return np.column_stack(cols).astype(np.float64, copy=False)


# ------------------------------------------------------------------ distributed S


def smoothed_vectors_petsc(A, K: int, *, sweeps: int = 10, omega: float = 0.66,
                           seed=0, node_order: np.ndarray | None = None,
                           S0: np.ndarray | None = None) -> np.ndarray:
    """Smooth ``K`` random vectors on a PETSc matrix (distributed ``smoothed_vectors``).

    Each sweep is one sparse x dense block product ``A S`` in PETSc, then
    ``S -= omega D^{-1} A S``; every ``RENORM_EVERY`` sweeps and at the end each column is
    scaled to unit norm (norms all-reduced). The start is :func:`start_block` (drawn in
    node order when ``node_order`` is given), so ``S`` does not depend on the number of
    ranks. Collective; every failure is raised on every rank.

    Parameters
    ----------
    A : petsc4py.PETSc.Mat
        SPD, global size ``(n, n)``, with a positive finite diagonal.
    K : int
        Number of vectors.
    sweeps : int
        Jacobi sweeps.
    omega : float
        Jacobi weight.
    seed : int
        Seed of the start block.
    node_order : numpy.ndarray, shape (n,), optional
        Global node order (see the module docstring).
    S0 : numpy.ndarray, shape (n_local, K), optional
        This rank's rows of a given start instead of the random one.

    Returns
    -------
    numpy.ndarray, shape (n_local, K), float64
        This rank's rows of ``S``.

    Raises
    ------
    ValueError
        A nonpositive or non-finite diagonal, or NaN/Inf in ``A`` (seen as a non-finite
        ``S``), on every rank.
    """
    comm = _comm_of(A)
    lo, hi = A.getOwnershipRange()
    n = A.getSize()[0]
    if S0 is None:
        S0 = start_block(seed, n, K, lo, hi, node_order)
    d = A.getDiagonal().getArray().copy()
    bad = comm.allreduce(int(np.count_nonzero(~np.isfinite(d) | (d <= 0))), op=MPI.SUM)
    if bad:
        raise ValueError("smoothing needs a matrix with a positive, finite diagonal (SPD A); "
                         f"got {bad} nonpositive, NaN or Inf diagonal entries")
    scale = (omega / d)[:, None]
    S = dense_from_rows(comm, np.asarray(S0, dtype=np.float64), n)
    arr = S.getDenseArray()
    T = None
    for k in range(1, sweeps + 1):
        T = A.matMult(S, result=T)
        arr -= scale * T.getDenseArray()
        if k % RENORM_EVERY == 0 or k == sweeps:  # linear sweeps: rescaling commutes
            norms = np.sqrt(comm.allreduce(np.einsum("ij,ij->j", arr, arr), op=MPI.SUM))
            arr /= np.where(norms > 0, norms, 1.0)
    out = arr.copy()
    S.destroy()
    if T is not None:
        T.destroy()
    # An off-diagonal NaN or Inf in A reaches every column of S within a few sweeps.
    if not comm.allreduce(bool(np.all(np.isfinite(out))), op=MPI.LAND):
        raise ValueError(f"A contains NaN or Inf: the smoothed vectors S are not finite after "
                         f"{sweeps} Jacobi sweeps (expected a finite SPD matrix)")
    return out


# ------------------------------------------------------------------ lambda_max(D^-1 A)


def lambda_max_petsc(A, *, seed: int = 0, node_order: np.ndarray | None = None,
                     steps: int = 12) -> float:
    """Estimate ``lambda_max(D^-1 A)`` of a PETSc matrix by Lanczos, distributed.

    :func:`nlss_fenicsx.relaxation.lambda_max_estimate` with ``MatMult`` as the product
    and all-reduced dot products, so every rank returns the same value (from below, within
    a few per cent after 12 steps). The start vector
    :func:`nlss_fenicsx.relaxation.start_vector` is taken in node order when one is given,
    so the estimate does not depend on the number of ranks. Collective.

    Parameters
    ----------
    A : petsc4py.PETSc.Mat
        SPD, global size ``(n, n)``.
    seed : int
        Selects the start vector.
    node_order : numpy.ndarray, shape (n,), optional
    steps : int
        Lanczos steps (products with ``A``).

    Returns
    -------
    float

    Raises
    ------
    ValueError
        On every rank: a nonpositive or non-finite diagonal, NaN/Inf in ``A``, or a
        non-positive estimate (``A`` not SPD).
    """
    comm = _comm_of(A)
    n = A.getSize()[0]
    lo, hi = A.getOwnershipRange()
    d = A.getDiagonal().getArray().copy()
    bad = comm.allreduce(int(np.count_nonzero(~np.isfinite(d) | (d <= 0))), op=MPI.SUM)
    if bad:
        raise ValueError("expected an SPD matrix with a positive, finite diagonal; got "
                         f"{bad} nonpositive, NaN or Inf diagonal entries")
    x, y = A.createVecRight(), A.createVecLeft()

    def matvec(v):
        x.setArray(v)
        A.mult(x, y)
        return y.getArray().copy()

    def dot(u, v):
        return comm.allreduce(float(np.dot(u, v)), op=MPI.SUM)

    if comm.size == 1:  # an allreduce costs more than the dot product itself
        dot = None

    if node_order is None:
        x0 = start_vector(n, lo, hi, seed=seed)
    else:
        inverse = np.empty(n, dtype=np.int64)
        inverse[node_order] = np.arange(n)  # dof -> node
        x0 = start_vector(n, seed=seed)[inverse[lo:hi]]
    try:
        return lambda_max_estimate(matvec, 1.0 / d, x0, dot=dot, steps=steps)
    finally:
        x.destroy()
        y.destroy()
