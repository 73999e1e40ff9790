"""Train the GNN baseline at the paper's width on a GPU node and measure its PCG iterations.

Runs where only PyTorch, NumPy and SciPy exist: data from the NumPy grid route, PCG on the
SciPy path. Usage: python benchmarks/gpu_gnn.py --device cuda --out OUT [--steps 1000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pde", default="diffusion")
    ap.add_argument("--N", type=int, default=64)
    ap.add_argument("--K", type=int, default=72)
    ap.add_argument("--width", type=int, default=488)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--ranks", type=int, nargs="+", default=[24, 36, 48, 64])
    ap.add_argument("--instances", type=int, default=10)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default="out/gpu_gnn")
    args = ap.parse_args()
    import torch

    from nlss_fenicsx.bench.report import write_json
    from nlss_fenicsx.coarse import coarse_basis
    from nlss_fenicsx.nn.data import DataConfig, instance, instance_seed
    from nlss_fenicsx.nn.train import TrainConfig, train
    from nlss_fenicsx.twogrid import TwoGrid, pcg

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(arch="gnn", pde=args.pde, N=args.N, K=args.K, r_max=args.K,
                      steps=args.steps, hidden=(args.width,) * args.layers,
                      eval_every=max(1, args.steps // 5), ckpt_every=args.steps)
    t0 = time.perf_counter()
    model = train(cfg, Path(tempfile.gettempdir()) / "gnn_gpu.pt", device=args.device, resume=False,
                  progress=False, log=lambda *a: print(*a, flush=True))
    res = {"config": cfg.as_dict(), "train_wall": time.perf_counter() - t0,
           "train_seconds": model.train_state.get("seconds"),
           "history": model.train_state.get("history"), "pcg": []}
    if args.device == "cuda":
        res["gpu"] = torch.cuda.get_device_name(0)
    data = DataConfig(pde=args.pde, N=args.N, K=args.K)
    for i in range(args.instances):
        gp, S = instance(data, instance_seed(99_991, i))
        S_double = S.astype(np.float64)
        row = {}
        for r in args.ranks:
            t = time.perf_counter()
            P = model.basis(S_double, r, A=gp.A)
            row[f"gnn_infer_ms@{r}"] = 1e3 * (time.perf_counter() - t)
            svd = coarse_basis("svd", gp.A, r=r, S=S_double)
            row[f"gnn@{r}"] = pcg(gp.A, gp.b, TwoGrid(gp.A, P, omega=0.66))[1].iterations
            row[f"svd@{r}"] = pcg(gp.A, gp.b, TwoGrid(gp.A, svd, omega=0.66))[1].iterations
        res["pcg"].append(row)
    med = {k: float(np.median([row[k] for row in res["pcg"]])) for k in res["pcg"][0]}
    res["median"] = med
    write_json(out / "gpu_gnn.json", res)
    print(f"train {res['train_seconds']:.1f} s; medians: "
          + ", ".join(f"{k} {v:.1f}" for k, v in med.items()), flush=True)


if __name__ == "__main__":
    main()
