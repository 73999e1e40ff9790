"""nlss_fenicsx.family: the nlss-family basis is the NLSS optimum over one basis, and nested.

References: a dense eigensolve of C = mean_i S_i S_i^T / ||S_i||^2 (Ky Fan: the top-r
eigenvalue sum is the largest energy any r-dimensional basis captures), gradient descent
with the package's torch NLSS loss (nn.losses.nlss_loss) on P = qr(Theta), and dense
generalized eigenvectors of (A, diag A) from scipy.linalg.eigh.
"""

import numpy as np
import pytest
import scipy.linalg as sla

from nlss_fenicsx import grid
from nlss_fenicsx.basisfile import load_basis, save_basis
from nlss_fenicsx.family import build_family_basis, family_basis, instance_targets


def _instance(family: str, N: int, seed: int):
    pts = grid.jittered_points(N, seed=seed)
    tri = grid.delaunay_triangles(pts)
    coef = grid.coefficient_draws(family, "default", len(tri), np.random.default_rng(seed))
    return grid.assemble_p1(family, pts, tri, coef, boundary=grid.boundary_mask(N)).A


@pytest.fixture(scope="module")
def targets():
    return [instance_targets(_instance("diffusion", 8, 50 + i), "eig", r_max=12)
            for i in range(6)]


def _captured(P, targets) -> float:
    return float(np.mean([np.sum((P.T @ S) ** 2) / np.sum(S * S) for S in targets]))


def _nlss_loss(P, targets) -> float:
    return float(np.mean([np.mean(1 - np.cumsum(np.sum((P.T @ S) ** 2, axis=1))
                                  / np.sum(S * S)) for S in targets]))


def test_every_truncation_is_the_optimum_of_its_rank(targets):
    """Nested as NLSS: the r leading columns capture the largest energy of any r-dimensional
    basis (the top-r eigenvalue sum of C), so the energy captured decreases with truncation
    exactly along C's spectrum."""
    P, energy = family_basis(targets, 10)
    np.testing.assert_allclose(P.T @ P, np.eye(10), atol=1e-12)
    C = np.mean([S @ S.T / np.sum(S * S) for S in targets], axis=0)
    lam = np.linalg.eigvalsh(C)[::-1]
    np.testing.assert_allclose(energy, lam[:10], rtol=1e-10, atol=1e-14)
    captured = [_captured(P[:, :r], targets) for r in range(1, 11)]
    np.testing.assert_allclose(captured, np.cumsum(lam[:10]), rtol=1e-10)
    assert np.all(np.diff(captured) > 0)
    # No other basis of a rank does better: e.g. sine modes and random ones.
    from nlss_fenicsx.spectral import sine_basis

    for r in (3, 7, 10):
        for Q in (sine_basis(8, r), np.linalg.qr(np.random.default_rng(r).standard_normal(
                (81, r)))[0]):
            assert _captured(Q, targets) <= captured[r - 1] + 1e-12


def test_gradient_descent_on_the_nlss_loss_reaches_the_closed_form(targets):
    """The closed form is the minimiser: Adam on P = qr(Theta) with the package's torch NLSS
    loss, from a random start, ends at the PCA's loss (never below it)."""
    torch = pytest.importorskip("torch")
    from nlss_fenicsx.nn.losses import nlss_loss

    r_max = 8
    P_pca, _ = family_basis(targets, r_max)
    best = _nlss_loss(P_pca, targets)
    torch.manual_seed(0)
    theta = torch.randn(81, r_max, dtype=torch.float64, requires_grad=True)
    S = torch.stack([torch.from_numpy(s / np.linalg.norm(s)) for s in targets])
    opt = torch.optim.Adam([theta], lr=0.02)
    for _ in range(600):
        Q, R = torch.linalg.qr(theta)
        loss = nlss_loss(Q * torch.sign(torch.diagonal(R)), S)
        opt.zero_grad()
        loss.backward()
        opt.step()
    Q = torch.linalg.qr(theta.detach())[0].numpy()
    reached = _nlss_loss(Q, targets)
    assert best <= reached + 1e-12
    assert reached - best < 2e-3 * best
    assert abs(float(loss.detach()) - reached) < 1e-2 * reached  # the package's loss is this


def test_eig_targets_are_the_lowest_generalized_eigenvectors():
    A = _instance("anisotropic", 6, 3)
    V = instance_targets(A, "eig", r_max=5)
    free = A.diagonal() != 1.0  # the Dirichlet rows are identity rows here
    Ad = A.toarray()[np.ix_(free, free)]
    lam, W = sla.eigh(Ad, np.diag(np.diag(Ad)), subset_by_index=[0, 4])
    assert np.all(V[~free] == 0)
    # Column j is +-v_j / ||v_j|| * (lambda_1 / lambda_j)^(1/2) (simple eigenvalues here).
    ref = W / np.linalg.norm(W, axis=0) * np.sqrt(lam[0] / lam)
    np.testing.assert_allclose(np.abs(V[free]), np.abs(ref), atol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(V, axis=0), np.sqrt(lam[0] / lam), rtol=1e-10)


def test_smooth_targets_and_errors():
    A = _instance("diffusion", 6, 2)
    S = instance_targets(A, "smooth", K=7, sweeps=30, seed=1)
    assert S.shape == (49, 7)
    np.testing.assert_allclose(np.linalg.norm(S, axis=0), 1.0)
    with pytest.raises(ValueError, match=r"Unrecognized target 'svd'; expected one of"):
        instance_targets(A, "svd")
    with pytest.raises(ValueError, match=r"expected r_max < 24 \(free unknowns - 1\)"):
        instance_targets(A, "eig", r_max=40)
    with pytest.raises(ValueError, match="at least one target"):
        family_basis([], 2)
    with pytest.raises(ValueError, match="expected targets with n = 49 rows, got 25"):
        family_basis([S, S[:25]], 2)
    with pytest.raises(ValueError, match=r"expected r_max < min\(n, total columns\) = 7"):
        family_basis([S], 7)


def test_built_basis_round_trips_through_a_basis_file(tmp_path):
    P, meta = build_family_basis("screened_poisson", 6, 6, instances=3, target="eig")
    assert P.shape == (49, 6) and meta["kind"] == "nlss-family" and 0 < meta["loss"] < 1
    path = tmp_path / "fam.npz"
    save_basis(path, P, meta=meta)
    Q, got = load_basis(path)
    np.testing.assert_array_equal(Q, P)
    assert {k: got[k] for k in ("family", "target", "instances", "N")} == {
        "family": "screened_poisson", "target": "eig", "instances": 3, "N": 6}
    assert got["n"] == 49 and got["r_max"] == 6 and got["order"] == "node"
