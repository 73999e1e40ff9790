"""Shared pieces of the benchmarks: safe timed runs, summaries, atomic output."""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

import numpy as np

from nlss_fenicsx._atomic import atomic_path

__all__ = ["PHASES", "error_line", "json_default", "run_one", "summarize", "write_atomic",
           "write_json"]

PHASES = ("smoothing", "inference", "setup", "solve", "total")


def error_line(err: BaseException, _seen: set | None = None) -> str:
    """One line naming the error; a PETSc error raised from a Python PC names its cause."""
    seen = set() if _seen is None else _seen
    seen.add(id(err))
    text = str(err).strip()
    msg = f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"
    cause = err.__cause__ or err.__context__
    if cause is not None and id(cause) not in seen:  # re-raised causes can form a cycle
        msg += f" <- {error_line(cause, seen)}"
    return msg


def run_one(system, spec, **given) -> dict:
    """One timed solve (:func:`~nlss_fenicsx.bench.methods.run_method`) as a JSON-ready
    dict; a failure is caught and recorded as ``{"ok": False, "error": ...}``."""
    from nlss_fenicsx.bench.methods import run_method

    gc.collect()
    try:
        rec = run_method(system, spec, **given)
    except Exception as err:  # recorded, not fatal: the benchmark goes on
        return {"ok": False, "error": error_line(err), "error_detail": str(err)}
    d = rec.as_dict()
    d["ok"] = bool(rec.converged)
    d["iterations"] = int(d["iterations"])
    d["rel_residual"] = float(d["rel_residual"])
    d["phases"] = {k: float(v) for k, v in d["phases"].items()}
    if d.get("coarse_size") is not None:
        d["coarse_size"] = int(d["coarse_size"])
    return d


def summarize(records: list[dict]) -> dict:
    """Median (ms) of each phase, Q1/Q3 of each phase, median iterations, over successes."""
    ok = [r for r in records if r.get("ok")]
    out = {"n_ok": len(ok), "n_failed": len(records) - len(ok)}
    if not ok:
        out["errors"] = sorted({r["error"] for r in records if "error" in r})
        return out
    for ph in PHASES:
        vals = [1e3 * r["phases"][ph] for r in ok]
        q1, med, q3 = np.percentile(vals, [25, 50, 75])
        out[f"{ph}_ms"], out[f"{ph}_q1_ms"], out[f"{ph}_q3_ms"] = float(med), float(q1), float(q3)
    its = [r["iterations"] for r in ok]
    out["iterations"] = float(np.median(its))
    out["iterations_q1"], out["iterations_q3"] = (float(q) for q in np.percentile(its, [25, 75]))
    sizes = [r["coarse_size"] for r in ok if r.get("coarse_size") is not None]
    out["coarse_size"] = float(np.median(sizes)) if sizes else None
    if out["n_failed"]:
        out["errors"] = sorted({r["error"] for r in records if "error" in r})
    return out


def json_default(obj):
    """``json.dumps`` fallback for NumPy scalars and arrays."""
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write to a temporary file next to ``path``, fsync, then ``os.replace`` it."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb" if isinstance(data, bytes) else "w") as fh:
        fh.write(data)
    return path


def write_json(path: str | os.PathLike, obj) -> Path:
    """Atomic, indented JSON."""
    return write_atomic(path, json.dumps(obj, indent=1, default=json_default) + "\n")


def savefig_atomic(fig, path: str | os.PathLike) -> Path:
    """Save a Matplotlib figure atomically (PNG by the file's suffix)."""
    import io

    buf = io.BytesIO()
    path = Path(path)
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png")
    return write_atomic(path, buf.getvalue())
