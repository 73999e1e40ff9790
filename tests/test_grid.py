"""The NumPy grid route reproduces the dolfinx route exactly (nodes, cells, coefficients,
matrix, right-hand side and the training data S)."""

import numpy as np
import pytest
import scipy.sparse as sp

from nlss_fenicsx import grid, meshes, pdes
from nlss_fenicsx.nn.data import DataConfig, instance


@pytest.mark.parametrize("family", grid.FAMILIES)
@pytest.mark.parametrize("preset", ["paper", "code"])
def test_numpy_assembly_equals_dolfinx_in_grid_order(family, preset):
    N, mesh_seed, coef_seed = 11, 5, 17
    pts = grid.jittered_points(N, seed=mesh_seed)
    tri = grid.delaunay_triangles(pts)
    draws = grid.coefficient_draws(family, preset, len(tri), coef_seed)
    gp = grid.assemble_p1(family, pts, tri, draws, boundary=grid.boundary_mask(N))
    system = pdes.assemble(pdes.sample(family, meshes.jittered_square(N, seed=mesh_seed),
                                       rng=coef_seed, preset=preset))
    order = system.grid_order
    A_dof_in_grid = system.A_csr[order][:, order]
    rel = sp.linalg.norm(A_dof_in_grid - gp.A) / sp.linalg.norm(gp.A)
    assert rel < 1e-12, rel
    np.testing.assert_allclose(system.b[order], gp.b, rtol=1e-12, atol=1e-16)
    assert gp.A.nnz == A_dof_in_grid.nnz  # no stored zeros on either side


@pytest.mark.parametrize("family", grid.FAMILIES)
def test_training_data_equals_the_dolfinx_route(family):
    """nn.data.instance (NumPy, grid order) = the same instance built with dolfinx: mesh,
    coefficient draws, assembly and smoothing from the seeds instance_seeds gives."""
    from nlss_fenicsx.nn.data import instance_seeds
    from nlss_fenicsx.smoothing import gaussian_start, smoothed_vectors

    cfg = DataConfig(pde=family, N=9, K=6)
    _, S_np = instance(cfg, 1234)
    mesh_seed, coef_seed, s_seed = instance_seeds(1234)
    system = pdes.assemble(pdes.sample(family, meshes.jittered_square(9, seed=mesh_seed),
                                       rng=coef_seed, preset=cfg.preset))
    order = system.node_order  # = grid order on the jittered square
    S0 = np.empty((cfg.n, cfg.K))
    S0[order] = gaussian_start(s_seed, cfg.n, cfg.K)
    S_dx = smoothed_vectors(system.A_csr, cfg.K, sweeps=cfg.sweeps, omega=cfg.omega, S0=S0)
    np.testing.assert_allclose(S_np, S_dx[order], rtol=0, atol=1e-6)  # float32 output
