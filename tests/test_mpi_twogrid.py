"""TwoGridPC (svd) under mpiexec -n 2 matches the serial solve."""

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_mpi

SCRIPT = Path(__file__).parent / "mpi" / "twogrid_solve.py"


def _run(n, *args):
    return json.loads(run_mpi(n, SCRIPT, *map(str, args)).stdout.strip().splitlines()[-1])


@pytest.mark.mpi
@pytest.mark.parametrize("family", ["diffusion", "screened_poisson"])
def test_svd_two_ranks_match_serial(family):
    # Iterations at the paper's tolerance; the solutions compared at a tight tolerance so
    # that the comparison measures the preconditioned solve, not the stopping point.
    s_its = _run(1, family, 32, "svd", 24, 48, 1e-6)
    p_its = _run(2, family, 32, "svd", 24, 48, 1e-6)
    assert p_its["size"] == 2
    assert abs(s_its["iterations"] - p_its["iterations"]) <= 2
    s = np.array(_run(1, family, 32, "svd", 24, 48, 1e-10)["u_grid"])
    p = np.array(_run(2, family, 32, "svd", 24, 48, 1e-10)["u_grid"])
    assert np.linalg.norm(p - s) / np.linalg.norm(s) < 1e-6


@pytest.mark.mpi
def test_sa_is_serial_only_with_a_clear_error():
    out = _run(2, "diffusion", 8, "sa", 4, 8, 1e-6)
    assert "serial-only" in out["error"]
