"""Shared fixtures and helpers for the test suite."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def mpiexec() -> str:
    """The mpiexec that belongs to this interpreter's environment (the wheel's MPICH)."""
    here = Path(sys.executable).parent / "mpiexec"
    found = str(here) if here.exists() else shutil.which("mpiexec")
    if found is None:
        pytest.fail("mpiexec not found beside the interpreter or on PATH")
    return found


def run_mpi(nprocs: int, script: Path, *args: str, timeout: float = 120.0):
    """Run ``script`` under ``mpiexec -n nprocs`` and return the completed process."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [mpiexec(), "-n", str(nprocs), sys.executable, str(script), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc
