"""Scalability (paper Table 4 / Fig. 6): every method from N = 16 up to N = 256.

Protocol (paper, appendix A.4): diffusion on the jittered mesh, K = N smoothed vectors and
coarse rank r = K/2 for the S-based two-grids (NLSS: the paper's MLP widths, trained with
r_max = r, the only rank used); end-to-end time per instance includes the generation of A
(Gmsh mesh, coefficient draw, dolfinx assembly); the paper reports the mean and standard
deviation over instances, we add medians and iterations. Beyond the paper (issue 16, item
4): sizes N = 128 and 256, and in the same run NLSS with float32 inference beside the
int8 default, the coarse spaces that cost nothing per instance (sine; eig-ref with the
family's mean-coefficient reference, its once-per-mesh eigensolve reported apart),
SA-AMG two-grid, and the solvers a user would pick instead (PyAMG-SA-CG, GAMG-CG,
ICC(0)-CG, Jacobi-CG, sparse Cholesky). NLSS runs where a model exists: trained for
``Budget.scal_train_N``, or found in the model cache; elsewhere its cell says why it was
not trained (with the MLP's parameter count and the memory training it would need).
Fitted growth exponents: end-to-end and solve time ~ n^p, iterations ~ N^q.

``scalability.json`` (``kind`` ``"scalability"``, schema version 2)::

    {"schema_version": 2, "kind": "scalability", "pde", "budget", "machine", "started",
     "complete", "wall_s",
     "sizes": [{"N", "n", "K", "r", "generation": {ms, q1_ms, q3_ms, mean_ms, std_ms},
                "nlss_model": {"path", "steps"} | {"not_trained": why},
                "methods": {name: {"method", "name", "class", "records", "summary"}
                                  | {"method", "not_run": why}}}],
     "exponents": {name: {"end_to_end": p, "solve": p, "iterations": q, "sizes": [N]}}}

Records' phases add ``generation`` and ``end_to_end`` (seconds) to those of
:mod:`nlss_fenicsx.bench.methods`.
"""

from __future__ import annotations

import gc
import time
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from nlss_fenicsx._atomic import check_destination
from nlss_fenicsx.bench.harness import Budget, resolve_budget, train_config
from nlss_fenicsx.bench.instances import TEST_SEED, instances, run_instance
from nlss_fenicsx.bench.methods import MethodSpec, method_class
from nlss_fenicsx.bench.progress import Progress
from nlss_fenicsx.bench.report import (
    PHASES,
    frozen_heap,
    savefig_atomic,
    stats_ms,
    summarize,
    write_atomic,
    write_json,
)
from nlss_fenicsx.bench.results import (
    SCHEMA_VERSION,
    check_same_run,
    load_results,
    require_one_rank,
)

__all__ = ["SCAL_METHODS", "fit_exponents", "plot_scalability", "render_scalability",
           "run_scalability", "scal_spec", "scal_train_config"]

# Keys of a size's methods, in run order: "nlss-f32" is NLSS with float32 inference.
SCAL_METHODS = ("nlss", "nlss-f32", "svd", "sine", "eig-ref", "sa", "pyamg", "gamg", "icc",
                "jacobi", "cholesky")
_SCAL_PHASES = (*PHASES, "generation", "end_to_end")


