"""Bad input gives one clear error naming what was expected and what was given, and leaves
nothing half-written on disk; failures (NaN/Inf, non-SPD, maxiter) are never silent.

Already covered elsewhere, not repeated here:
``meshes.jittered_square`` N < 2 / jitter out of range (test_meshes.py::test_bad_arguments);
``svd_basis`` r <= 0 / r > min(n, K) (test_twogrid_core.py::test_svd_basis_bad_rank);
``smoothed_vectors`` K < 1 and a bad diagonal (test_twogrid_core.py::
test_smoothed_vectors_validation); ``PCOptions`` rank > K and an unknown ``nlss_coarse`` in
the options database (test_petsc_pc.py::test_option_validation); a model for another n or K
and a PDE given as ``PCOptions(pde=...)`` (test_learning.py::
test_model_for_another_problem_is_a_clear_error); missing, truncated and corrupt checkpoints
(test_nn_core.py::test_checkpoint_unreadable_files, test_learning.py::
test_corrupt_checkpoint_is_a_clear_error); a corrupt dataset cache entry (test_learning.py::
test_dataset_cached_and_regenerated_when_parameters_change) and a corrupt model cache entry
(test_cache.py); b with NaN in ``pcg`` (test_twogrid_core.py::test_pcg_validation); a
non-symmetric or indefinite A in ``TwoGrid`` (test_twogrid_core.py::
test_twogrid_rejects_nonsymmetric_and_bad_diagonal, test_coarse_operator_not_spd_is_reported);
a KSP stopped by maxiter (test_petsc_pc.py::test_non_converging_solve_raises_with_reason).
"""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from nlss_fenicsx import meshes, pdes
from nlss_fenicsx import petsc as npc
from nlss_fenicsx._fenicsx import PETSc, dolfinx
from nlss_fenicsx.bench.methods import MethodSpec, run_method
from nlss_fenicsx.coarse import svd_basis
from nlss_fenicsx.nn import CheckpointError
from nlss_fenicsx.nn.data import DataConfig
from nlss_fenicsx.nn.train import TrainConfig, train
from nlss_fenicsx.smoothing import smoothed_vectors
from nlss_fenicsx.twogrid import ConvergenceError, NotSPDError, TwoGrid, pcg
from tests.conftest import ROOT

QUIET = dict(progress=False, log=lambda *_: None)


