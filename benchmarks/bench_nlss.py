"""Performance of the learned pipeline (issue 8): NLSS against exact SVD, lever by lever.

For each PDE family, with the ``standard`` budget's cached NLSS model (N=64, K=72,
r_max=72; trained on demand if missing), on ``--instances`` test instances:

1. per-phase medians of NLSS (the PC's defaults: int8 inference, float32 SciPy smoothing
   in serial) and of SVD at ``--rank``, through :class:`~nlss_fenicsx.petsc.TwoGridPC`,
   and the ratios the issue asks for (NLSS/SVD total, NLSS/SVD inference);
2. "unoptimised" NLSS (float32 weights, full r_max head then a slice) for the iteration
   comparison and the inference before/after;
3. each lever measured alone, in one run on the same instance, from the first version
   (v0) through the previous one (v1) to now: smoothing (PETSc float64 normalising every
   sweep; SciPy float32 with a float64 ziggurat start and three passes per sweep; now a
   float32 Box-Muller start and one SpMM with M = I - omega D^-1 A per sweep), inference
   (float32 with r_max columns, with r columns; int8 with torch scaling and Householder
   QR; int8 with NumPy scaling and Cholesky QR and the full first layer; v2, the lean
   copy with every layer int8 and run by torch; now its small layers and head in NumPy
   with a float32 result, 1 and 2 torch threads; and the two SVD routes for reference;
   warm caches, unlike the preconditioner rows), and training (torch Adam foreach, fused;
   now fused Adam inside backward), time per step and the memory a step adds, at full size.

Writes ``--out``/perf.json and perf.md atomically. Usage::

    python benchmarks/bench_nlss.py [--pde diffusion ...] [--instances 15] [--rank 48]
                                    [--threads 1] [--out results/perf]
"""

from __future__ import annotations

import argparse
import os
import statistics as st
import sys
import time
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


def _scipy_smoothing_v1(A_csr, K, sweeps=10, omega=0.66, seed=0):
    """The second implementation (previous session): SciPy float32, float64 ziggurat start,
    product, scale and subtract per sweep, normalise every 8 sweeps."""
    from nlss_fenicsx.smoothing import RENORM_EVERY, normalize_columns

    A = A_csr.astype(np.float32)
    S = np.random.default_rng(seed).standard_normal((A.shape[0], K)).astype(np.float32)
    scale = (omega / A.diagonal())[:, None]
    for k in range(1, sweeps + 1):
        T = A @ S
        np.multiply(T, scale, out=T)
        np.subtract(S, T, out=S)
        if k % RENORM_EVERY == 0 or k == sweeps:
            normalize_columns(S)
    return S


def _int8_v1(q, S, r, go):
    """The previous int8 path (full first layer ``q``): torch input scaling, Householder
    QR, float64 scatter."""
    from nlss_fenicsx.nn.model import _features, _orthonormal_columns

    with torch.inference_mode():
        St = torch.as_tensor(np.ascontiguousarray(S[go]), dtype=torch.float32)
        x = q.body(_features(St, q.config, torch.float32))
        P_grid = _orthonormal_columns(q._head(r)(x), r, q.config.n)[0].numpy()
    P = np.empty(P_grid.shape)
    P[go] = P_grid
    return P


def _int8_v2_body(lean):
    """The previous lean copy's body: every Linear int8 (the small hidden layers too)."""
    import copy

    from torch.ao.quantization import quantize_dynamic

    from nlss_fenicsx.nn.model import _quiet_quantization

    with _quiet_quantization():
        return quantize_dynamic(copy.deepcopy(lean.body), {torch.nn.Linear}, dtype=torch.qint8)


def _int8_v2(lean, body, D, S, r, go):
    """The previous lean path: fancy-index gather, all layers and the affine head in torch
    (``D`` as ``r_max*n x q``), Cholesky QR, fancy-index permutation back, float64."""
    from nlss_fenicsx.nn.model import orthonormal_rows

    n = lean.config.n
    X = S[go].astype(np.float32)
    norms = np.sqrt(np.einsum("ij,ij->j", X, X))
    norms[norms == 0] = 1.0
    X *= (np.sqrt(n) / norms).astype(np.float32)
    mean, Q, base = (torch.from_numpy(a) for a in lean._affine[:3])
    rows = r * n
    with torch.no_grad():
        y = body(torch.from_numpy(X.reshape(1, -1)))
        raw = torch.addmm(base[:rows], (y - mean) @ Q, D[:rows].T).numpy()
    Pt = orthonormal_rows(raw.reshape(r, n))
    inverse = np.empty_like(go)
    inverse[go] = np.arange(n)
    return Pt[:, inverse].T.astype(np.float64)


