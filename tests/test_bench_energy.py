"""bench.energy: the captured-energy experiment at a tiny size; its models are model-cache
entries keyed by their settings, so other settings train new models and the same settings
reuse them (whatever --out is)."""

import json

import numpy as np
import pytest
import torch

from nlss_fenicsx.bench.energy import EnergyConfig, run_energy

TINY = EnergyConfig(N=3, K=4, steps=2, batch=2, n_train=4, n_test=3)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NLSS_FENICSX_CACHE", str(tmp_path / "cache"))
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path / "cache"
    torch.set_num_threads(previous)


def _models(cache):
    return sorted(p.name for p in (cache / "models").glob("*.pt"))


def test_other_settings_train_new_models_and_the_same_settings_reuse_them(tmp_path, cache):
    lines = []
    first = run_energy(TINY, tmp_path / "en1", progress=False, log=lines.append)
    # Other settings (the re-run that was refused): new models, the first ones kept.
    other = EnergyConfig(N=3, K=4, steps=5, batch=2, n_train=4, n_test=3)
    second = run_energy(other, tmp_path / "en2", progress=False, log=lines.append)
    assert len(_models(cache)) == 4  # nlss and subspace, twice
    assert second["steps"] == 5
    # The first settings again, into the first folder: reused, not retrained.
    lines.clear()
    again = run_energy(TINY, tmp_path / "en1", progress=False, log=lines.append)
    assert sum("reusing cached model" in line for line in lines) == 2, lines
    assert len(_models(cache)) == 4
    for loss in ("nlss", "subspace"):
        assert again["losses"][loss]["gap_mean"] == first["losses"][loss]["gap_mean"]
    assert json.loads((tmp_path / "en1" / "energy_diffusion.json").read_text())["steps"] == 2


def test_svd_captures_the_most_energy_at_every_rank(tmp_path, cache):
    """Eckart-Young: no rank-r subspace captures more of S's energy than its top r
    singular vectors, and at r = K = columns of S the SVD captures all of it."""
    res = run_energy(TINY, tmp_path / "en", progress=False, log=lambda *_: None)
    svd = np.array(res["svd_energy_mean"])
    assert svd[-1] == pytest.approx(1.0) and np.all(np.diff(svd) >= -1e-12)
    for loss in ("nlss", "subspace"):
        assert np.all(np.array(res["losses"][loss]["gap_q1"]) >= -1e-6), loss
        assert res["losses"][loss]["train_seconds"] is not None
    assert (tmp_path / "en" / "energy_diffusion.png").stat().st_size > 1000
