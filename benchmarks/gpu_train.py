"""Train NLSS models at the paper's scale on a GPU node and measure them there.

Runs where only PyTorch, NumPy and SciPy exist (no dolfinx, PETSc or Gmsh): training data
come from the NumPy grid route (:mod:`nlss_fenicsx.grid`, identical to the dolfinx
assembly), and PCG runs on the SciPy path (:class:`nlss_fenicsx.twogrid.TwoGrid`).

For each (PDE, loss) job: train N=64, K=72, r_max=72 for --steps steps (code protocol,
one fresh instance per step) on --device, then on --instances held-out instances compare
PCG iterations of the learned basis with the exact SVD of the same S at --ranks, and time
inference. Jobs run in parallel subprocesses (--jobs); the first job can be run alone
first (--solo-first) so its training time is not shared with other jobs.

Usage: python benchmarks/gpu_train.py --device cuda --out OUT [--steps 1000] [--jobs 6]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

FAMILIES = ("diffusion", "anisotropic", "screened_poisson")


def run_job(pde: str, loss: str, args) -> dict:
    import numpy as np
    import torch

    from nlss_fenicsx.coarse import coarse_basis
    from nlss_fenicsx.nn.data import DataConfig, instance, instance_seed
    from nlss_fenicsx.nn.train import TrainConfig, peak_rss_mib, train
    from nlss_fenicsx.twogrid import TwoGrid, pcg

    cfg = TrainConfig(pde=pde, N=args.N, K=args.K, r_max=args.K, loss=loss, steps=args.steps,
                      eval_every=max(1, args.steps // 4), ckpt_every=args.steps)
    ckpt = Path(args.workdir) / f"{pde}_{loss}.pt"
    t0 = time.perf_counter()
    model = train(cfg, ckpt, device=args.device, resume=False, progress=False,
                  log=lambda *_: None)
    wall = time.perf_counter() - t0
    res = {"pde": pde, "loss": loss, "steps": args.steps, "device": args.device,
           "train_seconds": model.train_state["seconds"], "train_wall": wall,
           "peak_rss_mib": peak_rss_mib(), "history": model.train_state["history"],
           "parameters": model.num_parameters()}
    if args.device == "cuda":
        res["gpu"] = torch.cuda.get_device_name(0)
        res["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    data = DataConfig(pde=pde, N=args.N, K=args.K)
    rows = []
    for i in range(args.instances):
        gp, S = instance(data, instance_seed(99_991, i))
        S_double = S.astype(np.float64)
        row = {"instance": i}
        for r in args.ranks:
            for name in ("nlss", "svd"):
                P = (model.basis(S_double, r) if name == "nlss"
                     else coarse_basis("svd", gp.A, r=r, S=S_double))
                _, info = pcg(gp.A, gp.b, TwoGrid(gp.A, P, omega=0.66), rtol=1e-6)
                row[f"{name}@{r}"] = info.iterations if info.converged else None
        rows.append(row)
    res["pcg"] = rows
    # Inference time per instance (median of 20 after 3 warm-ups), on this device and CPU.
    S = instance(data, instance_seed(99_991, 0))[1].astype(np.float64)
    for dev in dict.fromkeys([args.device, "cpu"]):
        model.to(dev)
        times = []
        for k in range(23):
            if dev == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            model.basis(S, min(48, args.K))
            if dev == "cuda":
                torch.cuda.synchronize()
            if k >= 3:
                times.append(time.perf_counter() - t)
        res[f"inference_ms_r48_{dev}"] = 1e3 * float(np.median(times))
    ckpt.unlink(missing_ok=True)
    return res


def main() -> None:
    from nlss_fenicsx.bench.report import write_json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pdes", nargs="+", default=list(FAMILIES))
    ap.add_argument("--losses", nargs="+", default=["nlss", "subspace"])
    ap.add_argument("--N", type=int, default=64)
    ap.add_argument("--K", type=int, default=72)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--ranks", type=int, nargs="+", default=[24, 36, 48, 64])
    ap.add_argument("--instances", type=int, default=10)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--jobs", type=int, default=6)
    ap.add_argument("--solo-first", action="store_true")
    ap.add_argument("--out", default="out/gpu")
    ap.add_argument("--workdir", default="/tmp/nlss_gpu")
    ap.add_argument("--worker", nargs=2, metavar=("PDE", "LOSS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    if args.worker:
        res = run_job(*args.worker, args)
        Path(args.workdir, f"{args.worker[0]}_{args.worker[1]}.json").write_text(
            json.dumps(res))
        return
    jobs = [(p, loss) for p in args.pdes for loss in args.losses]
    base = [sys.executable, __file__] + [a for a in sys.argv[1:]]
    t0 = time.perf_counter()

    def launch(job):
        env = dict(os.environ, OMP_NUM_THREADS="2", OPENBLAS_NUM_THREADS="1")
        return subprocess.Popen(base + ["--worker", *job], env=env)

    pending = list(jobs)
    if args.solo_first and pending:
        launch(pending.pop(0)).wait()
    running = []
    while pending or running:
        while pending and len(running) < args.jobs:
            running.append(launch(pending.pop(0)))
        time.sleep(0.5)
        running = [p for p in running if p.poll() is None]
    results = []
    for p, loss in jobs:
        f = Path(args.workdir, f"{p}_{loss}.json")
        results.append(json.loads(f.read_text()) if f.exists() else {"pde": p, "loss": loss,
                                                                     "error": "no result"})
    summary = {"argv": sys.argv[1:], "wall": time.perf_counter() - t0, "results": results}
    write_json(Path(args.out) / "gpu_train.json", summary)
    for r in results:
        if "error" in r:
            print(r)
            continue
        its = {k: np.median([row[k] for row in r["pcg"]]) for k in r["pcg"][0] if "@" in k}
        print(f"{r['pde']:>16} {r['loss']:>8}: train {r['train_seconds']:.1f} s, "
              f"inference r=48 {r.get('inference_ms_r48_' + args.device, 0):.2f} ms "
              f"({args.device}), PCG its " + ", ".join(f"{k} {v:g}" for k, v in its.items()))


if __name__ == "__main__":
    import numpy as np

    main()
