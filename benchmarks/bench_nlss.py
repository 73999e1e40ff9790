"""Performance of the learned pipeline (issue 8): NLSS against exact SVD, lever by lever.

For each PDE family, with the ``standard`` budget's cached NLSS model (N=64, K=72,
r_max=72; trained on demand if missing), on ``--instances`` test instances:

1. per-phase medians of NLSS (the PC's defaults: int8 inference, float32 SciPy smoothing
   in serial) and of SVD at ``--rank``, through :class:`~nlss_fenicsx.petsc.TwoGridPC`,
   and the ratios the issue asks for (NLSS/SVD total, NLSS/SVD inference);
2. "unoptimised" NLSS (float32 weights, full r_max head then a slice) for the iteration
   comparison and the inference before/after;
3. each lever measured alone, before and after, in one run on the same instance:
   smoothing (PETSc float64 with per-sweep normalisation vs SciPy float32 with
   normalisation every 8 sweeps), inference (float32 vs int8; r_max columns vs r;
   torch threads 1 vs 2), and training (Adam foreach vs fused, gradients freed vs kept;
   20 steps at full size).

Writes ``--out``/perf.json and perf.md atomically. Usage::

    python benchmarks/bench_nlss.py [--pde diffusion ...] [--instances 15] [--rank 48]
"""

from __future__ import annotations

import argparse
import os
import statistics as st
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from nlss_fenicsx.bench.harness import BUDGETS, TEST_SEED, obtain_models  # noqa: E402
from nlss_fenicsx.bench.machine import machine_info, machine_line  # noqa: E402
from nlss_fenicsx.bench.report import run_one, summarize, write_atomic, write_json  # noqa: E402

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


def _legacy_smoothing(A, K, sweeps=10, omega=0.66, seed=0):
    """The first implementation: PETSc float64 block products, normalise every sweep."""
    from nlss_fenicsx._fenicsx import MPI
    from nlss_fenicsx.petsc import dense_from_rows

    n = A.getSize()[0]
    S = dense_from_rows(MPI.COMM_SELF, np.random.default_rng(seed).standard_normal((n, K)), n)
    arr = S.getDenseArray()
    scale = (omega / A.getDiagonal().getArray())[:, None]
    T = None
    for _ in range(sweeps):
        T = A.matMult(S, result=T)
        arr -= scale * T.getDenseArray()
        arr /= np.linalg.norm(arr, axis=0)
    out = arr.copy()
    S.destroy()
    T.destroy()
    return out


def levers(system, model, K: int, r: int) -> dict:
    """Each lever alone, before vs after, on one instance (median ms)."""
    from nlss_fenicsx.petsc import petsc_to_csr
    from nlss_fenicsx.smoothing import smoothed_vectors

    A = system.A
    out = {}
    out["smoothing"] = {
        "before: PETSc float64, normalise every sweep": _median_ms(
            lambda: _legacy_smoothing(A, K)),
        "after: SciPy float32, normalise every 8 sweeps": _median_ms(
            lambda: smoothed_vectors(petsc_to_csr(A), K, rng=0, dtype=np.float32)),
    }
    S = smoothed_vectors(system.A_csr, K, rng=0)
    go = system.grid_order
    net = model.net
    St = torch.as_tensor(S[go], dtype=torch.float32)

    def full_then_slice():
        with torch.inference_mode():
            return net(St)[:, :r]

    inf = {"before: float32, all r_max columns then slice": _median_ms(full_then_slice),
           "float32, only r columns": _median_ms(lambda: model.basis(S, r, grid_order=go))}
    model.int8()  # build the quantised copy outside the timing (once per process)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        inf[f"after: int8, r columns, {threads} torch thread(s)"] = _median_ms(
            lambda: model.basis(S, r, grid_order=go, precision="int8"))
    torch.set_num_threads(1)
    out["inference"] = inf
    return out


