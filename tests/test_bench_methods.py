"""bench.methods: one timed solve by one method, every method, on a tiny instance.

Solutions are checked against a sparse direct solve (SciPy's SuperLU, an independent
reference); failures are never silent (non-finite input, a coarse operator that is not SPD,
maxiter), each one error on every rank.
"""

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from nlss_fenicsx import meshes, pdes
from nlss_fenicsx._fenicsx import PETSc
from nlss_fenicsx.bench.methods import (
    LEARNED,
    PEERS,
    TWOGRID,
    MethodSpec,
    method_class,
    run_method,
)
from nlss_fenicsx.twogrid import ConvergenceError, NotSPDError
from tests.conftest import ROOT, mpiexec


@pytest.fixture(scope="module")
def system():
    return pdes.assemble(pdes.sample("diffusion", meshes.jittered_square(8, seed=0), rng=0))


@pytest.fixture(scope="module")
def reference(system):
    return spla.spsolve(system.A_csr.tocsc(), system.b)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """Diffusion, N=8, K=8, r_max=6, a few steps (what matters: a valid checkpoint)."""
    from nlss_fenicsx.nn.train import TrainConfig, train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        path = tmp_path_factory.mktemp("models") / "tiny.pt"
        train(TrainConfig(N=8, K=8, r_max=6, hidden=(16,), steps=3, n_eval=2), path,
              progress=False, log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    return str(path)


def _petsc(A_csr) -> PETSc.Mat:
    A_csr = sp.csr_matrix(A_csr)
    M = PETSc.Mat().createAIJ(size=A_csr.shape, csr=(A_csr.indptr, A_csr.indices, A_csr.data),
                              comm=PETSc.COMM_SELF)
    M.assemble()
    return M


def _check(rec, system, reference, history=False):
    assert rec.converged and rec.rel_residual < 1e-6
    # The solution is the direct one: ||x - x*|| <= cond-bounded multiple of the residual.
    assert np.linalg.norm(rec.x - reference) <= 1e-4 * np.linalg.norm(reference)
    # The residual it reports is the true one.
    true = np.linalg.norm(system.b - system.A_csr @ rec.x) / np.linalg.norm(system.b)
    assert rec.rel_residual == pytest.approx(true, rel=1e-6, abs=1e-14)
    ph = rec.phases
    assert all(v >= 0 for v in ph.values())
    assert ph["total"] == pytest.approx(ph["smoothing"] + ph["inference"] + ph["setup"]
                                        + ph["solve"])
    if history:
        h = rec.history
        assert h[0] == pytest.approx(1.0) and h[-1] < 1e-6
        if rec.method != "Cholesky":
            assert len(h) == rec.iterations + 1


@pytest.mark.parametrize("name", ["svd", "sa", "sine", "eig-ref", "eig", *PEERS])
def test_every_non_learned_method_solves(system, reference, name):
    rec = run_method(system, MethodSpec(name, rank=6, K=8), history=True)
    _check(rec, system, reference, history=True)
    assert rec.rank == (None if name in ("sa", *PEERS) else 6)
    if name in ("svd", "sine", "eig-ref", "eig"):
        assert rec.coarse_size == 6
    if name in ("svd",):
        assert rec.phases["smoothing"] > 0
    if name in PEERS:  # nothing smoothed, no coarse basis
        assert rec.phases["smoothing"] == rec.phases["inference"] == 0


@pytest.mark.parametrize("name", ["svd", "sa", "sine", "eig"])
def test_scipy_path_agrees_with_the_petsc_path(system, reference, name):
    """The same coarse space through TwoGrid + pcg and through TwoGridPC: the same
    iterations (S is float32 in the PC and float64 in SciPy: svd may differ by one)."""
    spec = MethodSpec(name, rank=6, K=8)
    petsc = run_method(system, spec)
    scipy_ = run_method(system, dataclasses.replace(spec, path="scipy"), history=True)
    _check(scipy_, system, reference, history=True)
    assert abs(scipy_.iterations - petsc.iterations) <= (1 if name == "svd" else 0)
    assert scipy_.coarse_size == petsc.coarse_size
    assert scipy_.method == petsc.method + " (SciPy)"
    if name != "svd":  # nothing to smooth on the SciPy path
        assert scipy_.phases["smoothing"] == 0


@pytest.mark.parametrize("path", ["petsc", "scipy"])
@pytest.mark.parametrize("precision", ["int8", "float32"])
def test_learned_method(system, reference, tiny_model, path, precision):
    rec = run_method(system, MethodSpec("nlss", rank=6, K=8, model=tiny_model, path=path,
                                        precision=precision))
    _check(rec, system, reference)
    assert rec.coarse_size == 6 and rec.phases["inference"] > 0


def test_svd_with_many_sweeps_is_its_own_row(system, reference):
    ten = run_method(system, MethodSpec("svd", rank=6, K=8, path="scipy"))
    many = run_method(system, MethodSpec("svd", rank=6, K=8, sweeps=300, path="scipy"))
    _check(many, system, reference)
    assert many.method == "SVD (300 sweeps) (SciPy)"
    # 300 sweeps bring S close to the smoother's slow modes (the low modes of D^-1 A):
    # a coarse space at least as good as the 10-sweep S.
    assert many.iterations <= ten.iterations


def test_labels_and_classes():
    assert [method_class(m) for m in TWOGRID] == ["learned"] * len(LEARNED) + [
        "twogrid", "twogrid", "twogrid", "twogrid", "oracle", "twogrid"]
    assert MethodSpec("eig").label == "eig (oracle)"
    assert MethodSpec("nlss", model="m.pt", path="scipy").label == "NLSS (SciPy)"
    assert MethodSpec("nlss", model="m.pt", precision="float32").label == "NLSS (float32)"
    assert MethodSpec("eig-ref", reference="family").label == "eig-ref (mean coefficients)"
    assert MethodSpec("eig-ref").label == "eig-ref"  # the PC's default reference
    assert MethodSpec("gamg").label == "GAMG-CG" and not MethodSpec("gamg").ranked
    assert MethodSpec("gnn", model="g.pt").coarse == "nlss"


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"name": "multigrid"}, "Unrecognized method 'multigrid'"),
    ({"name": "svd", "path": "cuda"}, "Unrecognized path 'cuda'"),
    ({"name": "nlss"}, "method 'nlss' needs model=PATH"),
    ({"name": "fixed"}, "method 'fixed' needs basis=PATH"),
])
def test_spec_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MethodSpec(**kwargs)