@pytest.fixture(scope="module")
def system():
    return pdes.assemble(pdes.sample("diffusion", meshes.jittered_square(8, seed=0), rng=0))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """Diffusion, N=8, K=8, r_max=6: a few steps (only its metadata matters here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        path = tmp_path_factory.mktemp("models") / "tiny.pt"
        train(TrainConfig(N=8, K=8, r_max=6, hidden=(16,), steps=3, n_eval=2), path, **QUIET)
    finally:
        torch.set_num_threads(threads)
    return path


def _petsc(A_csr) -> PETSc.Mat:
    A_csr = sp.csr_matrix(A_csr)
    M = PETSc.Mat().createAIJ(size=A_csr.shape, csr=(A_csr.indptr, A_csr.indices, A_csr.data),
                              comm=PETSc.COMM_SELF)
    M.assemble()
    return M


def _setup_pc(A, ctx):
    """Set up a python PC; re-raise the Python error that PETSc wraps."""
    pc = PETSc.PC().create(comm=PETSc.COMM_SELF)
    pc.setOperators(A)
    pc.setType(PETSc.PC.Type.PYTHON)
    pc.setPythonContext(ctx)
    try:
        pc.setUp()
    except PETSc.Error as err:
        assert err.__cause__ is not None, err
        raise err.__cause__ from None
    return pc


def _with_nan(A_csr, value=np.nan):
    """A copy with one off-diagonal entry replaced (diagonal stays positive)."""
    B = sp.csr_matrix(A_csr, copy=True)
    row = 40
    lo, hi = B.indptr[row], B.indptr[row + 1]
    k = next(k for k in range(lo, hi) if B.indices[k] != row and B.data[k] != 0)
    B.data[k] = value
    return B


def _shifted(system):
    """Symmetric with a positive diagonal, but indefinite: the interior block shifted down
    between its two smallest eigenvalues (one negative mode, the smoothest). Returns the
    matrix and its eigenvectors (ascending eigenvalues)."""
    A = system.A_csr.toarray()
    interior = np.ones(len(A), bool)
    interior[system.boundary_dofs] = False
    mu = np.linalg.eigvalsh(A[np.ix_(interior, interior)])
    As = A - 0.5 * (mu[0] + mu[1]) * np.diag(interior.astype(float))
    assert np.diag(As).min() > 0
    return sp.csr_matrix(As), np.linalg.eigh(As)[1]


# ------------------------------------------------------------------ ranks, K, N, jitter


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rank": 0}, "nlss_rank must be >= 1, got 0"),
        ({"rank": -3}, "nlss_rank must be >= 1, got -3"),
        ({"K": 0, "rank": 1}, "nlss_K must be >= 1, got 0"),
    ],
)
def test_pc_options_bad_rank_and_K(kwargs, match):
    with pytest.raises(ValueError, match=match):
        npc.PCOptions(**kwargs)


def test_pc_K_larger_than_n_is_reported_at_setup(system):
    with pytest.raises(ValueError, match=r"nlss_K must be <= n, got K=100 > n=81"):
        _setup_pc(system.A, npc.TwoGridPC(options=npc.PCOptions(rank=4, K=100)))


def test_smoothed_vectors_K_larger_than_n():
    with pytest.raises(ValueError, match=r"expected K <= n = 4 \(rows of A\), got K = 5"):
        smoothed_vectors(sp.identity(4, format="csr") * 2.0, 5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"r_max": 0}, "r_max must be >= 1, got 0"),
        ({"r_max": 9}, "r_max must be <= K, got r_max=9 > K=8"),
        ({"K": 100, "r_max": 8}, r"K must satisfy 1 <= K <= n = \(N\+1\)\^2 = 81, got 100"),
        ({"N": 1, "K": 2, "r_max": 2}, "N must be >= 2, got 1"),
        ({"steps": 0}, "steps must be >= 1, got 0"),
    ],
)
def test_train_config_bad_values(kwargs, match, tmp_path):
    kwargs = {"N": 8, "K": 8, "r_max": 8, **kwargs}
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("jitter", [0.5, 0.7, -0.1])
def test_data_config_bad_jitter(jitter):
    with pytest.raises(ValueError, match=rf"0 <= jitter < 0.5 \(fraction of h\), got {jitter}"):
        DataConfig(N=8, K=8, jitter=jitter)


def test_model_rank_above_r_max_and_other_pde_via_petsc_options(system, tiny_model):
    with pytest.raises(CheckpointError, match=r"nlss_rank 7 exceeds the model's r_max 6"):
        _setup_pc(system.A, npc.TwoGridPC(options=npc.PCOptions(
            coarse="nlss", model=str(tiny_model), rank=7, K=8)))
    # The PDE check through the PETSc options database (nlss_pde), as a user sets it.
    prob = pdes.sample("diffusion", meshes.jittered_square(8, seed=3), rng=3)
    opts = {"ksp_type": "cg", "pc_type": "python",
            "pc_python_type": "nlss_fenicsx.petsc.TwoGridPC", "nlss_coarse": "nlss",
            "nlss_model": str(tiny_model), "nlss_pde": "anisotropic", "nlss_rank": 4,
            "nlss_K": 8}
    lp = dolfinx.fem.petsc.LinearProblem(prob.a, prob.L, bcs=prob.bcs,
                                         petsc_options_prefix="rel_pde_", petsc_options=opts)
    npc.attach_grid_order(lp.A, meshes.grid_order(prob.V))
    with pytest.raises(PETSc.Error) as info:
        lp.solve()
    cause = info.value.__cause__
    assert isinstance(cause, CheckpointError)
    assert "pde='diffusion'" in str(cause) and "pde='anisotropic'" in str(cause)


def test_unknown_coarse_option_in_linear_problem():
    prob = pdes.sample("diffusion", meshes.jittered_square(6, seed=0), rng=0)
    opts = {"ksp_type": "cg", "pc_type": "python",
            "pc_python_type": "nlss_fenicsx.petsc.TwoGridPC", "nlss_coarse": "magic"}
    # The PC defers the error to setUp: raising inside LinearProblem's setFromOptions
    # would leave dolfinx's options-prefix push (and the options) in the global database.
    lp = dolfinx.fem.petsc.LinearProblem(prob.a, prob.L, bcs=prob.bcs,
                                         petsc_options_prefix="rel_coarse_", petsc_options=opts)
    db = PETSc.Options()
    db["rel_probe"] = "1"  # no prefix left pushed: the key lands as written
    assert "rel_probe" in db.getAll()
    db.delValue("rel_probe")
    with pytest.raises(PETSc.Error) as info:
        lp.solve()
    cause = info.value.__cause__
    assert isinstance(cause, ValueError)
    assert "Unrecognized nlss_coarse 'magic'" in str(cause)
    assert "'svd'" in str(cause) and "'nlss'" in str(cause)


# ------------------------------------------------------------------ NaN / Inf


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nonfinite_A_in_numpy_core(system, value):
    A = _with_nan(system.A_csr, value)
    with pytest.raises(ValueError, match="expected A to have finite entries, got NaN or Inf"):
        smoothed_vectors(A, 4, rng=0)
    with pytest.raises(ValueError, match="expected A to have finite entries, got NaN or Inf"):
        TwoGrid(A, np.eye(81)[:, :4])
    with pytest.raises(ValueError, match="expected A to have finite entries, got NaN or Inf"):
        pcg(A, system.b)
    with pytest.raises(ValueError, match="expected A to have finite entries"):
        pcg(A.toarray(), system.b)  # dense A too


def test_nonfinite_b_in_pcg(system):
    b = system.b.copy()
    b[3] = np.inf
    with pytest.raises(ValueError, match="expected b to have finite entries, got NaN or inf"):
        pcg(system.A_csr, b, TwoGrid(system.A_csr, np.eye(81)[:, :4]))


def test_nonfinite_A_in_petsc_pc(system):
    A = _petsc(_with_nan(system.A_csr))
    # Serially the PC smooths with SciPy (its own check); in parallel with PETSc (below).
    with pytest.raises(ValueError, match="A contains NaN or Inf|expected A to have finite "
                                         "entries, got NaN or Inf in A"):
        _setup_pc(A, npc.TwoGridPC(options=npc.PCOptions(rank=4, K=8)))
    with pytest.raises(ValueError, match="A contains NaN or Inf"):
        npc.smoothed_vectors_petsc(A, 8)
    # A NaN on the diagonal is caught before any sweep.
    D = sp.csr_matrix(system.A_csr, copy=True)
    D[5, 5] = np.nan
    with pytest.raises(ValueError, match="positive, finite diagonal .* got 1 nonpositive, NaN"):
        npc.smoothed_vectors_petsc(_petsc(D), 8)
    # A given P skips smoothing: the coarse operator is then the first to see the NaN.
    with pytest.raises(NotSPDError, match=r"\(Ac has NaN or Inf entries\)"):
        _setup_pc(A, npc.TwoGridPC(P=np.ones((81, 1)), options=npc.PCOptions(rank=1, K=1)))


@pytest.mark.parametrize("name,path", [("svd", "petsc"), ("svd", "scipy"), ("jacobi", "petsc")])
def test_run_method_nonfinite_b_and_A(system, name, path):
    b = system.b.copy()
    b[7] = np.nan
    bad_b = dataclasses.replace(system, b=b)
    with pytest.raises(ValueError, match="expected a finite right-hand side b, got 1 NaN or Inf"):
        run_method(bad_b, MethodSpec(name=name, rank=4, K=8, path=path))
    A = _with_nan(system.A_csr)
    bad_A = dataclasses.replace(system, A=_petsc(A), A_csr=A)
    with pytest.raises(ValueError, match="expected a finite matrix A, got NaN or Inf"):
        run_method(bad_A, MethodSpec(name=name, rank=4, K=8, path=path))


# ------------------------------------------------------------------ not SPD


def test_petsc_pc_indefinite_A_is_not_spd(system):
    A_csr, V = _shifted(system)
    A = _petsc(A_csr)
    # The smooth modes have negative energy: Ac = V^T A V is negative definite.
    with pytest.raises(NotSPDError, match=r"Ac = P\^T A P \(3 x 3\) is not symmetric positive"
                                          r".*Cholesky failed"):
        _setup_pc(A, npc.TwoGridPC(P=V[:, :3], options=npc.PCOptions(rank=3, K=3)))
    # The same through the benchmark runner, with the coarse space built from S.
    shifted = dataclasses.replace(system, A=A, A_csr=A_csr)
    with pytest.raises(NotSPDError, match="not symmetric positive definite"):
        run_method(shifted, MethodSpec(name="svd", rank=8, K=16))
    with pytest.raises(NotSPDError, match="not symmetric positive definite"):
        run_method(shifted, MethodSpec(name="svd", rank=8, K=16, path="scipy"))


def test_petsc_pc_nonsymmetric_A_is_not_spd(system):
    A_csr = sp.lil_matrix(system.A_csr, copy=True)
    A_csr[40, 41] = A_csr[40, 41] - 1.0  # breaks symmetry, keeps the diagonal
    A = _petsc(A_csr)
    P = svd_basis(smoothed_vectors(system.A_csr, 8, rng=0), 4)
    with pytest.raises(NotSPDError, match=r"\(4 x 4\) is not symmetric positive definite.*"
                                          r"\(not symmetric: max\|Ac - Ac\^T\| = "):
        _setup_pc(A, npc.TwoGridPC(P=P, options=npc.PCOptions(rank=4, K=8)))
    with pytest.raises(NotSPDError, match="not symmetric: "):
        run_method(dataclasses.replace(system, A=A, A_csr=A_csr.tocsr()),
                   MethodSpec(name="svd", rank=4, K=8))


# ------------------------------------------------------------------ maxiter


@pytest.mark.parametrize(
    ("name", "path", "match"),
    [("svd", "petsc", r"DIVERGED_MAX_IT \(-3\) after 2 iterations"),
     ("svd", "scipy", "maxiter after 2 iterations"),
     ("jacobi", "petsc", r"DIVERGED_MAX_IT \(-3\) after 2 iterations")],
)
def test_run_method_maxiter_is_a_reported_failure(system, name, path, match):
    with pytest.raises(ConvergenceError, match=match):
        run_method(system, MethodSpec(name=name, rank=2, K=8, path=path, rtol=1e-12, maxiter=2))


# ------------------------------------------------------------------ command line


def _cli(*args, timeout=120):
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "nlss_fenicsx", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["mesh", "--N", "1"], "expected an integer >= 2, got 1"),
        (["mesh", "--jitter", "0.7"], "expected 0 <= jitter < 0.5, got 0.7"),
        (["solve", "--rank", "0"], "expected an integer >= 1, got 0"),
        (["solve", "--rank", "80", "--K", "72"], "--rank must be <= --K, got rank 80 > K 72"),
        (["solve", "--K", "5000", "--N", "8"], "--K must be <= n = (N+1)^2 = 81, got 5000"),
        (["solve", "--coarse", "nlss"], "--coarse nlss needs --model PATH"),
        (["solve", "--coarse", "nlss", "--model", "/nonexistent.pt"],
         "checkpoint not found: /nonexistent.pt"),
        (["train", "--rank", "100", "--K", "72"], "--rank must be <= --K, got rank 100 > K 72"),
        (["train", "--K", "5000", "--N", "8", "--rank", "8"], "K <= n = (N+1)^2 = 81, got 5000"),
        (["bench", "--ranks", "0"], "expected positive ranks, got '0'"),
    ],
)
def test_cli_bad_flags_exit_2_with_one_line(args, expected, tmp_path):
    # Outputs pointed into tmp_path: a refused command must leave nothing behind.
    out = {"mesh": ["--out", tmp_path / "m.msh"], "train": ["--out", tmp_path / "m.pt"],
           "bench": ["--out", tmp_path / "bench"]}.get(args[0], [])
    proc = _cli(*args, *out)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith(f"nlss-fenicsx {args[0]}: error: ")
    assert expected in lines[0]
    assert not list(tmp_path.iterdir())


def test_cli_corrupt_checkpoint_exit_2_with_one_line(tmp_path, tiny_model):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(tiny_model.read_bytes()[:500])
    proc = _cli("solve", "--N", "8", "--K", "8", "--rank", "4", "--coarse", "nlss",
                "--model", bad)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "bad.pt is truncated or corrupt" in lines[0]
