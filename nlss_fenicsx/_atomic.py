"""Atomic file writes: nothing on disk is ever left half-written.

Every writer in the package (checkpoints, datasets, meshes, benchmark results) goes through
:func:`atomic_path`: it hands out a temporary file in the destination's folder, and only
when the caller's block finishes does it fsync the file, give it the permissions a plain
``open`` would (``mkstemp`` makes 0600) and rename it over the destination. On any error,
interruption included, the temporary file is removed and the destination is untouched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; publish it as ``path`` on success.

    Parameters
    ----------
    path : path-like
        Destination; its folder is created if missing.
    suffix : str
        Suffix of the temporary name (writers such as Gmsh pick the format from it).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> dest = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
    >>> with atomic_path(dest) as tmp:
    ...     _ = tmp.write_text("done")
    >>> dest.read_text()
    'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
