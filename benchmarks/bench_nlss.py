"""Performance of the learned pipeline: NLSS against the SVD of S, phase by phase.

For each PDE family, with the budget's cached NLSS model (``standard``: N=64, K=72,
r_max=72; trained on demand if missing), on ``--instances`` test instances:

1. per-phase medians through :class:`~nlss_fenicsx.petsc.TwoGridPC` of NLSS with int8
   inference (the PC's default), NLSS with float32 inference (the network as trained),
   SVD at ``--rank``, and ICC(0)-CG for scale; the ratios NLSS/SVD of the total and of
   the inference, and the iterations int8/float32;
2. inference alone on one instance (warm caches, median of 15 after 3 warm-ups): the
   model's int8 and float32 backends (:func:`nlss_fenicsx.nn.inference.load_model`) with
   1 and 2 torch threads, against the SVD basis of the same S
   (:func:`nlss_fenicsx.coarse.coarse_basis`);
3. one training step at full size (random S, the NLSS loss): seconds per step and the
   memory the step adds, with the package's :class:`~nlss_fenicsx.nn.optim.BackwardAdam`
   (Adam fused into backward) and with ``torch.optim.Adam(fused=True)``;
4. the int8 calibration each model's checkpoint records (decided at the end of training):
   which compressed copy was accepted and its largest principal angle to the float32
   network on held-out instances.

Writes ``--out``/perf.json and perf.md atomically. Usage::

    python benchmarks/bench_nlss.py [--pde diffusion ...] [--instances 15] [--rank 48]
                                    [--threads 1] [--out results/perf]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics as st
import sys
import time
from dataclasses import replace
from pathlib import Path


def _threads_from_argv(argv) -> int:
    """``--threads N`` read before NumPy loads its BLAS (which reads the variables once)."""
    for i, arg in enumerate(argv):
        if arg == "--threads" and i + 1 < len(argv):
            return int(argv[i + 1])
        if arg.startswith("--threads="):
            return int(arg.split("=", 1)[1])
    return 1


THREADS = _threads_from_argv(sys.argv)
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(THREADS)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from nlss_fenicsx.bench.harness import BUDGETS, TEST_SEED, instances, obtain_models  # noqa: E402
from nlss_fenicsx.bench.machine import machine_info, machine_line  # noqa: E402
from nlss_fenicsx.bench.methods import MethodSpec  # noqa: E402
from nlss_fenicsx.bench.report import (  # noqa: E402
    frozen_heap,
    plain_fields,
    run_one,
    summarize,
    write_atomic,
    write_json,
)

FAMILIES = ("diffusion", "anisotropic", "screened_poisson")


def _median_ms(f, reps=15, warm=3) -> float:
    for _ in range(warm):
        f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return 1e3 * st.median(ts)


def solver_rows(systems, path: str, budget, r: int) -> dict:
    """Per-phase summaries of NLSS (int8, float32), SVD and ICC(0)-CG over ``systems``."""
    rows = {}
    for key, spec in (("NLSS (int8)", MethodSpec("nlss", rank=r, K=budget.K, model=path)),
                      ("NLSS (float32)", MethodSpec("nlss", rank=r, K=budget.K, model=path,
                                                    precision="float32")),
                      ("SVD", MethodSpec("svd", rank=r, K=budget.K)),
                      ("ICC(0)-CG", MethodSpec("icc"))):
        gc.collect()  # between methods (run_one pauses the collector inside a solve)
        run_one(systems[0], replace(spec, seed=TEST_SEED))  # warm-up
        rows[key] = summarize([run_one(s, replace(spec, seed=TEST_SEED + i))
                               for i, s in enumerate(systems)])
    return rows


def inference_alone(system, path: str, K: int, r: int) -> dict:
    """Median ms of each way to get P from the same S (warm caches)."""
    from nlss_fenicsx.coarse import coarse_basis
    from nlss_fenicsx.nn.inference import load_model
    from nlss_fenicsx.smoothing import smoothed_vectors

    S = smoothed_vectors(system.A_csr, K, rng=0, dtype=np.float32)
    order = system.grid_order
    out = {}
    threads = torch.get_num_threads()
    for precision in ("int8", "float32"):
        model = load_model(path, precision=precision)
        for t in sorted({1, 2}):
            torch.set_num_threads(t)
            out[f"{model.precision}, {t} torch thread(s)"] = _median_ms(
                lambda m=model: m.basis(S, r, node_order=order, dtype=np.float32))
    torch.set_num_threads(threads)
    S_double = S.astype(np.float64)
    out["SVD of S (coarse_basis('svd'))"] = _median_ms(
        lambda: coarse_basis("svd", system.A_csr, r=r, S=S_double))
    return out


def training_step(budget, steps: int = 12) -> dict:
    """Seconds per step and the memory a step's backward + update adds (VmHWM, Linux)."""
    from nlss_fenicsx.nn import NLSSMLP, MLPConfig, nlss_loss
    from nlss_fenicsx.nn.optim import BackwardAdam

    def hwm_mib():
        try:
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) / 1024 for line in f
                            if line.startswith("VmHWM"))
        except (OSError, StopIteration):
            return None

    def reset_hwm():
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # VmHWM back to the current resident size (Linux)
        except OSError:
            pass

    cfg = MLPConfig(n=(budget.N + 1) ** 2, K=budget.K, r_max=budget.r_max, hidden=budget.hidden)
    S = torch.randn(1, cfg.n, cfg.K)
    res = {}
    for label in ("BackwardAdam (Adam fused into backward)", "torch.optim.Adam(fused=True)"):
        torch.manual_seed(0)
        net = NLSSMLP(cfg)
        backward = label.startswith("BackwardAdam")
        opt = (BackwardAdam(net.parameters(), lr=1e-3) if backward
               else torch.optim.Adam(net.parameters(), lr=1e-3, fused=True))
        ts, extra = [], []
        for _ in range(steps):
            t = time.perf_counter()
            loss = nlss_loss(net(S), S)
            if not backward:
                opt.zero_grad(set_to_none=True)
            reset_hwm()
            base = hwm_mib()
            loss.backward()
            if not backward:
                opt.step()
            peak = hwm_mib()
            ts.append(time.perf_counter() - t)
            if base is not None and peak is not None:
                extra.append(peak - base)
        res[label] = {"s_per_step": st.median(ts[3:]),
                      "step_peak_over_start_mib": max(extra[3:]) if extra else None}
        if backward:
            opt.remove()
        del net, opt
    return res


