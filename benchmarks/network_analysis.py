"""What the trained NLSS network learned, measured (issue 16, item 3).

For each PDE family's cached NLSS model of the budget (``standard``: N=64, K=72, r_max=72,
the model ``nlss-fenicsx bench`` uses; trained on demand if missing), on ``--instances``
held-out test instances (the bench's seeds ``TEST_SEED + i``: jittered mesh, coefficients,
dolfinx assembly), at the ranks ``--ranks``:

1. captured energy of S (paper Eq. 8, ``||P^T S||_F^2 / ||S||_F^2``) of the network's basis
   (float32: the network as trained, and the int8 copy the PC runs by default) against the
   SVD's ``U_r(S)`` (the best any rank-r basis can do), the sine basis and eig-ref;
2. principal angles between the network's basis and ``U_r(S)``, the sine basis, the eig-ref
   basis (the family's mean-coefficient operator on the instance's mesh) and the network's
   own basis on the first instance (how much it changes with its input; the other
   instances only): the largest angle and the mean squared cosine ``||P^T Q||_F^2 / r``
   (1: the same space, about r/n: unrelated);
3. PCG iterations (rtol 1e-6) of the same two-grid (TwoGridPC: 5+5 Jacobi sweeps of weight
   0.66, Galerkin coarse operator, Cholesky) with each of these bases, given explicitly,
   so the iterations belong to exactly the bases whose angles are reported.

``S`` is each instance's 10-sweep smoothed block (K columns, dof order, seed of the
instance), the same for every basis. Public API only. Writes ``--out``/analysis.json,
analysis.md and analysis.png atomically. Usage::

    python benchmarks/network_analysis.py [--pde diffusion ...] [--instances 10]
        [--ranks 24 36 48 64 72] [--budget standard] [--out results/network]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

FAMILIES = ("diffusion", "anisotropic", "screened_poisson")
BASES = ("network", "network (int8)", "SVD of S", "sine", "eig-ref")
AGAINST = ("SVD of S", "sine", "eig-ref", "network on instance 0")


def _orthonormal(P: np.ndarray) -> np.ndarray:
    return np.linalg.qr(P)[0]


def angles(P: np.ndarray, Q: np.ndarray) -> dict:
    """Largest principal angle (degrees) and mean squared cosine between two spans.

    Both bases are orthonormalised first; the cosines are the singular values of P^T Q.

    Examples
    --------
    >>> e = np.eye(4)
    >>> angles(e[:, :2], e[:, [1, 2]])
    {'max_deg': 90.0, 'mean_cos2': 0.5}
    """
    cos = np.clip(np.linalg.svd(_orthonormal(P).T @ _orthonormal(Q), compute_uv=False),
                  0.0, 1.0)
    return {"max_deg": float(np.degrees(np.arccos(cos.min()))),
            "mean_cos2": float(np.mean(cos**2))}


def energy(P: np.ndarray, S: np.ndarray) -> float:
    """Captured energy ``||P^T S||_F^2 / ||S||_F^2`` of an orthonormal basis P."""
    return float(np.linalg.norm(P.T @ S) ** 2 / np.linalg.norm(S) ** 2)


def _stat(f, values) -> float | None:
    return float(f(values)) if values else None


def analyse(pde: str, budget, count: int, ranks, log=print) -> dict:
    """Energies, angles and iterations of the network's basis and the others, per rank."""
    from nlss_fenicsx.bench.harness import obtain_models
    from nlss_fenicsx.bench.instances import TEST_SEED, family_reference, instances
    from nlss_fenicsx.bench.methods import MethodSpec, run_method
    from nlss_fenicsx.coarse import coarse_basis
    from nlss_fenicsx.nn.inference import load_model
    from nlss_fenicsx.smoothing import smoothed_vectors

    model = obtain_models(pde, budget, which=("nlss",), progress=True, log=log)["nlss"]
    nets = {"network": load_model(model["path"], precision="float32"),
            "network (int8)": load_model(model["path"], precision="int8")}
    r_top = max(ranks)
    systems, _ = instances(pde, budget.N, count)
    per = {r: {"energy": {b: [] for b in BASES}, "iterations": {b: [] for b in BASES},
               "angles": {a: [] for a in AGAINST}} for r in ranks}
    first = None
    for i, system in enumerate(systems):
        t0 = time.perf_counter()
        A, order = system.A_csr, system.grid_order
        S = smoothed_vectors(A, budget.K, sweeps=10, omega=0.66, rng=TEST_SEED + i)
        full = {name: net.basis(S, r_top, node_order=order) for name, net in nets.items()}
        full["SVD of S"] = coarse_basis("svd", A, r=r_top, S=S)
        full["sine"] = coarse_basis("sine", A, r=r_top, node_order=order)
        R = family_reference(system, pde, budget.N, mesh_seed=TEST_SEED + i)
        full["eig-ref"] = coarse_basis("eig-ref", A, r=r_top, reference=R)
        if first is None:  # in node (grid) order: each instance's mesh numbers its dofs anew
            first = full["network"][order]
        for r in ranks:  # every basis is nested: its first r columns are its rank-r basis
            P = {name: B[:, :r] for name, B in full.items()}
            for name in BASES:
                per[r]["energy"][name].append(energy(_orthonormal(P[name]), S))
                rec = run_method(system, MethodSpec("svd", rank=r, K=budget.K), P=P[name])
                per[r]["iterations"][name].append(int(rec.iterations))
            others = {"SVD of S": P["SVD of S"], "sine": P["sine"], "eig-ref": P["eig-ref"]}
            for name, Q in others.items():
                per[r]["angles"][name].append(angles(P["network"], Q))
            if i:  # the network's basis on instance 0 against its basis here, both by node
                per[r]["angles"]["network on instance 0"].append(
                    angles(P["network"][order], first[:, :r]))
        log(f"[network] {pde} instance {i + 1}/{count}: {time.perf_counter() - t0:.1f} s")
    out = {"model": model, "N": budget.N, "K": budget.K, "instances": count,
           "seeds": [TEST_SEED + i for i in range(count)], "ranks": {}}
    for r in ranks:
        d = per[r]
        out["ranks"][str(r)] = {
            "energy_mean": {b: float(np.mean(v)) for b, v in d["energy"].items()},
            "energy": d["energy"],
            "iterations_median": {b: float(np.median(v)) for b, v in d["iterations"].items()},
            "iterations": d["iterations"],
            "angles": {a: {"max_deg_median": _stat(np.median, [x["max_deg"] for x in v]),
                           "mean_cos2_mean": _stat(np.mean, [x["mean_cos2"] for x in v]),
                           "per_instance": v}
                       for a, v in d["angles"].items()}}
    return out


