"""Assembly of the three PDE families against an independent NumPy P1 assembler,
SPD checks, and manufactured-solution convergence rates."""

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from nlss_fenicsx import meshes, pdes
from nlss_fenicsx._fenicsx import PETSc, dolfinx, ufl

GRAD_REF = np.array([[-1.0, -1.0], [1.0, 0.0], [0.0, 1.0]])  # P1 reference gradients
MASS_REF = (np.ones((3, 3)) + np.eye(3)) / 12.0  # P1 mass matrix / |T|


def _numpy_p1(V, seed, family, preset):
    """Independent vectorised P1 assembly of the same mesh and the same coefficient draws."""
    mesh = V.mesh
    cells = np.asarray(V.dofmap.list)
    xg = mesh.geometry.x[:, :2]
    xc = xg[mesh.geometry.dofmaps[0]]  # (m, 3, 2): same local vertex order as the dofmap
    B = np.stack([xc[:, 1] - xc[:, 0], xc[:, 2] - xc[:, 0]], axis=2)  # columns are edges
    area = 0.5 * np.abs(np.linalg.det(B))
    G = GRAD_REF @ np.linalg.inv(B)  # (m, 3, 2) physical gradients
    ncell_global = mesh.topology.index_map(2).size_global
    orig = np.asarray(mesh.topology.original_cell_index)[: len(cells)]
    rng = np.random.default_rng(seed)
    eff = {"default": "code" if family == "diffusion" else "paper"}.get(preset, preset)
    if family == "diffusion":
        sd = 1.5 if eff == "code" else np.sqrt(1.5)
        g = np.exp(sd * rng.standard_normal(ncell_global))[orig]
        Kt = g[:, None, None] * np.eye(2)
        mass = np.zeros(len(cells))
    elif family == "anisotropic":
        if eff == "paper":
            k1, t = 1e5, np.pi * rng.standard_normal(ncell_global)
        else:
            k1, t = 1e3, rng.uniform(0, np.pi, ncell_global)
        t = t[orig]
        R = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]).transpose(2, 0, 1)
        Kt = R @ np.diag([k1, 1.0]) @ R.transpose(0, 2, 1)
        mass = np.zeros(len(cells))
    else:
        alpha = rng.uniform(0, 20) if eff == "paper" else 10 ** rng.uniform(0, 2)
        kappa = np.exp(rng.standard_normal(ncell_global))[orig]
        Kt = kappa[:, None, None] * np.eye(2)
        mass = np.full(len(cells), alpha)
    Ke = area[:, None, None] * (G @ Kt @ G.transpose(0, 2, 1))
    Ke += (mass * area)[:, None, None] * MASS_REF
    n = V.dofmap.index_map.size_local
    rows = np.repeat(cells, 3, axis=1).ravel()
    cols = np.tile(cells, (1, 3)).ravel()
    A = sp.csr_matrix((Ke.ravel(), (rows, cols)), shape=(n, n))
    b = np.zeros(n)
    np.add.at(b, cells.ravel(), np.repeat(area / 3.0, 3))
    xd = V.tabulate_dof_coordinates()[:, :2]
    bnd = np.flatnonzero(np.any((np.abs(xd) < 1e-14) | (np.abs(xd - 1) < 1e-14), axis=1))
    keep = np.ones(n)
    keep[bnd] = 0.0
    D = sp.diags(keep)
    A = (D @ A @ D + sp.diags(1.0 - keep)).tocsr()
    b[bnd] = 0.0
    return A, b, bnd


