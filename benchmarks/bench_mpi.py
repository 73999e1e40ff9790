"""Scale-out of the learned two-grid preconditioner (``nlss_coarse nlss``) under mpiexec.

For each mesh size ``N`` and each number of MPI ranks, one diffusion instance (mesh
``jittered_square(N, seed=0)``, coefficients ``rng=0``) is assembled on ``COMM_WORLD`` and
solved ``--reps`` times with PETSc CG + :class:`nlss_fenicsx.petsc.TwoGridPC` (rtol 1e-6,
unpreconditioned residual), after one warm-up solve (model loading, first-call costs). The
phases, in ms (median over the repetitions, rank 0's clock):

``smoothing``  K Jacobi-smoothed vectors S (SciPy float32 on one rank, distributed PETSc
               float64 block products on several: the two are not the same code)
``inference``  the coarse basis P: S gathered to rank 0, the network there, P's rows
               scattered back (the parts, where TwoGridPC reports them, are kept in
               results.json under the names it gives them)
``setup``      the native PCMG: Ac = P^T A P, its checks and its (redundant) Cholesky
``solve``      the CG iteration

The models are for timing only: the paper's MLP widths trained for ``--steps`` steps
(cached with :func:`nlss_fenicsx.nn.cache.cached_model`), enough to give P the cost and a
plausible quality, not the paper's accuracy. BLAS and torch run single-threaded per rank.

Usage::

    python benchmarks/bench_mpi.py                         # N=64,128 at 1,2,4 ranks
    python benchmarks/bench_mpi.py --N 64 --ranks 1 2 --reps 3 --out /tmp/bench_mpi

The driver runs itself under ``mpiexec -n k`` (``--worker``) for each case; it writes
``OUT/results.json`` and ``OUT/tables.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

PHASES = ("smoothing", "inference", "setup", "solve")
HIDDEN = (128, 256, 256, 128)


# --------------------------------------------------------------------------- worker
def worker(args) -> None:
    import torch

    torch.set_num_threads(1)
    from nlss_fenicsx import meshes, pdes
    from nlss_fenicsx._fenicsx import MPI, PETSc
    from nlss_fenicsx.options import parse_options
    from nlss_fenicsx.petsc import TwoGridPC, check_converged

    comm = MPI.COMM_WORLD
    (N,) = args.N  # the driver passes one size to each worker
    system = pdes.assemble(pdes.sample("diffusion", meshes.jittered_square(N, seed=0, comm=comm),
                                       rng=0))
    b = system.A.createVecRight()
    b.setArray(system.b)
    x = system.A.createVecLeft()
    rows = []
    for rep in range(args.reps + 1):  # rep 0: warm-up, not recorded
        ksp = PETSc.KSP().create(comm=comm)
        ksp.setOptionsPrefix("bench_mpi_")
        ksp.setOperators(system.A)
        ksp.setType("cg")
        ksp.setNormType(PETSc.KSP.NormType.UNPRECONDITIONED)
        ksp.setTolerances(rtol=1e-6, atol=0.0, max_it=5000)
        pc = ksp.getPC()
        pc.setType(PETSc.PC.Type.PYTHON)
        ctx = TwoGridPC(options=parse_options({
            "nlss_coarse": "nlss", "nlss_model": args.model, "nlss_pde": "diffusion",
            "nlss_rank": str(args.rank), "nlss_K": str(args.K), "nlss_seed": str(rep),
            "nlss_precision": args.precision}))
        pc.setPythonContext(ctx)
        x.set(0.0)
        comm.Barrier()
        t0 = time.perf_counter()
        ksp.setUp()
        comm.Barrier()
        t1 = time.perf_counter()
        ksp.solve(b, x)
        comm.Barrier()
        t2 = time.perf_counter()
        its = check_converged(ksp)
        rows.append({**ctx.timings, "pc_setup_wall": t1 - t0, "solve": t2 - t1,
                     "iterations": its})
        ksp.destroy()
    if comm.rank == 0:
        rec = rows[1:]
        med = {k: float(np.median([r[k] for r in rec])) for k in rec[0]}
        print(json.dumps({"N": N, "n": system.n, "size": comm.size, "K": args.K,
                          "rank": args.rank, "median": med, "reps": rec}))


# --------------------------------------------------------------------------- driver
def _model(N: int, K: int, steps: int) -> Path:
    import torch

    torch.set_num_threads(1)
    from nlss_fenicsx.nn.cache import cached_model
    from nlss_fenicsx.nn.train import TrainConfig

    cfg = TrainConfig(pde="diffusion", N=N, K=K, r_max=K, hidden=HIDDEN, steps=steps,
                      eval_every=steps, ckpt_every=steps, n_eval=2)
    _, path, _ = cached_model(cfg, progress=True)
    return path


def _table(results: list[dict]) -> str:
    head = "| N | n | ranks | its | " + " | ".join(PHASES) + " | inference / solve |\n"
    head += "|---" * (5 + len(PHASES)) + "|\n"
    lines = []
    for r in results:
        m = r["median"]
        lines.append(f"| {r['N']} | {r['n']:,} | {r['size']} | {m['iterations']:.0f} | "
                     + " | ".join(f"{1e3 * m[p]:.1f}" for p in PHASES)
                     + f" | {m['inference'] / m['solve']:.2f} |")
    return head + "\n".join(lines) + "\n"


def driver(args) -> None:
    from nlss_fenicsx.bench.machine import machine_info, machine_line
    from nlss_fenicsx.bench.report import write_atomic, write_json

    mpiexec = str(Path(sys.executable).parent / "mpiexec")
    if not Path(mpiexec).exists():
        mpiexec = shutil.which("mpiexec") or "mpiexec"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    results = []
    t_start = time.perf_counter()
    for N in args.N:
        path = _model(N, args.K, args.steps)
        for size in args.ranks:
            cmd = [mpiexec, "-n", str(size), sys.executable, __file__, "--worker",
                   "--model", str(path), "--N", str(N), "--K", str(args.K),
                   "--rank", str(args.rank), "--reps", str(args.reps),
                   "--precision", args.precision]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append(res)
            m = res["median"]
            print(f"N={N} ranks={size}: its {m['iterations']:.0f}, " + ", ".join(
                f"{p} {1e3 * m[p]:.1f} ms" for p in PHASES), flush=True)
    out = Path(args.out)
    info = machine_info()
    write_json(out / "results.json", {
        "machine": info, "K": args.K, "rank": args.rank, "steps": args.steps,
        "hidden": list(HIDDEN), "reps": args.reps, "precision": args.precision,
        "results": results,
        "wall_s": time.perf_counter() - t_start})
    text = (f"# nlss two-grid under mpiexec (diffusion, K={args.K}, r={args.rank}, "
            f"timing-only models: {args.steps} steps, {args.precision} inference)\n\n"
            f"{machine_line(info)}. Median of "
            f"{args.reps} solves after a warm-up, ms (rank 0's clock).\n\n" + _table(results))
    write_atomic(out / "tables.md", text)
    print(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--N", type=int, nargs="+", default=[64, 128])
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--K", type=int, default=72)
    p.add_argument("--rank", type=int, default=48, help="coarse rank r (default 48)")
    p.add_argument("--steps", type=int, default=50, help="training steps of the models")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--precision", choices=("int8", "float32"), default="int8",
                   help="the MLP's inference weights (nlss_precision; default int8)")
    p.add_argument("--out", default="results/bench_mpi")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    args = p.parse_args()
    worker(args) if args.worker else driver(args)


if __name__ == "__main__":
    main()
