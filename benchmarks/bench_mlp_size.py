"""Can the paper's MLP be trained here at Table 4's larger sizes? Parameters, memory, time.

For each N (K = N smoothed vectors, as in paper Table 4) and each largest rank r_max
(K/2: the only rank Table 4 uses; K), the MLP with the paper's hidden widths has
``n*K*128 + ... + 128*n*r_max`` parameters (n = (N+1)^2). Training holds the weights and
Adam's two moments (12 bytes per parameter with :class:`~nlss_fenicsx.nn.optim.BackwardAdam`,
which applies each parameter's update inside the backward pass and frees its gradient at
once), plus the largest single gradient while it lives. Where that estimate fits under
``--memory-fraction`` of this machine's memory, ``--steps`` real training steps (the NLSS
loss on smoothed vectors of a real instance, batch 1) are timed in a fresh subprocess, with
the peak resident set size of that process; the time of ``--budget-steps`` steps (the
scalability budget's) and of the paper's code protocol (1000 steps) follow, data generation
per step included. Sizes that do not fit are reported with the memory they would need.

The step loop alone leaves out what the whole command holds at its peak (the end-of-
training int8 calibration and the checkpoint writes with Adam's moments): where the size
fits, ``nlss-fenicsx train`` itself runs ``--cli-steps`` steps in a child process too
(``bench_training.py``), for its peak resident memory and its fixed overhead.

Writes ``--out``/mlp_size.json and mlp_size.md atomically. Usage::

    python benchmarks/bench_mlp_size.py [--N 64 128 256] [--steps 5] [--cli-steps 3]
        [--out results/scalability]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
# As nn.train.train does: torch reads it at its first large allocation (fewer page faults).
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

HIDDEN = (128, 256, 256, 128)  # the paper's widths (Table 4: "the same architecture")


def _parameters(N: int, r_max: int) -> int:
    from nlss_fenicsx.nn import MLPConfig

    return MLPConfig(n=(N + 1) ** 2, K=N, r_max=r_max, hidden=HIDDEN).num_parameters()


def _estimate_gib(N: int, r_max: int) -> float:
    """Weights + Adam's moments (12 B/parameter) + the largest gradient alive at once."""
    n = (N + 1) ** 2
    largest = max(n * N * HIDDEN[0], HIDDEN[-1] * n * r_max)
    return (12 * _parameters(N, r_max) + 4 * largest) / 2**30


def measure_one(N: int, r_max: int, steps: int) -> dict:
    """Time ``steps`` training steps of the N-size MLP (run in a fresh process)."""
    import numpy as np
    import torch

    from nlss_fenicsx.nn import NLSSMLP, MLPConfig, nlss_loss
    from nlss_fenicsx.nn.data import DataConfig, instance
    from nlss_fenicsx.nn.optim import BackwardAdam
    from nlss_fenicsx.nn.train import peak_rss_mib

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cfg = MLPConfig(n=(N + 1) ** 2, K=N, r_max=r_max, hidden=HIDDEN)
    data = DataConfig(N=N, K=N)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    net = NLSSMLP(cfg)
    opt = BackwardAdam(net.parameters(), lr=1e-3)
    t_build = time.perf_counter() - t0
    step_s, data_s = [], []
    for k in range(steps + 1):  # the first step (allocation of Adam's moments) is not timed
        t0 = time.perf_counter()
        _, S = instance(data, seed=k)
        t1 = time.perf_counter()
        S = torch.as_tensor(np.ascontiguousarray(S))[None]
        loss = nlss_loss(net(S), S)
        loss.backward()  # BackwardAdam updates each parameter here
        t2 = time.perf_counter()
        if k:
            data_s.append(t1 - t0)
            step_s.append(t2 - t1)
    del opt, net
    return {"build_s": t_build, "step_s": float(np.median(step_s)),
            "data_s": float(np.median(data_s)), "peak_rss_mib": peak_rss_mib(),
            "timed_steps": steps}


def _cli_training(N: int, r_max: int, steps: int) -> dict:
    """``nlss-fenicsx train`` for a few steps: the whole command's peak memory and time.

    Includes what the step loop leaves out: building the network, the held-out
    evaluation, the int8 calibration at the end and the checkpoint writes (weights and
    Adam's moments).
    """
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_training import run  # the sibling script: one way to time the CLI

    try:
        got = run(argparse.Namespace(pde="diffusion", N=N, K=N, rank=r_max, steps=steps,
                                     hidden=",".join(map(str, HIDDEN)),
                                     threads=int(os.environ["OMP_NUM_THREADS"]), model=None))
    except RuntimeError as err:  # e.g. killed for memory: recorded, the others still run
        return {"cli_steps": steps, "cli_failed": str(err)[-300:]}
    return {"cli_steps": steps, "cli_wall_s": got["wall_s"],
            "cli_peak_rss_mib": got["peak_rss_mib"], "cli_command": got["command"]}