@pytest.mark.parametrize("family", pdes.FAMILIES)
@pytest.mark.parametrize("preset", ["default", "paper", "code"])
def test_matches_numpy_reference(family, preset):
    mesh = meshes.jittered_square(7, seed=4)
    prob = pdes.sample(family, mesh, rng=123, preset=preset)
    sysm = pdes.assemble(prob)
    A_ref, b_ref, bnd = _numpy_p1(prob.V, 123, family, preset)
    diff = sp.linalg.norm(sysm.A_csr - A_ref) / sp.linalg.norm(A_ref)
    assert diff < 1e-12, diff
    np.testing.assert_allclose(sysm.b, b_ref, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(np.sort(sysm.boundary_dofs), np.sort(bnd))
    assert sysm.n == 64 and sysm.A_csr.shape == (64, 64)


@pytest.mark.parametrize("family", pdes.FAMILIES)
def test_spd(family):
    sysm = pdes.assemble(pdes.sample(family, meshes.jittered_square(6, seed=0), rng=7))
    A = sysm.A_csr.toarray()
    np.testing.assert_allclose(A, A.T, rtol=0, atol=1e-12 * np.abs(A).max())
    assert np.linalg.eigvalsh(0.5 * (A + A.T)).min() > 0
    # Boundary rows are identity rows.
    for d in sysm.boundary_dofs:
        row = np.zeros(sysm.n)
        row[d] = 1.0
        np.testing.assert_array_equal(A[d], row)


def test_coefficients_independent_of_reordering_and_seeded():
    m = meshes.jittered_square(6, seed=0)
    p1 = pdes.sample("diffusion", m, rng=5)
    p2 = pdes.sample("diffusion", m, rng=5)
    p3 = pdes.sample("diffusion", m, rng=6)
    g1, g2, g3 = (p.coefficients["g"].x.array for p in (p1, p2, p3))
    np.testing.assert_array_equal(g1, g2)
    assert not np.array_equal(g1, g3)


def test_bad_family_and_preset():
    m = meshes.jittered_square(3, seed=0)
    with pytest.raises(ValueError, match="Unrecognized PDE family 'heat'"):
        pdes.sample("heat", m, rng=0)
    with pytest.raises(ValueError, match="Unrecognized coefficient preset"):
        pdes.sample("diffusion", m, rng=0, preset="best")


def _manufactured(family, x):
    u = ufl.sin(ufl.pi * x[0]) * ufl.sin(ufl.pi * x[1])
    if family == "diffusion":
        c = {"g": 1 + x[0] ** 2 * x[1]}
        f = -ufl.div(c["g"] * ufl.grad(u))
    elif family == "anisotropic":
        K = ufl.as_matrix([[2 + x[0], 0.3], [0.3, 1 + x[1] ** 2]])
        c = {"K": K}
        f = -ufl.div(ufl.dot(K, ufl.grad(u)))
    else:
        c = {"kappa": 1 + x[0] * x[1], "alpha": 5.0}
        f = -ufl.div(c["kappa"] * ufl.grad(u)) + c["alpha"] * u
    return u, c, f


@pytest.mark.parametrize("family", pdes.FAMILIES)
def test_manufactured_solution_l2_rate(family):
    hs, errs = [], []
    for N in (8, 16, 32, 64):
        mesh = meshes.jittered_square(N, seed=1)
        V = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
        x = ufl.SpatialCoordinate(mesh)
        u_ex, coeffs, f = _manufactured(family, x)
        sysm = pdes.assemble(pdes.make_problem(family, V, coeffs, f=f))
        uh = dolfinx.fem.Function(V)
        uh.x.array[:] = spla.spsolve(sysm.A_csr.tocsc(), sysm.b)
        err2 = dolfinx.fem.assemble_scalar(
            dolfinx.fem.form((uh - u_ex) ** 2 * ufl.dx(metadata={"quadrature_degree": 6})))
        hs.append(1.0 / N)
        errs.append(np.sqrt(err2))
    rate = np.polyfit(np.log(hs), np.log(errs), 1)[0]
    assert abs(rate - 2.0) < 0.15, (rate, errs)


def test_petsc_matrix_equals_csr():
    sysm = pdes.assemble(pdes.sample("screened_poisson", meshes.jittered_square(5, seed=0),
                                     rng=1))
    x = np.random.default_rng(0).standard_normal(sysm.n)
    vx, vy = sysm.A.createVecs()
    vx.setArray(x)
    sysm.A.mult(vx, vy)
    np.testing.assert_allclose(vy.getArray(), sysm.A_csr @ x, rtol=1e-13)
    assert sysm.A.getType() in (PETSc.Mat.Type.SEQAIJ, PETSc.Mat.Type.MPIAIJ)


# ------------------------------------------------------------------ training samplers


def test_assemble_attaches_the_node_order():
    from nlss_fenicsx import la

    sysm = pdes.assemble(pdes.sample("diffusion", meshes.jittered_square(5, seed=0), rng=1))
    np.testing.assert_array_equal(la.node_order_of(sysm.A), sysm.node_order)
    np.testing.assert_array_equal(sysm.grid_order, meshes.grid_order(sysm.V))


def test_smoothed_sampler_equals_smoothing_in_node_order():
    from nlss_fenicsx.smoothing import gaussian_start, smoothed_vectors

    V = dolfinx.fem.functionspace(meshes.jittered_square(7, seed=2), ("Lagrange", 1))

    def make_problem(t):  # a user's function returning (V, a, L, bcs)
        prob = pdes.sample("anisotropic", V, rng=t)
        return prob.V, prob.a, prob.L, prob.bcs

    sampler = pdes.smoothed_sampler(make_problem, K=5, sweeps=6, omega=0.6, seed=3)
    S = sampler(4)
    assert S.shape == (64, 5) and S.dtype == np.float32 and sampler.node_order == "mesh"
    sysm = pdes.assemble(pdes.sample("anisotropic", V, rng=4))
    order = sysm.node_order
    A_node = sysm.A_csr[order][:, order]
    start = gaussian_start(np.random.default_rng((3, 4, 1)), 64, 5)
    ref = smoothed_vectors(A_node, 5, sweeps=6, omega=0.6, S0=start)
    np.testing.assert_allclose(S, ref, rtol=0, atol=2e-6)
    np.testing.assert_array_equal(sampler(4), S)
    assert not np.array_equal(sampler(5), S)
    assert sampler.mesh_id == meshes.mesh_id(V.mesh)


def test_training_sampler_with_matrix_in_node_order():
    mesh = meshes.jittered_square(6, seed=0)
    sampler = pdes.training_sampler("screened_poisson", mesh, K=4, seed=1, with_A=True)
    A, S = sampler(2)
    assert S.shape == (49, 4) and A.shape == (49, 49)
    V = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    sysm = pdes.assemble(pdes.sample("screened_poisson", V, np.random.default_rng((1, 2, 0))))
    order = sysm.node_order
    ref = sysm.A_csr[order][:, order]
    assert sp.linalg.norm(A - ref) <= 1e-12 * sp.linalg.norm(ref)


def test_samplers_refuse_bad_input():
    with pytest.raises(ValueError, match="expected a callable make_problem"):
        pdes.smoothed_sampler(3, K=2)
    with pytest.raises(ValueError, match="to return a pdes.Problem or a tuple"):
        pdes.smoothed_sampler(lambda t: "mesh", K=2)(0)
    with pytest.raises(ValueError, match="Unrecognized PDE family 'heat'"):
        pdes.training_sampler("heat", meshes.jittered_square(3, seed=0), K=2)
