"""Run under mpiexec: print global node count, matrix Frobenius norm and rhs norm as JSON."""

import json
import sys

from nlss_fenicsx import meshes, pdes
from nlss_fenicsx._fenicsx import MPI, PETSc

N = int(sys.argv[1]) if len(sys.argv) > 1 else 12
out = {}
for family in pdes.FAMILIES:
    mesh = meshes.jittered_square(N, seed=3, comm=MPI.COMM_WORLD)
    sysm = pdes.assemble(pdes.sample(family, mesh, rng=9))
    bnorm = MPI.COMM_WORLD.allreduce(float((sysm.b**2).sum()), op=MPI.SUM) ** 0.5
    out[family] = {
        "nodes": mesh.topology.index_map(0).size_global,
        "A_norm": sysm.A.norm(PETSc.NormType.FROBENIUS),
        "b_norm": bnorm,
        "grid_order_ok": sorted(sysm.grid_order.tolist()) == list(range((N + 1) ** 2)),
    }
if MPI.COMM_WORLD.rank == 0:
    print(json.dumps(out))
