"""Run under mpiexec: solve with the learned TwoGridPC (nlss) through LinearProblem.

Usage: nlss_solve.py MODEL FAMILY N RANK K RTOL[,RTOL...]
Builds the PC once (first solve), then solves again at each further tolerance. Prints JSON
on rank 0: per tolerance the iterations and the solution in grid order (gathered), the
number of ranks, the coarse size and rank 0's set-up timings (inference broken into
gather / model / scatter).
"""

import json
import sys

import numpy as np

from nlss_fenicsx import meshes, pdes
from nlss_fenicsx import petsc as npc
from nlss_fenicsx._fenicsx import MPI, PETSc, dolfinx

model, family, N, rank, K, rtols = sys.argv[1:7]
N, rank, K = int(N), int(rank), int(K)
rtols = [float(t) for t in rtols.split(",")]
comm = MPI.COMM_WORLD
mesh = meshes.jittered_square(N, seed=0, comm=comm)
prob = pdes.sample(family, mesh, rng=0)
options = {"ksp_type": "cg", "ksp_rtol": rtols[0], "ksp_atol": 0.0,
           "ksp_norm_type": "unpreconditioned",
           "pc_type": "python", "pc_python_type": "nlss_fenicsx.petsc.TwoGridPC",
           "nlss_coarse": "nlss", "nlss_model": model, "nlss_pde": family,
           "nlss_rank": rank, "nlss_K": K}
lp = dolfinx.fem.petsc.LinearProblem(prob.a, prob.L, bcs=prob.bcs,
                                     petsc_options_prefix="mpi_nlss_", petsc_options=options)
V = prob.V
order = meshes.grid_order(V)
npc.attach_grid_order(lp.A, order)
imap = V.dofmap.index_map
lo = imap.local_range[0]
out = {"size": comm.size, "runs": []}
try:
    for rtol in rtols:
        lp.solver.setTolerances(rtol=rtol)
        uh = lp.solve()
        its = npc.check_converged(lp.solver)
        glob = np.zeros(imap.size_global)
        glob[lo : lo + imap.size_local] = uh.x.array[: imap.size_local]
        glob = comm.allreduce(glob, op=MPI.SUM)
        out["runs"].append({"rtol": rtol, "iterations": its, "u_grid": glob[order].tolist()})
    ctx = lp.solver.getPC().getPythonContext()
    out.update(coarse_size=ctx.coarse_size, timings=ctx.timings)
except PETSc.Error as err:
    cause = err.__cause__
    out = {"error": f"{type(cause).__name__}: {cause}" if cause else str(err)}
if comm.rank == 0:
    print(json.dumps(out))