def levers(system, model, K: int, r: int) -> dict:
    """Each lever alone, before vs after, on one instance (median ms)."""
    from nlss_fenicsx.coarse import svd_basis, svd_basis_from_gram
    from nlss_fenicsx.petsc import petsc_to_csr
    from nlss_fenicsx.smoothing import gaussian_start, smoothed_vectors

    A = system.A
    out = {}
    out["smoothing"] = {
        "v0: PETSc float64, normalise every sweep": _median_ms(
            lambda: _legacy_smoothing(A, K)),
        "v1: SciPy float32, float64 ziggurat start, 3 passes per sweep": _median_ms(
            lambda: _scipy_smoothing_v1(petsc_to_csr(A), K)),
        "start block: float64 ziggurat draw": _median_ms(
            lambda: np.random.default_rng(0).standard_normal((system.n, K))),
        "start block: float32 Box-Muller draw": _median_ms(
            lambda: gaussian_start(0, system.n, K)),
        "now: Box-Muller start, one SpMM with M = I - omega D^-1 A per sweep": _median_ms(
            lambda: smoothed_vectors(petsc_to_csr(A), K, rng=0, dtype=np.float32)),
    }
    S = smoothed_vectors(system.A_csr, K, rng=0, dtype=np.float32)
    go = system.grid_order
    net = model.net
    St = torch.as_tensor(S[go], dtype=torch.float32)

    def full_then_slice():
        with torch.inference_mode():
            return net(St)[:, :r]

    from nlss_fenicsx.nn.model import Int8MLP

    model.int8()  # build (and calibrate) the quantised copy outside the timing, once
    full = Int8MLP(model.net)  # the int8 copy with the full first layer
    inf = {"v0: float32, all r_max columns then slice": _median_ms(full_then_slice),
           "float32, only r columns": _median_ms(lambda: model.basis(S, r, grid_order=go)),
           "v1: int8, torch scaling, Householder QR": _median_ms(
               lambda: _int8_v1(full, S, r, go))}
    inf["int8, NumPy scaling, Cholesky QR, full first layer"] = _median_ms(
        lambda: full.basis(S, r, go))
    lean = model.int8()
    lean_rank = lean.first_layer_rank
    if lean._affine is not None:
        body_v2 = _int8_v2_body(lean)
        D_v2 = torch.from_numpy(np.ascontiguousarray(lean._affine[3].T))  # r_max*n x q
        inf[f"v2: first layer at rank {lean_rank}, every layer int8 in torch, float64 out"] = \
            _median_ms(lambda: _int8_v2(lean, body_v2, D_v2, S, r, go))
    threads = torch.get_num_threads()
    for t in sorted({1, 2, threads}):
        torch.set_num_threads(t)
        inf[f"now: first layer at rank {lean_rank} (int8), small layers and head in NumPy, "
            f"float32 out, {t} torch thread(s)"] = _median_ms(
            lambda: model.basis(S, r, grid_order=go, precision="int8", dtype=np.float32))
    torch.set_num_threads(threads)
    S64 = S.astype(np.float64)
    inf["SVD reference: LAPACK thin SVD (gesdd) of S"] = _median_ms(lambda: svd_basis(S64, r))
    inf["SVD reference: Gram route (the PC's svd)"] = _median_ms(
        lambda: svd_basis_from_gram(S64.T @ S64, S64, r))
    out["inference"] = inf
    return out


def _hwm_mib() -> float | None:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM"))
    except (OSError, StopIteration):
        return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size (Linux)
        return True
    except OSError:
        return False


_STEP_SNIPPET = """
import json, resource, statistics, sys, time
import torch
from nlss_fenicsx.nn.losses import nlss_loss
from nlss_fenicsx.nn.model import NLSSMLP, MLPConfig
from nlss_fenicsx.nn.optim import BackwardAdam
torch.set_num_threads(1)
n, K, r, steps = (int(a) for a in sys.argv[1:5])
torch.manual_seed(0)
net = NLSSMLP(MLPConfig(n=n, K=K, r_max=r))
opt = BackwardAdam(net.parameters(), lr=1e-3)
S = torch.randn(1, n, K)
ts = []
r0 = resource.getrusage(resource.RUSAGE_SELF)
for _ in range(steps):
    t = time.perf_counter()
    nlss_loss(net(S), S).backward()
    ts.append(time.perf_counter() - t)
r1 = resource.getrusage(resource.RUSAGE_SELF)
# VmHWM, not ru_maxrss: after fork + exec, Linux reports the parent's high-water mark in
# ru_maxrss when it was larger.
with open("/proc/self/status") as f:
    hwm = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM"))
print(json.dumps({"s_per_step": statistics.median(ts[3:]),
                  "system_s_per_step": (r1.ru_stime - r0.ru_stime) / steps,
                  "page_faults_per_step": (r1.ru_minflt - r0.ru_minflt) / steps,
                  "peak_rss_mib": hwm}))
"""


