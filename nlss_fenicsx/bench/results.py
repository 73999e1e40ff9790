"""The benchmark's result files: schema, validation, reading for ``--resume``, one writer.

``results.json`` of ``nlss-fenicsx bench`` (``kind`` ``"bench"``, ``schema_version`` 2)::

    {"schema_version": 2, "kind": "bench", "pde": str,
     "budget": {name, N, K, r_max, steps, hidden, instances, gnn_width, gnn_layers,
                gnn_steps, protocol, many_sweeps, ...},
     "ranks": [int], "seeds": {"test": [int], "train": int},
     "machine": {cpu, cores, memory_gib, os, python, versions: {package: version}},
     "models": {"nlss" | "subspace" | "gnn": {"path", "steps", "train_seconds", ...}},
     "methods": {KEY: {"method": label, "name": str, "class": "learned" | "twogrid" |
                       "oracle" | "peer", "rank": int | null, "path": str, "sweeps": int,
                       "records": [{"ok", "iterations", "rel_residual", "coarse_size",
                                    "phases": {smoothing, inference, setup, solve, total,
                                               once?} (seconds), "error"?}],
                       "summary": {"n_ok", "n_failed", "<phase>_ms", "<phase>_q1_ms",
                                   "<phase>_q3_ms", "<phase>_mean_ms", "<phase>_std_ms",
                                   "iterations", "iterations_q1", "iterations_q3",
                                   "coarse_size", "errors"?}}},
     "energy": {"ranks": [int], "svd": [float], "nlss" | "subspace" | "gnn": [float]},
     "started": ISO time, "wall_s": float, "complete": bool}

``KEY`` is ``"<name>@<r>"`` for the methods with a coarse rank (``nlss@48``,
``svd-s300@48`` for the SVD with 300 sweeps, ``svd-scipy@48``) and ``"<name>"``
otherwise (``sa``, ``icc``). ``scalability.json`` (``kind`` ``"scalability"``) is
described in :mod:`nlss_fenicsx.bench.scalability`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from nlss_fenicsx.bench.report import PHASES

__all__ = ["SCHEMA_VERSION", "check_same_run", "load_results", "require_one_rank",
           "validate_results"]

SCHEMA_VERSION = 2
_TOP = {
    "bench": {"schema_version": int, "kind": str, "pde": str, "budget": dict, "ranks": list,
              "seeds": dict, "machine": dict, "models": dict, "methods": dict,
              "started": str, "complete": bool},
    "scalability": {"schema_version": int, "kind": str, "pde": str, "budget": dict,
                    "machine": dict, "sizes": list, "started": str, "complete": bool},
}
_SUMMARY = ("n_ok", "n_failed",
            *(f"{p}_{s}" for p in PHASES for s in ("ms", "q1_ms", "q3_ms", "mean_ms",
                                                   "std_ms")),
            "iterations", "iterations_q1", "iterations_q3", "coarse_size")


def _check_records(where: str, m: dict, problems: list[str]) -> None:
    for field in ("method", "name", "records", "summary"):
        if field not in m:
            problems.append(f"{where}.{field} missing")
    if not isinstance(m.get("records", []), list):
        problems.append(f"{where}.records: expected a list")
        return
    for i, rec in enumerate(m.get("records", [])):
        if not isinstance(rec, dict) or "ok" not in rec:
            problems.append(f"{where}.records[{i}].ok missing")
        elif rec["ok"]:
            ph = rec.get("phases", {})
            if (not isinstance(ph, dict) or set(ph) < set(PHASES)
                    or not all(isinstance(v, int | float) and np.isfinite(v) and v >= 0
                               for v in ph.values())):
                problems.append(f"{where}.records[{i}].phases invalid: {ph}")
            if not isinstance(rec.get("iterations"), int):
                problems.append(f"{where}.records[{i}].iterations not an int")
        elif "error" not in rec:
            problems.append(f"{where}.records[{i}] failed without an error")
    s = m.get("summary", {})
    if isinstance(s, dict) and s.get("n_ok"):
        missing = [f for f in _SUMMARY if f not in s]
        if missing:
            problems.append(f"{where}.summary missing {missing}")


def validate_results(res, kind: str = "bench") -> list[str]:
    """Problems found in a results dict against the schema (empty when it is valid).

    Parameters
    ----------
    res : object
        What ``json.load`` gave.
    kind : str
        ``"bench"`` (results.json) or ``"scalability"`` (scalability.json).

    Returns
    -------
    list of str
        One readable line per problem, e.g. ``"ranks: expected list, got NoneType"``.

    Examples
    --------
    >>> validate_results([])
    ['expected a JSON object, got list']
    >>> validate_results({"schema_version": 1})[0]
    'schema_version: expected 2, got 1 (written by an older version)'
    """
    if not isinstance(res, dict):
        return [f"expected a JSON object, got {type(res).__name__}"]
    if kind not in _TOP:
        raise ValueError(f"Unrecognized results kind {kind!r}; expected one of {tuple(_TOP)}")
    problems = []
    if res.get("schema_version") != SCHEMA_VERSION:
        problems.append(f"schema_version: expected {SCHEMA_VERSION}, got "
                        f"{res.get('schema_version')!r}"
                        + (" (written by an older version)"
                           if isinstance(res.get("schema_version"), int) else ""))
    if "kind" in res and res["kind"] != kind:
        problems.append(f"kind: expected {kind!r}, got {res['kind']!r}")
    for key, typ in _TOP[kind].items():
        if key not in res:
            problems.append(f"{key} missing")
        elif not isinstance(res[key], typ):
            problems.append(f"{key}: expected {typ.__name__}, got {type(res[key]).__name__}")
    machine = res.get("machine")
    if isinstance(machine, dict):
        problems += [f"machine.{k} missing" for k in ("cpu", "cores", "python", "versions")
                     if k not in machine]
    if kind == "bench" and isinstance(res.get("methods"), dict):
        for key, m in res["methods"].items():
            if isinstance(m, dict):
                _check_records(f"methods.{key}", m, problems)
            else:
                problems.append(f"methods.{key}: expected an object")
    if kind == "scalability" and isinstance(res.get("sizes"), list):
        for i, size in enumerate(res["sizes"]):
            if not isinstance(size, dict) or not isinstance(size.get("methods"), dict):
                problems.append(f"sizes[{i}].methods missing")
                continue
            for name, m in size["methods"].items():
                if isinstance(m, dict) and "not_run" not in m:
                    _check_records(f"sizes[{i}].methods.{name}", m, problems)
    return problems


def load_results(path: str | os.PathLike, kind: str = "bench") -> dict:
    """Read a results file for ``--resume``, or raise ONE line naming the file.

    Parameters
    ----------
    path : path-like
        ``results.json`` (``kind="bench"``) or ``scalability.json``.
    kind : str
        ``"bench"`` or ``"scalability"``.

    Returns
    -------
    dict
        The results, valid against the schema.

    Raises
    ------
    ValueError
        The file cannot be read, is not JSON (truncated, damaged), is not an object, or
        does not follow the schema; the message is one line that names the file and what
        is wrong, and says how to start afresh.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> bad = pathlib.Path(tempfile.mkdtemp()) / "results.json"
    >>> _ = bad.write_text('{"schema_version": 2, "kin')
    >>> try:
    ...     load_results(bad)
    ... except ValueError as err:
    ...     print(str(err).split(": ", 1)[1].split(" (")[0])
    not valid JSON, truncated or damaged
    """
    path = Path(path)
    fresh = "; move it away or run without --resume to start afresh"
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or type(err).__name__
        raise ValueError(f"{path}: cannot read it ({reason}){fresh}") from None
    try:
        res = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON, truncated or damaged ({err.msg}, line "
                         f"{err.lineno}, column {err.colno}){fresh}") from None
    except (ValueError, RecursionError) as err:  # an integer of > 4300 digits, deep nesting
        first = (str(err).splitlines() or [type(err).__name__])[0][:120]
        raise ValueError(f"{path}: not valid JSON for a results file ({first}){fresh}") from None
    problems = validate_results(res, kind)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise ValueError(f"{path}: not a valid {kind} results file: {problems[0]}{more}"
                         f"{fresh}")
    return res


def _text(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 40 else text[:37] + "..."


def check_same_run(path: str | os.PathLike, stored: dict, fresh: dict,
                   keys: tuple[str, ...] = ("pde", "budget", "seeds")) -> None:
    """Refuse to resume ``stored`` unless the entries that define the run equal ``fresh``'s.

    Each key is compared as JSON (so ``8`` and ``8.0`` differ); for an object (the budget,
    the seeds) every field is compared, and each differing one is named.

    Parameters
    ----------
    path : path-like
        The results file, for the message.
    stored : dict
        What the file holds (:func:`load_results`).
    fresh : dict
        The results dict a fresh run with the requested settings would start from.
    keys : tuple of str
        The entries that define the run.

    Raises
    ------
    ValueError
        One line naming the file and every differing field with both values.

    Examples
    --------
    >>> check_same_run("r.json", {"budget": {"N": 16}}, {"budget": {"N": 8}}, ("budget",))
    Traceback (most recent call last):
    ...
    ValueError: r.json: holds another run than the one asked for: budget.N is 16 there, \
