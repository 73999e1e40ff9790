"""Run under mpiexec: bad input raises the same clear error on every rank (no hang).

Prints JSON on rank 0: for each case, the error message seen by each rank.
"""

import json

import numpy as np

from nlss_fenicsx import meshes, pdes
from nlss_fenicsx import petsc as npc
from nlss_fenicsx._fenicsx import MPI, PETSc

comm = MPI.COMM_WORLD


def error_of(fn):
    try:
        fn()
    except ValueError as err:
        return str(err)
    return None


cases = {}
# Only rank 0 draws the jittered points: the check must still run everywhere.
cases["jitter"] = error_of(lambda: meshes.jittered_square(8, jitter=0.7, comm=comm))
system = pdes.assemble(pdes.sample("diffusion", meshes.jittered_square(8, comm=comm), rng=0))
A = system.A.duplicate(copy=True)
lo, hi = A.getOwnershipRange()
if comm.rank == comm.size - 1:  # one bad entry, on the last rank only
    row = hi - 1
    cols = A.getRow(row)[0]
    A.setValue(row, int(cols[0]) if cols[0] != row else int(cols[-1]), np.nan,
               addv=PETSc.InsertMode.INSERT_VALUES)
A.assemble()
cases["nan_offdiag"] = error_of(lambda: npc.smoothed_vectors_petsc(A, 8))
D = system.A.duplicate(copy=True)
if comm.rank == comm.size - 1:
    D.setValue(hi - 1, hi - 1, -1.0, addv=PETSc.InsertMode.INSERT_VALUES)
D.assemble()
cases["bad_diagonal"] = error_of(lambda: npc.smoothed_vectors_petsc(D, 8))
gathered = comm.gather(cases, root=0)
if comm.rank == 0:
    print(json.dumps({k: [c[k] for c in gathered] for k in cases}))
