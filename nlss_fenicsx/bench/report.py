"""Shared pieces of the benchmarks: safe timed runs, summaries, atomic output."""

from __future__ import annotations

import contextlib
import gc
import json
import os
from pathlib import Path

import numpy as np

from nlss_fenicsx._atomic import atomic_path, save_or_recover

__all__ = ["PHASES", "error_line", "frozen_heap", "json_default", "plain_fields", "run_one",
           "savefig_atomic", "stats_ms", "summarize", "write_atomic", "write_json"]

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


@contextlib.contextmanager
def frozen_heap():
    """Collect once, then freeze what exists, so the collections between methods are cheap.

    A full collection of a process that holds torch, dolfinx and the models takes about
    half a second; after :func:`gc.freeze` a collection looks only at newer objects. The
    heap is unfrozen on exit.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def run_one(system, spec, **given) -> dict:
    """Run one timed solve and return it as a JSON-ready dict.

    Calls :func:`~nlss_fenicsx.bench.methods.run_method`; a failure is caught and recorded
    as ``{"ok": False, "error": one line, "error_detail": message}``, so a benchmark goes on.
    Python's cyclic garbage collector is paused during the solve, so no collection lands
    inside a timed phase; the caller collects between methods (cheaply inside
    :func:`frozen_heap`).
    """
    from nlss_fenicsx.bench.methods import run_method

    enabled = gc.isenabled()
    gc.disable()
    try:
        rec = run_method(system, spec, **given)
    except Exception as err:  # recorded, not fatal: the benchmark goes on
        return {"ok": False, "error": error_line(err), "error_detail": str(err)}
    finally:
        if enabled:
            gc.enable()
    d = rec.as_dict()
    d["ok"] = bool(rec.converged)
    d["iterations"] = int(d["iterations"])
    d["rel_residual"] = float(d["rel_residual"])
    d["phases"] = {k: float(v) for k, v in d["phases"].items()}
    if d.get("coarse_size") is not None:
        d["coarse_size"] = int(d["coarse_size"])
    return d


def stats_ms(values_s) -> dict:
    """Median, Q1, Q3, mean and sample standard deviation of seconds, in ms.

    Examples
    --------
    >>> s = stats_ms([0.001, 0.002, 0.003])
    >>> s["ms"], s["mean_ms"], round(s["std_ms"], 3)
    (2.0, 2.0, 1.0)
    """
    vals = 1e3 * np.asarray(values_s, dtype=float)
    q1, med, q3 = np.percentile(vals, [25, 50, 75])
    std = float(np.std(vals, ddof=1)) if vals.size > 1 else 0.0
    return {"ms": float(med), "q1_ms": float(q1), "q3_ms": float(q3),
            "mean_ms": float(np.mean(vals)), "std_ms": std}


def summarize(records: list[dict], phases=PHASES) -> dict:
    """Statistics over the successful records of one method.

    For every phase ``p`` in ``phases``: ``p_ms`` (median), ``p_q1_ms``, ``p_q3_ms``,
    ``p_mean_ms`` and ``p_std_ms`` (sample standard deviation, as the paper's StDev);
    ``iterations`` (median), ``iterations_q1``/``_q3``, ``coarse_size`` (median),
    ``n_ok``, ``n_failed`` and the distinct ``errors`` of the failures. A ``once`` phase
    (work cached per mesh) is summarised when present.
    """
    ok = [r for r in records if r.get("ok")]
    out = {"n_ok": len(ok), "n_failed": len(records) - len(ok)}
    if not ok:
        out["errors"] = sorted({r["error"] for r in records if "error" in r})
        return out
    extra = ("once",) if all("once" in r["phases"] for r in ok) else ()
    for ph in (*phases, *extra):
        for key, value in stats_ms([r["phases"][ph] for r in ok]).items():
            out[f"{ph}_{key}"] = value
    its = [r["iterations"] for r in ok]
    out["iterations"] = float(np.median(its))
    out["iterations_q1"], out["iterations_q3"] = (float(q) for q in np.percentile(its, [25, 75]))
    sizes = [r["coarse_size"] for r in ok if r.get("coarse_size") is not None]
    out["coarse_size"] = float(np.median(sizes)) if sizes else None
    if out["n_failed"]:
        out["errors"] = sorted({r["error"] for r in records if "error" in r})
    return out


_DROP = object()


def plain_fields(obj):
    """Keep the JSON-plain part of a nested dict: arrays, tensors, other objects left out.

    For a checkpoint's int8 calibration: its decision and angles, without the stored bases.
    A list holding anything not plain is left out whole.

    Examples
    --------
    >>> plain_fields({"lean": True, "max_angle_deg": 1.2, "basis": object(), "r": [1, 2]})
    {'lean': True, 'max_angle_deg': 1.2, 'r': [1, 2]}
    """
    def keep(v):
        if isinstance(v, dict):
            return {k: x for k, x in ((k, keep(x)) for k, x in v.items()) if x is not _DROP}
        if isinstance(v, list | tuple):
            items = [keep(x) for x in v]
            return _DROP if any(x is _DROP for x in items) else items
        return v if v is None or isinstance(v, bool | int | float | str) else _DROP

    out = keep(obj)
    return None if out is _DROP else out


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
    """Write indented JSON atomically; finished results are never lost to a failed write.

    If the write to ``path`` fails (disk full, read-only, folder removed), the file goes
    to the recovery folder instead and :class:`nlss_fenicsx._atomic.RecoveredError` (an
    OSError) says where, in one line.
    """
    text = json.dumps(obj, indent=1, default=json_default) + "\n"
    return save_or_recover(path, lambda tmp: Path(tmp).write_text(text))


def savefig_atomic(fig, path: str | os.PathLike) -> Path:
    """Save a Matplotlib figure atomically (PNG by the file's suffix)."""
    import io

    buf = io.BytesIO()
    path = Path(path)
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png")
    return write_atomic(path, buf.getvalue())
