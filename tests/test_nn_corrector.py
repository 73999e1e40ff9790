"""nlss_fenicsx.nn.corrector: learned corrector weights (NLSS loss) and the adaptive space.

References: the classical corrector (the untrained model must be it exactly), the fixed
sine basis on held-out instances (the adaptive model must beat it in median PCG
iterations, fixed seeds), and the package's NLSS loss values recorded in the model.
"""

import numpy as np
import pytest

from nlss_fenicsx import grid
from nlss_fenicsx.corrector import corrected_basis, features, load_corrector
from nlss_fenicsx.nn.corrector import CorrectorConfig, train_corrector
from nlss_fenicsx.spectral import sine_basis
from nlss_fenicsx.twogrid import TwoGrid, pcg

pytest.importorskip("torch")


def _instance(family, N, seed):
    pts = grid.jittered_points(N, seed=seed)
    tri = grid.delaunay_triangles(pts)
    coef = grid.coefficient_draws(family, "default", len(tri), np.random.default_rng(seed))
    return grid.assemble_p1(family, pts, tri, coef, boundary=grid.boundary_mask(N))


def test_untrained_model_is_the_classical_corrector():
    model = train_corrector(CorrectorConfig(N=8, r=6, instances=2, steps=0), progress=False)
    A = _instance("diffusion", 8, 7000).A
    F = features(A, np.ones((81, 2)), 8)
    np.testing.assert_array_equal(model.weights(F), 1.0)
    assert model.meta["loss_learned"] == model.meta["loss_classical"]


def test_adaptive_model_beats_the_fixed_basis_on_held_out_instances(tmp_path):
    N, r = 24, 24
    cfg = CorrectorConfig(pde="diffusion", N=N, r=r, instances=12, steps=60)
    lines = []
    train_corrector(cfg, tmp_path / "corr.npz", log=lines.append)
    model = load_corrector(tmp_path / "corr.npz")
    assert model.meta["config"]["N"] == N and len(lines) == 4
    assert model.meta["loss_learned"] <= model.meta["loss_classical"] + 1e-9
    its = {"sine": [], "adaptive": []}
    for seed in range(7000, 7008):  # held out: training seeds are 1000..1011
        gp = _instance("diffusion", N, seed)
        P = corrected_basis(gp.A, r, node_order=np.arange(gp.A.shape[0]), model=model)
        for name, Q in (("sine", sine_basis(N, r)), ("adaptive", P)):
            its[name].append(pcg(gp.A, gp.b, TwoGrid(gp.A, Q))[1].iterations)
    assert np.median(its["adaptive"]) < np.median(its["sine"]) - 1  # 12 vs 15 measured


def test_config_is_checked():
    with pytest.raises(ValueError, match="Unrecognized pde 'heat'"):
        CorrectorConfig(pde="heat")
    with pytest.raises(ValueError, match="lr > 0"):
        CorrectorConfig(lr=0.0)