def scal_spec(key: str, N: int, model: str | None = None) -> MethodSpec:
    """Build the MethodSpec of ``key`` (in :data:`SCAL_METHODS`) at size N: K = N, r = K/2.

    Examples
    --------
    >>> s = scal_spec("eig-ref", 32)
    >>> (s.K, s.rank, s.reference)
    (32, 16, 'family')
    """
    K = N
    name, kw = key, {}
    if key == "nlss-f32":
        name, kw = "nlss", {"precision": "float32"}
    if key == "eig-ref":
        kw = {"reference": "family"}
    return MethodSpec(name=name, rank=max(1, K // 2), K=K, model=model, **kw)


def scal_train_config(pde: str, budget: Budget, N: int):
    """TrainConfig of the scalability NLSS model at size N (K = N, r_max = K/2)."""
    r = max(1, N // 2)
    return train_config(pde, replace(budget, r_max=r), "nlss", N=N, K=N,
                        steps=budget.scal_steps)


def _nlss_model(pde: str, budget: Budget, N: int, *, progress: bool, log) -> dict:
    """``{"path", "steps"}`` of the NLSS model for size N, or ``{"not_trained": why}``."""
    from nlss_fenicsx.bench.machine import machine_info
    from nlss_fenicsx.nn.cache import cached_model, model_path

    cfg = scal_train_config(pde, budget, N)
    if N in budget.scal_train_N or model_path(cfg).exists():
        model, path, _ = cached_model(cfg, progress=progress, log=log)
        return {"path": str(path), "steps": int(model.step or 0)}
    n = (N + 1) ** 2
    params = cfg.net_config(n).num_parameters()
    # BackwardAdam: weights and Adam's two moments, plus the largest gradient while it lives.
    need = 12 * params + 4 * max(n * N * cfg.hidden[0], cfg.hidden[-1] * n * cfg.r_max)
    memory = machine_info().get("memory_gib") or 0.0
    why = (f"more than this machine's {memory:.1f} GiB" if need > memory * 2**30 else
           f"budget {budget.name!r} trains NLSS for N in {list(budget.scal_train_N)} only "
           "and the model cache has none for this size")
    return {"not_trained": f"the MLP (K = {N}, r_max = {cfg.r_max}) has {_count(params)} "
                           f"parameters ({_bytes(4 * params)} in float32, about "
                           f"{_bytes(need)} to train with BackwardAdam); {why}",
            "parameters": params, "train_bytes": need}


def _count(k: int) -> str:
    return f"{k / 1e6:,.0f}M" if k >= 10**7 else f"{k:,}"


def _bytes(b: float) -> str:
    return f"{b / 2**30:.1f} GiB" if b >= 2**30 else f"{b / 2**20:.0f} MiB"


def _size_entry(pde: str, budget: Budget, N: int, bar: Progress, *, progress, log) -> dict:
    model = _nlss_model(pde, budget, N, progress=progress, log=log)
    systems, gen = instances(pde, N, budget.scal_instances)
    entry = {"N": N, "n": (N + 1) ** 2, "K": N, "r": max(1, N // 2),
             "generation": stats_ms(gen), "nlss_model": model, "methods": {}}
    for name in SCAL_METHODS:
        spec = scal_spec(name, N, model.get("path", "(not trained)"))
        if spec.name == "nlss" and "path" not in model:
            entry["methods"][name] = {"method": spec.label, "not_run": model["not_trained"]}
            bar.update(len(systems), note=f"N={N} {name} not trained")
            continue
        gc.collect()  # between methods, not inside a timed solve (see run_one)
        run_instance(systems[0], replace(spec, seed=TEST_SEED), pde=pde, N=N,
                     index=0)  # warm-up, not recorded
        recs = []
        for i, (system, g) in enumerate(zip(systems, gen, strict=True)):
            rec = run_instance(system, replace(spec, seed=TEST_SEED + i), pde=pde, N=N,
                               index=i)
            if rec.get("ok"):
                rec["phases"]["generation"] = g
                rec["phases"]["end_to_end"] = rec["phases"]["total"] + g
            recs.append(rec)
            bar.update(note=f"N={N} {name}")
        entry["methods"][name] = {"method": spec.label, "name": spec.name,
                                  "class": method_class(spec.name), "records": recs,
                                  "summary": summarize(recs, phases=_SCAL_PHASES)}
    return entry


def run_scalability(pde: str, budget: Budget | str, out: str | Path, *, sizes=None,
                    resume: bool = False, progress: bool = True, log=print) -> dict:
    """Run paper Table 4 / Fig. 6 for ``pde``; write scalability.{json,md,png} in ``out``.

    Parameters
    ----------
    pde : str
        PDE family (the paper uses ``diffusion``).
    budget : Budget or str
        Sizes ``budget.scal_N``, NLSS trained at ``budget.scal_train_N`` for
        ``budget.scal_steps`` steps, ``budget.scal_instances`` instances per size.
    out : path-like
        Output folder.
    sizes : sequence of int, optional
        Overrides ``budget.scal_N``.
    resume : bool
        Keep the sizes already in ``out/scalability.json``.
    progress : bool
        Progress bar on a terminal, a line every 10 % or 30 s elsewhere.
    log : callable
        Where training and per-size messages go.

    Returns
    -------
    dict
        The results (schema in the module docstring).

    Raises
    ------
    ValueError
        An output folder that cannot be written, more than one MPI rank, an unknown
        budget, a size below 2 (all before any work), or a damaged ``scalability.json``
        with ``resume`` (one line naming the file).
    """
    from nlss_fenicsx.bench.machine import machine_info

    require_one_rank("nlss-fenicsx bench --scalability")
    budget = resolve_budget(budget)
    sizes = [int(N) for N in (sizes or budget.scal_N)]
    if min(sizes) < 2:
        raise ValueError(f"scalability sizes must be >= 2, got {sizes}")
    out = check_destination(out, what="out", kind="dir")  # before any work
    path = out / "scalability.json"
    fresh = {"schema_version": SCHEMA_VERSION, "kind": "scalability", "pde": pde,
             "budget": {**asdict(budget), "hidden": list(budget.hidden)}, "sizes": [],
             "started": datetime.now(UTC).isoformat(timespec="seconds"), "complete": False}
    if resume and path.exists():
        res = load_results(path, "scalability")
        check_same_run(path, res, fresh, ("pde", "budget"))
        res["complete"] = False
    else:
        res = {**fresh, "machine": machine_info()}
    done = {s["N"] for s in res["sizes"]}
    todo = [N for N in sizes if N not in done]
    t_start = time.perf_counter()
    with Progress(len(todo) * len(SCAL_METHODS) * budget.scal_instances,
                  f"scalability {pde}", enabled=progress) as bar:
        for N in todo:
            with frozen_heap():
                entry = _size_entry(pde, budget, N, bar, progress=progress, log=log)
            res["sizes"] = sorted([*res["sizes"], entry], key=lambda s: s["N"])
            bar.write(f"[scalability] N={N}: " + ", ".join(
                f"{m['method']} {m['summary']['end_to_end_ms']:.1f} ms"
                for m in entry["methods"].values() if m.get("summary", {}).get("n_ok")))
            write_json(path, res)
    res["exponents"] = fit_exponents(res)
    res["wall_s"] = res.get("wall_s", 0.0) + time.perf_counter() - t_start
    res["complete"] = True
    write_json(path, res)
    write_atomic(out / "scalability.md", render_scalability(res))
    plot_scalability(res, out)
    return res


def _points(res: dict, name: str, key: str, x: str = "n") -> list[tuple[float, float]]:
    pts = []
    for s in res["sizes"]:
        summ = s["methods"].get(name, {}).get("summary", {})
        if summ.get("n_ok") and summ.get(key):
            pts.append((s[x], summ[key]))
    return pts


def _slope(pts) -> float | None:
    if len(pts) < 2:
        return None
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(x, y, 1)[0])


def fit_exponents(res: dict) -> dict:
    """Least-squares slopes in log-log: end-to-end and solve time ~ n^p, iterations ~ N^q.

    Only methods with at least two sizes; ``sizes`` lists the N used.
    """
    out = {}
    for name in SCAL_METHODS:
        e2e = _points(res, name, "end_to_end_ms")
        if len(e2e) >= 2:
            out[name] = {"end_to_end": _slope(e2e),
                         "solve": _slope(_points(res, name, "solve_ms")),
                         "iterations": _slope(_points(res, name, "iterations", x="N")),
                         "sizes": [s["N"] for s in res["sizes"]
                                   if s["methods"].get(name, {}).get("summary", {}).get("n_ok")]}
    return out


def _f(v, fmt=".2f") -> str:
    return "-" if v is None else format(v, fmt)


def _once_note(m: dict) -> str:
    """Describe a method's once-per-mesh work (eig-ref) and what this run paid for it."""
    paid = [1e3 * (r["phases"]["end_to_end"] + r["phases"]["once"]) for r in m["records"]
            if r.get("ok") and "once" in r["phases"] and "end_to_end" in r["phases"]]
    with_it = f" (end-to-end with it: {np.median(paid):.2f} ms, median)" if paid else ""
    return (f"\n{m['method']}: building the reference operator and its eigensolve take "
            f"{m['summary']['once_ms']:.2f} ms (median), work done once per mesh and reused "
            "by every instance on that mesh, so not in its end-to-end time above; every "
            f"instance here has its own mesh, so this run paid it for each{with_it}.")


def render_scalability(res: dict) -> str:
    """Render ``scalability.md``: per-size tables, a summary table and the exponents.

    The per-size tables have the columns of the paper's Table 4 (means and standard
    deviations) with iterations and medians added.
    """
    from nlss_fenicsx.bench.machine import machine_line

    b = res["budget"]
    lines = [f"# Scalability: {res['pde']} (paper Table 4 / Fig. 6; K = N, r = K/2)", "",
             f"machine: {machine_line(res['machine'])}", "",
             f"{b['scal_instances']} instances per size (seeds {TEST_SEED}..). End-to-end = "
             "generation of A (Gmsh mesh, coefficients, assembly) + smoothing + inference + "
             "setup + solve. Times in ms: mean and sample standard deviation as the paper "
             "reports, medians beside; iterations are medians.", ""]
    for s in res["sizes"]:
        g = s["generation"]
        lines += [f"## N = {s['N']} (n = {s['n']:,}, K = {s['K']}, r = {s['r']}; generating A "
                  f"{g['mean_ms']:.1f} ms)", "",
                  "| | Iterations | Solve | Setup | Inf. | Smoothing | End-to-End (Avg) "
                  "| End-to-End (StDev) | End-to-End (Median) |",
                  "|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
        for name, m in s["methods"].items():
            label = m["method"]
            if "not_run" in m:
                lines.append(f"| {label} | not trained: {m['not_run']} | | | | | | | |")
                continue
            summ = m["summary"]
            if name == "sa" and summ.get("coarse_size"):
                label += f" (n_c = {summ['coarse_size']:.0f})"
            if not summ.get("n_ok"):
                lines.append(f"| {label} | failed: {'; '.join(summ.get('errors', []))} "
                             "| | | | | | | |")
                continue
            lines.append(f"| {label} | {summ['iterations']:.0f} | "
                         + " | ".join(f"{summ[f'{p}_mean_ms']:.2f}" for p in
                                      ("solve", "setup", "inference", "smoothing"))
                         + f" | {summ['end_to_end_mean_ms']:.2f} | "
                         f"{summ['end_to_end_std_ms']:.2f} | {summ['end_to_end_ms']:.2f} |")
        lines += [_once_note(m) for m in s["methods"].values()
                  if "once_ms" in m.get("summary", {})]
        lines.append("")
    names = [m for m in SCAL_METHODS if any(m in s["methods"] for s in res["sizes"])]
    labels = {m: next(s["methods"][m]["method"] for s in res["sizes"] if m in s["methods"])
              for m in names}
    lines += ["## Summary: median end-to-end ms (iterations)", "",
              "| N | n | " + " | ".join(labels[m] for m in names) + " |",
              "|--:|--:|" + "--:|" * len(names)]
    for s in res["sizes"]:
        cells = []
        for m in names:
            e = s["methods"].get(m, {})
            summ = e.get("summary", {})
            cells.append("not trained" if "not_run" in e else
                         f"{summ['end_to_end_ms']:.1f} ({summ['iterations']:.0f})"
                         if summ.get("n_ok") else "failed")
        lines.append(f"| {s['N']} | {s['n']:,} | " + " | ".join(cells) + " |")
    ex = res.get("exponents", {})
    lines += ["", "## Growth exponents (least squares in log-log)", "",
              "| method | end-to-end ~ n^p | solve ~ n^p | iterations ~ N^q | sizes |",
              "|---|--:|--:|--:|---|"]
    for m in names:
        if m in ex:
            e = ex[m]
            lines.append(f"| {labels[m]} | {_f(e['end_to_end'])} | {_f(e['solve'])} | "
                         f"{_f(e['iterations'])} | {', '.join(map(str, e['sizes']))} |")
    return "\n".join(lines) + "\n"


def plot_scalability(res: dict, out: Path) -> Path:
    """``scalability.png``: end-to-end median time vs n and iterations vs N (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), dpi=110)
    ex = res.get("exponents", {})
    for name in SCAL_METHODS:
        t = _points(res, name, "end_to_end_ms")
        its = _points(res, name, "iterations", x="N")
        if not t:
            continue
        label = next(s["methods"][name]["method"] for s in res["sizes"]
                     if name in s["methods"])
        e = ex.get(name, {})
        axes[0].loglog(*zip(*t, strict=True), marker="o",
                       label=label + (f" (p={e['end_to_end']:.2f})" if e else ""))
        axes[1].loglog(*zip(*its, strict=True), marker="o",
                       label=label + (f" (q={e['iterations']:.2f})"
                                      if e.get("iterations") is not None else ""))
    axes[0].set(xlabel="n = (N+1)^2", ylabel="end-to-end time per instance (ms, median)",
                title=f"{res['pde']}: scalability (K = N, r = K/2)")
    axes[1].set(xlabel="N", ylabel="PCG iterations (median)", title="iterations vs N")
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = savefig_atomic(fig, out / "scalability.png")
    plt.close(fig)
    return path