def huge_page_lever(budget, steps: int = 12) -> dict:
    """The current training step in fresh processes with PyTorch's huge-page hint off and
    on (the variable is read by the allocator once, so each setting needs its own process)."""
    import json
    import subprocess

    out = {}
    n = (budget.N + 1) ** 2
    for label, value in (("4 KiB pages (THP_MEM_ALLOC_ENABLE=0)", "0"),
                         ("now: huge pages (THP_MEM_ALLOC_ENABLE=1)", "1")):
        env = {**os.environ, "THP_MEM_ALLOC_ENABLE": value, "C10_THP_MEM_ALLOC_ENABLE": value}
        res = subprocess.run([sys.executable, "-c", _STEP_SNIPPET, str(n), str(budget.K),
                              str(budget.r_max), str(steps)], env=env, capture_output=True,
                             text=True, check=True)
        out[label] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def training_levers(budget, steps: int = 12) -> dict:
    """Seconds per step at full size and the memory a step adds over its steady state
    (VmHWM after a reset, Linux), for the optimiser variants (random inputs)."""
    from nlss_fenicsx.nn.losses import nlss_loss
    from nlss_fenicsx.nn.model import NLSSMLP, MLPConfig
    from nlss_fenicsx.nn.optim import BackwardAdam

    res = {}
    cfg = MLPConfig(n=(budget.N + 1) ** 2, K=budget.K, r_max=budget.r_max, hidden=budget.hidden)
    S = torch.randn(1, cfg.n, cfg.K)
    variants = (("v0: torch Adam foreach, zero_grad then backward", "foreach"),
                ("v1: torch Adam fused", "fused"),
                ("now: Adam fused inside backward, gradients freed one by one", "backward"))
    for label, kind in variants:
        torch.manual_seed(0)
        net = NLSSMLP(cfg)
        if kind == "backward":
            opt = BackwardAdam(net.parameters(), lr=1e-3)
        else:
            opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=kind == "fused")
        ts, extra = [], []
        for _ in range(steps):
            t = time.perf_counter()
            loss = nlss_loss(net(S), S)
            if kind == "backward":
                _reset_hwm()
                base = _hwm_mib()
                loss.backward()
            else:
                opt.zero_grad(set_to_none=True)
                _reset_hwm()
                base = _hwm_mib()
                loss.backward()
                opt.step()
            peak = _hwm_mib()
            ts.append(time.perf_counter() - t)
            if base is not None and peak is not None:
                extra.append(peak - base)
        res[label] = {"s_per_step": st.median(ts[3:]),
                      "step_peak_over_start_mib": max(extra[3:]) if extra else None}
        if kind == "backward":
            opt.remove()
        del net, opt
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pde", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    ap.add_argument("--instances", type=int, default=15)
    ap.add_argument("--rank", type=int, default=48)
    ap.add_argument("--budget", default="standard", choices=tuple(BUDGETS))
    ap.add_argument("--no-training-levers", action="store_true")
    ap.add_argument("--threads", type=int, default=1,
                    help="BLAS and torch threads for the whole run (PETSc is serial)")
    ap.add_argument("--out", type=Path, default=Path("results/perf"))
    args = ap.parse_args()
    from nlss_fenicsx.bench.harness import _instances, _spec
    from nlss_fenicsx.nn.inference import load_model

    torch.set_num_threads(args.threads)
    budget = BUDGETS[args.budget]
    r = args.rank
    report = {"machine": machine_info(), "budget": args.budget, "rank": r,
              "instances": args.instances, "threads": args.threads, "pdes": {}}
    lines = ["# NLSS performance (issue 8)", "", f"machine: {machine_line()}",
             f"threads: {args.threads} (BLAS and torch; PETSc serial)",
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
        tl = training_levers(budget)
        report["training_levers"] = tl
        lines += ["## Training step at full size (random input)", "",
                  "Seconds per step (median), and the most a step's backward + update raised "
                  "the resident set above its size at the start of the backward (MiB).", "",
                  "| variant | s/step | step peak over start (MiB) |", "|---|--:|--:|"]
        for k, v in tl.items():
            mem = v["step_peak_over_start_mib"]
            lines.append(f"| {k} | {v['s_per_step']:.3f} | "
                         f"{'n/a' if mem is None else f'{mem:.0f}'} |")
        hp = huge_page_lever(budget)
        report["huge_page_lever"] = hp
        lines += ["", "Allocator pages for the current step (each in a fresh process):", "",
                  "| variant | s/step | system s/step | page faults/step | peak RSS (MiB) |",
                  "|---|--:|--:|--:|--:|"]
        for k, v in hp.items():
            lines.append(f"| {k} | {v['s_per_step']:.3f} | {v['system_s_per_step']:.3f} | "
                         f"{v['page_faults_per_step']:.0f} | {v['peak_rss_mib']:.0f} |")
        lines.append("")
    write_json(args.out / "perf.json", report)
    write_atomic(args.out / "perf.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
