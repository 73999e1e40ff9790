"""bench.instances: the test instances and eig-ref's family reference (issue 16, item 1).

The reference is checked against an independent dolfinx assembly (unit-coefficient
stiffness on the instance's own P1 space, scaled by the diffusion mean E[exp(1.5 Z)] =
exp(1.5^2 / 2)), and the eig-ref basis it gives against a dense eigensolve of it.
"""

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp

from nlss_fenicsx import la, meshes, pdes
from nlss_fenicsx._fenicsx import dolfinx, ufl
from nlss_fenicsx.bench.instances import (
    TEST_SEED,
    family_reference,
    instances,
    run_instance,
)
from nlss_fenicsx.bench.methods import MethodSpec, run_method

N = 8


@pytest.fixture(scope="module")
def systems():
    return instances("diffusion", N, 2)[0]


def _unit_stiffness(V):
    u, v = ufl.TrialFunction(V), ufl.TestFunction(V)
    M = dolfinx.fem.petsc.assemble_matrix(dolfinx.fem.form(ufl.inner(ufl.grad(u),
                                                                     ufl.grad(v)) * ufl.dx))
    M.assemble()
    return la.petsc_to_csr(M)


def test_instances_are_drawn_from_their_seeds(systems):
    again = pdes.assemble(pdes.sample("diffusion", meshes.jittered_square(N, seed=TEST_SEED + 1),
                                      rng=TEST_SEED + 1))
    assert abs(systems[1].A_csr - again.A_csr).max() == 0.0
    assert abs(systems[1].A_csr - systems[0].A_csr).max() > 0.0


def test_family_reference_is_the_mean_coefficient_matrix_in_dof_order(systems):
    system = systems[1]
    R = family_reference(system, "diffusion", N, mesh_seed=TEST_SEED + 1)
    n = system.n
    assert R.shape == (n, n)
    free = np.ones(n, bool)
    free[system.boundary_dofs] = False
    K = _unit_stiffness(system.V).toarray()
    R = R.toarray()
    mean_g = np.exp(1.5**2 / 2)  # E[exp(1.5 Z)], Z ~ N(0, 1): the default diffusion preset
    np.testing.assert_allclose(R[np.ix_(free, free)], mean_g * K[np.ix_(free, free)],
                               rtol=1e-10, atol=1e-12)
    # Dirichlet rows and columns: the identity, as in the instances.
    np.testing.assert_array_equal(R[~free][:, ~free], np.eye(int((~free).sum())))
    assert not R[~free][:, free].any() and not R[free][:, ~free].any()
    # Another mesh seed is another mesh: the reference no longer matches.
    other = family_reference(system, "diffusion", N, mesh_seed=TEST_SEED).toarray()
    assert np.abs(other[np.ix_(free, free)] - R[np.ix_(free, free)]).max() > 1e-3


def test_family_reference_refuses_another_size(systems):
    with pytest.raises(ValueError, match=r"expected an instance with \(N\+1\)\^2 = 100 "
                                         r"unknowns for N = 9, got n = 81"):
        family_reference(systems[0], "diffusion", 9, mesh_seed=TEST_SEED)


@pytest.mark.parametrize("path", ["petsc", "scipy"])
def test_eig_ref_with_the_family_reference_equals_its_dense_eigenvectors(systems, path):
    """The bench's eig-ref: the same iterations as the coarse space P given explicitly,
    built from numpy.linalg.eigh of the reference's free block (a two-grid depends on
    span(P) only); its once-per-mesh work is timed for every instance."""
    system, r = systems[1], 6
    R = family_reference(system, "diffusion", N, mesh_seed=TEST_SEED + 1).toarray()
    free = np.ones(system.n, bool)
    free[system.boundary_dofs] = False
    P = np.zeros((system.n, r))
    P[free] = np.linalg.eigh(R[np.ix_(free, free)])[1][:, :r]
    given = run_method(system, MethodSpec("svd", rank=r, K=8), P=P)
    spec = MethodSpec("eig-ref", rank=r, K=8, reference="family", path=path)
    for _ in range(2):  # the second run finds the cache emptied: it pays again
        rec = run_instance(system, spec, pde="diffusion", N=N, index=1)
        assert rec["ok"] and rec["iterations"] == given.iterations
        assert rec["phases"]["once"] > 0
        assert rec["phases"]["total"] == pytest.approx(
            sum(rec["phases"][p] for p in ("smoothing", "inference", "setup", "solve")))
    assert rec["rel_residual"] < 1e-6


def test_run_instance_leaves_other_methods_to_run_one(systems):
    rec = run_instance(systems[0], MethodSpec("sine", rank=4, K=8), pde="diffusion", N=N,
                       index=0)
    assert rec["ok"] and "once" not in rec["phases"]


def test_reference_mismatches_are_refused(systems):
    system = systems[0]
    R = sp.identity(system.n, format="csr")
    with pytest.raises(ValueError, match="reference= applies to eig-ref only"):
        run_method(system, MethodSpec("sine", rank=4), reference=R)
    with pytest.raises(ValueError, match="eig-ref with reference='family' needs reference="):
        run_method(system, MethodSpec("eig-ref", rank=4, reference="family"))
    with pytest.raises(ValueError, match="use MethodSpec\\(reference='family'\\)"):
        run_method(system, MethodSpec("eig-ref", rank=4), reference=R)
    with pytest.raises(ValueError, match="Unrecognized reference 'mean'"):
        MethodSpec("eig-ref", reference="mean")
    assert dataclasses.replace(MethodSpec("eig-ref"), reference="family").label == (
        "eig-ref (mean coefficients)")