def _pair(a: dict) -> str:
    if a["max_deg_median"] is None:
        return "-"
    return f"{a['max_deg_median']:.1f} / {a['mean_cos2_mean']:.3f}"


def render(report: dict) -> str:
    """``analysis.md``: per family, one table per measure, a row per rank."""
    from nlss_fenicsx.bench.machine import machine_line

    lines = ["# What the NLSS network learned", "", f"machine: {machine_line(report['machine'])}",
             "", f"budget `{report['budget']}`; held-out test instances (the bench's seeds); "
             "S = 10 Jacobi sweeps (omega 0.66) of K random vectors, per instance. "
             "'network' is the float32 network as trained, 'network (int8)' the compressed "
             "copy the PC runs by default. Angles are between the network's basis (float32) "
             "and the other one: the largest principal angle (median over instances) and the "
             "mean squared cosine (mean; 1 = the same space). Iterations: PCG to 1e-6 with "
             "the same two-grid (5+5 Jacobi 0.66, Galerkin, Cholesky) and each basis given "
             "explicitly (medians).", ""]
    for pde, res in report["pdes"].items():
        m = res["model"]
        lines += [f"## {pde}", "",
                  f"N={res['N']}, K={res['K']}, {res['instances']} instances; model "
                  f"{Path(m['path']).name}: {m['steps']} training steps, "
                  f"{m['parameters']:,} parameters.", "",
                  "Captured energy of S (mean):", "",
                  "| r | " + " | ".join(BASES) + " |", "|--:|" + "--:|" * len(BASES)]
        for r, d in res["ranks"].items():
            lines.append(f"| {r} | " + " | ".join(f"{d['energy_mean'][b]:.3f}" for b in BASES)
                         + " |")
        lines += ["", "Network basis against (largest angle in degrees / mean squared cosine):",
                  "", "| r | " + " | ".join(AGAINST) + " |", "|--:|" + "--:|" * len(AGAINST)]
        for r, d in res["ranks"].items():
            lines.append(f"| {r} | " + " | ".join(_pair(d["angles"][a]) for a in AGAINST)
                         + " |")
        lines += ["", "PCG iterations (median):", "",
                  "| r | " + " | ".join(BASES) + " |", "|--:|" + "--:|" * len(BASES)]
        for r, d in res["ranks"].items():
            lines.append(f"| {r} | " + " | ".join(f"{d['iterations_median'][b]:.0f}"
                                                   for b in BASES) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> Path:
    """``analysis.png``: captured energy (top) and iterations (bottom) vs rank, per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nlss_fenicsx.bench.report import savefig_atomic

    pdes = list(report["pdes"])
    fig, axes = plt.subplots(2, len(pdes), figsize=(4.6 * len(pdes), 7.5), dpi=110,
                             squeeze=False)
    for j, pde in enumerate(pdes):
        ranks = [int(r) for r in report["pdes"][pde]["ranks"]]
        d = report["pdes"][pde]["ranks"]
        for b in BASES:
            style = {"marker": "o", "ls": "--" if "int8" in b else "-"}
            axes[0, j].plot(ranks, [d[str(r)]["energy_mean"][b] for r in ranks], label=b,
                            **style)
            axes[1, j].plot(ranks, [d[str(r)]["iterations_median"][b] for r in ranks],
                            label=b, **style)
        axes[0, j].set(title=pde, xlabel="rank r", ylabel="captured energy of S (mean)",
                       ylim=(0, 1.02))
        axes[1, j].set(xlabel="rank r", ylabel="PCG iterations (median)", yscale="log")
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    out = savefig_atomic(fig, path)
    plt.close(fig)
    return out


def main(argv=None) -> dict:
    """Run the analysis; return the report (also written to ``--out``)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pde", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    ap.add_argument("--instances", type=int, default=10, help="held-out test instances")
    ap.add_argument("--ranks", type=int, nargs="+", default=[24, 36, 48, 64, 72])
    ap.add_argument("--budget", default="standard", help="the bench budget of the models")
    ap.add_argument("--out", type=Path, default=Path("results/network"))
    args = ap.parse_args(argv)
    import torch

    from nlss_fenicsx._atomic import check_destination
    from nlss_fenicsx.bench.harness import resolve_budget
    from nlss_fenicsx.bench.machine import machine_info
    from nlss_fenicsx.bench.report import write_atomic, write_json

    budget = resolve_budget(args.budget)
    bad = [r for r in args.ranks if not 1 <= r <= min(budget.r_max, budget.K)]
    if bad or args.instances < 1:
        ap.error(f"--ranks must lie in 1..{min(budget.r_max, budget.K)} for budget "
                 f"{budget.name!r} and --instances >= 1; got ranks {bad or args.ranks}, "
                 f"{args.instances} instances")
    out = check_destination(args.out, what="--out", kind="dir")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    t0 = time.perf_counter()
    report = {"machine": machine_info(), "budget": budget.name, "ranks": sorted(args.ranks),
              "pdes": {}, "complete": False}
    for pde in args.pde:
        report["pdes"][pde] = analyse(pde, budget, args.instances, sorted(args.ranks))
        report["wall_s"] = time.perf_counter() - t0
        report["complete"] = pde == args.pde[-1]
        write_json(out / "analysis.json", report)
        write_atomic(out / "analysis.md", render(report))
    plot(report, out / "analysis.png")
    print(render(report))
    return report


if __name__ == "__main__":
    try:
        main()
    except ValueError as err:  # bad input (e.g. an --out that cannot be written): one line
        sys.exit(f"network_analysis.py: {err}")