# ------------------------------------------------------------------ failures, never silent


def _with_nan(A_csr, value=np.nan):
    """A copy with one off-diagonal entry replaced (diagonal stays positive)."""
    B = sp.csr_matrix(A_csr, copy=True)
    row = 40
    lo, hi = B.indptr[row], B.indptr[row + 1]
    k = next(k for k in range(lo, hi) if B.indices[k] != row and B.data[k] != 0)
    B.data[k] = value
    return B


@pytest.mark.parametrize("name,path", [("svd", "petsc"), ("svd", "scipy"), ("jacobi", "petsc")])
def test_nonfinite_b_and_matrix(system, name, path):
    b = system.b.copy()
    b[7] = np.nan
    with pytest.raises(ValueError, match="expected a finite right-hand side b, got 1 NaN or Inf"):
        run_method(dataclasses.replace(system, b=b), MethodSpec(name=name, rank=4, K=8,
                                                                path=path))
    A = _with_nan(system.A_csr)
    with pytest.raises(ValueError, match="expected a finite matrix A, got NaN or Inf"):
        run_method(dataclasses.replace(system, A=_petsc(A), A_csr=A),
                   MethodSpec(name=name, rank=4, K=8, path=path))


def _shifted(system):
    """Symmetric with a positive diagonal, but indefinite: the interior block shifted down
    between its two smallest eigenvalues (one negative mode, the smoothest)."""
    A = system.A_csr.toarray()
    interior = np.ones(len(A), bool)
    interior[system.boundary_dofs] = False
    mu = np.linalg.eigvalsh(A[np.ix_(interior, interior)])
    As = A - 0.5 * (mu[0] + mu[1]) * np.diag(interior.astype(float))
    assert np.diag(As).min() > 0
    return sp.csr_matrix(As)


