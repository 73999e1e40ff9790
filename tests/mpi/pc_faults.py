"""Run under mpiexec: faults injected on ONE rank give the same one-line error on every rank.

Usage: pc_faults.py [NAN_MODEL]
Prints JSON on rank 0: for each case, the error ("Type: message") each rank saw, or null.
"""

import json
import sys

import numpy as np

from nlss_fenicsx import la, meshes, pdes
from nlss_fenicsx import petsc as npc
from nlss_fenicsx._fenicsx import MPI, PETSc
from nlss_fenicsx.options import TwoGridOptions

comm = MPI.COMM_WORLD
last = comm.size - 1
system = pdes.assemble(pdes.sample("diffusion", meshes.jittered_square(8, comm=comm), rng=0))


def solve(A, ctx=None, options=None, prefix=""):
    """Solve A x = 1 with TwoGridPC; return this rank's error line or None."""
    ksp = PETSc.KSP().create(comm=comm)
    ksp.setOperators(A)
    ksp.setType("cg")
    pc = ksp.getPC()
    if options is not None:  # through the options database, as a user's solver would
        db = PETSc.Options()
        for key, value in options.items():
            db[prefix + key] = value
        ksp.setOptionsPrefix(prefix)
        pc.setType("python")
        pc.setPythonContext(npc.TwoGridPC())
        ksp.setFromOptions()
    else:
        pc.setType("python")
        pc.setPythonContext(ctx)
    b, x = A.createVecs()
    b.set(1.0)
    try:
        with npc.python_errors():
            ksp.solve(b, x)
    except Exception as err:  # noqa: BLE001 - the message is what is compared
        return f"{type(err).__name__}: {err}"
    finally:
        ksp.destroy()
    return None


cases = {}
# An option value that is bad on the last rank only.
cases["option_one_rank"] = solve(system.A, options={
    "nlss_rank": "abc" if comm.rank == last else "4", "nlss_K": "8"}, prefix="fault1_")
# Options that define the operator differ between ranks (through the database, and given).
cases["options_differ"] = solve(system.A, options={
    "nlss_rank": "4" if comm.rank == 0 else "5", "nlss_K": "8"}, prefix="fault2_")
cases["coarse_differs"] = solve(system.A, npc.TwoGridPC(options=TwoGridOptions(
    coarse="svd" if comm.rank == 0 else "eig", r=4, K=8)))
# Allowed to differ: what the coarse kind does not use, and rank 0's file-side checks.
cases["unused_differs_ok"] = solve(system.A, options={
    "nlss_coarse": "sine", "nlss_rank": "4", "nlss_K": str(8 + comm.rank),
    "nlss_precision": "int8" if comm.rank == 0 else "float32"}, prefix="fault3_")
# A node order that is not a permutation, attached behind the checks on the last rank only.
A = system.A.duplicate(copy=True)
la.attach_node_order(A, system.node_order)
if comm.rank == last:
    bad = system.node_order.copy()
    bad[0] = bad[1]
    A.setAttr(la.NODE_ORDER_KEY, bad)
cases["order_one_rank"] = solve(A, npc.TwoGridPC(options=TwoGridOptions(r=4, K=8)))
# A coarse basis with one extra row on the last rank.
lo, hi = system.A.getOwnershipRange()
P = np.random.default_rng(comm.rank).standard_normal((hi - lo + (comm.rank == last), 4))
cases["basis_extra_row"] = solve(system.A, npc.TwoGridPC(P=P, options=TwoGridOptions(r=4)))
# NaN in A on the last rank only (off the diagonal).
A = system.A.duplicate(copy=True)
if comm.rank == last:
    row = hi - 1
    cols = A.getRow(row)[0]
    A.setValue(row, int(cols[0]) if cols[0] != row else int(cols[-1]), np.nan)
A.assemble()
cases["nan_in_A"] = solve(A, npc.TwoGridPC(options=TwoGridOptions(r=4, K=8)))
# A model that does not exist (only rank 0 reads it).
cases["missing_model"] = solve(system.A, npc.TwoGridPC(options=TwoGridOptions(
    coarse="nlss", model="/nonexistent/model.pt")))
# Smoothed aggregation (PyAMG) is serial-only.
cases["sa_parallel"] = solve(system.A, npc.TwoGridPC(options=TwoGridOptions(coarse="sa")))
# Only rank 0 draws the jittered points: the check of the jitter still runs on every rank.
try:
    meshes.jittered_square(8, jitter=0.7, comm=comm)
    cases["jitter"] = None
except ValueError as err:
    cases["jitter"] = f"ValueError: {err}"
if len(sys.argv) > 1:  # a checkpoint whose weights are NaN (only rank 0 reads it)
    cases["nan_model"] = solve(system.A, npc.TwoGridPC(options=TwoGridOptions(
        coarse="nlss", model=sys.argv[1])))
gathered = comm.gather(cases, root=0)
if comm.rank == 0:
    print(json.dumps({k: [c[k] for c in gathered] for k in cases}))
