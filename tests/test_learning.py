"""The learning stack end to end: data, training, resume, checkpoints, the learned PC."""

import numpy as np
import pytest
import torch

from nlss_fenicsx import meshes, pdes
from nlss_fenicsx import petsc as npc
from nlss_fenicsx._fenicsx import PETSc, dolfinx
from nlss_fenicsx.bench.methods import MethodSpec, run_method
from nlss_fenicsx.nn import CheckpointError, NLSSModel
from nlss_fenicsx.nn.data import DataConfig, FreshSampler, load_dataset
from nlss_fenicsx.nn.inference import load_model
from nlss_fenicsx.nn.train import TrainConfig, train

TINY = dict(N=8, K=8, r_max=8, hidden=(32, 32), n_eval=4, eval_every=10, ckpt_every=10)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny.pt"
    model = train(TrainConfig(steps=40, **TINY), path, progress=False, log=lambda *_: None)
    return path, model


def test_sampler_gives_grid_order_float32_and_is_seeded():
    cfg = DataConfig(N=6, K=5)
    s = FreshSampler(cfg, seed=3)
    a, b, c = s(0), s(0), s(1)
    assert a.shape == (49, 5) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_allclose(np.linalg.norm(a, axis=0), 1.0, rtol=1e-5)


def test_dataset_cached_and_regenerated_when_parameters_change(tmp_path):
    cfg = DataConfig(N=4, K=3)
    tr, te = load_dataset(cfg, n_train=5, n_test=2, directory=tmp_path, progress=False)
    assert tr.shape == (5, 25, 3) and te.shape == (2, 25, 3)
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


def test_training_reduces_loss_and_records_metadata(tiny_model):
    path, model = tiny_model
    hist = model.metadata["extra"]["history"]
    assert [h["step"] for h in hist] == [10, 20, 30, 40]
    md = NLSSModel.load(path).metadata
    assert (md["n"], md["K"], md["r_max"], md["N"], md["pde"], md["loss"]) == \
        (81, 8, 8, 8, "diffusion", "nlss")
    # Captured energy on held-out data grows during training.
    assert hist[-1]["energy@8"] > hist[0]["energy@8"]


def test_resume_is_identical_to_an_uninterrupted_run(tmp_path):
    cfg = TrainConfig(steps=12, **{**TINY, "ckpt_every": 6, "eval_every": 6})
    straight = train(cfg, tmp_path / "a.pt", progress=False, log=lambda *_: None)
    half = TrainConfig(**{**cfg.as_dict(), "hidden": cfg.hidden, "steps": 6})
    train(half, tmp_path / "b.pt", progress=False, log=lambda *_: None)
    # Same settings but more steps: a different config, so resuming must refuse ...
    with pytest.raises(CheckpointError, match="different settings"):
        train(cfg, tmp_path / "b.pt", progress=False, log=lambda *_: None)
    # ... while an interrupted run (same config, saved at step 6) continues exactly.
    part = NLSSModel.load(tmp_path / "b.pt")
    part.metadata["extra"]["train_config"] = cfg.as_dict()
    part.save(tmp_path / "c.pt", step=6,
              optimizer=_optimizer_from(part, NLSSModel.load(tmp_path / "b.pt")))
    resumed = train(cfg, tmp_path / "c.pt", progress=False, log=lambda *_: None)
    assert resumed.step == 12
    for k, v in straight.net.state_dict().items():
        assert torch.equal(v, resumed.net.state_dict()[k]), k


def _optimizer_from(model, source):
    opt = torch.optim.Adam(model.net.parameters(), lr=1e-3)
    opt.load_state_dict(source.optimizer_state)
    return opt


def test_end_to_end_nlss_through_twogrid_pc(tiny_model):
    path, _ = tiny_model
    system = pdes.assemble(pdes.sample("diffusion", meshes.jittered_square(8, seed=99),
                                       rng=99))
    for r in (4, 8):
        rec = run_method(system, MethodSpec(name="nlss", rank=r, K=8, model=str(path)))
        assert rec.converged and rec.rel_residual < 1e-6
        ref = run_method(system, MethodSpec(name="nlss", rank=r, K=8, model=str(path),
                                            path="scipy"))
        assert abs(rec.iterations - ref.iterations) <= 1


def test_learned_pc_in_linear_problem_with_attached_grid_order(tiny_model):
    path, _ = tiny_model
    prob = pdes.sample("screened_poisson", meshes.jittered_square(8, seed=1), rng=1)
    opts = {"ksp_type": "cg", "ksp_rtol": 1e-8, "ksp_error_if_not_converged": True,
            "pc_type": "python", "pc_python_type": "nlss_fenicsx.petsc.TwoGridPC",
            "nlss_coarse": "nlss", "nlss_model": str(path), "nlss_rank": 6, "nlss_K": 8}
    lp = dolfinx.fem.petsc.LinearProblem(prob.a, prob.L, bcs=prob.bcs,
                                         petsc_options_prefix="learned_", petsc_options=opts)
    with pytest.raises(PETSc.Error) as info:  # no grid order attached yet
        lp.solve()
    assert "grid order" in str(info.value.__cause__)
    npc.attach_grid_order(lp.A, meshes.grid_order(prob.V))
    lp.solver.getPC().setUp()
    uh = lp.solve()
    sysm = pdes.assemble(prob)
    import scipy.sparse.linalg as spla

    ref = spla.spsolve(sysm.A_csr.tocsc(), sysm.b)
    np.testing.assert_allclose(uh.x.array, ref, atol=1e-6 * np.abs(ref).max())


def test_model_for_another_problem_is_a_clear_error(tiny_model):
    path, _ = tiny_model
    system = pdes.assemble(pdes.sample("diffusion", meshes.jittered_square(10, seed=0), rng=0))
    with pytest.raises(CheckpointError) as info:
        run_method(system, MethodSpec(name="nlss", rank=4, K=8, model=str(path)))
    assert "n=81" in str(info.value) and "n=121" in str(info.value)
    system8 = pdes.assemble(pdes.sample("diffusion", meshes.jittered_square(8, seed=0), rng=0))
    with pytest.raises(CheckpointError) as info:
        run_method(system8, MethodSpec(name="nlss", rank=4, K=6, model=str(path)))
    assert "K=8" in str(info.value) and "K=6" in str(info.value)
    with pytest.raises(CheckpointError, match="anisotropic"):
        from nlss_fenicsx.petsc import PCOptions, TwoGridPC

        ctx = TwoGridPC(options=PCOptions(coarse="nlss", model=str(path), rank=4, K=8,
                                          pde="anisotropic"))
        pc = PETSc.PC().create()
        pc.setOperators(system8.A)
        pc.setType(PETSc.PC.Type.PYTHON)
        pc.setPythonContext(ctx)
        try:
            pc.setUp()
        except PETSc.Error as err:
            raise err.__cause__ from None


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, tiny_model):
    path, _ = tiny_model
    bad = tmp_path / "bad.pt"
    bad.write_bytes(path.read_bytes()[: 1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.pt")
