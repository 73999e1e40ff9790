"""nlss_fenicsx._atomic: atomic writes, stale temporaries swept, destinations checked first,
finished work kept when its final write fails (issue 15, items 2 and 4)."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from nlss_fenicsx import _atomic
from nlss_fenicsx._atomic import (
    DestinationError,
    RecoveredError,
    atomic_path,
    check_destination,
    save_or_recover,
    sweep_stale,
)
from tests.conftest import ROOT


def _temporaries(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_atomic_path_publishes_whole_file_with_plain_permissions(tmp_path):
    dest = tmp_path / "sub" / "out.bin"
    with atomic_path(dest, suffix=".msh") as tmp:
        assert tmp.parent == dest.parent and tmp.name.endswith(".nlss-tmp.msh")
        assert tmp.name.startswith(".out.bin.") and f"-{os.getpid()}." in tmp.name
        tmp.write_bytes(b"x" * 1000)
        assert not dest.exists()  # nothing published before the block ends
    assert dest.read_bytes() == b"x" * 1000
    umask = os.umask(0)
    os.umask(umask)
    assert dest.stat().st_mode & 0o777 == 0o666 & ~umask
    assert list(dest.parent.iterdir()) == [dest]


def test_atomic_path_error_leaves_destination_untouched_and_no_temporary(tmp_path):
    dest = tmp_path / "out.txt"
    dest.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_path(dest) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert dest.read_text() == "old"
    assert list(tmp_path.iterdir()) == [dest]


_WRITER = textwrap.dedent("""
    import sys, time
    from nlss_fenicsx._atomic import atomic_path
    with atomic_path(sys.argv[1]) as tmp:
        tmp.write_bytes(b"half a checkpoint")
        print(tmp, flush=True)
        time.sleep(600)
