"""Run under mpiexec: TwoGridPC through LinearProblem; S, P and iterations in node order.

Usage: pc_ranks.py svd N RANK K          (jittered square, diffusion)
       pc_ranks.py nlss MODEL H          (Gmsh disk of mesh size H, the disk program)
       pc_ranks.py sampler N K           (pdes.training_sampler on the jittered square)
Prints JSON on rank 0: the number of ranks, iterations, lambda_max, the weight, S and P
gathered in node order (svd), or the sampler's S.
"""

import json
import sys

import numpy as np

from nlss_fenicsx import la, meshes, pdes
from nlss_fenicsx import petsc as npc
from nlss_fenicsx._fenicsx import MPI, dolfinx
from tests import client_programs as cp

comm = MPI.COMM_WORLD
mode = sys.argv[1]
OPTS = {"ksp_type": "cg", "ksp_rtol": 1e-8, "ksp_norm_type": "unpreconditioned",
        "pc_type": "python", "pc_python_type": "nlss_fenicsx.petsc.TwoGridPC"}


def gathered(rows, order):
    """Rows of a dof-ordered block owned by each rank -> the whole block in node order."""
    return np.concatenate(comm.allgather(np.asarray(rows, dtype=np.float64)))[order]


out = {"size": comm.size}
if mode == "svd":
    N, r, K = map(int, sys.argv[2:5])
    prob = pdes.sample("diffusion", meshes.jittered_square(N, seed=0, comm=comm), rng=0)
    lp = dolfinx.fem.petsc.LinearProblem(
        prob.a, prob.L, bcs=prob.bcs, petsc_options_prefix="ranks_",
        petsc_options={**OPTS, "nlss_coarse": "svd", "nlss_rank": r, "nlss_K": K})
    order = la.attach_node_order(lp.A, prob.V)
    with npc.python_errors():
        lp.solve()
    ctx = lp.solver.getPC().getPythonContext()
    out.update(iterations=npc.check_converged(lp), lam_max=ctx.lam_max, omega=ctx.omega,
               S=gathered(ctx.S, order).tolist(), P=gathered(ctx.P, order).tolist())
elif mode == "nlss":
    model, h = sys.argv[2], float(sys.argv[3])
    program = cp.poisson_disk(comm, h=h)
    lp = dolfinx.fem.petsc.LinearProblem(
        program.a, program.L, bcs=program.bcs, petsc_options_prefix="ranks_nlss_",
        petsc_options={**OPTS, "nlss_coarse": "nlss", "nlss_model": model})
    la.attach_node_order(lp.A, program.V)
    with npc.python_errors():
        lp.solve()
    ctx = lp.solver.getPC().getPythonContext()
    out.update(iterations=npc.check_converged(lp), coarse_size=ctx.coarse_size,
               K=ctx.options.K, r=ctx.options.r)
elif mode == "sampler":
    N, K = map(int, sys.argv[2:4])
    sampler = pdes.training_sampler("anisotropic", meshes.jittered_square(N, seed=1, comm=comm),
                                    K=K, seed=5)
    out.update(S=sampler(3).astype(np.float64).tolist(), mesh_id=sampler.mesh_id)
if comm.rank == 0:
    print(json.dumps(out))
