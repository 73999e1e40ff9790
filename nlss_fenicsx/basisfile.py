"""Basis files: a coarse basis built once per family or mesh, stored for ``fixed``.

A basis file is a NumPy ``.npz`` archive (no pickles) with two members: ``P``, the
``n x r_max`` basis in **node order** (row ``i`` belongs to input node ``i`` of the mesh;
on the jittered unit square that is grid order), and ``meta``, a JSON object of plain
values. ``meta`` always holds ``format`` (:data:`BASIS_FORMAT`), ``n``, ``r_max`` and
``order`` (``"node"``); the builder adds what it knows (``kind`` or ``built``: how it was
built, ``family``, ``mesh``: the mesh identity, ...). Columns are ordered so that any
``r <= r_max`` leading columns are the basis of rank ``r`` (sine and eig-ref are ordered by
eigenvalue, NLSS by its nested loss).
"""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from nlss_fenicsx._atomic import atomic_path
from nlss_fenicsx._checks import check_real_array

__all__ = ["BASIS_FORMAT", "load_basis", "save_basis"]

BASIS_FORMAT = "nlss_fenicsx.basis/1"
_ORDERS = ("node",)


def save_basis(path: str | os.PathLike, P, *, meta: dict | None = None) -> dict:
    """Write a basis file atomically; return the metadata written.

    Parameters
    ----------
    path : path-like
        Destination (conventionally ``*.npz``; written as given, nothing appended).
    P : array_like, shape (n, r_max)
        The basis in node order, finite and real.
    meta : dict, optional
        Plain JSON values (str, int, float, bool, None, lists, dicts), e.g. ``family``,
        ``mesh``, ``kind``. ``n``, ``r_max`` and ``format`` are filled in (a given value
        that contradicts ``P`` is refused); ``order`` defaults to ``"node"``.

    Returns
    -------
    dict
        The metadata as stored.

    Raises
    ------
    ValueError
        On a bad ``P``, metadata that is not plain JSON, contradicts ``P``, or names an
        order other than ``"node"``.
    OSError
        If the file cannot be written (nothing is left behind).

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "b.npz"
    >>> save_basis(path, np.eye(4)[:, :2], meta={"kind": "sine"})["r_max"]
    2
    >>> load_basis(path)[1]["kind"]
    'sine'
    """
    P = check_real_array("P", P, ndim=2)
    n, r_max = P.shape
    if n == 0 or r_max == 0:
        raise ValueError(f"expected a basis P of shape (n, r_max), n, r_max >= 1, got {P.shape}")
    meta = dict(meta or {})
    for key, value in (("n", n), ("r_max", r_max)):
        if key in meta and meta[key] != value:
            raise ValueError(f"basis metadata {key} = {meta[key]!r} contradicts P of shape "
                             f"{P.shape}")
        meta[key] = value
    meta.setdefault("order", "node")
    if meta["order"] not in _ORDERS:
        raise ValueError(f"expected basis order 'node' (rows = input nodes of the mesh), "
                         f"got order = {meta['order']!r}")
    meta["format"] = BASIS_FORMAT
    try:
        text = json.dumps(meta, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as err:
        raise ValueError(f"expected basis metadata of plain JSON values, got {err}") from err
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, P=P, meta=np.array(text))
    return json.loads(text)


def load_basis(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """Read a basis file written by :func:`save_basis`.

    Parameters
    ----------
    path : path-like

    Returns
    -------
    P : numpy.ndarray, shape (n, r_max), float64
        In node order.
    meta : dict
        With at least ``format``, ``n``, ``r_max`` and ``order``.

    Raises
    ------
    ValueError
        One line naming the file: missing, unreadable, not a basis file (wrong members,
        format or metadata), or ``P`` not finite or not of the shape its metadata says.

    Examples
    --------
    >>> load_basis("/nonexistent/basis.npz")
    Traceback (most recent call last):
    ...
    ValueError: basis file /nonexistent/basis.npz: not found
    """
    where = f"basis file {os.fspath(path)}"
    if not os.path.isfile(path):
        raise ValueError(f"{where}: not found" if not os.path.exists(path)
                         else f"{where}: not a file")
    try:
        with np.load(path, allow_pickle=False) as data:
            if set(data.files) != {"P", "meta"}:
                found = sorted(data.files)
                found = found if len(found) <= 4 else found[:4] + [f"{len(found) - 4} more"]
                raise ValueError(f"{where}: not a basis file (members {found}, expected "
                                 "['P', 'meta'])")
            P = np.array(data["P"])
            meta = json.loads(str(data["meta"]))
    except ValueError as err:
        if str(err).startswith(where):
            raise
        raise ValueError(f"{where}: not a basis file (expected an .npz written by "
                         "`nlss-fenicsx basis` or save_basis)") from err
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise ValueError(f"{where}: unreadable or truncated ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") != BASIS_FORMAT:
        raise ValueError(f"{where}: not a basis file (format {meta.get('format')!r} if "
                         f"present, expected {BASIS_FORMAT!r})" if isinstance(meta, dict)
                         else f"{where}: not a basis file (metadata is not an object)")
    if P.dtype.kind != "f" or P.ndim != 2 or [meta.get("n"), meta.get("r_max")] != list(P.shape):
        raise ValueError(f"{where}: P of shape {P.shape} ({P.dtype}) does not match its "
                         f"metadata n = {meta.get('n')!r}, r_max = {meta.get('r_max')!r}")
    if meta.get("order") not in _ORDERS:
        raise ValueError(f"{where}: order {meta.get('order')!r}, expected 'node'")
    if not np.all(np.isfinite(P)):
        raise ValueError(f"{where}: P has NaN or Inf entries")
    return P.astype(np.float64, copy=False), meta
