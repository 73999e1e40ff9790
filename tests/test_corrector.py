"""nlss_fenicsx.corrector: the sine basis corrected per instance (coarse kind ``corrected``).

References: finite differences of the grid sine modes (their ratio to the analytic
derivative is sin(a pi h) / (a pi h)), the full P1 operator with its boundary columns
(grid.assemble_p1 without Dirichlet rows), permutations of the dofs, and iteration counts of
the dense-checked TwoGrid against the fixed sine basis on held-out instances.
"""

import numpy as np
import pytest

from nlss_fenicsx import grid
from nlss_fenicsx.coarse import coarse_basis
from nlss_fenicsx.corrector import (
    CorrectorModel,
    corrected_basis,
    corrector_rhs,
    grid_geometry,
    load_corrector,
    sine_gradients,
)
from nlss_fenicsx.spectral import sine_basis, sine_modes
from nlss_fenicsx.twogrid import TwoGrid, pcg


def _instance(family, N, seed, *, full=False):
    pts = grid.jittered_points(N, seed=seed)
    tri = grid.delaunay_triangles(pts)
    coef = grid.coefficient_draws(family, "default", len(tri), np.random.default_rng(seed))
    bnd = np.zeros((N + 1) ** 2, bool) if full else grid.boundary_mask(N)
    return grid.assemble_p1(family, pts, tri, coef, boundary=bnd)


def test_sine_gradients_are_the_derivatives():
    N, r = 12, 6
    P0, Px, Py = sine_gradients(N, r)
    np.testing.assert_array_equal(P0, sine_basis(N, r))
    ab = sine_modes(N, r)
    h = 1.0 / N
    G0, Gx, Gy = (X.reshape(N + 1, N + 1, r) for X in (P0, Px, Py))  # [j, i, k]
    fd_x = (G0[1:-1, 2:] - G0[1:-1, :-2]) / (2 * h)
    fd_y = (G0[2:, 1:-1] - G0[:-2, 1:-1]) / (2 * h)
    sinc = lambda a: np.sin(a * np.pi * h) / (a * np.pi * h)  # noqa: E731
    np.testing.assert_allclose(fd_x, Gx[1:-1, 1:-1] * sinc(ab[:, 0]), atol=1e-12)
    np.testing.assert_allclose(fd_y, Gy[1:-1, 1:-1] * sinc(ab[:, 1]), atol=1e-12)
    rows = np.array([5, 40])
    np.testing.assert_array_equal(sine_gradients(N, r, nodes=rows)[1], Px[rows])


def test_rhs_is_the_full_operator_where_the_boundary_flux_is_known():
    """Off the first ring, and on its sides for the coordinate normal to the side, A's rows
    rebuild the full operator's A_full xi exactly (diffusion: rows of A_full sum to 0)."""
    N = 10
    A = _instance("diffusion", N, 3).A
    A_full = _instance("diffusion", N, 3, full=True).A
    xi, xi_b = grid_geometry(N)
    g = corrector_rhs(A, xi, xi_b)
    ref = A_full @ xi
    i, j = np.arange(A.shape[0]) % (N + 1), np.arange(A.shape[0]) // (N + 1)
    interior = ~grid.boundary_mask(N)
    deep = interior & (i > 1) & (i < N - 1) & (j > 1) & (j < N - 1)
    np.testing.assert_allclose(g[deep], ref[deep], atol=1e-12 * np.abs(ref).max())
    sides = interior & ((i == 1) | (i == N - 1)) & (j > 1) & (j < N - 1)
    np.testing.assert_allclose(g[sides, 0], ref[sides, 0], atol=1e-12 * np.abs(ref).max())
    assert np.all(g[grid.boundary_mask(N)] == 0)


