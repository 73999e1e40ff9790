"""Two-grid (SVD, SA-AMG coarse spaces; PETSc and SciPy paths) against the usual solvers.

For each PDE family and each of ``--instances`` instances (instance ``i``: mesh
``meshes.jittered_square(N, seed=1000+i)``, coefficients ``pdes.sample(family, mesh,
rng=1000+i)``), every method solves ``A x = b`` to ``||b - A x|| / ||b|| < 1e-6``:

* SVD two-grid, coarse rank r in ``--ranks``, ``K`` smoothed vectors, on the PETSc path
  (``TwoGridPC``, native PCMG) and the SciPy path (``TwoGrid`` + ``pcg``);
* SA-AMG two-grid (PyAMG's first-level prolongator) on both paths;
* the peers: Jacobi-CG, ICC(0)-CG, PyAMG-SA-CG, GAMG-CG, sparse direct Cholesky.

Phases are those of :mod:`nlss_fenicsx.bench.methods` (DESIGN.md section 4): smoothing,
inference, setup, solve and their total, from ``time.perf_counter``. Mesh generation and
assembly are not timed. Before timing, every method runs once on the family's first
instance (warm-up, not recorded). The seed of the smoothed vectors' random start is the
instance seed. A method that fails on an instance (no convergence, a non-SPD coarse
operator, ...) is recorded as a failure with its message; the run goes on.

Per method (and rank) the tables give the median over instances of each phase in ms, the
median iteration count and Q1/Q3 (linear interpolation) of the total, sorted by median
total. BLAS runs single-threaded (``OMP/OPENBLAS/MKL_NUM_THREADS=1``) unless those
variables are set in the environment; they are recorded. Outputs in ``--out``, rewritten
atomically after each family: ``results.json`` (machine, settings, raw per-instance
records and the summaries) and ``tables.md``.

Usage::

    python benchmarks/bench_twogrid.py                       # standard: N=64, 10 instances
    python benchmarks/bench_twogrid.py --pde diffusion --instances 5
    python benchmarks/bench_twogrid.py --quick --out /tmp/bench_quick   # smoke check
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

# Serial BLAS unless the caller chose otherwise (set before numpy loads OpenBLAS): on a
# small machine a threaded BLAS on these tall-skinny products mostly adds noise, and under
# any competing load it can be 100x slower (measured: SVD basis at N=64, 300 ms vs 1.5 ms).
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
THREADS_GIVEN = {_var: os.environ.get(_var) for _var in THREAD_VARS}
for _var in THREAD_VARS:
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from nlss_fenicsx import meshes, pdes  # noqa: E402
from nlss_fenicsx.bench.machine import machine_info, machine_line  # noqa: E402
from nlss_fenicsx.bench.methods import MethodSpec  # noqa: E402
from nlss_fenicsx.bench.report import (  # noqa: E402
    PHASES,
    run_one,
    summarize,
    write_atomic,
    write_json,
)

SEED_BASE = 1000
STANDARD = {"N": 64, "instances": 10, "ranks": [24, 36, 48, 64], "K": 72}
QUICK = {"N": 16, "instances": 2, "ranks": [8, 16], "K": 24}


# --------------------------------------------------------------------------- methods


def method_specs(ranks: list[int], K: int, seed: int) -> dict[str, MethodSpec]:
    """The benchmarked methods, keyed by a unique display name, in run order."""
    specs: dict[str, MethodSpec] = {}
    for path in ("petsc", "scipy"):
        for r in ranks:
            spec = MethodSpec("svd", rank=r, K=K, path=path, seed=seed)
            specs[f"{spec.label} r={r}"] = spec
        spec = MethodSpec("sa", K=K, path=path, seed=seed)
        specs[spec.label] = spec
    for name in ("jacobi", "icc", "pyamg", "gamg", "cholesky"):
        spec = MethodSpec(name, K=K, seed=seed)
        specs[spec.label] = spec
    return specs


def with_seed(spec: MethodSpec, seed: int) -> MethodSpec:
    """``spec`` with the random start of the smoothed vectors drawn from ``seed``."""
    return dataclasses.replace(spec, seed=seed)


def build_instance(family: str, N: int, i: int):
    """Mesh, sample and assemble instance ``i`` of ``family`` (not timed)."""
    seed = SEED_BASE + i
    mesh = meshes.jittered_square(N, seed=seed)
    return pdes.assemble(pdes.sample(family, mesh, rng=seed))


# --------------------------------------------------------------------------- summary


def _sort_key(item):
    s = item[1]["summary"]
    return (s["n_ok"] == 0, s.get("total_ms", np.inf))


def fastest(methods: dict) -> tuple[str, float] | None:
    """Fastest median total among methods with no failure (else among any success)."""
    ranked = [(k, m["summary"]) for k, m in sorted(methods.items(), key=_sort_key)]
    clean = [(k, s) for k, s in ranked if s["n_ok"] and not s["n_failed"]]
    pool = clean or [(k, s) for k, s in ranked if s["n_ok"]]
    return (pool[0][0], pool[0][1]["total_ms"]) if pool else None


def _fmt(x, digits=2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def table(family: str, res: dict) -> str:
    """Markdown table of one family, sorted by median total, plus the 'fastest' line."""
    lines = [
        f"### {family}: N={res['N']}, n={res['n']}, {res['instances']} instances "
        "(medians; times in ms)",
        "",
        "| method | r | coarse | iters | smoothing | inference | setup | solve | total "
        "| total Q1-Q3 | ok |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for key, m in sorted(res["methods"].items(), key=_sort_key):
        s = m["summary"]
        n_all = s["n_ok"] + s["n_failed"]
        rank = m["rank"] if m["rank"] is not None else "-"
        if not s["n_ok"]:
            lines.append(f"| {key} | {rank} | - | - | - | - | - | - | failed | - "
                         f"| 0/{n_all} |")
            continue
        coarse = "-" if s["coarse_size"] is None else f"{s['coarse_size']:.0f}"
        lines.append(
            f"| {key} | {rank} | {coarse} | {s['iterations']:.0f} | "
            + " | ".join(_fmt(s[f"{ph}_ms"]) for ph in PHASES)
            + f" | {_fmt(s['total_q1_ms'])}-{_fmt(s['total_q3_ms'])} | {s['n_ok']}/{n_all} |"
        )
    lines.append("")
    best = fastest(res["methods"])
    lines.append("fastest: none (every method failed)" if best is None
                 else f"fastest: {best[0]} ({best[1]:.2f} ms median total)")
    failures = [(k, m["summary"]["errors"]) for k, m in res["methods"].items()
                if m["summary"].get("errors")]
    if failures:
        lines += ["", "failures:"]
        lines += [f"- {k}: {e}" for k, errs in failures for e in errs]
    return "\n".join(lines)


# --------------------------------------------------------------------------- output


def write_outputs(out: Path, results: dict) -> None:
    write_json(out / "results.json", results)
    s = results["settings"]
    head = [
        "# Two-grid benchmark",
        "",
        f"machine: {machine_line(results['machine'])}",
        f"settings: N={s['N']}, instances={s['instances']} (seeds {s['seeds'][0]}.."
        f"{s['seeds'][-1]}), ranks={s['ranks']}, K={s['K']}, rtol={s['rtol']:g}"
        + (" (--quick)" if s["quick"] else ""),
        f"started {results['started']}"
        + (f", wall {results['wall_s']:.1f} s" if "wall_s" in results else " (in progress)"),
        "",
    ]
    body = [table(fam, res) + "\n" for fam, res in results["pdes"].items()]
    write_atomic(out / "tables.md", "\n".join(head + body))


# --------------------------------------------------------------------------- main


def run_family(family: str, args, specs: dict[str, MethodSpec]) -> dict:
    """Build the instances, warm up, then time every method on every instance."""
    t0 = time.perf_counter()
    systems = [build_instance(family, args.N, i) for i in range(args.instances)]
    print(f"[{family}] built {args.instances} instances (n={systems[0].n}) in "
          f"{time.perf_counter() - t0:.1f} s; warming up", flush=True)
    for key, spec in specs.items():  # warm-up on the first instance, not recorded
        r = run_one(systems[0], with_seed(spec, SEED_BASE))
        if not r["ok"]:
            tqdm.write(f"[{family}] warm-up {key} failed: {r['error']}")
    methods = {key: {"name": spec.name, "path": spec.path,
                     "rank": spec.rank if spec.name == "svd" else None,
                     "label": spec.label, "records": []}
               for key, spec in specs.items()}
    with tqdm(total=args.instances * len(specs), desc=family, unit="solve",
              disable=args.no_progress) as bar:
        for i, system in enumerate(systems):
            seed = SEED_BASE + i
            for key, spec in specs.items():
                bar.set_postfix_str(f"instance {i} {key}", refresh=False)
                r = run_one(system, with_seed(spec, seed))
                r["instance"], r["seed"] = i, seed
                if not r["ok"]:
                    tqdm.write(f"[{family}] instance {i} {key} failed: {r['error']}")
                methods[key]["records"].append(r)
                bar.update()
    for m in methods.values():
        m["summary"] = summarize(m["records"])
    return {"N": args.N, "n": systems[0].n, "instances": args.instances, "methods": methods}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Defaults: N=64, 10 instances, ranks 24 36 48 64, K=72. --quick sets N=16, "
               "2 instances, ranks 8 16, K=24; explicit flags override --quick.",
    )
    ap.add_argument("--pde", nargs="+", choices=pdes.FAMILIES, default=list(pdes.FAMILIES),
                    help="PDE families to run (default: all)")
    ap.add_argument("--N", type=int, default=None, help="grid cells per side (n=(N+1)^2)")
    ap.add_argument("--instances", type=int, default=None, help="instances per family")
    ap.add_argument("--ranks", type=int, nargs="+", default=None,
                    help="coarse ranks r of the SVD two-grid")
    ap.add_argument("--K", type=int, default=None, help="number of smoothed vectors")
    ap.add_argument("--out", type=Path, default=Path("results/issue3"),
                    help="output folder for results.json and tables.md "
                         "(default: results/issue3/)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke check: N=16, 2 instances, ranks 8 16, K=24")
    ap.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = ap.parse_args(argv)
    preset = QUICK if args.quick else STANDARD
    for k, v in preset.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.N < 2 or args.instances < 1:
        ap.error("need N >= 2 and instances >= 1")
    if args.K < 1 or any(r < 1 or r > args.K for r in args.ranks):
        ap.error(f"ranks must satisfy 1 <= r <= K = {args.K}, got {args.ranks}")
    if args.K > (args.N + 1) ** 2:
        ap.error(f"K = {args.K} exceeds n = {(args.N + 1) ** 2}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    specs = method_specs(args.ranks, args.K, SEED_BASE)
    first = next(iter(specs.values()))
    info = machine_info()
    print(f"machine: {machine_line(info)}")
    print(f"N={args.N}, instances={args.instances}, ranks={args.ranks}, K={args.K}, "
          f"families={args.pde}, {len(specs)} methods, out={args.out}", flush=True)
    results = {
        "machine": info,
        "settings": {
            "N": args.N, "n": (args.N + 1) ** 2, "instances": args.instances,
            "ranks": args.ranks, "K": args.K, "pdes": args.pde, "quick": args.quick,
            "seeds": [SEED_BASE + i for i in range(args.instances)],
            "seed_rule": "instance i: jittered_square(N, seed=1000+i), "
                         "sample(family, mesh, rng=1000+i), smoothed-vector seed 1000+i",
            "rtol": first.rtol, "sweeps": first.sweeps, "nu": first.nu,
            "omega": first.omega, "maxiter": first.maxiter,
            "methods": {k: {"name": s.name, "path": s.path,
                            "rank": s.rank if s.name == "svd" else None}
                        for k, s in specs.items()},
            "warmup": "every method once on each family's first instance, not recorded",
            "phases_unit": "records: seconds; summaries: ms",
            "threads": {v: os.environ.get(v) for v in THREAD_VARS},
            "threads_from_caller": THREADS_GIVEN,
            "argv": sys.argv,
        },
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "pdes": {},
    }
    t0 = time.perf_counter()
    for family in args.pde:
        results["pdes"][family] = run_family(family, args, specs)
        print()
        print(table(family, results["pdes"][family]), flush=True)
        print()
        write_outputs(args.out, results)
    results["wall_s"] = time.perf_counter() - t0
    write_outputs(args.out, results)
    print(f"wrote {args.out / 'results.json'} and {args.out / 'tables.md'} "
          f"(wall {results['wall_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
