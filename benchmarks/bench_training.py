"""Training time and peak memory of the paper-size NLSS model, through the command line.

Runs ``nlss-fenicsx train`` (default: diffusion, N=64, K=72, r_max=72, 1000 steps of the
code protocol, the paper's hidden widths: the model the README and the ``standard`` bench
use) in a child process from scratch (``--restart``), and records

* the wall time of the command and the peak resident set size of its process (Linux
  ``wait4`` rusage, the high-water mark of everything it held: torch, the data, Adam's
  moments, the checkpoint writes);
* what the checkpoint itself records: training seconds, parameters, the loss history's
  last held-out evaluation, and the int8 calibration decided at the end of training
  (which compressed copy was accepted and its largest principal angle to the float32
  network on held-out instances).

Writes ``--out``/training.json and training.md atomically; the model goes to a temporary
folder (removed afterwards) unless ``--model PATH`` keeps it. Usage::

    python benchmarks/bench_training.py [--pde diffusion] [--N 64] [--K 72] [--rank 72]
        [--steps 1000] [--threads 1] [--out results/perf]
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PAPER_HIDDEN = "128,256,256,128"


def _command(args, model: Path) -> list[str]:
    exe = Path(sys.executable).with_name("nlss-fenicsx")
    head = [str(exe)] if exe.exists() else [sys.executable, "-m", "nlss_fenicsx"]
    return [*head, "train", "--pde", args.pde, "--N", str(args.N), "--K", str(args.K),
            "--rank", str(args.rank), "--steps", str(args.steps), "--hidden", args.hidden,
            "--out", str(model), "--restart", "--no-progress"]


def run(args) -> dict:
    """Train through the CLI in a child process; return the measurements."""
    from nlss_fenicsx.bench.report import plain_fields
    from nlss_fenicsx.nn.inference import model_from_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else Path(tmp) / "model.pt"
        cmd = _command(args, model)
        env = dict(os.environ, **{v: str(args.threads) for v in
                                  ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                   "MKL_NUM_THREADS")})
        log = Path(tmp) / "train.log"
        with open(log, "w") as fh:
            t0 = time.perf_counter()
            child = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
            _, status, usage = os.wait4(child.pid, 0)
            wall = time.perf_counter() - t0
        child.returncode = os.waitstatus_to_exitcode(status)
        tail = log.read_text().strip().splitlines()[-5:]
        if child.returncode != 0:
            raise RuntimeError(f"{shlex.join(cmd)} exited with {child.returncode}: "
                               + " | ".join(tail))
        net = model_from_checkpoint(model)
        state = net.train_state
        history = [h for h in state.get("history", []) if "eval_loss" in h]
    return {"command": shlex.join(["nlss-fenicsx", *cmd[cmd.index("train"):]]).replace(
                str(model), "MODEL.pt"),
            "threads": args.threads, "wall_s": wall,
            "peak_rss_mib": usage.ru_maxrss / 1024.0,  # Linux: KiB
            "parameters": net.num_parameters(), "steps": int(net.step or 0),
            "train_seconds": state.get("seconds"),
            "train_peak_rss_mib_in_checkpoint": state.get("peak_rss_mib"),
            "last_eval": history[-1] if history else None,
            "int8_calibration": plain_fields(net.int8_calibration),
            "output_tail": tail}


def render(report: dict) -> str:
    """``training.md``."""
    from nlss_fenicsx.bench.machine import machine_line

    r = report
    cal = r["int8_calibration"] or {}
    lines = ["# Training the NLSS model: time and memory", "",
             f"machine: {machine_line(report['machine'])}", "",
             f"command (BLAS and torch threads: {r['threads']}):", "", f"    {r['command']}",
             "", "| quantity | value |", "|---|--:|",
             f"| parameters | {r['parameters']:,} |",
             f"| training steps | {r['steps']} |",
             f"| wall time of the command | {r['wall_s']:.0f} s |",
             f"| training time recorded in the checkpoint | {r['train_seconds']:.0f} s |",
             f"| peak resident memory of the command's process | "
             f"{r['peak_rss_mib']:.0f} MiB |"]
    if cal:
        lines += [f"| int8 copy accepted | {cal.get('choice')} |",
                  f"| its largest principal angle to float32 (held-out, ranks "
                  f"{cal.get('ranks')}) | {cal.get('max_angle_deg', float('nan')):.2f} deg |",
                  f"| full int8 copy's largest angle | "
                  f"{cal.get('full_int8_angle_deg', float('nan')):.2f} deg |"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    """Run the measurement and write ``training.{json,md}``; return the report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pde", default="diffusion")
    ap.add_argument("--N", type=int, default=64)
    ap.add_argument("--K", type=int, default=72)
    ap.add_argument("--rank", type=int, default=72)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--hidden", default=PAPER_HIDDEN)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", help="keep the trained checkpoint here")
    ap.add_argument("--out", type=Path, default=Path("results/perf"))
    args = ap.parse_args(argv)
    from nlss_fenicsx._atomic import check_destination
    from nlss_fenicsx.bench.machine import machine_info
    from nlss_fenicsx.bench.report import write_atomic, write_json

    out = check_destination(args.out, what="--out", kind="dir")
    report = {"machine": machine_info(), **run(args)}
    write_json(out / "training.json", report)
    write_atomic(out / "training.md", render(report))
    print(render(report))
    return report


if __name__ == "__main__":
    try:
        main()
    except ValueError as err:  # bad input (e.g. an --out that cannot be written): one line
        sys.exit(f"bench_training.py: {err}")
