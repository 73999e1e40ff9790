"""Coarse bases for the two-grid preconditioner, and ONE dispatcher that builds any of them.

:func:`coarse_basis` is the single entry point (used by the PETSc PC, the SciPy path and the
benchmarks); it works on this rank's rows and is collective over ``comm``. The kinds:

==========  =========================================================================
``svd``     ``U_r`` of the smoothed vectors ``S`` (the paper's baseline and the NLSS
            target, section 3.3): LAPACK SVD serially, the Gram route in parallel
``sa``      PyAMG smoothed aggregation's prolongator (the paper's SA-AMG baseline);
            serial only; uses the near-nullspace as its candidate vectors ``B``
``sine``    the ``r`` lowest Dirichlet sine modes of the unit-square grid (free)
``eig-ref`` the ``r`` lowest eigenvectors of a reference operator, computed once per
            mesh and cached in-process ("compute once, solve many")
``eig``     the instance's own ``r`` lowest eigenvectors: an oracle for comparison,
            not a practical method (it costs an eigensolve per instance)
            (eig and eig-ref skip identity (Dirichlet) rows: their eigenvalue 1 is an
            artefact of the diagonal value, not a smooth mode)
``fixed``   a basis file (:func:`save_basis`) built once per family or mesh
``nlss``    a learned model (``nn.inference.load_model``) applied to ``S``
``corrected`` the sine basis plus the instance's first-order homogenisation corrector
            (:mod:`nlss_fenicsx.corrector`: two approximate solves per instance; with
            ``model``, a learned per-node weighting of it); unit square only
==========  =========================================================================

For every kind but ``sa`` a given near-nullspace (e.g. rigid-body modes) is appended to
the basis and orthonormalised against it (:func:`append_near_nullspace`).

Collective errors. Every check runs on every rank and any rank's failure is raised, as the
same one-line exception, on all ranks (no rank waits in a collective for ever). Kinds that
need the whole matrix or ``S`` (eig-ref, eig, fixed, nlss) gather to rank 0, compute there
and scatter the rows back; a failure on rank 0 is broadcast.

The bases themselves live in :mod:`nlss_fenicsx.bases` (SVD, smoothed aggregation,
near-nullspace), :mod:`nlss_fenicsx.spectral` (sine, eigenvectors, the eig-ref cache) and
:mod:`nlss_fenicsx.basisfile` (basis files); their public functions are re-exported here.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from nlss_fenicsx import spectral
from nlss_fenicsx._checks import check_int, check_real_array, reject_complex
from nlss_fenicsx._errors import collective, raise_collectively
from nlss_fenicsx.bases import (
    allsum,
    append_near_nullspace,
    sa_amg_basis,
    svd_basis,
    svd_basis_from_gram,
)
from nlss_fenicsx.basisfile import load_basis, save_basis
from nlss_fenicsx.spectral import sine_basis

__all__ = [
    "COARSE_KINDS",
    "append_near_nullspace",
    "clear_reference_cache",
    "coarse_basis",
    "load_basis",
    "rank_limit",
    "sa_amg_basis",
    "save_basis",
    "sine_basis",
    "svd_basis",
    "svd_basis_from_gram",
]

COARSE_KINDS = ("svd", "sa", "sine", "eig-ref", "eig", "fixed", "nlss", "corrected")

# eig-ref: the reference eigenvectors of the meshes met in this process.
_REFERENCE = spectral.ReferenceCache()


def rank_limit(kind: str, A_local, *, lo: int = 0, comm=None) -> int:
    """Return the largest coarse rank ``r`` that ``kind`` can build for this matrix.

    ``n`` for most kinds; ``(N - 1)^2`` interior modes for ``sine`` on the ``(N+1)^2``
    grid; for ``eig`` and ``eig-ref`` one less than the unknowns that are not Dirichlet
    (identity) rows, whose eigenvectors they take. Collective when ``comm`` is given.

    Parameters
    ----------
    kind : str
        One of :data:`COARSE_KINDS`.
    A_local : scipy.sparse matrix, shape (n_local, n)
        This rank's rows of ``A`` (global columns).
    lo : int
        Global index of this rank's first row.
    comm : mpi4py.MPI.Comm, optional

    Returns
    -------
    int

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> A = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(9, 9), format="csr")
    >>> rank_limit("eig", A), rank_limit("sine", A), rank_limit("svd", A)
    (8, 1, 9)
    """
    n = A_local.shape[1]
    if kind == "sine":
        try:
            return (spectral.grid_size(n) - 1) ** 2
        except ValueError:
            return n  # not a unit-square grid: the dispatcher says so
    if kind in ("eig", "eig-ref"):
        local = spectral.identity_rows(A_local, lo=lo)
        dirichlet = int(allsum(comm, np.array([local.sum()], dtype=float))[0])
        return max(1, n - dirichlet - 1)
    return n


def clear_reference_cache() -> None:
    """Forget the eig-ref eigenvectors cached in this process (every mesh)."""
    _REFERENCE.clear()


class _Layout:
    """Row ranges of a matrix distributed by contiguous row blocks in rank order (PETSc's)."""

    def __init__(self, comm, shapes: dict):
        """``shapes``: this rank's ``{"A": (n_local, n), "S": K, ...}``, compared on all."""
        self.comm = comm
        everyone = [shapes] if comm is None else comm.allgather(shapes)
        # The same data on every rank from here on, so every rank takes the same decision.
        for key in shapes:
            if key != "A" and len({s[key] for s in everyone}) > 1:
                raise ValueError(f"expected {key} with the same number of columns on every "
                                 f"rank, got {[s[key] for s in everyone]}")
        counts = [s["A"][0] for s in everyone]
        self.n = n = everyone[0]["A"][1]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        mpi_rank = 0 if comm is None else comm.rank
        self.lo, self.hi = int(self.offsets[mpi_rank]), int(self.offsets[mpi_rank + 1])
        self.root = mpi_rank == 0
        if len({s["A"][1] for s in everyone}) > 1 or self.offsets[-1] != n:
            raise ValueError(f"expected the ranks' rows of A to add up to its n columns, got "
                             f"(rows, columns) {[s['A'] for s in everyone]}")

    def gather(self, X):
        """Return the whole of a row-distributed array (or CSR) on rank 0; None elsewhere."""
        if self.comm is None:
            return X
        parts = self.comm.gather(X, root=0)
        if not self.root:
            return None
        return sp.vstack(parts, format="csr") if sp.issparse(X) else np.vstack(parts)

    def on_root(self, fn: Callable[[], np.ndarray], what: str) -> np.ndarray:
        """Run ``fn`` on rank 0, check its ``(n, k)`` result, scatter the rows back."""
        out, err = None, None
        if self.root:
            try:
                out = check_real_array(what, fn(), ndim=2)
                if out.shape[0] != self.n:
                    raise ValueError(f"expected {what} with n = {self.n} rows, got {out.shape}")
            except Exception as exc:  # noqa: BLE001 - every kind reaches the other ranks
                err = exc
        raise_collectively(self.comm, err)
        if self.comm is None:
            return out
        blocks = np.split(out, self.offsets[1:-1]) if self.root else None
        return self.comm.scatter(blocks, root=0)


def _local_matrix(name: str, A, n_cols: int | None = None) -> sp.csr_matrix:
    if not (sp.issparse(A) or isinstance(A, np.ndarray)):
        raise ValueError(f"expected {name} as a SciPy sparse matrix (this rank's rows, global "
                         f"columns), got {type(A).__name__}")
    reject_complex(name, A)
    A = sp.csr_matrix(A, dtype=np.float64)
    if n_cols is not None and A.shape[1] != n_cols:
        raise ValueError(f"expected {name} with {n_cols} columns like A, got {A.shape}")
    if not np.all(np.isfinite(A.data)):
        raise ValueError(f"expected {name} to have finite entries, got NaN or Inf")
    return A


def _local_rows(name: str, X, n_local: int) -> np.ndarray:
    X = check_real_array(name, X, ndim=2)
    if X.shape[0] != n_local:
        raise ValueError(f"expected {name} with this rank's {n_local} rows of A, got {X.shape}")
    return X


def _node_order(node_order, n: int, kind: str) -> np.ndarray:
    if node_order is None:
        raise ValueError(f"coarse kind {kind} needs the node order (node_order[i] = dof of "
                         "node i; numpy.arange(n) for a matrix already in grid order)")
    order = np.asarray(node_order)
    if (order.shape != (n,) or order.dtype.kind not in "iu"
            or not np.array_equal(np.sort(order), np.arange(n))):
        raise ValueError(f"expected node_order to be a permutation of range(n) with n = {n}, "
                         f"got an array of shape {order.shape} ({order.dtype}) that is not")
    return order.astype(np.int64)


def coarse_basis(kind: str, A_local, *, r: int, S=None, model=None, node_order=None,
                 near_nullspace=None, basis_file=None, reference=None, comm=None,
                 seed: int = 0, timings: dict | None = None, block_size: int = 1):
    """Build this rank's rows of a coarse basis ``P`` of the given kind (the dispatcher).

    Parameters
    ----------
    kind : str
        One of :data:`COARSE_KINDS` (see the module docstring).
    A_local : scipy.sparse matrix, shape (n_local, n)
        This rank's rows of the real SPD matrix (global columns; the whole ``A`` serially).
        Rows are distributed in contiguous blocks in rank order (PETSc's layout).
    r : int
        Coarse rank. Ignored by ``sa`` (its aggregation decides the size).
    S : array_like, shape (n_local, K), optional
        This rank's rows of the smoothed vectors (dof order), for ``svd`` and ``nlss``.
    model : object, optional
        For ``nlss``: what ``nn.inference.load_model`` returns; used on rank 0 only
        (other ranks may pass None): ``model.needs_A`` and
        ``model.basis(S_full, r, node_order=..., A=A_full_or_None) -> (n, r)``.
        For ``corrected``: None (the classical corrector), a
        :class:`~nlss_fenicsx.corrector.CorrectorModel` or the path of one.
    node_order : array_like of int, shape (n,), optional
        Global, on every rank: ``node_order[i]`` = global dof of input node ``i``. Needed by
        ``sine`` and ``fixed``; passed to the model by ``nlss``.
    near_nullspace : array_like, shape (n_local, m), optional
        This rank's rows of near-nullspace vectors: ``sa``'s candidates ``B``; appended
        to (and orthonormalised against) the basis for every other kind.
    basis_file : path-like, optional
        For ``fixed``: a file written by :func:`save_basis`, checked against ``n`` and
        ``r`` (``r <= r_max``, order ``"node"``).
    reference : scipy.sparse matrix, shape (n_local, n), optional
        For ``eig-ref``: this rank's rows of the reference operator (e.g. the family's
        mean-coefficient matrix, :func:`nlss_fenicsx.grid.reference_operator`); default
        :func:`nlss_fenicsx.spectral.pattern_laplacian` of ``A``.
    comm : mpi4py communicator, optional
        None (or one rank) for serial use.
    seed : int, optional
        For ``sa`` (PyAMG's randomised estimate).
    timings : dict, optional
        Filled with seconds: ``nlss`` adds ``gather``, ``model``, ``scatter``; ``eig-ref``
        adds ``once`` (the reference eigensolve on a cache miss, 0.0 on a hit).
    block_size : int, optional
        Unknowns per node, for ``sa``.

    Returns
    -------
    numpy.ndarray, shape (n_local, r + m') (``scipy.sparse.csr_matrix`` for ``sa``)
        This rank's rows of ``P`` in dof order; orthonormal columns for every kind but
        ``sa`` (``fixed`` as stored). ``m'`` near-nullspace columns are appended.

    Raises
    ------
    ValueError
        One line, on every rank: an unknown kind, bad shapes or values (complex, NaN),
        a missing input the kind needs (``S``, ``model``, ``node_order``, ``basis_file``),
        ``r`` out of range, a basis file that does not fit, ``sa`` in parallel, ``sine``
        off the unit-square grid, or any error of the model.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> A = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(50, 50), format="csr")
    >>> P = coarse_basis("eig", A, r=3)
    >>> P.shape, bool(np.allclose(P.T @ P, np.eye(3)))
    ((50, 3), True)
    """
    if kind not in COARSE_KINDS:
        raise ValueError(f"Unrecognized coarse kind {kind!r}; expected one of {COARSE_KINDS}")
    comm = None if comm is None or comm.size == 1 else comm
    with collective(comm):
        A_local = _local_matrix("A_local", A_local)
        n_local, n = A_local.shape
        r = check_int("r", r, 1)
        if comm is None and n_local != n:
            raise ValueError(f"expected a square A serially, got shape {A_local.shape}")
        if near_nullspace is not None:
            near_nullspace = _local_rows("near_nullspace", near_nullspace, n_local)
        if kind in ("svd", "nlss"):
            if S is None:
                raise ValueError(f"coarse kind {kind} needs S (this rank's rows of the "
                                 "smoothed vectors)")
            S = _local_rows("S", S, n_local)
        order = None
        if kind in ("sine", "fixed", "corrected") or (kind == "nlss"
                                                       and node_order is not None):
            order = _node_order(node_order, n, kind)
        if reference is not None:
            reference = _local_matrix("reference", reference, n)
            if reference.shape[0] != n_local:
                raise ValueError(f"expected reference with this rank's {n_local} rows, "
                                 f"got {reference.shape}")
    shapes = {"A": A_local.shape}
    for name, X in (("S", S), ("near_nullspace", near_nullspace)):
        if X is not None:
            shapes[name] = X.shape[1]
    layout = _Layout(comm, shapes)
    if kind == "sa":
        if comm is not None:
            raise ValueError("coarse kind sa (PyAMG smoothed aggregation) is serial-only; "
                             "use svd, sine, eig-ref, fixed or nlss under mpiexec")
        return sa_amg_basis(A_local, B=near_nullspace, block_size=block_size, seed=seed)
    P = _BUILDERS[kind](layout, A_local, r=r, S=S, model=model, order=order,
                        basis_file=basis_file, reference=reference,
                        timings={} if timings is None else timings)
    if near_nullspace is not None:
        P = append_near_nullspace(P, near_nullspace, comm=comm)
    return P


def _svd(layout, A_local, *, r, S, **_):
    comm = layout.comm
    K = S.shape[1]
    if r > K:  # the same K on every rank (checked by _Layout)
        raise ValueError(f"expected r <= K = {K} (columns of S) for svd, got r = {r}")
    if comm is None:
        return svd_basis(S, r)
    G = allsum(comm, S.T @ S)
    return svd_basis_from_gram(G, S, r, allreduce=lambda x: allsum(comm, x))


def _sine(layout, A_local, *, r, order, **_):
    with collective(layout.comm):
        N = spectral.grid_size(layout.n)
        node_of_dof = np.empty(layout.n, dtype=np.int64)
        node_of_dof[order] = np.arange(layout.n)
        P = sine_basis(N, r, nodes=node_of_dof[layout.lo:layout.hi])
    return P


def _lowest_free_eigenvectors(op, r: int, kind: str) -> np.ndarray:
    """Lowest eigenvectors of ``op`` off its identity (Dirichlet) rows, zero on them.

    An identity row is decoupled: ``e_d`` is an eigenvector whose eigenvalue (1) is an
    artefact of the value put on the diagonal, below or above the physical spectrum
    depending on the coefficients' scale, and it costs Jacobi nothing. The eigenvectors of
    the other dofs' block are eigenvectors of ``op`` too.
    """
    free = np.flatnonzero(~spectral.identity_rows(op))
    if not 1 <= r < max(free.size, 2):
        raise ValueError(f"expected r < {free.size} (unknowns that are not Dirichlet rows) "
                         f"for {kind}, got r = {r}")
    V = np.zeros((op.shape[0], r))
    V[free] = spectral.lowest_eigenvectors(sp.csr_matrix(op)[free][:, free], r)
    return V


def _reference_key(layout, A_local, reference) -> str:
    with collective(layout.comm):
        key = spectral.ReferenceCache.key(A_local, reference, lo=layout.lo)
    if layout.comm is None:
        return key
    return hashlib.blake2b("|".join(layout.comm.allgather(key)).encode(),
                           digest_size=16).hexdigest()


def _eig_ref(layout, A_local, *, r, reference, timings, **_):
    key = _reference_key(layout, A_local, reference)
    cached = _REFERENCE.get(key, r)
    hit = cached is not None
    if layout.comm is not None:
        hit = all(layout.comm.allgather(hit))
    if hit:
        timings["once"] = 0.0
        return cached
    t0 = time.perf_counter()
    given = [reference is not None] if layout.comm is None else layout.comm.allgather(
        reference is not None)
    if any(given) and not all(given):
        raise ValueError(f"expected reference rows on every rank or on none, got them on "
                         f"ranks {[k for k, g in enumerate(given) if g]} only")
    A_full = layout.gather(A_local)
    R_full = layout.gather(reference) if all(given) else None

    def solve():
        op = R_full if R_full is not None else spectral.pattern_laplacian(A_full)
        return _lowest_free_eigenvectors(op, r, "eig-ref")

    V = layout.on_root(solve, "the reference eigenvectors")
    _REFERENCE.put(key, V)
    _REFERENCE.misses += 1
    timings["once"] = time.perf_counter() - t0
    return V


def _eig(layout, A_local, *, r, **_):
    A_full = layout.gather(A_local)

    def solve():
        return _lowest_free_eigenvectors(A_full, r, "eig")

    return layout.on_root(solve, "the eigenvectors of A")


def _fixed(layout, A_local, *, r, order, basis_file, **_):
    def read():
        if basis_file is None:
            raise ValueError("coarse kind fixed needs a basis file (option nlss_basis, CLI "
                             "--basis, argument basis_file), written by `nlss-fenicsx basis` "
                             "or save_basis")
        P_file, meta = load_basis(basis_file)
        if meta["n"] != layout.n:
            raise ValueError(f"basis file {basis_file}: built for n = {meta['n']}, but A has "
                             f"n = {layout.n}")
        if r > meta["r_max"]:
            raise ValueError(f"basis file {basis_file}: holds r_max = {meta['r_max']} "
                             f"columns, asked for r = {r}")
        P = np.empty((layout.n, r))
        P[order] = P_file[:, :r]  # row i of the file belongs to node i = dof order[i]
        return P

    return layout.on_root(read, "the basis file's P")


def _nlss(layout, A_local, *, r, S, model, order, timings, **_):
    comm = layout.comm
    t0 = time.perf_counter()
    needs_A, err = None, None
    if layout.root:
        try:
            if model is None or not hasattr(model, "basis"):
                raise ValueError("coarse kind nlss needs model (nn.inference.load_model(path)) "
                                 "on rank 0")
            needs_A = bool(getattr(model, "needs_A", False))
        except Exception as exc:  # noqa: BLE001
            err = exc
    raise_collectively(comm, err)
    if comm is not None:
        needs_A = comm.bcast(needs_A, root=0)
    S_full = layout.gather(S)
    A_full = layout.gather(A_local) if needs_A else None
    t1 = time.perf_counter()
    times = {}

    def infer():
        tm = time.perf_counter()
        P = model.basis(S_full, r, node_order=order, A=A_full)
        times["model"] = time.perf_counter() - tm
        return P

    P = layout.on_root(infer, "the model's basis")
    t2 = time.perf_counter()
    model_time = times.get("model", 0.0)
    if comm is not None:
        model_time = comm.bcast(model_time, root=0)
    timings.update(gather=t1 - t0, model=model_time, scatter=t2 - t1 - model_time)
    return P


def _corrected(layout, A_local, *, r, order, model, timings, **_):
    from nlss_fenicsx.corrector import CorrectorModel, corrected_basis, load_corrector

    A_full = layout.gather(A_local)

    def build():
        m = model if model is None or isinstance(model, CorrectorModel) else load_corrector(
            model)
        return corrected_basis(A_full, r, node_order=order, model=m, timings=timings)

    return layout.on_root(build, "the corrected basis")


_BUILDERS = {"svd": _svd, "sine": _sine, "eig-ref": _eig_ref, "eig": _eig, "fixed": _fixed,
             "nlss": _nlss, "corrected": _corrected}
