"""nn/data.py: the training instances (NumPy only) are the dolfinx route's instances, in
grid order; the sampler is seeded; the dataset protocol is cached and rebuilt when stale;
a user's sampler is checked."""

import sys

import numpy as np
import pytest

from nlss_fenicsx import grid
from nlss_fenicsx.nn.data import (
    DataConfig,
    FreshSampler,
    Instances,
    instance,
    instance_seeds,
    load_dataset,
)
from nlss_fenicsx.smoothing import gaussian_start, smoothed_vectors


def test_instances_need_no_dolfinx_gmsh_or_petsc():
    import subprocess

    code = ("import sys, nlss_fenicsx.nn.data as d; d.instance(d.DataConfig(N=4, K=2), 0); "
            "print(sorted(m for m in ('dolfinx', 'gmsh', 'petsc4py', 'ufl', 'mpi4py') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("family", grid.FAMILIES)
def test_instance_equals_the_dolfinx_route_in_grid_order(family):
    """The NumPy instance is the mesh of meshes.jittered_square, the coefficients of
    pdes.sample and the matrix of pdes.assemble (permuted to grid order), with S from the
    same start block."""
    import scipy.sparse as sp

    from nlss_fenicsx import meshes, pdes
    from nlss_fenicsx._fenicsx import MPI

    cfg = DataConfig(pde=family, N=9, K=6)
    problem, S = instance(cfg, 1234)
    mesh_seed, coef_seed, s_seed = instance_seeds(1234)
    mesh = meshes.jittered_square(cfg.N, jitter=cfg.jitter, seed=mesh_seed, comm=MPI.COMM_SELF)
    system = pdes.assemble(pdes.sample(family, mesh, rng=coef_seed, preset=cfg.preset))
    order = system.grid_order  # grid node g is dof order[g]
    A_grid = system.A_csr[order][:, order]
    assert sp.linalg.norm(A_grid - problem.A) / sp.linalg.norm(problem.A) < 1e-12
    S0 = gaussian_start(s_seed, cfg.n, cfg.K).astype(np.float64)  # drawn in grid order
    S0_dof = np.empty_like(S0)
    S0_dof[order] = S0
    S_dof = smoothed_vectors(system.A_csr, cfg.K, sweeps=cfg.sweeps, omega=cfg.omega,
                             S0=S0_dof)
    np.testing.assert_allclose(S, S_dof[order], rtol=0, atol=1e-6)  # float32 output


def test_sampler_gives_grid_order_float32_and_is_seeded():
    s = FreshSampler(DataConfig(N=6, K=5), seed=3)
    a, b, c = s(0), s(0), s(1)
    assert a.shape == (49, 5) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_allclose(np.linalg.norm(a, axis=0), 1.0, rtol=1e-5)
    held = s.test_set(2)
    assert held.shape == (2, 49, 5) and not any(np.array_equal(h, s(t)) for h in held
                                                for t in range(3))


def test_dataset_cached_and_regenerated_when_parameters_change(tmp_path):
    cfg = DataConfig(N=4, K=3)
    tr, te = load_dataset(cfg, n_train=5, n_test=2, directory=tmp_path, progress=False)
    assert tr.shape == (5, 25, 3) and te.shape == (2, 25, 3)
    np.testing.assert_array_equal(te, FreshSampler(cfg).test_set(2))  # the same test seeds
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    tr2, _ = load_dataset(cfg, n_train=5, n_test=2, directory=tmp_path, progress=False)
    np.testing.assert_array_equal(tr, tr2)
    assert files[0].stat().st_mtime_ns == mtime  # served from the cache
    load_dataset(DataConfig(N=4, K=3, sweeps=4), n_train=5, n_test=2, directory=tmp_path,
                 progress=False)
    assert len(list(tmp_path.glob("*.npz"))) == 2  # other parameters, other file
    files[0].write_bytes(b"corrupt")
    tr3, _ = load_dataset(cfg, n_train=5, n_test=2, directory=tmp_path, progress=False)
    np.testing.assert_array_equal(tr, tr3)  # a corrupt entry is rebuilt


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"jitter": 0.5}, r"0 <= jitter < 0.5 \(fraction of h\), got 0.5"),
     ({"jitter": -0.1}, r"0 <= jitter < 0.5 \(fraction of h\), got -0.1"),
     ({"pde": "heat"}, "Unrecognized PDE family 'heat'"),
     ({"preset": "mine"}, "Unrecognized preset 'mine'"),
     ({"N": 1}, "N must be >= 2, got 1"),
     ({"K": 82}, r"K must satisfy 1 <= K <= n = \(N\+1\)\^2 = 81, got 82")],
)
def test_data_config_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DataConfig(**{"N": 8, "K": 8, **kwargs})


class _Cfg:
    """The fields of TrainConfig that Instances reads."""

    K, seed, steps, batch, arch, protocol, n_train, n_test = 3, 0, 4, 2, "mlp", "code", 0, 0
    pde = "membrane"  # with a sampler, only a label


def test_a_user_sampler_is_called_at_training_then_held_out_indices_and_checked():
    calls = []

    def sampler(t):
        calls.append(t)
        return np.full((10, 3), t + 1.0)

    sampler.mesh_id = "disk-1"
    data = Instances(_Cfg(), sampler)
    assert data.n == 10 and calls == [0]
    A, S = data.get(0)  # the first draw is reused, not drawn again
    assert A is None and S.dtype == np.float32 and calls == [0]
    data.get(3)
    data.get(1, held=True)  # held-out instance 1: index steps * batch + 1
    assert calls == [0, 3, 9]
    assert data.settings() == {"pde": "membrane", "sweeps": None, "omega": None,
                               "node_order": "mesh", "mesh_id": "disk-1"}
    with pytest.raises(ValueError, match=r"sampler\(0\) must return S of shape \(n, K=3\) "
                                         r"\(the same n at every call\); got shape \(10, 4\)"):
        Instances(_Cfg(), lambda t: np.ones((10, 4)))
    with pytest.raises(ValueError, match=r"sampler\(0\) returned an S with 30 NaN or Inf"):
        Instances(_Cfg(), lambda t: np.full((10, 3), np.nan))
    varying = Instances(_Cfg(), lambda t: np.ones((10 + t, 3)))  # n must not change
    with pytest.raises(ValueError, match=r"sampler\(2\) must return S of shape \(10, 3\) "
                                         r"\(the same n at every call\); got shape \(12, 3\)"):
        varying.get(2)
    gnn = _Cfg()
    gnn.arch = "gnn"
    with pytest.raises(ValueError, match=r"arch 'gnn' needs A: the sampler must return"):
        Instances(gnn, lambda t: np.ones((10, 3)))
