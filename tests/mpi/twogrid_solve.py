"""Run under mpiexec: solve with TwoGridPC through LinearProblem, print JSON on rank 0.

Usage: twogrid_solve.py FAMILY N COARSE RANK K RTOL
Prints iterations, converged reason and the solution in grid order (gathered).
"""

import json
import sys

import numpy as np

from nlss_fenicsx import meshes, pdes
from nlss_fenicsx import petsc as npc
from nlss_fenicsx._fenicsx import MPI, PETSc, dolfinx

family, N, coarse, rank, K, rtol = sys.argv[1:7]
N, rank, K, rtol = int(N), int(rank), int(K), float(rtol)
comm = MPI.COMM_WORLD
mesh = meshes.jittered_square(N, seed=0, comm=comm)
prob = pdes.sample(family, mesh, rng=0)
options = {"ksp_type": "cg", "ksp_rtol": rtol, "ksp_norm_type": "unpreconditioned",
           "pc_type": "python", "pc_python_type": "nlss_fenicsx.petsc.TwoGridPC",
           "nlss_coarse": coarse, "nlss_rank": rank, "nlss_K": K}
lp = dolfinx.fem.petsc.LinearProblem(prob.a, prob.L, bcs=prob.bcs,
                                     petsc_options_prefix="mpi_", petsc_options=options)
out = {}
try:
    uh = lp.solve()
    its = npc.check_converged(lp.solver)
    V = prob.V
    order = meshes.grid_order(V)
    imap = V.dofmap.index_map
    owned = uh.x.array[: imap.size_local]
    lo = imap.local_range[0]
    glob = np.zeros(imap.size_global)
    glob[lo : lo + imap.size_local] = owned
    glob = comm.allreduce(glob, op=MPI.SUM)
    out = {"iterations": its, "u_grid": glob[order].tolist(), "size": comm.size}
except PETSc.Error as err:
    cause = err.__cause__
    out = {"error": f"{type(cause).__name__}: {cause}" if cause else str(err)}
if comm.rank == 0:
    print(json.dumps(out))
