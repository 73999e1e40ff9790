"""How much does the trained NLSS network's basis depend on its input S?

For each PDE family's cached ``standard`` model (N=64, K=72, r_max=72; trained on demand if
missing), on fresh instances of its training distribution (NumPy route):

1. the head's input ``y`` (the last hidden layer, 128 numbers) over ``--fit`` instances:
   its mean norm and the singular values of its spread (PCA);
2. on ``--test`` held-out instances, the largest principal angle between the network's
   basis ``P(y)`` at rank ``--rank`` and the basis from ``y`` projected on its mean plus
   ``q`` principal directions, for ``q = 0`` (one fixed basis for every instance) and a
   few more;
3. PCG iterations (SciPy two-grid, rtol 1e-6) with the network's basis, with the fixed
   basis ``P(mean y)`` and with the exact SVD basis of each instance's own S.

Writes ``--out``/input_dependence.{json,md} atomically. Usage::

    python benchmarks/input_dependence.py [--pde diffusion ...] [--fit 40] [--test 20]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import scipy.linalg as sla  # noqa: E402
import torch  # noqa: E402

from nlss_fenicsx.bench.harness import BUDGETS, obtain_models  # noqa: E402
from nlss_fenicsx.bench.machine import machine_info, machine_line  # noqa: E402
from nlss_fenicsx.bench.report import write_atomic, write_json  # noqa: E402

FAMILIES = ("diffusion", "anisotropic", "screened_poisson")


def _basis(net, y: torch.Tensor, r: int) -> np.ndarray:
    """The network's basis at rank ``r`` from the head's input ``y`` (the last hidden
    layer): the head's first ``r`` blocks of ``n`` outputs, then the QR with positive R."""
    from nlss_fenicsx.nn.model import qr_positive

    n = net.config.n
    with torch.no_grad():
        W, b = net.head.weight[: r * n].double(), net.head.bias[: r * n].double()
        return qr_positive((W @ y.double() + b).reshape(r, n).T).numpy()


def analyse(pde: str, budget, n_fit: int, n_test: int, r: int, qs) -> dict:
    from nlss_fenicsx.coarse import coarse_basis
    from nlss_fenicsx.nn import NLSSModel
    from nlss_fenicsx.nn.data import DataConfig, instance, instance_seed
    from nlss_fenicsx.nn.model import input_features
    from nlss_fenicsx.twogrid import TwoGrid, pcg

    path = obtain_models(pde, budget, which=("nlss",), progress=False)["nlss"]["path"]
    net = NLSSModel.load(path).net.float().eval()
    cfg = DataConfig(pde=pde, N=budget.N, K=budget.K)
    ys, problems = [], []
    for i in range(n_fit + n_test):
        gp, S = instance(cfg, instance_seed(31337, i))
        with torch.no_grad():
            ys.append(net.body(input_features(torch.from_numpy(S)))[0])
        problems.append((gp, S))
    Y = torch.stack(ys).double()
    mu = Y[:n_fit].mean(0)
    _, sig, Vt = torch.linalg.svd(Y[:n_fit] - mu, full_matrices=False)
    out = {"model": str(path), "rank": r, "fit": n_fit, "test": n_test,
           "mean_norm": float(mu.norm()), "spread_singular_values": sig[:12].tolist(),
           "angles_deg": {}, "iterations": {}}
    fixed = _basis(net, mu, r)
    its = {"network": [], "fixed basis P(mean y)": [], "exact SVD of S": []}
    for q in qs:
        Q = Vt[:q].T
        worst = 0.0
        for j in range(n_fit, n_fit + n_test):
            y = Y[j]
            P = _basis(net, y, r)
            Pq = _basis(net, mu + Q @ (Q.T @ (y - mu)), r)
            worst = max(worst, float(np.degrees(sla.subspace_angles(P, Pq).max())))
        out["angles_deg"][q] = worst
    for j in range(n_fit, n_fit + n_test):
        gp, S = problems[j]
        svd = coarse_basis("svd", gp.A, r=r, S=S.astype(np.float64))
        for key, P in (("network", _basis(net, Y[j], r)), ("fixed basis P(mean y)", fixed),
                       ("exact SVD of S", svd)):
            _, info = pcg(gp.A, gp.b, TwoGrid(gp.A, P, omega=0.66), rtol=1e-6)
            its[key].append(int(info.iterations))
    out["iterations"] = its
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pde", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    ap.add_argument("--fit", type=int, default=40, help="instances for the mean and the PCA")
    ap.add_argument("--test", type=int, default=20, help="held-out instances")
    ap.add_argument("--rank", type=int, default=48)
    ap.add_argument("--budget", default="standard", choices=tuple(BUDGETS))
    ap.add_argument("--out", type=Path, default=Path("results/perf"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    qs = (0, 4, 8, 16)
    report = {"machine": machine_info(), "pdes": {}}
    lines = ["# Does the NLSS network's basis depend on its input?", "",
             f"machine: {machine_line()}", f"budget {args.budget}, r = {args.rank}, "
             f"{args.fit} instances to fit, {args.test} held out", "",
             "| family | mean norm of y | spread of y (largest singular values) | "
             + " | ".join(f"angle, q={q} (deg)" for q in qs)
             + " | PCG its: network / fixed P(mean y) / exact SVD (median, range) |",
             "|---|--:|---|" + "--:|" * len(qs) + "---|"]
    for pde in args.pde:
        res = analyse(pde, BUDGETS[args.budget], args.fit, args.test, args.rank, qs)
        report["pdes"][pde] = res
        its = res["iterations"]

        def fmt(v):
            return f"{np.median(v):g} ({min(v)}-{max(v)})"

        lines.append(
            f"| {pde} | {res['mean_norm']:.2f} | "
            + ", ".join(f"{s:.2f}" for s in res["spread_singular_values"][:4])
            + " | " + " | ".join(f"{res['angles_deg'][q]:.2f}" for q in qs) + " | "
            + " / ".join(fmt(its[k]) for k in its) + " |")
        write_json(args.out / "input_dependence.json", report)
        write_atomic(args.out / "input_dependence.md", "\n".join(lines) + "\n")
        print(lines[-1], flush=True)


if __name__ == "__main__":
    main()
