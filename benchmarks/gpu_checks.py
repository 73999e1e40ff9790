"""Checks of the training stack on a CUDA device (run where a GPU is lent; CI has none).

1. :class:`nlss_fenicsx.nn.optim.BackwardAdam` against ``torch.optim.Adam(fused=True)`` on
   the device: the same parameters and moments, bit for bit, after several steps of an
   MLP with LayerNorm and GELU (the CPU test does the same on the CPU).
2. One full-size training step (N=64, K=72, r_max=72, the NLSS loss) on the device: seconds
   per step and peak device memory, with ``BackwardAdam`` and with ``torch.optim.Adam``.

Needs only PyTorch, NumPy and SciPy. Usage::

    python benchmarks/gpu_checks.py --device cuda --out OUT/checks.json
"""

from __future__ import annotations

import argparse
import json
import statistics as st
import sys
import time


def optimiser_equality(device) -> dict:
    import torch

    from nlss_fenicsx.nn.optim import BackwardAdam

    def net():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(30, 20), torch.nn.LayerNorm(20),
                                   torch.nn.GELU(), torch.nn.Linear(20, 50)).to(device)

    a, b = net(), net()
    ref = torch.optim.Adam(a.parameters(), lr=1e-2, fused=True)
    opt = BackwardAdam(b.parameters(), lr=1e-2)
    X = torch.randn(8, 30, generator=torch.Generator().manual_seed(1)).to(device)
    for t in range(6):
        ref.zero_grad()
        (a(X + t) ** 2).mean().backward()
        ref.step()
        (b(X + t) ** 2).mean().backward()
    params_equal = all(torch.equal(pa, pb) for pa, pb in
                       zip(a.parameters(), b.parameters(), strict=True))
    mine = opt.state_dict()["state"]
    moments_equal = all(torch.equal(s[name].to(device), mine[k][name].to(device))
                        for k, s in ref.state_dict()["state"].items()
                        for name in ("exp_avg", "exp_avg_sq", "step"))
    grads_freed = all(p.grad is None for p in b.parameters())
    opt.remove()
    return {"params_equal": params_equal, "moments_equal": moments_equal,
            "grads_freed_in_backward": grads_freed}


def step_timing(device, steps: int = 12) -> dict:
    import numpy as np
    import torch

    from nlss_fenicsx.nn.data import DataConfig, instance, instance_seed
    from nlss_fenicsx.nn.losses import nlss_loss
    from nlss_fenicsx.nn.model import NLSSMLP, MLPConfig
    from nlss_fenicsx.nn.optim import BackwardAdam

    data = DataConfig(N=64, K=72)
    S = np.stack([instance(data, instance_seed(5, i))[1] for i in range(2)])
    S = torch.as_tensor(S, device=device)
    out = {}
    for name in ("BackwardAdam", "torch.optim.Adam(fused=True)"):
        torch.manual_seed(0)
        net = NLSSMLP(MLPConfig(n=data.n, K=data.K, r_max=72)).to(device)
        opt = (BackwardAdam(net.parameters(), lr=1e-4) if name == "BackwardAdam" else
               torch.optim.Adam(net.parameters(), lr=1e-4, fused=True))
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        times = []
        for i in range(steps):
            t0 = time.perf_counter()
            loss = nlss_loss(net(S[i % 2:i % 2 + 1]), S[i % 2:i % 2 + 1])
            if name != "BackwardAdam":
                opt.zero_grad(set_to_none=True)
            loss.backward()
            if name != "BackwardAdam":
                opt.step()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        out[name] = {"s_per_step": st.median(times[2:]),
                     "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20,
                     "final_loss": float(loss.detach())}
        if hasattr(opt, "remove"):
            opt.remove()
        del net, opt
        torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default="out/checks.json")
    args = ap.parse_args()
    import torch

    from nlss_fenicsx.bench.report import write_json

    if not torch.cuda.is_available():
        sys.exit("gpu_checks: torch sees no CUDA device")
    device = torch.device(args.device)
    report = {"gpu": torch.cuda.get_device_name(device), "torch": torch.__version__,
              "optimiser_equality": optimiser_equality(device),
              "training_step": step_timing(device)}
    print(json.dumps(report, indent=2), flush=True)
    write_json(args.out, report)
    ok = all(report["optimiser_equality"].values())
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