def test_basis_in_any_dof_order_and_through_the_dispatcher():
    N, r = 8, 6
    A = _instance("anisotropic", N, 5).A
    n = A.shape[0]
    P = corrected_basis(A, r, node_order=np.arange(n))
    perm = np.random.default_rng(0).permutation(n)  # dof of node i = perm[i]
    Q = np.zeros_like(A.toarray())
    Q[perm[:, None], perm[None, :]] = A.toarray()
    import scipy.sparse as sp

    P_perm = corrected_basis(sp.csr_matrix(Q), r, node_order=perm)
    np.testing.assert_allclose(P_perm[perm], P, atol=1e-12)
    np.testing.assert_array_equal(coarse_basis("corrected", A, r=r, node_order=np.arange(n)),
                                  P)
    assert np.linalg.matrix_rank(P) == r and np.all(P[grid.boundary_mask(N)] == 0)
    with pytest.raises(ValueError, match="needs the node order"):
        coarse_basis("corrected", A, r=r)


def test_classical_corrector_beats_the_fixed_sine_basis_on_held_out_instances():
    N, r = 24, 24
    its = {"sine": [], "corrected": []}
    for seed in range(7000, 7006):
        gp = _instance("diffusion", N, seed)
        for name, P in (("sine", sine_basis(N, r)),
                        ("corrected", corrected_basis(gp.A, r, node_order=np.arange(625)))):
            its[name].append(pcg(gp.A, gp.b, TwoGrid(gp.A, P))[1].iterations)
    assert np.median(its["corrected"]) <= np.median(its["sine"]) - 2  # 12 vs 15 measured


def test_model_round_trip_and_refusals(tmp_path):
    rng = np.random.default_rng(0)
    w = {"mu": np.zeros(8), "sd": np.ones(8), "W1": rng.standard_normal((8, 4)),
         "b1": np.zeros(4), "W2": rng.standard_normal((4, 4)), "b2": np.zeros(4),
         "W3": rng.standard_normal((4, 2)), "b3": np.zeros(2)}
    model = CorrectorModel(w, {"note": "x"})
    path = tmp_path / "m.npz"
    model.save(path)
    back = load_corrector(path)
    F = rng.standard_normal((5, 8))
    np.testing.assert_array_equal(back.weights(F), model.weights(F))
    assert back.meta["note"] == "x"
    # ReLU layers, by hand for one node.
    x = F[0] @ w["W1"]
    relu = lambda v: np.where(v > 0, v, 0.0)  # noqa: E731
    np.testing.assert_allclose(model.weights(F)[0], 1 + relu(relu(x) @ w["W2"]) @ w["W3"])
    with pytest.raises(ValueError, match="missing weights"):
        CorrectorModel({"mu": w["mu"]})
    with pytest.raises(ValueError, match="cannot read the corrector model"):
        load_corrector(tmp_path / "absent.npz")
    np.savez(tmp_path / "other.npz", P=np.eye(2))
    with pytest.raises(ValueError, match="other.npz: cannot read the corrector model"):
        load_corrector(tmp_path / "other.npz")


def test_corrected_through_the_petsc_pc():
    """nlss_coarse corrected in TwoGridPC: the same basis as the SciPy path (dof order from
    the attached node order) and fewer iterations than sine."""
    from nlss_fenicsx import meshes, pdes
    from nlss_fenicsx._fenicsx import PETSc
    from nlss_fenicsx.options import TwoGridOptions
    from nlss_fenicsx.petsc import TwoGridPC

    system = pdes.assemble(pdes.sample("diffusion", meshes.jittered_square(16, seed=7001),
                                       rng=7001))
    its = {}
    for kind in ("sine", "corrected"):
        ksp = PETSc.KSP().create()
        ksp.setOperators(system.A)
        ksp.setType("cg")
        ksp.setTolerances(rtol=1e-6, atol=0.0)
        ksp.getPC().setType("python")
        ctx = TwoGridPC(options=TwoGridOptions(coarse=kind, r=16))
        ksp.getPC().setPythonContext(ctx)
        b, x = system.A.createVecRight(), system.A.createVecLeft()
        b.setArray(system.b)
        ksp.solve(b, x)
        its[kind] = ksp.getIterationNumber()
        if kind == "corrected":
            ref = corrected_basis(system.A_csr, 16, node_order=system.node_order)
            np.testing.assert_allclose(ctx.P, ref, atol=1e-12)
        ksp.destroy()
    assert its["corrected"] < its["sine"]
