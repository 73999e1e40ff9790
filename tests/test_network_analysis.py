"""benchmarks/network_analysis.py at smoke size (a tiny model): files, and numbers checked
against independent references (SciPy's subspace_angles, the SVD's optimality, the SciPy
two-grid + pcg with the same basis)."""

import importlib.util
import json

import numpy as np
import pytest
import scipy.linalg as sla
import torch

from tests.conftest import ROOT


def _script():
    spec = importlib.util.spec_from_file_location(
        "network_analysis", ROOT / "benchmarks" / "network_analysis.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("network")
    mp = pytest.MonkeyPatch()
    mp.setenv("NLSS_FENICSX_CACHE", str(root / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = _script().main(["--budget", "smoke", "--pde", "diffusion", "--instances", "2",
                                 "--ranks", "2", "4", "8", "--out", str(root / "out")])
    finally:
        torch.set_num_threads(threads)
        mp.undo()
    return root / "out", report


def test_angles_match_scipy_subspace_angles():
    module = _script()
    rng = np.random.default_rng(0)
    P, Q = rng.standard_normal((30, 4)), rng.standard_normal((30, 4))
    theta = sla.subspace_angles(P, Q)
    got = module.angles(P, Q)
    assert got["max_deg"] == pytest.approx(np.degrees(theta.max()))
    assert got["mean_cos2"] == pytest.approx(np.mean(np.cos(theta) ** 2))
    assert module.angles(P, P @ rng.standard_normal((4, 4)))["max_deg"] < 1e-5


def test_writes_its_files_and_the_svd_captures_the_most_energy(run):
    out, report = run
    on_disk = json.loads((out / "analysis.json").read_text())
    assert on_disk["complete"] and on_disk["pdes"].keys() == {"diffusion"}
    assert (out / "analysis.png").stat().st_size > 1000
    text = (out / "analysis.md").read_text()
    assert "## diffusion" in text and "| network on instance 0 |" in text
    ranks = on_disk["pdes"]["diffusion"]["ranks"]
    assert list(ranks) == ["2", "4", "8"]
    svd = [ranks[r]["energy_mean"]["SVD of S"] for r in ranks]
    assert svd == sorted(svd) and svd[-1] == pytest.approx(1.0)  # r = K = 8: all of S
    for r, d in ranks.items():
        for i, e_svd in enumerate(d["energy"]["SVD of S"]):  # per instance: U_r(S) is optimal
            for basis in ("network", "network (int8)", "sine", "eig-ref"):
                assert 0.0 <= d["energy"][basis][i] <= e_svd + 1e-9, (r, basis)
        assert all(its > 0 for v in d["iterations"].values() for its in v)
        # instance 0 against itself is not counted: one comparison (instance 1)
        assert len(d["angles"]["network on instance 0"]["per_instance"]) == 1
        assert len(d["angles"]["SVD of S"]["per_instance"]) == 2
        for a in d["angles"].values():
            assert 0.0 <= a["max_deg_median"] <= 90.0 and 0.0 <= a["mean_cos2_mean"] <= 1.0


def test_iterations_are_those_of_the_scipy_two_grid_with_the_same_basis(run):
    """The sine row at r=4 on instance 0, recomputed with the SciPy reference path."""
    from nlss_fenicsx.bench.instances import instances
    from nlss_fenicsx.coarse import sine_basis
    from nlss_fenicsx.twogrid import TwoGrid, pcg

    _, report = run
    system = instances("diffusion", 8, 1)[0][0]
    P = np.zeros((system.n, 4))
    P[system.grid_order] = sine_basis(8, 4)  # grid order -> dof order
    _, info = pcg(system.A_csr, system.b, TwoGrid(system.A_csr, P, omega=0.66), rtol=1e-6)
    assert report["pdes"]["diffusion"]["ranks"]["4"]["iterations"]["sine"][0] == info.iterations


def test_ranks_beyond_the_model_are_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        _script().main(["--budget", "smoke", "--ranks", "4", "9", "--out", str(tmp_path)])
    assert err.value.code == 2
    assert "--ranks must lie in 1..8 for budget 'smoke'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_the_network_is_compared_across_instances_node_by_node(run):
    """Each instance's mesh numbers its dofs anew: instance 0's basis and instance 1's are
    compared in node order (recomputed here through the public model API and SciPy)."""
    from nlss_fenicsx.bench.instances import TEST_SEED, instances
    from nlss_fenicsx.nn.inference import load_model
    from nlss_fenicsx.smoothing import smoothed_vectors

    _, report = run
    d = report["pdes"]["diffusion"]
    systems = instances("diffusion", 8, 2)[0]
    assert not np.array_equal(systems[0].grid_order, systems[1].grid_order)
    net = load_model(d["model"]["path"], precision="float32")
    P = []
    for i, s in enumerate(systems):
        S = smoothed_vectors(s.A_csr, 8, sweeps=10, omega=0.66, rng=TEST_SEED + i)
        P.append(net.basis(S, 8, node_order=s.grid_order)[s.grid_order])  # dof -> node order
    theta = sla.subspace_angles(P[0][:, :4], P[1][:, :4])
    got = d["ranks"]["4"]["angles"]["network on instance 0"]["per_instance"][0]
    assert got["max_deg"] == pytest.approx(np.degrees(theta.max()), abs=1e-6)
    assert got["mean_cos2"] == pytest.approx(np.mean(np.cos(theta) ** 2), abs=1e-9)
