"""Output of :mod:`nlss_fenicsx.bench.beyond`: summary.json, tables.md and the figure.

Runs for several families or sizes may share one folder: ``summary.json`` keeps every
``(pde, N)`` entry already there and replaces those run again; the raw records of each
``(pde, N)`` live in ``results_<pde>_N<N>.json``. Every file is written atomically.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

__all__ = ["FORMAT", "markdown", "write_outputs"]

FORMAT = "nlss_fenicsx.beyond/1"


def _fmt(v, digits=2):
    return "-" if v is None else f"{v:.{digits}f}"


def markdown(summary: dict, results: dict) -> str:
    """Tables: per (pde, N) the decision line and every configuration, fastest first."""
    lines = ["# Beyond the paper: two-level configurations against the classical peers", "",
             "Median over the test instances (chosen on separate validation instances); "
             "total = KSP set-up (estimate, per-instance smoothing/inference, Galerkin product, "
             "factorisations) + CG solve to 1e-6; one KSP per configuration, A re-assembled "
             "in place per instance (many related solves on one mesh). Offline: work done "
             "once per family and size (basis files), not in the totals.", ""]
    for key in sorted(summary["runs"], key=lambda k: (summary["runs"][k]["pde"],
                                                     summary["runs"][k]["N"])):
        s = summary["runs"][key]
        lines += [f"## {s['pde']}, N = {s['N']} (n = {s['n']})", ""]
        if s["best"] and s["peer"]:
            verdict = "at or below" if s["ratio"] <= 1.0 else "above"
            lines.append(f"Best two-level: `{s['best']['config']}` {_fmt(s['best']['total_ms'])}"
                         f" ms ({_fmt(s['best']['iterations'], 0)} iterations); fastest peer: "
                         f"`{s['peer']['config']}` {_fmt(s['peer']['total_ms'])} ms; ratio "
                         f"{_fmt(s['ratio'])} ({verdict} 1.0).")
        if s["offline_s"]:
            lines.append("Offline (once per family and size): " + ", ".join(
                f"{k} {v:.1f} s" for k, v in s["offline_s"].items()) + ".")
        lines += ["", "| configuration | iterations | set-up ms | solve ms | total ms | "
                  "x fastest peer |", "|---|--:|--:|--:|--:|--:|"]
        rows = results.get(key, {}).get("rows", {})
        peer_ms = s["peer"]["total_ms"] if s["peer"] else None
        table = []
        for name, row in rows.items():
            recs = row["test"]
            ok = [r for r in recs if r.get("ok")]
            if len(ok) != len(recs) or not ok:
                err = next((r.get("error") for r in recs if not r.get("ok")), "not converged")
                table.append((float("inf"), f"| {name} | failed: {err} | | | | |"))
                continue
            med = {k: sorted(r[k] for r in ok)[len(ok) // 2] if len(ok) % 2 else
                   0.5 * (sorted(r[k] for r in ok)[len(ok) // 2 - 1]
                          + sorted(r[k] for r in ok)[len(ok) // 2])
                   for k in ("iterations", "setup_ms", "solve_ms", "total_ms")}
            ratio = med["total_ms"] / peer_ms if peer_ms else None
            table.append((med["total_ms"], f"| {name} | {_fmt(med['iterations'], 1)} | "
                          f"{_fmt(med['setup_ms'])} | {_fmt(med['solve_ms'])} | "
                          f"{_fmt(med['total_ms'])} | {_fmt(ratio)} |"))
        lines += [row for _, row in sorted(table)] + [""]
    return "\n".join(lines) + "\n"


def _figure(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nlss_fenicsx.bench.report import savefig_atomic

    runs = summary["runs"].values()
    pdes = sorted({s["pde"] for s in runs})
    fig, axes = plt.subplots(1, max(len(pdes), 1), figsize=(4.5 * max(len(pdes), 1), 3.6),
                             squeeze=False)
    for ax, pde in zip(axes[0], pdes, strict=False):
        mine = sorted((s for s in runs if s["pde"] == pde and s["best"]), key=lambda s: s["N"])
        Ns = [s["N"] for s in mine]
        ax.plot(Ns, [s["best"]["total_ms"] for s in mine], "o-", label="best two-level")
        ax.plot(Ns, [s["peer"]["total_ms"] if s["peer"] else None for s in mine], "s--",
                label="fastest peer")
        for s in mine:
            if s["ratio"]:
                ax.annotate(f"{s['ratio']:.2f}x", (s["N"], s["best"]["total_ms"]),
                            textcoords="offset points", xytext=(4, 6), fontsize=8)
        ax.set(title=pde, xlabel="N", ylabel="median total per instance (ms)", xscale="log",
               yscale="log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    savefig_atomic(fig, path)
    plt.close(fig)


def write_outputs(out, results: dict, settings: dict) -> dict:
    """Merge ``results`` into ``out``'s summary and write every file; return the summary.

    Parameters
    ----------
    out : path-like
        The folder.
    results : dict
        ``{f"{pde}_N{N}": {"summary": ..., "rows": ...}}`` from this run.
    settings : dict
        Recorded under ``settings`` (with the command line and the machine).

    Returns
    -------
    dict
        The merged summary.

    Raises
    ------
    OSError
        If a file cannot be written (a finished summary goes to the recovery folder, see
        :func:`nlss_fenicsx.bench.report.write_json`).
    """
    from nlss_fenicsx.bench.machine import machine_info
    from nlss_fenicsx.bench.report import write_atomic, write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "summary.json"
    runs = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
            if old.get("format") == FORMAT:
                runs = dict(old.get("runs", {}))
        except (OSError, ValueError):
            runs = {}
    all_results = {}
    for key, value in results.items():
        runs[key] = value["summary"]
        write_json(out / f"results_{key}.json", value)
    for key in runs:
        f = out / f"results_{key}.json"
        if key in results:
            all_results[key] = results[key]
        elif f.is_file():
            try:
                all_results[key] = json.loads(f.read_text())
            except (OSError, ValueError):
                pass
    summary = {"format": FORMAT, "command": " ".join(sys.argv), "machine": machine_info(),
               "settings": settings, "runs": runs}
    write_json(path, summary)
    write_atomic(out / "tables.md", markdown(summary, all_results))
    _figure(summary, out / "beyond.png")
    return summary