def _row(N: int, r_max: int, args, limit: float) -> dict:
    p, est = _parameters(N, r_max), _estimate_gib(N, r_max)
    row = {"N": N, "n": (N + 1) ** 2, "K": N, "r_max": r_max, "parameters": p,
           "weights_gib": 4 * p / 2**30, "estimate_gib": est}
    if est > limit:
        row["not_measured"] = f"needs about {est:.0f} GiB to train, more than {limit:.1f} GiB here"
        return row
    done = subprocess.run([sys.executable, __file__, "--one", str(N), str(r_max),
                           str(args.steps)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        row["failed"] = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return row
    row.update(json.loads(done.stdout.strip().splitlines()[-1]))
    per = row["step_s"] + row["data_s"]
    overhead = 0.0
    if args.cli_steps:
        row.update(_cli_training(N, r_max, args.cli_steps))
        if "cli_wall_s" in row:
            overhead = max(0.0, row["cli_wall_s"] - args.cli_steps * per)
            row["cli_overhead_s"] = overhead
    row["budget_minutes"] = (overhead + args.budget_steps * per) / 60
    row["paper_code_minutes"] = (overhead + 1000 * per) / 60
    return row


def _cells(row: dict) -> list[str]:
    cells = [f"{row['weights_gib']:.2f}", f"{row['estimate_gib']:.1f}"]
    if "step_s" not in row:
        return [*cells, row.get("failed") or row["not_measured"], "", "", "", "", "", ""]
    cli = "cli_peak_rss_mib" in row
    return [*cells, f"{row['peak_rss_mib'] / 1024:.1f}", f"{row['step_s']:.2f}",
            f"{row['data_s']:.3f}",
            f"{row['cli_peak_rss_mib'] / 1024:.1f}" if cli else row.get("cli_failed", "-"),
            f"{row['cli_overhead_s']:.0f}" if cli else "-",
            f"{row['budget_minutes']:.1f}", f"{row['paper_code_minutes']:.1f}"]


def main(argv=None) -> None:
    """Measure and write ``mlp_size.{json,md}``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--N", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--steps", type=int, default=5, help="timed training steps per size")
    ap.add_argument("--cli-steps", type=int, default=3,
                    help="steps of the nlss-fenicsx train run that measures the whole "
                         "command's peak memory (0: skip it)")
    ap.add_argument("--budget-steps", type=int, default=300,
                    help="steps the scalability budget trains (Budget.scal_steps)")
    ap.add_argument("--memory-fraction", type=float, default=0.75,
                    help="measure only where the estimate fits under this share of memory")
    ap.add_argument("--out", type=Path, default=Path("results/scalability"))
    ap.add_argument("--one", nargs=3, type=int, metavar=("N", "R_MAX", "STEPS"),
                    help=argparse.SUPPRESS)  # internal: one measurement, JSON on stdout
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(*args.one)))
        return
    from nlss_fenicsx._atomic import check_destination
    from nlss_fenicsx.bench.machine import machine_info, machine_line
    from nlss_fenicsx.bench.report import write_atomic, write_json

    out = check_destination(args.out, what="--out", kind="dir")
    info = machine_info()
    limit = args.memory_fraction * (info.get("memory_gib") or 0.0)
    rows = []
    lines = ["# The paper's MLP at Table 4's sizes: can it be trained here?", "",
             f"machine: {machine_line(info)}", "",
             f"K = N, hidden widths {HIDDEN}, batch 1, BackwardAdam, torch threads = "
             f"OMP_NUM_THREADS = {os.environ['OMP_NUM_THREADS']}. Estimate = 12 bytes per "
             "parameter (weights, Adam's two moments) + the largest gradient; measured only "
             f"where it is under {args.memory_fraction:.0%} of memory ({limit:.1f} GiB). Step "
             f"peak: {args.steps} training steps alone (median s/step; data generation "
             f"apart). Command peak: `nlss-fenicsx train` for {args.cli_steps} steps, whose "
             "fixed overhead (building the net, evaluation, int8 calibration, checkpoint "
             "writes with Adam's moments) is its wall time minus its steps. Training time = "
             "overhead + steps x (step + data).", "",
             "| N | n | r_max | parameters | float32 weights (GiB) | estimate to train (GiB) "
             "| step peak RSS (GiB) | s/step | data s/step | command peak RSS (GiB) "
             f"| overhead (s) | {args.budget_steps} steps (min) | 1000 steps (min) |",
             "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for N in args.N:
        for r_max in sorted({N // 2, N}):
            row = _row(N, r_max, args, limit)
            rows.append(row)
            lines.append(f"| {N} | {(N + 1) ** 2:,} | {r_max} | {row['parameters']:,} | "
                         + " | ".join(_cells(row)) + " |")
            print(lines[-1], flush=True)
            write_json(out / "mlp_size.json", {"machine": info, "hidden": list(HIDDEN),
                                               "steps": args.steps,
                                               "cli_steps": args.cli_steps,
                                               "budget_steps": args.budget_steps,
                                               "memory_limit_gib": limit, "rows": rows})
            write_atomic(out / "mlp_size.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    try:
        main()
    except ValueError as err:  # bad input (e.g. an --out that cannot be written): one line
        sys.exit(f"bench_mlp_size.py: {err}")