8 asked for; move it away or run without --resume to start afresh
    """
    want = json.loads(json.dumps({k: fresh[k] for k in keys}))
    diffs = []
    for key in keys:
        have, expect = stored.get(key), want[key]
        if not (isinstance(have, dict) and isinstance(expect, dict)):
            have, expect = {"": have}, {"": expect}
        for field in sorted(set(have) | set(expect)):
            mine, theirs = _text(have.get(field, "missing")), _text(expect.get(field, "missing"))
            if mine != theirs:
                name = f"{key}.{field}" if field else key
                diffs.append(f"{name} is {mine} there, {theirs} asked for")
    if diffs:
        more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
        raise ValueError(f"{path}: holds another run than the one asked for: "
                         f"{'; '.join(diffs[:3])}{more}; move it away or run without "
                         "--resume to start afresh")


def require_one_rank(what: str = "bench") -> None:
    """Refuse, on every rank and before any work, to run under ``mpiexec -n k``, k > 1.

    The benchmarks time serial solves and write one results file; several ranks would
    each run the whole benchmark and race on the file.

    Raises
    ------
    ValueError
        When ``MPI.COMM_WORLD`` has more than one rank (raised on every rank).
    """
    from nlss_fenicsx._fenicsx import MPI

    size = MPI.COMM_WORLD.size
    if size > 1:
        raise ValueError(f"{what} runs on one MPI rank (it times serial solves and writes one "
                         f"results file); got {size} ranks: run it without mpiexec")