def calibration_line(cal: dict | None) -> str:
    """One line on a checkpoint's int8 calibration (what runs by default, how close)."""
    if not cal:
        return "int8 calibration: none recorded in the checkpoint"
    return (f"int8 calibration (end of training): {cal.get('choice')}; largest principal "
            f"angle to the float32 network {cal.get('max_angle_deg', float('nan')):.2f} deg "
            f"over ranks {cal.get('ranks')} on {cal.get('held_out')} held-out instances "
            f"(full int8 copy: {cal.get('full_int8_angle_deg', float('nan')):.2f} deg)")


def main(argv=None) -> None:
    """Measure and write ``perf.{json,md}``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pde", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    ap.add_argument("--instances", type=int, default=15)
    ap.add_argument("--rank", type=int, default=48)
    ap.add_argument("--budget", default="standard", choices=tuple(BUDGETS))
    ap.add_argument("--no-training-step", action="store_true")
    ap.add_argument("--threads", type=int, default=1,
                    help="BLAS and torch threads for the whole run (PETSc is serial)")
    ap.add_argument("--out", type=Path, default=Path("results/perf"))
    args = ap.parse_args(argv)
    from nlss_fenicsx._atomic import check_destination

    args.out = check_destination(args.out, what="--out", kind="dir")  # before any work
    torch.set_num_threads(args.threads)
    budget = BUDGETS[args.budget]
    r = args.rank
    report = {"machine": machine_info(), "budget": args.budget, "rank": r,
              "instances": args.instances, "threads": args.threads, "pdes": {}}
    lines = ["# NLSS performance", "", f"machine: {machine_line()}",
             f"threads: {args.threads} (BLAS and torch; PETSc serial)",
             f"budget {args.budget}: N={budget.N}, K={budget.K}, r={r}, "
             f"{args.instances} instances; medians in ms", ""]
    for pde in args.pde:
        from nlss_fenicsx.nn.inference import model_from_checkpoint

        path = obtain_models(pde, budget, which=("nlss",), progress=False)["nlss"]["path"]
        calibration = plain_fields(model_from_checkpoint(path).int8_calibration)
        systems, _ = instances(pde, budget.N, args.instances)
        with frozen_heap():
            rows = solver_rows(systems, path, budget, r)
        nl, sv = rows["NLSS (int8)"], rows["SVD"]
        ratios = {"total NLSS/SVD": nl["total_ms"] / sv["total_ms"],
                  "inference NLSS/SVD": nl["inference_ms"] / sv["inference_ms"],
                  "iterations int8/float32": nl["iterations"]
                  / rows["NLSS (float32)"]["iterations"]}
        alone = inference_alone(systems[0], path, budget.K, r)
        report["pdes"][pde] = {"rows": rows, "ratios": ratios, "inference_alone": alone,
                               "model": path, "int8_calibration": calibration}
        lines += [f"## {pde}", "",
                  "| method | iters | smoothing | inference | setup | solve | total |",
                  "|---|--:|--:|--:|--:|--:|--:|"]
        lines += [f"| {key} | {s['iterations']:.1f} | {s['smoothing_ms']:.2f} | "
                  f"{s['inference_ms']:.2f} | {s['setup_ms']:.2f} | {s['solve_ms']:.2f} | "
                  f"{s['total_ms']:.2f} |" for key, s in rows.items()]
        lines += ["", " ; ".join(f"{k}: {v:.2f}" for k, v in ratios.items()), "",
                  calibration_line(calibration), "",
                  "| inference alone (one instance) | ms |", "|---|--:|"]
        lines += [f"| {k} | {t:.2f} |" for k, t in alone.items()]
        lines.append("")
        write_json(args.out / "perf.json", report)
        write_atomic(args.out / "perf.md", "\n".join(lines) + "\n")
        print("\n".join(lines[-(len(rows) + len(alone) + 11):]), flush=True)
    if not args.no_training_step:
        report["training_step"] = training_step(budget)
        lines += ["## Training step at full size (random input)", "",
                  "Seconds per step (median), and the most a step's backward + update raised "
                  "the resident set above its size at the start of the backward (MiB).", "",
                  "| optimiser | s/step | step peak over start (MiB) |", "|---|--:|--:|"]
        for k, v in report["training_step"].items():
            mem = v["step_peak_over_start_mib"]
            lines.append(f"| {k} | {v['s_per_step']:.3f} | "
                         f"{'n/a' if mem is None else f'{mem:.0f}'} |")
        lines.append("")
    write_json(args.out / "perf.json", report)
    write_atomic(args.out / "perf.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    try:
        main()
    except ValueError as err:  # bad input (e.g. an --out that cannot be written): one line
        sys.exit(f"bench_nlss.py: {err}")
