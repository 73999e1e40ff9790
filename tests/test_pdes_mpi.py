"""Mesh and assembly under mpiexec -n 2 and -n 3 agree with the serial run (matrix and
right-hand side norms, node count, node order a permutation)."""

import json
from pathlib import Path

import pytest

from tests.conftest import run_mpi

SCRIPT = Path(__file__).parent / "mpi" / "assemble_norm.py"


@pytest.mark.mpi
@pytest.mark.parametrize("nprocs", [2, 3])
def test_ranks_match_serial(nprocs):
    serial = json.loads(run_mpi(1, SCRIPT, "12", timeout=120).stdout.strip().splitlines()[-1])
    par = json.loads(run_mpi(nprocs, SCRIPT, "12", timeout=120).stdout.strip().splitlines()[-1])
    for fam, ref in serial.items():
        got = par[fam]
        assert got["nodes"] == ref["nodes"] == 13**2
        assert got["A_norm"] == pytest.approx(ref["A_norm"], rel=1e-12)
        assert got["b_norm"] == pytest.approx(ref["b_norm"], rel=1e-12)
        assert got["grid_order_ok"] and ref["grid_order_ok"]
