"""A user's own FEniCSx programs, solved by every preconditioner a user would pick (issue 14).

The programs are those of ``tests/client_programs.py``: small FEniCSx models written the
way the FEniCSx tutorial writes them (a Gmsh disk membrane, Poisson on a box, clamped 3D
elasticity on tetrahedra and on hexahedra with the rigid-body near-nullspace attached, a
heat-equation time loop reusing one KSP, pure Neumann with its constant nullspace, the
first Newton step of a neo-Hookean beam). For each program, in one run, and for each method:

``svd``, ``sa``   TwoGridPC with DEFAULT options (``nlss_coarse`` only)
``nlss``          TwoGridPC with a model trained on the disk mesh (disk only): ``--model``,
                  or trained here with ``nn.train`` and ``pdes.smoothed_sampler`` on random
                  coefficient instances of the disk problem (``--nlss-steps``; timing and a
                  plausible quality, not the paper's accuracy)
``gamg``          PETSc GAMG (near-nullspace attached where the program attaches one)
``icc``           ICC(0)
``lu``            MUMPS LU (one thread)

Every iterative method is CG stopped on the true relative residual < ``--rtol`` (1e-8).
Per method: iterations, ``setup`` (``KSPSetUp``: the preconditioner's set-up, LU's
factorisation) and ``solve`` (``KSPSolve``) in ms, median over ``--repeat`` fresh KSPs after
one warm-up (model loading and first-call costs excluded), and the relative difference from
the LU solution. For ``heat``: one KSP for all ``steps`` steps (set-up once, as the program
does); iterations are the range over the steps and ``solve`` the median per step.

Usage (serial; the lead runs the full size when the machine is quiet)::

    python benchmarks/bench_client_programs.py --size full          # n about 15k
    python benchmarks/bench_client_programs.py --size ci --repeat 1 --out /tmp/cp

Writes ``OUT/results.json`` and ``OUT/tables.md`` (default ``results/client_programs``),
each atomically. A method that fails is recorded with its error line; the run goes on.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the programs live beside the tests that pin them

import numpy as np  # noqa: E402

METHODS = ("svd", "sa", "nlss", "gamg", "icc", "lu")

#: Program sizes: ``ci`` = the tests' sizes; ``full`` = about 15k unknowns for the 3D
#: elasticity (the issue's n = 14,739), the others a few thousand to 15k.
SIZES = {
    "ci": {
        "poisson_disk": {"h": 0.07},
        "poisson_box": {"n": 12},
        "elasticity_tet": {"n": 6, "cell": "tetrahedron"},
        "elasticity_hex": {"n": 6, "cell": "hexahedron"},
        "heat": {"n": 40, "steps": 5},
        "neumann": {"n": 40},
        "hyperelastic": {"n": 4},
    },
    "full": {
        "poisson_disk": {"h": 0.03},
        "poisson_box": {"n": 24},
        "elasticity_tet": {"n": 16, "cell": "tetrahedron"},
        "elasticity_hex": {"n": 16, "cell": "hexahedron"},
        "heat": {"n": 100, "steps": 10},
        "neumann": {"n": 100},
        "hyperelastic": {"n": 8},
    },
}


def method_options(method: str, model: str | None) -> dict:
    from tests import client_programs as cp

    if method in ("svd", "sa"):
        return cp.twogrid(method)
    if method == "nlss":
        return cp.twogrid("nlss", model=model)
    return {"gamg": cp.GAMG, "icc": cp.ICC, "lu": cp.LU}[method]


def applies(name: str, method: str) -> bool:
    return method != "nlss" or name == "poisson_disk"


# --------------------------------------------------------------------------- the model


def disk_model(program, out: Path, *, steps: int, K: int, r_max: int, log) -> Path:
    """A model trained on the disk mesh with the library's API (cached in ``out``)."""
    from nlss_fenicsx import pdes
    from nlss_fenicsx.nn.train import TrainConfig, train
    from tests import client_programs as cp

    V = program.V
    sampler = pdes.smoothed_sampler(lambda t: cp.disk_instances(V, t), K=K, seed=0)
    cfg = TrainConfig(pde="diffusion", K=K, r_max=r_max, steps=steps,
                      eval_every=max(steps // 4, 1), ckpt_every=max(steps // 4, 1), n_eval=4)
    path = out / f"disk_model_n{program.n}_K{K}_r{r_max}_s{steps}.pt"
    t0 = time.perf_counter()
    train(cfg, path, sampler=sampler, progress=False, log=log)
    log(f"  disk model: {path.name} ({time.perf_counter() - t0:.1f} s incl. resume check)")
    return path


# --------------------------------------------------------------------------- measuring


def _error(program, x: np.ndarray, x_ref: np.ndarray) -> float:
    """Relative difference from LU (zero-mean parts where A has the constant nullspace)."""
    from tests import client_programs as cp

    if program.nullspace:
        x, x_ref = cp.zero_mean(x, program.comm), cp.zero_mean(x_ref, program.comm)
    return cp.relative_error(x, x_ref, program.comm)


def measure_static(program, options: dict, *, rtol: float, repeat: int, x_ref, prepare=None):
    """Fresh KSP per repetition on one assembled system; warm-up first (not recorded)."""
    from tests import client_programs as cp

    A, b, _ = cp.assemble_system(program)
    if prepare is not None:
        prepare(A)
    rec = {"its": [], "setup_ms": [], "solve_ms": [], "reason": []}
    x = A.createVecRight()
    for k in range(repeat + 1):
        ksp = cp.make_ksp(A, options, rtol=rtol)
        x.set(0.0)
        t0 = time.perf_counter()
        ksp.setUp()
        t1 = time.perf_counter()
        ksp.solve(b, x)
        t2 = time.perf_counter()
        if k > 0:
            rec["its"].append(ksp.getIterationNumber())
            rec["setup_ms"].append(1e3 * (t1 - t0))
            rec["solve_ms"].append(1e3 * (t2 - t1))
            rec["reason"].append(ksp.getConvergedReason())
        ksp.destroy()
    out = {"its": int(np.median(rec["its"])), "its_all": rec["its"],
           "setup_ms": float(np.median(rec["setup_ms"])),
           "solve_ms": float(np.median(rec["solve_ms"])),
           "reason": min(rec["reason"]), "x": x.getArray().copy()}
    if x_ref is not None:
        out["error"] = _error(program, out["x"], x_ref)
    return out


def measure_heat(program, options: dict, *, rtol: float, repeat: int, x_ref):
    """The program's own loop (one KSP, set up once), ``repeat`` times after a warm-up."""
    from tests import client_programs as cp

    best = None
    for k in range(repeat + 1):
        t0, timings = time.perf_counter(), {}
        runs = cp.heat_run(program, options, rtol=rtol, timings=timings)
        total = time.perf_counter() - t0
        if k == 0:
            continue
        solve_ms = [1e3 * r.seconds for r in runs]
        rec = {"its_all": [r.iterations for r in runs], "reason": min(r.reason for r in runs),
               "solve_ms": float(np.median(solve_ms)),
               "setup_ms": 1e3 * timings["setup"],
               "loop_ms": 1e3 * total, "x": [r.x for r in runs]}
        if best is None or rec["loop_ms"] < best["loop_ms"]:
            best = rec
    its = best["its_all"]
    best["its"] = f"{min(its)}-{max(its)}" if min(its) != max(its) else int(its[0])
    if x_ref is not None:
        best["error"] = max(_error(program, x, q) for x, q in zip(best["x"], x_ref, strict=True))
    return best


def run_program(name: str, kwargs: dict, methods, args, log) -> dict:
    from nlss_fenicsx._fenicsx import MPI
    from nlss_fenicsx.bench.report import error_line
    from tests import client_programs as cp

    build, _ = cp.PROGRAMS[name]
    t0 = time.perf_counter()
    program = build(MPI.COMM_WORLD, **kwargs)
    A, _, _ = cp.assemble_system(program)
    record = {"n": program.n, "nnz": int(A.getInfo()["nz_used"]), "kwargs": kwargs,
              "build_s": time.perf_counter() - t0, "methods": {}}
    A.destroy()
    log(f"{name}: n = {program.n}")
    heat = name == "heat"
    order = ["lu"] + [m for m in methods if m != "lu"]  # LU first: the reference
    x_ref = None
    for method in order:
        if method not in methods and method != "lu":
            continue
        if not applies(name, method):
            continue
        prepare = None
        model = None
        try:
            if method == "nlss":
                from nlss_fenicsx import la

                model = str(args.model) if args.model else str(disk_model(
                    program, args.out, steps=args.nlss_steps, K=args.nlss_K,
                    r_max=args.nlss_rank, log=log))
                prepare = lambda A: la.attach_node_order(A, program.V)  # noqa: E731
            options = method_options(method, model)
            if heat:
                res = measure_heat(program, options, rtol=args.rtol, repeat=args.repeat,
                                   x_ref=x_ref)
            else:
                res = measure_static(program, options, rtol=args.rtol, repeat=args.repeat,
                                     x_ref=x_ref, prepare=prepare)
        except Exception as err:  # one failing method must not end the table
            record["methods"][method] = {"failed": error_line(err)}
            log(f"  {method:5s} FAILED: {error_line(err)}")
            continue
        x = res.pop("x")
        if method == "lu":
            x_ref = x
            res.pop("error", None)
        if method in methods:
            record["methods"][method] = res
            log(f"  {method:5s} its {res['its']!s:>6}  setup {res['setup_ms']:9.2f} ms  "
                f"solve {res['solve_ms']:9.2f} ms  reason {res['reason']}"
                + (f"  err {res['error']:.1e}" if "error" in res else ""))
    return record


# --------------------------------------------------------------------------- tables


def markdown(results: dict) -> str:
    methods = results["methods"]
    head = "| program | n | " + " | ".join(methods) + " |"
    rule = "|---|---:|" + "---:|" * len(methods)
    lines = [
        "# Client programs: iterations and time (ms) per method",
        "",
        f"Machine: {results['machine_line']}. Size `{results['size']}`, CG to a true relative "
        f"residual < {results['rtol']:g}; cells: iterations, set-up + solve ms (median of "
        f"{results['repeat']} after a warm-up). `heat`: iterations over its steps, solve per "
        "step. LU: MUMPS, one thread. `-`: not applicable; `FAIL`: see results.json.",
        "",
        head,
        rule,
    ]
    for name, rec in results["programs"].items():
        cells = []
        for m in methods:
            r = rec["methods"].get(m)
            if r is None:
                cells.append("-")
            elif "failed" in r:
                cells.append("FAIL")
            else:
                flag = "" if r["reason"] > 0 else f" (reason {r['reason']})"
                its = "" if m == "lu" else f"{r['its']}, "
                cells.append(f"{its}{r['setup_ms']:.1f} + {r['solve_ms']:.1f}{flag}")
        lines.append(f"| {name} | {rec['n']} | " + " | ".join(cells) + " |")
    errs = [(name, m, r["error"]) for name, rec in results["programs"].items()
            for m, r in rec["methods"].items() if "error" in r and r["reason"] > 0]
    if errs:
        worst = max(errs, key=lambda e: e[2])
        lines += ["", f"Largest relative difference from LU of a converged solve: "
                      f"{worst[2]:.1e} ({worst[0]}, {worst[1]})."]
    bad = [f"{name} {m} (reason {r['reason']}, difference from LU {r['error']:.1e})"
           for name, rec in results["programs"].items() for m, r in rec["methods"].items()
           if "reason" in r and r["reason"] <= 0 and "error" in r]
    if bad:
        lines += ["", "Not converged: " + "; ".join(bad) + "."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=tuple(SIZES), default="full")
    p.add_argument("--programs", nargs="+", default=None, choices=tuple(SIZES["ci"]))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--rtol", type=float, default=1e-8)
    p.add_argument("--model", type=Path, default=None,
                   help="checkpoint for nlss on the disk (default: train one here)")
    p.add_argument("--nlss-steps", type=int, default=300)
    p.add_argument("--nlss-K", type=int, default=32)
    p.add_argument("--nlss-rank", type=int, default=32)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "client_programs")
    args = p.parse_args(argv)
    if args.repeat < 1 or not 0 < args.rtol < 1:
        p.error(f"--repeat must be >= 1 and 0 < --rtol < 1; got {args.repeat}, {args.rtol}")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    from nlss_fenicsx._atomic import check_destination
    from nlss_fenicsx._fenicsx import MPI

    if MPI.COMM_WORLD.size > 1:
        print("bench_client_programs runs on one MPI rank; run it without mpiexec")
        return 2
    check_destination(args.out, what="--out", kind="dir")
    args.out.mkdir(parents=True, exist_ok=True)
    if "nlss" in args.methods:
        import torch

        torch.set_num_threads(1)
    from nlss_fenicsx.bench.machine import machine_info, machine_line
    from nlss_fenicsx.bench.report import write_atomic, write_json

    sizes = SIZES[args.size]
    names = args.programs or list(sizes)
    t0 = time.perf_counter()
    info = machine_info()
    results = {"size": args.size, "rtol": args.rtol, "repeat": args.repeat,
               "methods": list(args.methods), "machine": info,
               "machine_line": machine_line(info), "programs": {}}
    for name in names:
        results["programs"][name] = run_program(name, sizes[name], args.methods, args, print)
    results["wall_s"] = time.perf_counter() - t0
    write_json(args.out / "results.json", results)
    write_atomic(args.out / "tables.md", markdown(results))
    print(markdown(results))
    print(f"wrote {args.out / 'results.json'} and {args.out / 'tables.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