""")


def _start_writer(dest):
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(dest)], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    line = proc.stdout.readline().strip()
    assert line, "the writer did not start"
    return proc, line


def test_sigkilled_writer_leaves_a_recognisable_temporary_that_the_next_write_sweeps(tmp_path):
    dest = tmp_path / "model.pt"
    proc, tmp_name = _start_writer(dest)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    left = _temporaries(tmp_path)
    assert left == [os.path.basename(tmp_name)] and left[0].endswith(".nlss-tmp")
    assert f"-{proc.pid}." in left[0]
    # The next run that writes in this folder removes it (its writer is dead).
    with atomic_path(tmp_path / "other.json") as tmp:
        tmp.write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.json"]


def test_a_running_writers_temporary_is_not_swept(tmp_path):
    proc, tmp_name = _start_writer(tmp_path / "model.pt")
    try:
        assert sweep_stale(tmp_path) == []
        with atomic_path(tmp_path / "other.json") as tmp:
            tmp.write_text("{}")
        assert os.path.exists(tmp_name)
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
    assert [p.name for p in sweep_stale(tmp_path)] == [os.path.basename(tmp_name)]


def test_sweep_by_age_and_host(tmp_path):
    me = f".a.pt.{_atomic._HOST}-{os.getpid()}.0123abcd.nlss-tmp"
    other_host = ".b.pt.ffffffff-1.0123abcd.nlss-tmp.npz"
    old_other_host = ".c.pt.ffffffff-1.0123abcd.nlss-tmp"
    unrelated = [".d.pt.abc.tmp", "e.nlss-tmp", ".f.pt.xyz-12.0123abcd.nlss-tmp"]
    for name in (me, other_host, old_other_host, *unrelated):
        (tmp_path / name).write_text("x")
    os.utime(tmp_path / old_other_host, (time.time() - 2 * 86400,) * 2)
    (tmp_path / ".g.pt.ffffffff-1.0123abcd.nlss-tmp").mkdir()  # a folder: never removed
    removed = sweep_stale(tmp_path)
    assert [p.name for p in removed] == [old_other_host]
    assert sweep_stale(tmp_path, max_age=0.0) != []  # age alone: even a live writer's
    assert sweep_stale(tmp_path / "missing") == []


def test_check_destination_refuses_in_one_line_and_creates_nothing(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [(tmp_path, "file", "is a directory; expected a file name"),
             (afile / "m.msh", "file", f"{afile} is a file, not a folder"),
             (afile / "deeper" / "m.msh", "file", f"{afile} is a file, not a folder"),
             (afile, "dir", "is a file; expected a folder")]
    for path, kind, expected in cases:
        with pytest.raises(DestinationError, match="^--out ") as err:
            check_destination(path, what="--out", kind=kind)
        assert expected in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="Unrecognized kind"):
        check_destination(tmp_path, kind="folder")
    # Fine: a new file in new folders, an existing folder for kind="dir"; nothing created.
    assert check_destination(tmp_path / "x" / "y" / "m.msh") == tmp_path / "x" / "y" / "m.msh"
    assert check_destination(tmp_path, kind="dir") == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def _unshare():
    exe = shutil.which("unshare")
    if exe is None or subprocess.run([exe, "-rm", "true"], capture_output=True).returncode:
        pytest.skip("needs `unshare -rm` (user and mount namespaces) for a read-only mount")
    return exe


def test_check_destination_on_a_read_only_file_system(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    code = ("from nlss_fenicsx._atomic import check_destination as c\n"
            "try:\n    c(sys.argv[1])\nexcept ValueError as e:\n    print(e)\n")
    script = (f"mount -t tmpfs -o ro,size=1m tmpfs {ro} && "
              f"{sys.executable} -c 'import sys\n{code}' {ro}/sub/m.pt")
    proc = subprocess.run([_unshare(), "-rm", "sh", "-c", script], capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.stdout.strip() == f"--out {ro}/sub/m.pt: cannot write in {ro} " \
                                  "(Read-only file system)", proc.stderr


def test_save_or_recover_keeps_the_work_when_the_destination_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("NLSS_FENICSX_CACHE", str(tmp_path / "cache"))
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(RecoveredError) as err:
        save_or_recover(blocker / "model.pt", lambda tmp: tmp.write_bytes(b"weights"))
    saved = err.value.recovered
    assert saved.parent == tmp_path / "cache" / "recovered" and saved.name.endswith("-model.pt")
    assert saved.read_bytes() == b"weights"
    assert f"could not write {blocker / 'model.pt'}" in str(err.value)
    assert f"saved it to {saved} instead" in str(err.value)
    assert isinstance(err.value, OSError)
    # A write that fails for another reason is not "recovered": it propagates as is.
    with pytest.raises(ZeroDivisionError):
        save_or_recover(tmp_path / "x", lambda tmp: 1 / 0)
    assert not (tmp_path / "x").exists()


def test_a_device_fifo_or_long_name_is_refused_and_a_link_written_through(tmp_path):
    import os

    from nlss_fenicsx._atomic import DestinationError, atomic_path, check_destination

    # A write would replace a device or FIFO by a regular file (as root: /dev/null itself).
    for special in ("/dev/null", "/dev/full"):
        with pytest.raises(DestinationError, match=f"^--out {special} is a character device; "
                                                   "expected a regular file$"):
            check_destination(special)
        with pytest.raises(DestinationError, match="is a character device"):
            with atomic_path(special):
                pass
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(DestinationError, match="is a FIFO; expected a regular file"):
        check_destination(fifo)
    assert fifo.is_fifo()
    with pytest.raises(DestinationError, match=r"has 304 bytes; file systems take at most 255"):
        check_destination(tmp_path / ("a" * 300 + ".msh"))
    # A symbolic link is written through: the link stays, its target gets the content.
    target, link = tmp_path / "target.txt", tmp_path / "link.txt"
    link.symlink_to(target)
    assert check_destination(link) == target
    with atomic_path(link) as tmp:
        tmp.write_text("done")
    assert link.is_symlink() and target.read_text() == "done"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "link.txt", "target.txt"]
