"""Run under mpiexec: coarse_basis on distributed rows equals the serial call, and every
failure injected on ONE rank is raised as the same one-line error on EVERY rank (no hang).

Usage: coarse_collective.py TMPDIR. Rank 0 prints one JSON line:
{"max_diff": float, "errors": [{case: "Type: message" or null} for each rank]}.
"""

import json
import sys
from pathlib import Path

import numpy as np
from mpi4py import MPI

from nlss_fenicsx import coarse, grid
from nlss_fenicsx.coarse import coarse_basis, save_basis, sine_basis, svd_basis
from nlss_fenicsx.relaxation import inverse_diagonal, lambda_max_estimate, start_vector
from nlss_fenicsx.smoothing import smoothed_vectors

comm = MPI.COMM_WORLD
me, last = comm.rank, comm.size - 1
N = 10
pts = grid.jittered_points(N, seed=0)
tri = grid.delaunay_triangles(pts)
coef = grid.coefficient_draws("diffusion", "default", len(tri), 0)
A = grid.assemble_p1("diffusion", pts, tri, coef, boundary=grid.boundary_mask(N)).A
n = A.shape[0]
perm = np.random.default_rng(0).permutation(n)  # node i -> dof perm[i]
inv = np.argsort(perm)
A = A[inv][:, inv].tocsr()  # the matrix in "dof order", as a partitioned dolfinx mesh gives
S = smoothed_vectors(A, 16, rng=0)
bounds = np.linspace(0, n, comm.size + 1).astype(int)
lo, hi = int(bounds[me]), int(bounds[me + 1])
path = Path(sys.argv[1]) / "sine.npz"
if me == 0:
    save_basis(path, sine_basis(N, 20), meta={"kind": "sine"})
comm.barrier()
reference = grid.reference_operator("diffusion", N)[inv][:, inv].tocsr()


class Model:
    needs_A = True

    def __init__(self, error=None):
        self.error = error

    def basis(self, S_full, r, *, node_order=None, A=None):
        if self.error:
            raise ValueError(self.error)
        assert A is not None and A.shape == (n, n) and S_full.shape == (n, 16)
        return svd_basis(S_full, r)


def both(kind, **kw):
    serial = coarse_basis(kind, A, r=8, S=S, node_order=perm, basis_file=path, model=Model(),
                          **kw)
    local = {k: (v[lo:hi] if k in ("near_nullspace", "reference") else v) for k, v in kw.items()}
    dist = coarse_basis(kind, A[lo:hi], r=8, S=S[lo:hi], node_order=perm, basis_file=path,
                        model=Model() if me == 0 else None, comm=comm, **local)
    return float(np.abs(dist - serial[lo:hi]).max())


diffs = [both(kind) for kind in ("svd", "sine", "eig-ref", "eig", "fixed", "nlss")]
diffs.append(both("eig-ref", reference=reference))
B = np.column_stack([np.ones(n), np.linspace(0, 1, n)])
diffs += [both(kind, near_nullspace=B) for kind in ("svd", "sine")]
# A cache hit in parallel too (the second call must not gather).
coarse_basis("eig-ref", A[lo:hi], r=8, comm=comm, timings=(t := {}))
diffs.append(0.0 if t["once"] == 0.0 else 1.0)


def allgathered(x):
    return np.concatenate(comm.allgather(x))


def dist_estimate(matvec_local):
    return lambda_max_estimate(matvec_local, inverse_diagonal(A[lo:hi].tocsr()[:, lo:hi]),
                               start_vector(n, lo, hi),
                               dot=lambda u, v: comm.allreduce(float(np.dot(u, v))))


serial_lam = lambda_max_estimate(A.__matmul__, 1 / A.diagonal(), start_vector(n))
lam = dist_estimate(lambda x: A[lo:hi] @ allgathered(x))
diffs.append(abs(lam - serial_lam) / serial_lam)
max_diff = comm.allreduce(max(diffs), op=MPI.MAX)

S_nan = S[lo:hi].copy()
if me == last:
    S_nan[0, 0] = np.nan


def extra_row(X):
    return np.vstack([X[lo:hi], X[:1]]) if me == last else X[lo:hi]


order_bad = perm.copy()
if me == 1:
    order_bad[0] = order_bad[1]
cases = {
    "nan_S_last_rank": lambda: coarse_basis("svd", A[lo:hi], r=4, S=S_nan, comm=comm),
    "extra_row_S_last_rank": lambda: coarse_basis(
        "svd", A[lo:hi], r=4, S=extra_row(S), comm=comm),
    "extra_row_nullspace_last_rank": lambda: coarse_basis(
        "sine", A[lo:hi], r=4, node_order=perm, near_nullspace=extra_row(B), comm=comm),
    "order_not_permutation_rank1": lambda: coarse_basis(
        "sine", A[lo:hi], r=4, node_order=order_bad, comm=comm),
    "missing_basis_file": lambda: coarse_basis(
        "fixed", A[lo:hi], r=4, node_order=perm, basis_file=path.with_name("no.npz"),
        comm=comm),
    "model_raises_on_root": lambda: coarse_basis(
        "nlss", A[lo:hi], r=4, S=S[lo:hi], model=Model("checkpoint weights are NaN"),
        comm=comm),
    "no_model": lambda: coarse_basis("nlss", A[lo:hi], r=4, S=S[lo:hi], comm=comm),
    "sa_in_parallel": lambda: coarse_basis("sa", A[lo:hi], r=4, comm=comm),
    "eig_r_too_big": lambda: coarse_basis("eig", A[lo:hi], r=n - 1, comm=comm),
    "rows_do_not_add_up": lambda: coarse_basis(
        "eig", A[lo:hi + (me == last and hi < n)] if me != last else A[lo:hi][:-1], r=4,
        comm=comm),
    "K_differs_on_last_rank": lambda: coarse_basis(
        "nlss", A[lo:hi], r=4, S=S[lo:hi, :15] if me == last else S[lo:hi], model=Model(),
        comm=comm),
    "columns_differ_on_rank0": lambda: coarse_basis(
        "eig", A[lo:hi, :-1] if me == 0 else A[lo:hi], r=4, comm=comm),
    "complex_A_rank0": lambda: coarse_basis(
        "eig", A[lo:hi] * (1j if me == 0 else 1), r=4, comm=comm),
    "lambda_nan_last_rank": lambda: dist_estimate(
        lambda x: A[lo:hi] @ allgathered(x) * (np.nan if me == last else 1.0)),
}
errors = {}
for case, fn in cases.items():
    try:
        fn()
        errors[case] = None
    except Exception as exc:  # noqa: BLE001 - the point is what every rank reports
        errors[case] = f"{type(exc).__name__}: {exc}"
    comm.barrier()  # a rank left behind in a collective would hang here (and time out)
everyone = comm.gather(errors, root=0)
if me == 0:
    print(json.dumps({"max_diff": max_diff, "errors": everyone}), flush=True)
coarse.clear_reference_cache()
