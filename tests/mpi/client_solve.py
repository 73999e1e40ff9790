"""Run under mpiexec: the client programs solved with the given methods, checked against LU.

Usage: ``client_solve.py METHODS PROGRAMS [MODEL]`` with comma-separated lists, e.g.
``client_solve.py svd,gamg poisson_disk,heat``; ``nlss`` needs the checkpoint MODEL (a
model of the disk mesh: it is run on ``poisson_disk`` only).
Prints one JSON object on rank 0: ``{program: {"n": n, method: {"its": [...],
"reason": [...], "error": e}}}``, where ``its`` and ``reason`` hold one entry per solve
(one per time step for ``heat``) and ``error`` is the largest relative difference from
the MUMPS LU solution (zero-mean parts for the pure-Neumann program).
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nlss_fenicsx import la  # noqa: E402
from nlss_fenicsx._fenicsx import MPI  # noqa: E402
from tests import client_programs as cp  # noqa: E402


def options(method: str, model: str | None) -> dict:
    if method == "gamg":
        return cp.GAMG
    if method == "nlss":
        return cp.twogrid("nlss", model=model)
    return cp.twogrid(method)


def heat(prog, methods, model, comm) -> dict:
    record = {}
    ref = cp.heat_run(prog, cp.LU)
    for method in (m for m in methods if m != "nlss"):
        runs = cp.heat_run(prog, options(method, model))
        errors = [cp.relative_error(r.x, q.x, comm) for r, q in zip(runs, ref, strict=True)]
        record[method] = {"its": [r.iterations for r in runs],
                          "reason": [r.reason for r in runs], "error": max(errors)}
    return record


def static(prog, methods, model, comm) -> dict:
    record = {}
    run = cp.ksp_solve if prog.nullspace else cp.solve
    ref = run(prog, cp.LU)
    x_ref = cp.zero_mean(ref.x, comm) if prog.nullspace else ref.x
    for method in (m for m in methods if m != "nlss" or prog.name == "poisson_disk"):
        kwargs = {}
        if method == "nlss":  # the learned route needs the mesh's node order on A
            kwargs["prepare"] = lambda problem: la.attach_node_order(problem.A, prog.V)
        res = run(prog, options(method, model), **kwargs)
        x = cp.zero_mean(res.x, comm) if prog.nullspace else res.x
        record[method] = {"its": [res.iterations], "reason": [res.reason],
                          "error": cp.relative_error(x, x_ref, comm)}
    return record


def main() -> None:
    comm = MPI.COMM_WORLD
    methods = sys.argv[1].split(",")
    names = sys.argv[2].split(",")
    model = sys.argv[3] if len(sys.argv) > 3 else None
    out = {}
    for name in names:
        build, kwargs = cp.PROGRAMS[name]
        prog = build(comm, **kwargs)
        solve = heat if name == "heat" else static
        out[name] = {"n": prog.n, **solve(prog, methods, model, comm)}
    if comm.rank == 0:
        print(json.dumps(out))


if __name__ == "__main__":  # importing it (pytest's doctest collection) runs nothing
    main()
