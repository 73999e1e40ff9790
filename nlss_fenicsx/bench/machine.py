"""What machine and software produced a result (recorded in every benchmark output)."""

from __future__ import annotations

import os
import platform
from importlib import metadata

__all__ = ["machine_info", "machine_line"]

_PACKAGES = ("nlss_fenicsx", "numpy", "scipy", "pyamg", "torch", "fenics-dolfinx",
             "dolfinx-solver-real", "petsc4py", "gmsh")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def machine_info() -> dict:
    """CPU, cores, memory, OS, Python and package versions, as a JSON-ready dict."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    mem = _memory_gib()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(mem, 1) if mem else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }


def machine_line(info: dict | None = None) -> str:
    """One human line: ``CPU, N cores, M GiB, Python X``."""
    info = info or machine_info()
    return (f"{info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB, "
            f"Python {info['python']}")
