"""TwoGridPC under mpiexec -n 1, 2, 3: S, P and iterations do not depend on the number of
ranks (node order), a learned model trained serially on a Gmsh disk gives the same
iterations on any number of ranks, the training sampler is partition independent, and a
fault injected on one rank is the same one-line error on every rank within a timeout."""

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_mpi

HERE = Path(__file__).parent / "mpi"
pytestmark = pytest.mark.mpi


def _last_json(proc):
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_svd_s_p_and_iterations_do_not_depend_on_the_ranks():
    res = {n: _last_json(run_mpi(n, HERE / "pc_ranks.py", "svd", "16", "12", "24",
                                 timeout=180)) for n in (1, 2, 3)}
    ref = res[1]
    S1, P1 = np.array(ref["S"]), np.array(ref["P"])
    for n in (2, 3):
        out = res[n]
        assert out["size"] == n
        assert out["iterations"] == ref["iterations"], (n, out["iterations"], ref["iterations"])
        assert out["omega"] == ref["omega"] == 0.66
        assert out["lam_max"] == pytest.approx(ref["lam_max"], rel=1e-12)
        # Serial S is smoothed in float32 (SciPy), parallel in float64 (PETSc).
        np.testing.assert_allclose(np.array(out["S"]), S1, rtol=0, atol=2e-5)
        np.testing.assert_allclose(np.array(out["P"]), P1, rtol=0, atol=1e-4)


def test_training_sampler_is_the_same_on_any_number_of_ranks():
    res = {n: _last_json(run_mpi(n, HERE / "pc_ranks.py", "sampler", "9", "5", timeout=120))
           for n in (1, 2, 3)}
    for n in (2, 3):
        np.testing.assert_allclose(np.array(res[n]["S"]), np.array(res[1]["S"]), rtol=0,
                                   atol=2e-6)
        assert res[n]["mesh_id"] == res[1]["mesh_id"]


@pytest.fixture(scope="module")
def disk_model(tmp_path_factory):
    """An MLP trained serially on the Gmsh disk through pdes.smoothed_sampler."""
    import torch

    from nlss_fenicsx import pdes
    from nlss_fenicsx._fenicsx import MPI
    from nlss_fenicsx.nn.train import TrainConfig, train
    from tests import client_programs as cp

    V = cp.poisson_disk(MPI.COMM_SELF, h=0.15).V
    sampler = pdes.smoothed_sampler(lambda t: cp.disk_instances(V, t), K=12)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        path = tmp_path_factory.mktemp("disk") / "disk.pt"
        train(TrainConfig(K=12, r_max=8, hidden=(64, 64), steps=60, n_eval=2, eval_every=60,
                          ckpt_every=60), path, sampler=sampler, progress=False,
              log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    return path


@pytest.mark.slow
def test_learned_model_same_iterations_on_1_2_3_ranks(disk_model):
    res = {n: _last_json(run_mpi(n, HERE / "pc_ranks.py", "nlss", str(disk_model), "0.15",
                                 timeout=180)) for n in (1, 2, 3)}
    its = {n: out["iterations"] for n, out in res.items()}
    assert len(set(its.values())) == 1, its
    assert all((out["K"], out["r"], out["coarse_size"]) == (12, 8, 8) for out in res.values())


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory):
    """A tiny checkpoint whose first weight tensor is made NaN after writing."""
    import torch

    from nlss_fenicsx.nn.train import TrainConfig, train

    path = tmp_path_factory.mktemp("nan") / "nan.pt"
    train(TrainConfig(N=8, K=8, r_max=4, hidden=(8,), steps=2, n_eval=2), path,
          progress=False, log=lambda *_: None)
    payload = torch.load(path, weights_only=True)
    first = next(k for k, v in payload["state_dict"].items() if v.is_floating_point())
    payload["state_dict"][first].fill_(float("nan"))
    torch.save(payload, path)
    return path


@pytest.mark.parametrize("nprocs", [2, 3])
def test_a_fault_on_one_rank_is_the_same_error_on_every_rank(nprocs, nan_model):
    out = _last_json(run_mpi(nprocs, HERE / "pc_faults.py", str(nan_model), timeout=120))
    expected = {
        "option_one_rank": "ValueError: nlss_rank: expected an integer in [1, 2147483647], "
                           "got 'abc'",
        "order_one_rank": "ValueError: attached node order must be a permutation of range(81)",
        "basis_extra_row": "ValueError: coarse basis must have this rank's",
        "nan_in_A": "ValueError: the product with A returned NaN or Inf",
        "missing_model": "CheckpointError: checkpoint not found: /nonexistent/model.pt",
        "nan_model": "CheckpointError: checkpoint ",
        "sa_parallel": "ValueError: coarse kind sa (PyAMG smoothed aggregation) is serial-only",
        "jitter": "ValueError: jitter must satisfy 0 <= jitter < 0.5 (fraction of h), got 0.7",
        "options_differ": "ValueError: nlss options differ between MPI ranks: nlss_rank is 4 "
                          "on rank 0 and 5 on rank 1",
        "coarse_differs": "ValueError: nlss options differ between MPI ranks: nlss_coarse is "
                          "svd on rank 0 and eig on rank 1",
    }
    assert out.pop("unused_differs_ok") == [None] * nprocs  # options sine does not use
    assert set(out) == set(expected)
    for case, start in expected.items():
        lines = out[case]
        assert len(lines) == nprocs and len(set(lines)) == 1, (case, lines)
        assert lines[0].startswith(start) and "\n" not in lines[0], (case, lines[0])
    assert "non-finite weights" in out["nan_model"][0]
