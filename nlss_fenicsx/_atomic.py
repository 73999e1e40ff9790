"""Atomic file writes: nothing on disk is ever left half-written, and nothing left behind.

Every writer in the package (checkpoints, datasets, model cache, meshes, benchmark results)
goes through :func:`atomic_path`: it hands out a temporary file in the destination's
folder, and only when the caller's block finishes does it fsync the file and rename it over
the destination. On any error, interruption included, the temporary file is removed and the
destination is untouched.

A process killed outright (SIGKILL, power loss) cannot remove its temporary file, so the
names say whose they are, ``.<name>.<host>-<pid>.<random>.nlss-tmp<suffix>``, and the next
:func:`atomic_path` in the same folder removes the stale ones: those whose writer (on this
host) is no longer running, and any older than :data:`STALE_SECONDS`.

:func:`check_destination` tells, before any work, whether an output path can be written;
:func:`save_or_recover` keeps finished work when its final write fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
import stat
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = [
    "STALE_SECONDS",
    "DestinationError",
    "RecoveredError",
    "atomic_path",
    "cache_root",
    "check_destination",
    "recovery_dir",
    "save_or_recover",
    "sweep_stale",
]

STALE_SECONDS = 24 * 3600.0
"""A temporary file older than this (by modification time) is stale whatever its writer."""

_TAG = ".nlss-tmp"
_HOST = f"{zlib.crc32(socket.gethostname().encode()):08x}"
_NAME = re.compile(r"^\..*\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)\.[0-9a-f]+\.nlss-tmp(\..*)?$")


class DestinationError(ValueError):
    """An output path that cannot be written (one line naming the flag and the path)."""


class RecoveredError(OSError):
    """The final write failed; the work was saved to :attr:`recovered` instead."""

    def __init__(self, message: str, recovered: Path):
        super().__init__(message)
        self.recovered = recovered


def cache_root() -> Path:
    """``$NLSS_FENICSX_CACHE``, else ``~/.cache/nlss_fenicsx`` (it may not exist yet)."""
    root = os.environ.get("NLSS_FENICSX_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "nlss_fenicsx"


def recovery_dir() -> Path:
    """Folder that :func:`save_or_recover` falls back to: ``cache_root()/recovered``."""
    return cache_root() / "recovered"


def _temporary_name(path: Path, suffix: str) -> Path:
    # The destination's name is cut so that the whole name stays under 255 bytes.
    return path.parent / (f".{path.name[:150]}.{_HOST}-{os.getpid()}."
                          f"{secrets.token_hex(4)}{_TAG}{suffix}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # someone else's process (or a bogus pid)
        return True
    return True


def sweep_stale(folder: str | os.PathLike, *, max_age: float = STALE_SECONDS) -> list[Path]:
    """Remove the stale temporary files of :func:`atomic_path` in ``folder``.

    A temporary is stale when its writer's process (named in the file name, on this host)
    no longer runs, or when it is older than ``max_age`` seconds. Files of other hosts (a
    shared file system) are judged by age only. Best effort: a file that cannot be removed
    is left alone.

    Parameters
    ----------
    folder : path-like
        The folder to sweep (not recursive).
    max_age : float
        Age in seconds (by modification time) beyond which any temporary is stale.

    Returns
    -------
    list of Path
        The files removed.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> dead = d / ".m.pt.00000000-999999999.ab12cd34.nlss-tmp"
    >>> _ = dead.write_text("half a checkpoint")
    >>> os.utime(dead, (0, 0))  # written long ago
    >>> [p.name for p in sweep_stale(d)] == [dead.name]
    True
    """
    removed = []
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _NAME.match(entry.name)
        if m is None:
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            old = now - entry.stat(follow_symlinks=False).st_mtime > max_age
            dead = m["host"] == _HOST and not _pid_alive(int(m["pid"]))
            if old or dead:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:  # gone already (another sweeper), or not ours to remove
            continue
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; publish it as ``path`` on success.

    The folder's stale temporaries (:func:`sweep_stale`) are removed first.

    Parameters
    ----------
    path : path-like
        Destination; its folder is created if missing.
    suffix : str
        Suffix of the temporary name (writers such as Gmsh pick the format from it).

    A symbolic link is written through (its target is replaced, the link kept).

    Raises
    ------
    OSError
        When the folder cannot be created or written (nothing is left behind).
    DestinationError
        When ``path`` exists and is not a regular file (a device such as ``/dev/null``, a
        FIFO, a socket, a folder): a rename would replace it.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> dest = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
    >>> with atomic_path(dest) as tmp:
    ...     _ = tmp.write_text("done")
    >>> dest.read_text()
    'done'
    >>> sorted(p.name for p in dest.parent.iterdir())
    ['out.txt']
    """
    path = _regular_target(Path(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path.parent)
    tmp = _temporary_name(path, suffix)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # umask applies
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (POSIX)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_NAME_MAX = 255  # bytes in one path component (Linux file systems)


def _kind_of(path: Path) -> str | None:
    """``None`` for a regular file (or nothing there), else what ``path`` is."""
    try:
        mode = path.stat().st_mode  # follows symbolic links
    except OSError:
        return None
    for test, name in ((stat.S_ISREG, None), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _regular_target(path: Path, what: str = "destination") -> Path:
    """Return the file a write to ``path`` replaces (a link's target); refuse non-files."""
    kind = _kind_of(path)
    if kind is not None:
        raise DestinationError(f"{what} {path} is {kind}; expected a regular file")
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def check_destination(path: str | os.PathLike, *, what: str = "--out",
                      kind: str = "file") -> Path:
    """Check, before any work, that ``path`` can be written; raise one line if not.

    Refused: a folder where a file is wanted (or a file where a folder is), a device, FIFO
    or socket where a file is wanted (a write would replace it), a path below a file, a
    name too long for the file system, and a folder that cannot be written (read-only
    file system, no permission), found by creating and removing one temporary file in the
    nearest existing folder. Nothing else is created. A symbolic link to a file is written
    through: the returned path is its target.

    Parameters
    ----------
    path : path-like
        The output file (``kind="file"``) or folder (``kind="dir"``).
    what : str
        How the user gave it, for the message (e.g. ``"--out"``).
    kind : {"file", "dir"}
        What ``path`` is meant to be.

    Returns
    -------
    Path
        ``path`` as a Path (``~`` expanded).

    Raises
    ------
    DestinationError
        A ValueError whose message names ``what``, the path and what is wrong.

    Examples
    --------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> check_destination(d, what="--out")
    Traceback (most recent call last):
    ...
    nlss_fenicsx._atomic.DestinationError: --out ... is a directory; expected a file name
    """
    if kind not in ("file", "dir"):
        raise ValueError(f"Unrecognized kind {kind!r}; expected 'file' or 'dir'")
    p = Path(path).expanduser()
    long = next((part for part in p.parts if len(os.fsencode(part)) > _NAME_MAX), None)
    if long is not None:  # before any stat, which would fail on it
        raise DestinationError(f"{what}: the name {long[:40]}... has "
                               f"{len(os.fsencode(long))} bytes; file systems take at most "
                               f"{_NAME_MAX}")
    if kind == "file" and p.is_dir():
        raise DestinationError(f"{what} {p} is a directory; expected a file name")
    if kind == "file":
        p = _regular_target(p, what)  # never replace /dev/null, a FIFO, ... by a file
    if kind == "dir" and p.exists() and not p.is_dir():
        raise DestinationError(f"{what} {p} is a file; expected a folder")
    folder = p if kind == "dir" else p.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise DestinationError(f"{what} {p}: {folder} is a file, not a folder")
    probe = _temporary_name(folder / "probe", "")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as err:
        raise DestinationError(f"{what} {p}: cannot write in {folder} "
                               f"({err.strerror or err})") from None
    return p


def save_or_recover(path: str | os.PathLike, write: Callable[[Path], None], *,
                    suffix: str = "") -> Path:
    """Write finished work to ``path`` atomically; if that fails, keep it elsewhere.

    ``write(tmp)`` is called inside :func:`atomic_path` for ``path``. When that fails with
    an OSError (disk full, read-only, folder removed), it is called again for
    ``recovery_dir()/<time>-<name>`` (else the system's temporary folder), and
    :class:`RecoveredError` says where the work went.

    Parameters
    ----------
    path : path-like
        Destination.
    write : callable
        ``write(tmp_path)`` writes the whole file at ``tmp_path``.
    suffix : str
        Suffix of the temporary names (see :func:`atomic_path`).

    Returns
    -------
    Path
        ``path``, when the write succeeded there.

    Raises
    ------
    RecoveredError
        The write to ``path`` failed and the work was saved to ``err.recovered``.
    OSError
        Both writes failed (the first error).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> dest = pathlib.Path(tempfile.mkdtemp()) / "r.json"
    >>> save_or_recover(dest, lambda tmp: tmp.write_text("{}")) == dest
    True
    """
    path = Path(path)
    try:
        with atomic_path(path, suffix=suffix) as tmp:
            write(tmp)
        return path
    except OSError as err:
        first = err
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{path.name}"
    for folder in (recovery_dir(), Path(tempfile.gettempdir()) / "nlss_fenicsx-recovered"):
        try:
            with atomic_path(folder / name, suffix=suffix) as tmp:
                write(tmp)
        except OSError:
            continue
        raise RecoveredError(f"could not write {path} ({first.strerror or first}); saved it "
                             f"to {folder / name} instead", folder / name) from first
    raise first
