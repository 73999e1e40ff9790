"""``nlss-fenicsx bench``: the paper's tables and figures, with the solvers users would pick.

For one PDE family and a budget, the harness

1. obtains the learned models (NLSS, Subspace, GNN), trained on demand and cached
   (:mod:`nlss_fenicsx.nn.cache`);
2. draws ``instances`` test instances (seeds ``TEST_SEED + i``: jittered mesh, coefficients,
   assembled through dolfinx);
3. solves each with every method and rank, timing the phases of DESIGN.md section 4
   (:mod:`nlss_fenicsx.bench.methods`) after one warm-up run per method;
4. writes ``results.json``, ``tables.md`` and the figures, atomically, after every method,
   so a killed run keeps what it had and ``--resume`` continues.

Methods: the paper's two-grid five (NLSS, Subspace, GNN, SVD, SA-AMG), all through the
PETSc path (:class:`~nlss_fenicsx.petsc.TwoGridPC`), the SciPy reference path as separate
rows (NLSS and SVD), and the peers Jacobi-CG, ICC(0)-CG, PyAMG SA V-cycle CG, PETSc GAMG-CG
and sparse direct Cholesky.

``results.json`` schema (``schema_version`` 1)::

    {"schema_version": 1, "kind": "bench" | "scalability", "pde": str,
     "budget": {name, N, K, r_max, steps, hidden, instances, gnn_width, gnn_layers,
                gnn_steps, protocol, ...},
     "ranks": [int], "seeds": {"test": [int], "train": int},
     "machine": {cpu, cores, memory_gib, os, python, versions: {package: version}},
     "models": {"nlss" | "subspace" | "gnn": {"path", "steps", "train_seconds", ...}},
     "methods": {KEY: {"method": label, "name": str, "rank": int | null, "path": str,
                       "records": [{"ok", "iterations", "rel_residual", "coarse_size",
                                    "phases": {smoothing, inference, setup, solve, total}
                                    (seconds), "error"?}],
                       "summary": {"n_ok", "n_failed", "<phase>_ms", "<phase>_q1_ms",
                                   "<phase>_q3_ms", "iterations", "iterations_q1",
                                   "iterations_q3", "coarse_size", "errors"?}}},
     "energy": {"ranks": [int], "svd": [float], "nlss" | "subspace" | "gnn": [float]},
     "started": ISO time, "wall_s": float, "complete": bool}

``KEY`` is ``"<name>@<rank>"`` for rank-dependent methods (``nlss@48``, ``svd-scipy@48``)
and ``"<name>"`` otherwise (``sa``, ``icc``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from nlss_fenicsx.bench.report import (
    PHASES,
    run_one,
    savefig_atomic,
    summarize,
    write_atomic,
    write_json,
)

__all__ = ["BUDGETS", "Budget", "run_bench", "run_scalability", "validate_results"]

TEST_SEED = 7000
PAPER_HIDDEN = (128, 256, 256, 128)


@dataclass(frozen=True)
class Budget:
    """How much to train and measure."""

    name: str
    N: int
    K: int
    r_max: int
    steps: int
    hidden: tuple[int, ...]
    instances: int
    gnn_width: int
    gnn_layers: int
    gnn_steps: int
    protocol: str = "code"
    ranks: tuple[int, ...] = (24, 36, 48, 64)
    scal_N: tuple[int, ...] = (16, 32, 48, 64, 80)
    scal_steps: int = 300
    scal_instances: int = 10
    gnn_instances: int | None = None  # the GNN's forward pass is seconds at width 488 on a CPU
    note: str = ""


BUDGETS = {
    "smoke": Budget("smoke", N=8, K=8, r_max=8, steps=30, hidden=(32, 32), instances=3,
                    gnn_width=16, gnn_layers=2, gnn_steps=10, ranks=(2, 4, 6, 8),
                    scal_N=(6, 8, 10), scal_steps=20, scal_instances=2,
                    note="CI smoke test: tiny sizes, a few training steps"),
    "standard": Budget("standard", N=64, K=72, r_max=72, steps=1000, hidden=PAPER_HIDDEN,
                       instances=100, gnn_width=488, gnn_layers=5, gnn_steps=12,
                       gnn_instances=10,
                       note="one 2-core CPU; MLPs get the code protocol's 1000 steps, the "
                            "GNN (width 488, about 15 s per training step and seconds per "
                            "inference here) only 12 steps and the first 10 test instances"),
    "paper": Budget("paper", N=64, K=72, r_max=72, steps=1_000_000, hidden=PAPER_HIDDEN,
                    instances=100, gnn_width=488, gnn_layers=5, gnn_steps=1_000_000,
                    protocol="dataset", scal_steps=1000,
                    note="the paper's protocol (1000 samples x 1000 epochs); needs a GPU"),
}

LABELS = {"nlss": "NLSS", "subspace": "Subspace", "gnn": "GNN", "svd": "SVD", "sa": "SA-AMG",
          "nlss-scipy": "NLSS (SciPy)", "svd-scipy": "SVD (SciPy)", "jacobi": "Jacobi-CG",
          "icc": "ICC(0)-CG", "pyamg": "PyAMG-SA-CG", "gamg": "GAMG-CG", "cholesky": "Cholesky"}
LEARNED = ("nlss", "subspace", "gnn")
PEERS = ("jacobi", "icc", "pyamg", "gamg", "cholesky")


# --------------------------------------------------------------------------- models
def _train_config(pde: str, budget: Budget, loss: str, *, N=None, K=None, steps=None,
                  preset="default"):
    from nlss_fenicsx.nn.train import TrainConfig

    N = budget.N if N is None else N
    K = budget.K if K is None else K
    return TrainConfig(pde=pde, N=N, K=K, r_max=min(budget.r_max, K), loss=loss,
                       steps=budget.steps if steps is None else steps, hidden=budget.hidden,
                       protocol=budget.protocol, preset=preset)


def _gnn_config(pde: str, budget: Budget, preset="default"):
    from nlss_fenicsx.nn.gnn import GNNTrainConfig

    return GNNTrainConfig(pde=pde, N=budget.N, K=budget.K, r_max=budget.r_max,
                          steps=budget.gnn_steps, width=budget.gnn_width,
                          layers=budget.gnn_layers, preset=preset)


def obtain_models(pde: str, budget: Budget, *, which=LEARNED, progress=True, log=print) -> dict:
    """Trained models (cached), as ``{name: {"path", "steps", "train_seconds", ...}}``."""
    from nlss_fenicsx.nn.cache import cached_gnn, cached_model

    out = {}
    for name in which:
        if name == "gnn":
            model, path, trained = cached_gnn(_gnn_config(pde, budget), progress=progress,
                                              log=log)
        else:
            model, path, trained = cached_model(_train_config(pde, budget, name),
                                                progress=progress, log=log)
        extra = model.metadata.get("extra", {})
        out[name] = {"path": str(path), "steps": int(model.step or 0),
                     "train_seconds": extra.get("train_seconds"),
                     "peak_rss_mib": extra.get("peak_rss_mib"),
                     "parameters": model.num_parameters(), "trained_now": bool(trained)}
        if name == "gnn":
            out[name].update(width=budget.gnn_width, layers=budget.gnn_layers)
    return out


# --------------------------------------------------------------------------- methods
def method_plan(ranks, models: dict, budget: Budget) -> dict:
    """``{key: (name, rank, path, model_path)}`` in run order."""
    plan = {}
    for r in ranks:
        for name in ("nlss", "subspace", "gnn"):
            if name in models:
                plan[f"{name}@{r}"] = (name, r, "petsc", models[name]["path"])
        plan[f"svd@{r}"] = ("svd", r, "petsc", None)
        if "nlss" in models:
            plan[f"nlss-scipy@{r}"] = ("nlss", r, "scipy", models["nlss"]["path"])
        plan[f"svd-scipy@{r}"] = ("svd", r, "scipy", None)
    plan["sa"] = ("sa", None, "petsc", None)
    for p in PEERS:
        plan[p] = (p, None, "petsc", None)
    return plan


def _spec(name, rank, path, model, budget: Budget, seed: int):
    from nlss_fenicsx.bench.methods import MethodSpec

    return MethodSpec(name=name, rank=rank or budget.r_max, K=budget.K, path=path,
                      model=model, seed=seed)


def _label(key: str, budget: Budget, models: dict) -> str:
    name = key.split("@")[0]
    label = LABELS[name]
    if name == "gnn" and "gnn" in models:
        g = models["gnn"]
        label += f" (width {g['width']}, {g['steps']} steps"
        label += f", {budget.gnn_instances} instances)" if budget.gnn_instances else ")"
    return label


def _instances(pde: str, N: int, count: int, preset="default"):
    from nlss_fenicsx import meshes, pdes

    systems, gen = [], []
    for i in range(count):
        t0 = time.perf_counter()
        mesh = meshes.jittered_square(N, seed=TEST_SEED + i)
        systems.append(pdes.assemble(pdes.sample(pde, mesh, rng=TEST_SEED + i, preset=preset)))
        gen.append(time.perf_counter() - t0)
    return systems, gen


def energy_curves(systems, models: dict, budget: Budget, ranks) -> dict:
    """Mean captured energy (Eq. 8) of each learned basis and of the exact SVD vs rank."""
    from nlss_fenicsx.nn.inference import load_model
    from nlss_fenicsx.smoothing import smoothed_vectors

    ranks = [r for r in ranks if r <= budget.r_max]
    out: dict = {"ranks": list(ranks), "svd": []}
    S_all = [smoothed_vectors(s.A_csr, budget.K, rng=TEST_SEED + i)
             for i, s in enumerate(systems)]
    sig2 = [np.linalg.svd(S, compute_uv=False) ** 2 for S in S_all]
    out["svd"] = [float(np.mean([s[:r].sum() / s.sum() for s in sig2])) for r in ranks]
    for name, info in models.items():
        model = load_model(info["path"])
        count = budget.gnn_instances if name == "gnn" and budget.gnn_instances else len(S_all)
        energies = []
        for S, system in zip(S_all[:count], systems[:count], strict=True):
            kw = {"A": system.A_csr} if name == "gnn" else {}
            # Every model's basis is nested (QR of the head's columns): one forward pass
            # at the largest rank gives every truncation.
            P = model.basis(S, max(ranks), grid_order=system.grid_order, **kw)
            proj = np.cumsum(((P.T @ S) ** 2).sum(axis=1))
            energies.append([proj[r - 1] / np.linalg.norm(S) ** 2 for r in ranks])
        vals = [float(v) for v in np.mean(energies, axis=0)]
        out[name] = vals
    return out


# --------------------------------------------------------------------------- tables
def _ms(s: dict, key: str) -> str:
    v = s.get(key)
    return "-" if v is None else f"{v:.2f}"


def paper_tables(res: dict) -> str:
    """Tables 1-3 of the paper: per coarse size, solve and total times of the five
    two-grid methods and the Improvement row (NLSS vs the best other learned or SVD)."""
    lines = []
    methods = res["methods"]
    sa = methods.get("sa", {}).get("summary", {})
    for r in res["ranks"]:
        lines += [f"#### n_c = {r}", "",
                  "| | Iterations | Solve Time (ms) | Total (Median) (ms) | Total (Q1) (ms) "
                  "| Total (Q3) (ms) |", "|---|--:|--:|--:|--:|--:|"]
        rows = {}
        for name in ("subspace", "gnn", "svd"):
            key = f"{name}@{r}"
            if key in methods:
                rows[methods[key]["method"]] = methods[key]["summary"]
        if sa:
            rows[f"SA-AMG (n_c {sa.get('coarse_size') or 0:.0f})"] = sa
        nlss = methods.get(f"nlss@{r}", {}).get("summary")
        if nlss:
            rows["NLSS (ours)"] = nlss
        for label, s in rows.items():
            if not s.get("n_ok"):
                lines.append(f"| {label} | failed | - | - | - | - |")
                continue
            lines.append(f"| {label} | {s['iterations']:.0f} | {_ms(s, 'solve_ms')} | "
                         f"{_ms(s, 'total_ms')} | {_ms(s, 'total_q1_ms')} | "
                         f"{_ms(s, 'total_q3_ms')} |")
        others = [methods[f"{n}@{r}"]["summary"] for n in ("subspace", "gnn", "svd")
                  if f"{n}@{r}" in methods and methods[f"{n}@{r}"]["summary"].get("n_ok")]
        if nlss and nlss.get("n_ok") and others:
            cells = []
            for col in ("solve_ms", "total_ms", "total_q1_ms", "total_q3_ms"):
                best = min(o[col] for o in others)
                cells.append(f"{100.0 * (best - nlss[col]) / best:.1f}%")
            lines.append("| Improvement | | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def full_table(res: dict) -> str:
    """Every method and rank, all phases (median ms), iterations, sorted by median total."""
    lines = ["| method | r | coarse | iters | " + " | ".join(PHASES) + " | total Q1-Q3 | ok |",
             "|---|--:|--:|--:|" + "--:|" * len(PHASES) + "--:|--:|"]

    def key(item):
        s = item[1]["summary"]
        return (not s.get("n_ok"), s.get("total_ms", np.inf))

    for _, m in sorted(res["methods"].items(), key=key):
        s = m["summary"]
        n_all = s["n_ok"] + s["n_failed"]
        r = m["rank"] if m["rank"] is not None else "-"
        if not s["n_ok"]:
            lines.append(f"| {m['method']} | {r} | - | - | " + " | ".join("-" for _ in PHASES)
                         + f" | - | 0/{n_all} |")
            continue
        coarse = "-" if s.get("coarse_size") is None else f"{s['coarse_size']:.0f}"
        lines.append(f"| {m['method']} | {r} | {coarse} | {s['iterations']:.0f} | "
                     + " | ".join(_ms(s, f"{p}_ms") for p in PHASES)
                     + f" | {_ms(s, 'total_q1_ms')}-{_ms(s, 'total_q3_ms')} "
                     f"| {s['n_ok']}/{n_all} |")
    return "\n".join(lines)


def render_tables(res: dict) -> str:
    from nlss_fenicsx.bench.machine import machine_line

    b = res["budget"]
    head = [f"# {res['pde']}: budget `{b['name']}`", "",
            f"machine: {machine_line(res['machine'])}",
            f"N={b['N']} (n={(b['N'] + 1) ** 2}), K={b['K']}, r_max={b['r_max']}, "
            f"{b['instances']} test instances (seeds {TEST_SEED}..{TEST_SEED + b['instances'] - 1}"
            f"), rtol 1e-6 on the true residual; times are per instance, ms.", ""]
    for name, m in res.get("models", {}).items():
        head.append(f"- model {LABELS[name]}: {m['steps']} training steps, "
                    f"{(m.get('train_seconds') or 0):.0f} s, {m['parameters']:,} parameters"
                    + (f", width {m['width']}, {m['layers']} layers" if name == "gnn" else ""))
    if b.get("note"):
        head += ["", f"Budget note: {b['note']}."]
    body = ["", "## The paper's tables (two-grid methods, PETSc path)", "", paper_tables(res),
            "## Every method (medians over instances)", "", full_table(res), ""]
    if not res.get("complete"):
        body.insert(0, "\n**Incomplete run** (interrupted or in progress).\n")
    return "\n".join(head + body)


# --------------------------------------------------------------------------- figures
def plot_bench(res: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    ranks = res["ranks"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    for name in ("nlss", "subspace", "gnn", "svd", "nlss-scipy", "svd-scipy"):
        keys = [f"{name}@{r}" for r in ranks if f"{name}@{r}" in res["methods"]]
        sums = [res["methods"][k]["summary"] for k in keys]
        pts = [(int(k.split("@")[1]), s) for k, s in zip(keys, sums, strict=True)
               if s.get("n_ok")]
        if not pts:
            continue
        rr = [p[0] for p in pts]
        label = res["methods"][keys[0]]["method"]
        med = np.array([p[1]["total_ms"] for p in pts])
        lo = med - np.array([p[1]["total_q1_ms"] for p in pts])
        hi = np.array([p[1]["total_q3_ms"] for p in pts]) - med
        ls = "--" if "scipy" in name else "-"
        axes[0].errorbar(rr, med, yerr=[lo, hi], marker="o", ls=ls, capsize=3, label=label)
        axes[1].plot(rr, [p[1]["iterations"] for p in pts], marker="o", ls=ls, label=label)
    for key in ("sa", *PEERS):
        s = res["methods"].get(key, {}).get("summary", {})
        if s.get("n_ok"):
            axes[0].axhline(s["total_ms"], ls=":", lw=1, color="gray")
            axes[0].annotate(res["methods"][key]["method"], (ranks[-1], s["total_ms"]),
                             fontsize=7, color="gray", ha="right", va="bottom")
    axes[0].set(xlabel="coarse rank r", ylabel="total time per instance (ms)",
                title=f"{res['pde']}: time vs rank (median, Q1-Q3)", yscale="log")
    axes[1].set(xlabel="coarse rank r", ylabel="PCG iterations (median)",
                title="iterations vs rank")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    paths.append(savefig_atomic(fig, out / "time_iterations_vs_rank.png"))
    plt.close(fig)
    if res.get("energy"):
        e = res["energy"]
        fig, ax = plt.subplots(figsize=(5.5, 4), dpi=110)
        ax.plot(e["ranks"], e["svd"], "k-o", label="exact SVD of S")
        for name in LEARNED:
            if name in e:
                ax.plot(e["ranks"], e[name], marker="o", label=LABELS[name])
        ax.set(xlabel="rank r", ylabel="captured energy (Eq. 8), mean",
               title=f"{res['pde']}: captured energy of S")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        paths.append(savefig_atomic(fig, out / "captured_energy_vs_rank.png"))
        plt.close(fig)
    return paths


# --------------------------------------------------------------------------- driver
def _write(res: dict, out: Path) -> None:
    write_json(out / "results.json", res)
    write_atomic(out / "tables.md", render_tables(res))


def run_bench(pde: str, budget: Budget | str, out: str | Path, *, ranks=None,
              resume: bool = False, methods: tuple[str, ...] | None = None,
              progress: bool = True, log=print) -> dict:
    """Run the benchmark for one PDE family; returns the results dict (also on disk)."""
    from tqdm.auto import tqdm

    from nlss_fenicsx.bench.machine import machine_info

    budget = BUDGETS[budget] if isinstance(budget, str) else budget
    ranks = [int(r) for r in (ranks or budget.ranks)]
    bad = [r for r in ranks if not 1 <= r <= budget.r_max]
    if bad:
        raise ValueError(f"ranks must lie in 1..r_max={budget.r_max} for budget "
                         f"{budget.name!r}; got {bad}")
    out = Path(out)
    t_start = time.perf_counter()
    res = None
    if resume and (out / "results.json").exists():
        res = json.loads((out / "results.json").read_text())
        if res.get("pde") != pde or res.get("budget", {}).get("name") != budget.name:
            raise ValueError(f"{out}/results.json holds pde={res.get('pde')!r}, budget="
                             f"{res.get('budget', {}).get('name')!r}; cannot resume "
                             f"pde={pde!r}, budget={budget.name!r}")
        res["ranks"] = sorted(set(res["ranks"]) | set(ranks))
    if res is None:
        res = {"schema_version": 1, "kind": "bench", "pde": pde,
               "budget": {**asdict(budget), "hidden": list(budget.hidden)}, "ranks": ranks,
               "seeds": {"test": [TEST_SEED + i for i in range(budget.instances)],
                         "train": 0},
               "machine": machine_info(), "models": {}, "methods": {},
               "started": datetime.now(UTC).isoformat(timespec="seconds"), "complete": False}
    wanted = LEARNED if methods is None else tuple(m for m in LEARNED if m in methods)
    res["models"] = obtain_models(pde, budget, which=wanted, progress=progress, log=log)
    systems, gen = _instances(pde, budget.N, budget.instances)
    res["generation_ms_median"] = 1e3 * float(np.median(gen))
    plan = method_plan(ranks, res["models"], budget)
    if methods is not None:
        plan = {k: v for k, v in plan.items() if k.split("@")[0] in methods
                or k.split("@")[0].replace("-scipy", "") in methods}
    def wanted_count(key):
        gnn = key.startswith("gnn@") and budget.gnn_instances
        return min(len(systems), budget.gnn_instances) if gnn else len(systems)

    todo = {k: v for k, v in plan.items()
            if not (k in res["methods"] and len(res["methods"][k]["records"]) == wanted_count(k))}
    bar = tqdm(total=len(todo) * len(systems), desc=f"bench {pde}",
               disable=None if progress else True)
    for key, (name, rank, path, model) in todo.items():
        run_one(systems[0], _spec(name, rank, path, model, budget, TEST_SEED))  # warm-up
        records = []
        subset = systems[: budget.gnn_instances] if name == "gnn" else systems
        bar.total -= len(systems) - len(subset)
        for i, system in enumerate(subset):
            records.append(run_one(system, _spec(name, rank, path, model, budget,
                                                 TEST_SEED + i)))
            bar.update(1)
        res["methods"][key] = {"method": _label(key, budget, res["models"]), "name": name,
                               "rank": rank, "path": path, "records": records,
                               "summary": summarize(records)}
        _write(res, out)
    bar.close()
    if res["models"] and "energy" not in res:
        res["energy"] = energy_curves(systems[: min(20, len(systems))], res["models"], budget,
                                      sorted(set(ranks) | {1, 2, 4, 8, 16, budget.r_max}))
    res["wall_s"] = res.get("wall_s", 0.0) + time.perf_counter() - t_start
    res["complete"] = True
    _write(res, out)
    plot_bench(res, out)
    return res


# --------------------------------------------------------------------------- scalability
SCAL_METHODS = ("nlss", "svd", "sa", "pyamg", "jacobi", "icc", "gamg", "cholesky")


def run_scalability(pde: str, budget: Budget | str, out: str | Path, *, progress=True,
                    log=print) -> dict:
    """Paper Table 4 / Fig. 6: N in ``budget.scal_N``, K = N, r = K/2; end-to-end time
    (generating A included) per method, and the fitted growth exponent in n."""
    from nlss_fenicsx.bench.machine import machine_info
    from nlss_fenicsx.nn.cache import cached_model

    budget = BUDGETS[budget] if isinstance(budget, str) else budget
    out = Path(out)
    res = {"schema_version": 1, "kind": "scalability", "pde": pde,
           "budget": {**asdict(budget), "hidden": list(budget.hidden)},
           "machine": machine_info(), "sizes": [],
           "started": datetime.now(UTC).isoformat(timespec="seconds"), "complete": False}
    t_start = time.perf_counter()
    for N in budget.scal_N:
        K = N
        r = max(1, K // 2)
        sized = replace(budget, N=N, K=K, r_max=K)
        cfg = _train_config(pde, sized, "nlss", N=N, K=K, steps=budget.scal_steps)
        model, path, _ = cached_model(cfg, progress=progress, log=log)
        systems, gen = _instances(pde, N, budget.scal_instances)
        entry = {"N": N, "n": (N + 1) ** 2, "K": K, "r": r, "model": str(path),
                 "model_steps": int(model.step or 0), "generation_ms": 1e3 * float(np.median(gen)),
                 "methods": {}}
        for name in SCAL_METHODS:
            mpath = str(path) if name == "nlss" else None
            run_one(systems[0], _spec(name, r, "petsc", mpath, sized, TEST_SEED))
            recs = [run_one(s, _spec(name, r, "petsc", mpath, sized, TEST_SEED + i))
                    for i, s in enumerate(systems)]
            for rec, g in zip(recs, gen, strict=True):
                if rec.get("ok"):
                    rec["phases"]["end_to_end"] = rec["phases"]["total"] + g
            summ = summarize(recs)
            ok = [rec["phases"]["end_to_end"] for rec in recs if rec.get("ok")]
            summ["end_to_end_ms"] = 1e3 * float(np.median(ok)) if ok else None
            entry["methods"][name] = {"method": LABELS[name], "records": recs,
                                      "summary": summ}
        res["sizes"].append(entry)
        log(f"[scalability] N={N}: " + ", ".join(
            f"{LABELS[k]} {v['summary'].get('end_to_end_ms') or float('nan'):.1f} ms"
            for k, v in entry["methods"].items()))
        write_json(out / "scalability.json", res)
    res["exponents"] = _fit_exponents(res)
    res["wall_s"] = time.perf_counter() - t_start
    res["complete"] = True
    write_json(out / "scalability.json", res)
    write_atomic(out / "scalability.md", render_scalability(res))
    plot_scalability(res, out)
    return res


def _fit_exponents(res: dict) -> dict:
    out = {}
    for name in SCAL_METHODS:
        pts = [(s["n"], s["methods"][name]["summary"].get("end_to_end_ms"))
               for s in res["sizes"] if name in s["methods"]]
        pts = [(n, t) for n, t in pts if t]
        if len(pts) >= 2:
            out[name] = float(np.polyfit(np.log([p[0] for p in pts]),
                                         np.log([p[1] for p in pts]), 1)[0])
    return out


def render_scalability(res: dict) -> str:
    from nlss_fenicsx.bench.machine import machine_line

    names = [m for m in SCAL_METHODS if any(m in s["methods"] for s in res["sizes"])]
    lines = [f"# Scalability: {res['pde']} (K = N, r = K/2)", "",
             f"machine: {machine_line(res['machine'])}", "",
             "End-to-end median time per instance in ms (generating A included), and the "
             "fitted exponent p of time ~ n^p.", "",
             "| N | n | A gen | " + " | ".join(LABELS[m] for m in names) + " |",
             "|--:|--:|--:|" + "--:|" * len(names)]
    for s in res["sizes"]:
        cells = []
        for m in names:
            summ = s["methods"][m]["summary"]
            t = summ.get("end_to_end_ms")
            cells.append("failed" if t is None else f"{t:.1f} ({summ['iterations']:.0f} it)")
        lines.append(f"| {s['N']} | {s['n']} | {s['generation_ms']:.1f} | " + " | ".join(cells)
                     + " |")
    ex = res.get("exponents", {})
    lines.append("| exponent p | | | " + " | ".join(f"{ex[m]:.2f}" if m in ex else "-"
                                                  for m in names) + " |")
    lines += ["", "NLSS models per size: " + ", ".join(
        f"N={s['N']}: {s['model_steps']} steps" for s in res["sizes"])]
    return "\n".join(lines) + "\n"


def plot_scalability(res: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=110)
    ex = res.get("exponents", {})
    for name in SCAL_METHODS:
        pts = [(s["n"], s["methods"][name]["summary"].get("end_to_end_ms"))
               for s in res["sizes"] if name in s["methods"]]
        pts = [p for p in pts if p[1]]
        if pts:
            lab = LABELS[name] + (f" (p={ex[name]:.2f})" if name in ex else "")
            ax.loglog([p[0] for p in pts], [p[1] for p in pts], marker="o", label=lab)
    ax.set(xlabel="n = (N+1)^2", ylabel="end-to-end time per instance (ms)",
           title=f"{res['pde']}: scalability (K = N, r = K/2)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = savefig_atomic(fig, out / "scalability.png")
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- schema
_TOP = {"schema_version": int, "kind": str, "pde": str, "budget": dict, "ranks": list,
        "seeds": dict, "machine": dict, "models": dict, "methods": dict, "started": str,
        "complete": bool}
_SUMMARY = ("n_ok", "n_failed", *(f"{p}_{s}" for p in PHASES for s in ("ms", "q1_ms", "q3_ms")),
            "iterations", "iterations_q1", "iterations_q3", "coarse_size")


def validate_results(res: dict) -> list[str]:
    """Problems found in a ``results.json`` against the schema above (empty if valid)."""
    problems = []
    for key, typ in _TOP.items():
        if not isinstance(res.get(key), typ):
            problems.append(f"{key}: expected {typ.__name__}, got {type(res.get(key)).__name__}")
    if res.get("schema_version") != 1:
        problems.append(f"schema_version: expected 1, got {res.get('schema_version')!r}")
    for name in ("cpu", "cores", "python", "versions"):
        if name not in res.get("machine", {}):
            problems.append(f"machine.{name} missing")
    for key, m in res.get("methods", {}).items():
        for field in ("method", "name", "rank", "path", "records", "summary"):
            if field not in m:
                problems.append(f"methods.{key}.{field} missing")
        for i, rec in enumerate(m.get("records", [])):
            if "ok" not in rec:
                problems.append(f"methods.{key}.records[{i}].ok missing")
            elif rec["ok"]:
                ph = rec.get("phases", {})
                if set(ph) < set(PHASES) or not all(np.isfinite(v) and v >= 0
                                                    for v in ph.values()):
                    problems.append(f"methods.{key}.records[{i}].phases invalid: {ph}")
                if not isinstance(rec.get("iterations"), int):
                    problems.append(f"methods.{key}.records[{i}].iterations not an int")
            elif "error" not in rec:
                problems.append(f"methods.{key}.records[{i}] failed without an error")
        s = m.get("summary", {})
        if s.get("n_ok"):
            missing = [f for f in _SUMMARY if f not in s]
            if missing:
                problems.append(f"methods.{key}.summary missing {missing}")
    return problems