def training_levers(pde: str, budget, steps: int = 20) -> dict:
    """Seconds per step at full size for the optimiser variants (random inputs)."""
    from nlss_fenicsx.nn.losses import nlss_loss
    from nlss_fenicsx.nn.model import NLSSMLP, MLPConfig

    res = {}
    cfg = MLPConfig(n=(budget.N + 1) ** 2, K=budget.K, r_max=budget.r_max, hidden=budget.hidden)
    S = torch.randn(1, cfg.n, cfg.K)
    for label, fused, to_none in (("before: Adam foreach, gradients freed", False, True),
                                  ("Adam foreach, gradients kept", False, False),
                                  ("Adam fused, gradients kept", True, False),
                                  ("after: Adam fused, gradients freed", True, True)):
        for threads in (1, 2):
            torch.manual_seed(0)
            torch.set_num_threads(threads)
            net = NLSSMLP(cfg)
            opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=fused)
            ts = []
            for _ in range(steps):
                t = time.perf_counter()
                loss = nlss_loss(net(S), S)
                opt.zero_grad(set_to_none=to_none)
                loss.backward()
                opt.step()
                ts.append(time.perf_counter() - t)
            res[f"{label}, {threads} thread(s)"] = st.median(ts[3:])
            del net, opt
    torch.set_num_threads(1)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pde", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    ap.add_argument("--instances", type=int, default=15)
    ap.add_argument("--rank", type=int, default=48)
    ap.add_argument("--budget", default="standard", choices=tuple(BUDGETS))
    ap.add_argument("--no-training-levers", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("results/perf"))
    args = ap.parse_args()
    from nlss_fenicsx.bench.harness import _instances, _spec
    from nlss_fenicsx.nn.inference import load_model

    torch.set_num_threads(1)
    budget = BUDGETS[args.budget]
    r = args.rank
    report = {"machine": machine_info(), "budget": args.budget, "rank": r,
              "instances": args.instances, "pdes": {}}
    lines = ["# NLSS performance (issue 8)", "", f"machine: {machine_line()}",
             f"budget {args.budget}: N={budget.N}, K={budget.K}, r={r}, "
             f"{args.instances} instances; medians in ms", ""]
    for pde in args.pde:
        models = obtain_models(pde, budget, which=("nlss",), progress=False)
        path = models["nlss"]["path"]
        systems, _ = _instances(pde, budget.N, args.instances)
        rows = {}
        for key, name, prec in (("NLSS (int8)", "nlss", "int8"),
                                ("NLSS (float32)", "nlss", "float32"),
                                ("SVD", "svd", "int8"), ("ICC(0)-CG", "icc", "int8")):
            spec = _spec(name, r, "petsc", path if name == "nlss" else None, budget, TEST_SEED)
            spec = type(spec)(**{**spec.__dict__, "precision": prec})
            run_one(systems[0], spec)
            recs = [run_one(s, type(spec)(**{**spec.__dict__, "seed": TEST_SEED + i}))
                    for i, s in enumerate(systems)]
            rows[key] = summarize(recs)
        nl, sv = rows["NLSS (int8)"], rows["SVD"]
        ratios = {"total NLSS/SVD": nl["total_ms"] / sv["total_ms"],
                  "inference NLSS/SVD": nl["inference_ms"] / sv["inference_ms"],
                  "iterations int8/float32": nl["iterations"]
                  / rows["NLSS (float32)"]["iterations"]}
        lev = levers(systems[0], load_model(path), budget.K, r)
        report["pdes"][pde] = {"rows": rows, "ratios": ratios, "levers": lev,
                               "model": models["nlss"]}
        lines += [f"## {pde}", "",
                  "| method | iters | smoothing | inference | setup | solve | total |",
                  "|---|--:|--:|--:|--:|--:|--:|"]
        for key, s in rows.items():
            lines.append(f"| {key} | {s['iterations']:.1f} | {s['smoothing_ms']:.2f} | "
                         f"{s['inference_ms']:.2f} | {s['setup_ms']:.2f} | "
                         f"{s['solve_ms']:.2f} | {s['total_ms']:.2f} |")
        lines += ["", " ; ".join(f"{k}: {v:.2f}" for k, v in ratios.items()), "",
                  "| lever | variant | ms |", "|---|---|--:|"]
        for phase, variants in lev.items():
            lines += [f"| {phase} | {v} | {t:.2f} |" for v, t in variants.items()]
        lines.append("")
        write_json(args.out / "perf.json", report)
        write_atomic(args.out / "perf.md", "\n".join(lines) + "\n")
        print("\n".join(lines[-(len(rows) + len(lev["smoothing"]) + len(lev["inference"])
                                + 8):]), flush=True)
    if not args.no_training_levers:
        tl = training_levers(args.pde[0], budget)
        report["training_levers_s_per_step"] = tl
        lines += ["## Training step at full size (seconds per step, random input)", "",
                  "| variant | s/step |", "|---|--:|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in tl.items()]
        lines.append("")
    write_json(args.out / "perf.json", report)
    write_atomic(args.out / "perf.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
