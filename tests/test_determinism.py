"""The same seed gives bit-identical meshes, S, P and model output on the CPU, in this
process and in a fresh one; training twice with the same seed gives identical weights.

Within one process, meshes (test_meshes.py::test_same_seed_same_mesh_and_different_seed_
differs), ``smoothed_vectors`` (test_twogrid_core.py::test_smoothed_vectors_deterministic)
and ``svd_basis`` (test_twogrid_core.py::test_svd_basis_sign_convention_and_determinism)
are already checked; here every stage is checked again across processes, plus
``smoothed_vectors_petsc``, the model's ``basis`` and training.
"""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from nlss_fenicsx.nn.train import TrainConfig, train
from tests.conftest import ROOT

TINY = dict(N=8, K=8, r_max=8, hidden=(32, 32), steps=20, n_eval=2, eval_every=10,
            ckpt_every=10)


def _one_thread(fn, *args, **kwargs):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args, **kwargs)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The same tiny model trained twice with seed 0, and once with seed 1."""
    root = tmp_path_factory.mktemp("det")
    quiet = dict(progress=False, log=lambda *_: None)
    a = _one_thread(train, TrainConfig(**TINY), root / "a.pt", **quiet)
    b = _one_thread(train, TrainConfig(**TINY), root / "b.pt", **quiet)
    c = _one_thread(train, TrainConfig(**TINY, seed=1), root / "c.pt", **quiet)
    return root, a, b, c


def _sha(a) -> str:
    a = np.ascontiguousarray(a)
    return hashlib.sha256(a.dtype.str.encode() + str(a.shape).encode() + a.tobytes()).hexdigest()


def digests(model_path: str) -> dict:
    """SHA-256 of every stage's output for fixed seeds (run here and in a fresh process)."""
    from nlss_fenicsx import meshes, pdes
    from nlss_fenicsx import petsc as npc
    from nlss_fenicsx._fenicsx import MPI
    from nlss_fenicsx.coarse import svd_basis
    from nlss_fenicsx.nn import NLSSModel
    from nlss_fenicsx.smoothing import smoothed_vectors

    mesh = meshes.jittered_square(8, seed=5, comm=MPI.COMM_SELF)
    system = pdes.assemble(pdes.sample("anisotropic", mesh, rng=5))
    S = smoothed_vectors(system.A_csr, 8, rng=5)
    S_petsc = npc.smoothed_vectors_petsc(system.A, 8, seed=5)
    model = NLSSModel.load(model_path)
    P_model = _one_thread(model.basis, S, 6, grid_order=system.grid_order)
    return {
        "mesh_x": _sha(mesh.geometry.x),
        "mesh_cells": _sha(mesh.topology.connectivity(2, 0).array),
        "A": _sha(system.A_csr.toarray()),
        "b": _sha(system.b),
        "S": _sha(S),
        "S_petsc": _sha(S_petsc),
        "P_svd": _sha(svd_basis(S, 6)),
        "P_model": _sha(P_model),
    }


def test_training_twice_with_the_same_seed_gives_identical_weights(models):
    _, a, b, c = models
    sa, sb, sc = a.net.state_dict(), b.net.state_dict(), c.net.state_dict()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)  # the seed matters
    S = np.random.default_rng(0).standard_normal((81, 8))
    np.testing.assert_array_equal(_one_thread(a.basis, S, 8), _one_thread(b.basis, S, 8))


def test_same_seed_bit_identical_here_and_in_a_fresh_process(models):
    root = models[0]
    here = digests(str(root / "a.pt"))
    assert digests(str(root / "a.pt")) == here  # twice in one process
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PYTHONPATH=str(ROOT))
    code = ("import json, sys; from tests.test_determinism import digests; "
            "print(json.dumps(digests(sys.argv[1])))")
    proc = subprocess.run([sys.executable, "-c", code, str(root / "a.pt")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    there = json.loads(proc.stdout.strip().splitlines()[-1])
    assert there == here
    # Every stage has its own digest (none is trivially equal to another).
    assert len(set(here.values())) == len(here)