@pytest.mark.parametrize("path", ["petsc", "scipy"])
def test_indefinite_matrix_is_not_spd(system, path):
    A_csr = _shifted(system)
    shifted = dataclasses.replace(system, A=_petsc(A_csr), A_csr=A_csr)
    with pytest.raises(NotSPDError, match="not symmetric positive definite"):
        run_method(shifted, MethodSpec(name="svd", rank=8, K=16, path=path))


def test_nonsymmetric_matrix_is_not_spd(system):
    A_csr = sp.lil_matrix(system.A_csr, copy=True)
    A_csr[40, 41] = A_csr[40, 41] - 1.0  # breaks symmetry, keeps the diagonal
    A_csr = A_csr.tocsr()
    with pytest.raises(NotSPDError, match="not symmetric"):
        run_method(dataclasses.replace(system, A=_petsc(A_csr), A_csr=A_csr),
                   MethodSpec(name="svd", rank=4, K=8))


@pytest.mark.parametrize(("name", "path", "match"), [
    ("svd", "petsc", r"DIVERGED_MAX_IT \(-3\) after 2 iterations"),
    ("svd", "scipy", "maxiter after 2 iterations"),
    ("jacobi", "petsc", r"DIVERGED_MAX_IT \(-3\) after 2 iterations"),
])
def test_maxiter_is_a_reported_failure(system, name, path, match):
    with pytest.raises(ConvergenceError, match=match):
        run_method(system, MethodSpec(name=name, rank=2, K=8, path=path, rtol=1e-12,
                                      maxiter=2))


@pytest.mark.parametrize(("name", "path", "match"), [
    ("svd", "petsc", "KSP cg did not reach rtol = 1e-16: the true relative residual is"),
    ("jacobi", "petsc", "KSP cg did not reach rtol = 1e-16: the true relative residual is"),
    ("cholesky", "petsc", "KSP preonly did not reach rtol = 1e-16: the true relative"),
    ("svd", "scipy", "stagnated"),
])
def test_unattainable_rtol_is_a_reported_failure(system, name, path, match):
    """rtol below rounding: CG's recursive residual passes it, the true one cannot."""
    with pytest.raises(ConvergenceError, match=match) as info:
        run_method(system, MethodSpec(name=name, rank=4, K=8, path=path, rtol=1e-16))
    if path == "petsc":
        assert "below the attainable accuracy" in str(info.value)
        true = float(str(info.value).split("residual is ")[1].split()[0])
        assert 1e-16 <= true < 1e-12  # the true residual, at rounding level


# ------------------------------------------------------------------ under mpiexec


@pytest.mark.mpi
@pytest.mark.parametrize("nprocs", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_petsc_path_under_mpiexec(system, nprocs):
    """The PETSc path and the PETSc peers run distributed: the same iterations as in
    serial, the true residual over all ranks; the serial-only paths are refused, the same
    line on every rank."""
    serial = {name: run_method(system, MethodSpec(name, rank=6, K=8)).iterations
              for name in ("svd", "sine", "jacobi", "gamg")}
    script = Path(__file__).parent / "mpi" / "bench_methods.py"
    proc = subprocess.run([mpiexec(), "-n", str(nprocs), sys.executable, str(script)],
                          capture_output=True, text=True, timeout=180,
                          env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                               "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    rows = {}
    refused = []
    for line in proc.stdout.splitlines():
        kind, *rest = line.split(" ", 1)
        if kind == "solved":
            name, its, res = rest[0].split()
            rows[name] = (int(its), float(res))
        elif kind == "refused":
            refused.append(rest[0])
    for name, its in serial.items():
        assert rows[name][1] < 1e-6, name
        if name in ("sine", "jacobi"):  # the same operator on any partition
            assert rows[name][0] == its, name
        elif name == "svd":  # S drawn in node order: equal up to rounding
            assert abs(rows[name][0] - its) <= 1, name
    assert "cholesky" in rows and "icc" in rows
    assert len(refused) == 2 * nprocs
    assert len(set(refused)) == 2
    assert any("the SciPy path (path='scipy') runs on one MPI rank" in r for r in refused)
