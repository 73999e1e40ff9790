"""The jittered grid in NumPy alone: node set, Delaunay triangles, coefficient draws, and a
vectorised P1 assembler that reproduces the dolfinx assembly in grid order.

This is the single source of the random model (:func:`jittered_points`,
:func:`coefficient_draws`): :mod:`nlss_fenicsx.meshes` and :mod:`nlss_fenicsx.pdes` use
it, so the dolfinx route and this one see the same nodes, the same triangles (in the same
order) and the same coefficient of every triangle. :func:`assemble_p1` then gives the same
matrix as :func:`nlss_fenicsx.pdes.assemble`, permuted to grid order (the tests check
1e-12). The training data path uses it: it needs neither Gmsh nor dolfinx, is several
times faster, and runs wherever NumPy and SciPy do (a GPU node, for instance).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.spatial import Delaunay

__all__ = [
    "FAMILIES",
    "PRESETS",
    "GridProblem",
    "assemble_p1",
    "boundary_mask",
    "coefficient_draws",
    "delaunay_triangles",
    "effective_preset",
    "jittered_points",
]

FAMILIES = ("diffusion", "anisotropic", "screened_poisson")
PRESETS = ("default", "paper", "code")


def _check_N(N: int) -> int:
    if isinstance(N, bool) or not isinstance(N, int | np.integer) or N < 2:
        raise ValueError(f"N must be an integer >= 2 (cells per side), got {N!r}")
    return int(N)


def jittered_points(N: int, *, jitter: float = 0.35, seed: int | None = 0) -> np.ndarray:
    """Node coordinates of the jittered ``(N+1) x (N+1)`` grid, in grid order.

    Parameters
    ----------
    N : int
        Cells per side (``h = 1/N``); there are ``(N+1)**2`` nodes.
    jitter : float
        Each interior coordinate moves by ``U(-jitter*h, jitter*h)``; ``0 <= jitter < 0.5``.
    seed : int or None
        Seed of :func:`numpy.random.default_rng`.

    Returns
    -------
    numpy.ndarray
        Shape ``((N+1)**2, 2)``; row ``i + (N+1)*j`` is the node near ``(i*h, j*h)``.

    Examples
    --------
    >>> jittered_points(4, seed=1).shape
    (25, 2)
    """
    N = _check_N(N)
    if not (0.0 <= float(jitter) < 0.5):
        raise ValueError(f"jitter must satisfy 0 <= jitter < 0.5 (fraction of h), got {jitter!r}")
    h = 1.0 / N
    t = np.linspace(0.0, 1.0, N + 1)
    X, Y = np.meshgrid(t, t, indexing="xy")  # row j, column i -> node i + (N+1) j
    pts = np.column_stack([X.ravel(), Y.ravel()])
    interior = ~boundary_mask(N)
    rng = np.random.default_rng(seed)
    moved = pts[interior] + rng.uniform(-jitter * h, jitter * h, size=(int(interior.sum()), 2))
    # Cap: an interior node never reaches the boundary (only binds if jitter -> 0.5).
    margin = 0.5 * h * (1.0 - 2.0 * jitter) + 1e-3 * h
    np.clip(moved, margin, 1.0 - margin, out=moved)
    pts[interior] = moved
    return pts


def boundary_mask(N: int) -> np.ndarray:
    """Boolean mask of the boundary nodes, in grid order."""
    ij = np.arange((N + 1) ** 2)
    i, j = ij % (N + 1), ij // (N + 1)
    return (i == 0) | (i == N) | (j == 0) | (j == N)


def delaunay_triangles(points: np.ndarray) -> np.ndarray:
    """Delaunay triangulation of exactly ``points``, counter-clockwise, shape ``(m, 3)``."""
    tri = Delaunay(points, qhull_options="Qbb Qc").simplices.astype(np.int64)
    if np.unique(tri).size != len(points):
        raise RuntimeError("Delaunay triangulation dropped nodes; the node set is degenerate")
    p0, p1, p2 = points[tri[:, 0]], points[tri[:, 1]], points[tri[:, 2]]
    cross = (p1[:, 0] - p0[:, 0]) * (p2[:, 1] - p0[:, 1]) - (p1[:, 1] - p0[:, 1]) * (
        p2[:, 0] - p0[:, 0]
    )
    flip = cross < 0
    tri[flip, 1], tri[flip, 2] = tri[flip, 2].copy(), tri[flip, 1].copy()
    return tri


def effective_preset(family: str, preset: str) -> str:
    """``default`` resolves to ``code`` for diffusion and ``paper`` otherwise."""
    if family not in FAMILIES:
        raise ValueError(f"Unrecognized PDE family {family!r}; expected one of {FAMILIES}")
    if preset not in PRESETS:
        raise ValueError(f"Unrecognized coefficient preset {preset!r}; expected one of {PRESETS}")
    if preset == "default":
        return "code" if family == "diffusion" else "paper"
    return preset


def coefficient_draws(family: str, preset: str, ncells: int, rng) -> dict:
    """Random coefficients of one instance, one value per triangle in Gmsh/Delaunay order.

    Returns a dict with ``g`` (diffusion), ``K`` (anisotropic; shape ``(ncells, 2, 2)``)
    and ``angle``, ``k1``, or ``kappa`` and ``alpha`` (screened Poisson), plus ``preset``
    (the effective preset). See :mod:`nlss_fenicsx.pdes` for the distributions.
    """
    eff = effective_preset(family, preset)
    rng = np.random.default_rng(rng)
    out: dict = {"preset": eff}
    if family == "diffusion":
        scale = 1.5 if eff == "code" else np.sqrt(1.5)
        out["g"] = np.exp(scale * rng.standard_normal(ncells))
    elif family == "anisotropic":
        if eff == "paper":
            k1, t = 1e5, np.pi * rng.standard_normal(ncells)
        else:
            k1, t = 1e3, rng.uniform(0.0, np.pi, ncells)
        c, s = np.cos(t), np.sin(t)
        # R diag(k1, 1) R^T with R = [[c, -s], [s, c]].
        K = np.empty((ncells, 2, 2))
        K[:, 0, 0] = k1 * c * c + s * s
        K[:, 0, 1] = K[:, 1, 0] = (k1 - 1.0) * c * s
        K[:, 1, 1] = k1 * s * s + c * c
        out.update(K=K, angle=t, k1=k1)
    else:
        # alpha is one number per instance, drawn first.
        out["alpha"] = rng.uniform(0.0, 20.0) if eff == "paper" else 10.0 ** rng.uniform(0.0, 2.0)
        out["kappa"] = np.exp(rng.standard_normal(ncells))
    return out


_GRAD_REF = np.array([[-1.0, -1.0], [1.0, 0.0], [0.0, 1.0]])
_MASS_REF = (np.ones((3, 3)) + np.eye(3)) / 12.0


@dataclass(frozen=True)
class GridProblem:
    """An instance assembled in grid order: ``A`` (CSR, Dirichlet rows/columns replaced by
    identity), ``b`` (for f = 1), the nodes and the triangles."""

    A: sp.csr_matrix
    b: np.ndarray
    points: np.ndarray
    triangles: np.ndarray
    coefficients: dict


def assemble_p1(family: str, points: np.ndarray, triangles: np.ndarray, coefficients: dict,
                *, boundary: np.ndarray) -> GridProblem:
    """Vectorised P1 assembly with the same Dirichlet treatment as :func:`pdes.assemble`.

    Parameters
    ----------
    family : str
    points : (n, 2) array, triangles : (m, 3) int array
    coefficients : dict
        From :func:`coefficient_draws` (per-triangle values in triangle order).
    boundary : (n,) bool array
        Dirichlet nodes: their rows and columns are zeroed and 1 put on the diagonal.
    """
    xc = points[triangles]  # (m, 3, 2)
    B = np.stack([xc[:, 1] - xc[:, 0], xc[:, 2] - xc[:, 0]], axis=2)
    det = B[:, 0, 0] * B[:, 1, 1] - B[:, 0, 1] * B[:, 1, 0]
    area = 0.5 * np.abs(det)
    Binv = np.empty_like(B)
    Binv[:, 0, 0], Binv[:, 1, 1] = B[:, 1, 1] / det, B[:, 0, 0] / det
    Binv[:, 0, 1], Binv[:, 1, 0] = -B[:, 0, 1] / det, -B[:, 1, 0] / det
    G = _GRAD_REF @ Binv  # (m, 3, 2) physical gradients
    if family == "diffusion":
        Ke = (coefficients["g"] * area)[:, None, None] * (G @ G.transpose(0, 2, 1))
    elif family == "anisotropic":
        Ke = area[:, None, None] * (G @ coefficients["K"] @ G.transpose(0, 2, 1))
    elif family == "screened_poisson":
        Ke = (coefficients["kappa"] * area)[:, None, None] * (G @ G.transpose(0, 2, 1))
        Ke += (coefficients["alpha"] * area)[:, None, None] * _MASS_REF
    else:
        raise ValueError(f"Unrecognized PDE family {family!r}; expected one of {FAMILIES}")
    n = len(points)
    keep = ~boundary
    # Drop element entries in Dirichlet rows or columns before summing (no stored zeros).
    rows = np.repeat(triangles, 3, axis=1).ravel()
    cols = np.tile(triangles, (1, 3)).ravel()
    vals = Ke.ravel()
    inner = keep[rows] & keep[cols]
    bnd = np.flatnonzero(boundary)
    A = sp.csr_matrix(
        (np.concatenate([vals[inner], np.ones(len(bnd))]),
         (np.concatenate([rows[inner], bnd]), np.concatenate([cols[inner], bnd]))),
        shape=(n, n))
    A.sum_duplicates()
    A.sort_indices()
    b = np.zeros(n)
    np.add.at(b, triangles.ravel(), np.repeat(area / 3.0, 3))
    b[boundary] = 0.0
    return GridProblem(A=A, b=b, points=points, triangles=triangles, coefficients=coefficients)
