"""The jittered grid in NumPy alone: nodes, Delaunay triangles, coefficients, P1 assembly.

This is the single source of the random model (:func:`jittered_points`,
:func:`coefficient_draws`): :mod:`nlss_fenicsx.meshes` and :mod:`nlss_fenicsx.pdes` use
it, so the dolfinx route and this one see the same nodes, the same triangles (in the same
order) and the same coefficient of every triangle. The vectorised :func:`assemble_p1` then
gives the same matrix as :func:`nlss_fenicsx.pdes.assemble`, permuted to grid order (the
tests check 1e-12). The training data path uses it: it needs neither Gmsh nor dolfinx, is
faster, and runs wherever NumPy and SciPy do (a GPU node, for instance). The mesh and
coefficient laws follow the paper (section 5, "Dataset Preparation" and "Benchmarks") and,
for ``preset="code"``, the authors' public code (DESIGN.md section 4).
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
    "mean_coefficients",
    "reference_operator",
]

FAMILIES = ("diffusion", "anisotropic", "screened_poisson")
PRESETS = ("default", "paper", "code")


def _check_N(N: int) -> int:
    if isinstance(N, bool) or not isinstance(N, int | np.integer) or N < 2:
        raise ValueError(f"N must be an integer >= 2 (cells per side), got {N!r}")
    return int(N)


def jittered_points(N: int, *, jitter: float = 0.35, seed: int | None = 0) -> np.ndarray:
    """Return the node coordinates of the jittered ``(N+1) x (N+1)`` grid, in grid order.

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

    Raises
    ------
    ValueError
        On ``N < 2`` or a jitter outside ``[0, 0.5)``.

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
    """Return the boolean mask of the boundary nodes, shape ``((N+1)**2,)``, grid order.

    Examples
    --------
    >>> int(boundary_mask(4).sum())  # 4 * N nodes on the boundary
    16
    """
    ij = np.arange((N + 1) ** 2)
    i, j = ij % (N + 1), ij // (N + 1)
    return (i == 0) | (i == N) | (j == 0) | (j == N)


def delaunay_triangles(points: np.ndarray) -> np.ndarray:
    """Triangulate exactly ``points`` (Delaunay, Qhull), counter-clockwise.

    Parameters
    ----------
    points : numpy.ndarray, shape (n, 2)

    Returns
    -------
    numpy.ndarray, shape (m, 3), int64
        Node indices of each triangle, counter-clockwise.

    Raises
    ------
    RuntimeError
        If Qhull drops a node (a degenerate node set).

    Examples
    --------
    >>> delaunay_triangles(jittered_points(2, seed=0)).shape  # 2 N^2 triangles
    (8, 3)
    """
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
    """Resolve a coefficient preset: ``default`` is ``code`` for diffusion, else ``paper``.

    Raises
    ------
    ValueError
        On an unknown family or preset.

    Examples
    --------
    >>> effective_preset("diffusion", "default"), effective_preset("anisotropic", "default")
    ('code', 'paper')
    """
    if family not in FAMILIES:
        raise ValueError(f"Unrecognized PDE family {family!r}; expected one of {FAMILIES}")
    if preset not in PRESETS:
        raise ValueError(f"Unrecognized coefficient preset {preset!r}; expected one of {PRESETS}")
    if preset == "default":
        return "code" if family == "diffusion" else "paper"
    return preset


def coefficient_draws(family: str, preset: str, ncells: int, rng) -> dict:
    """Draw the random coefficients of one instance, one value per triangle.

    Triangles in Gmsh/Delaunay order. See :mod:`nlss_fenicsx.pdes` and DESIGN.md section 4
    for the distributions (paper section 5, and the authors' code for ``preset="code"``).

    Parameters
    ----------
    family, preset : str
        One of :data:`FAMILIES`, :data:`PRESETS`.
    ncells : int
        Number of triangles.
    rng : numpy.random.Generator, int or None

    Returns
    -------
    dict
        ``g`` (diffusion, shape ``(ncells,)``), ``K`` (anisotropic, ``(ncells, 2, 2)``)
        with ``angle`` and ``k1``, or ``kappa`` (``(ncells,)``) and ``alpha`` (a float,
        screened Poisson); plus ``preset`` (the effective preset).

    Raises
    ------
    ValueError
        If ``family`` or ``preset`` is not one this module knows.

    Examples
    --------
    >>> coefficient_draws("diffusion", "default", 3, 0)["g"].shape
    (3,)
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


def mean_coefficients(family: str, preset: str, ncells: int) -> dict:
    """Return the expected coefficients of a family, per triangle: the "mean" instance.

    Same keys as :func:`coefficient_draws`, with every random value replaced by its
    expectation: diffusion ``E[exp(s Z)] = exp(s^2 / 2)``; anisotropic
    ``E[R diag(k1, 1) R^T] = diag(k1 c + s, k1 s + c)`` with ``c = E[cos^2 phi]`` and
    ``s = E[sin^2 phi]`` (``E[cos phi sin phi] = 0`` for both presets' symmetric angle
    laws; ``c = (1 + exp(-2 pi^2)) / 2`` for ``phi ~ N(0, pi^2)``, ``1/2`` for
    ``U(0, pi)``); screened Poisson ``E[kappa] = exp(1/2)`` and ``E[alpha] = 10``
    (``U(0, 20)``) or ``99 / ln(100)`` (``10^U(0, 2)``). The matrix assembled from them is
    eig-ref's reference operator for the family (:func:`reference_operator`).

    Parameters
    ----------
    family, preset : str
        As for :func:`coefficient_draws`.
    ncells : int
        Number of triangles.

    Returns
    -------
    dict

    Examples
    --------
    >>> round(float(mean_coefficients("diffusion", "code", 2)["g"][0]), 4)  # exp(1.5^2 / 2)
    3.0802
    """
    eff = effective_preset(family, preset)
    out: dict = {"preset": eff}
    if family == "diffusion":
        scale = 1.5 if eff == "code" else np.sqrt(1.5)
        out["g"] = np.full(ncells, np.exp(0.5 * scale**2))
    elif family == "anisotropic":
        k1 = 1e5 if eff == "paper" else 1e3
        c = 0.5 * (1.0 + np.exp(-2.0 * np.pi**2)) if eff == "paper" else 0.5
        K = np.zeros((ncells, 2, 2))
        K[:, 0, 0] = k1 * c + (1.0 - c)
        K[:, 1, 1] = k1 * (1.0 - c) + c
        out.update(K=K, k1=k1)
    else:
        out["alpha"] = 10.0 if eff == "paper" else 99.0 / np.log(100.0)
        out["kappa"] = np.full(ncells, np.exp(0.5))
    return out


def reference_operator(family: str, N: int, *, seed: int | None = 0, jitter: float = 0.35,
                       preset: str = "default") -> sp.csr_matrix:
    """Assemble the family's mean-coefficient matrix on the mesh of ``seed``, grid order.

    eig-ref's reference operator (:func:`nlss_fenicsx.coarse.coarse_basis`): built once per
    mesh, with the Dirichlet rows and columns treated as in the instances.

    Parameters
    ----------
    family : str
    N : int
        Cells per side.
    seed, jitter : as for :func:`jittered_points` (the mesh of the instances).
    preset : str

    Returns
    -------
    scipy.sparse.csr_matrix, shape ((N+1)^2, (N+1)^2)

    Examples
    --------
    >>> reference_operator("screened_poisson", 4).shape
    (25, 25)
    """
    pts = jittered_points(N, jitter=jitter, seed=seed)
    tri = delaunay_triangles(pts)
    coef = mean_coefficients(family, preset, len(tri))
    return assemble_p1(family, pts, tri, coef, boundary=boundary_mask(N)).A


_GRAD_REF = np.array([[-1.0, -1.0], [1.0, 0.0], [0.0, 1.0]])
_MASS_REF = (np.ones((3, 3)) + np.eye(3)) / 12.0


@dataclass(frozen=True)
class GridProblem:
    """An instance assembled in grid order.

    Attributes
    ----------
    A : scipy.sparse.csr_matrix, shape (n, n)
        Dirichlet rows and columns replaced by the identity.
    b : numpy.ndarray, shape (n,)
        Load vector for f = 1 (zero on the boundary).
    points : numpy.ndarray, shape (n, 2)
    triangles : numpy.ndarray, shape (m, 3)
    coefficients : dict
        As drawn by :func:`coefficient_draws`.
    """

    A: sp.csr_matrix
    b: np.ndarray
    points: np.ndarray
    triangles: np.ndarray
    coefficients: dict


def assemble_p1(family: str, points: np.ndarray, triangles: np.ndarray, coefficients: dict,
                *, boundary: np.ndarray) -> GridProblem:
    """Assemble P1 with the same Dirichlet treatment as :func:`nlss_fenicsx.pdes.assemble`.

    Vectorised over the triangles (element matrices from the constant gradients of the
    linear shape functions; exact for piecewise-constant coefficients).

    Parameters
    ----------
    family : str
        One of :data:`FAMILIES`.
    points : numpy.ndarray, shape (n, 2)
    triangles : numpy.ndarray, shape (m, 3), int
    coefficients : dict
        From :func:`coefficient_draws` or :func:`mean_coefficients` (per-triangle values
        in triangle order).
    boundary : numpy.ndarray, shape (n,), bool
        Dirichlet nodes: their rows and columns are zeroed and 1 put on the diagonal.

    Returns
    -------
    GridProblem

    Raises
    ------
    ValueError
        If ``family`` is not one of :data:`FAMILIES`.

    Examples
    --------
    >>> import numpy as np
    >>> pts = jittered_points(4, seed=0)
    >>> tri = delaunay_triangles(pts)
    >>> gp = assemble_p1("diffusion", pts, tri, {"g": np.ones(len(tri))},
    ...                  boundary=boundary_mask(4))
    >>> gp.A.shape, bool(abs(gp.A - gp.A.T).max() < 1e-14)
    ((25, 25), True)
    """
    xc = points[triangles]  # (m, 3, 2)
    jac = np.stack([xc[:, 1] - xc[:, 0], xc[:, 2] - xc[:, 0]], axis=2)
    det = jac[:, 0, 0] * jac[:, 1, 1] - jac[:, 0, 1] * jac[:, 1, 0]
    area = 0.5 * np.abs(det)
    jac_inv = np.empty_like(jac)
    jac_inv[:, 0, 0], jac_inv[:, 1, 1] = jac[:, 1, 1] / det, jac[:, 0, 0] / det
    jac_inv[:, 0, 1], jac_inv[:, 1, 0] = -jac[:, 0, 1] / det, -jac[:, 1, 0] / det
    G = _GRAD_REF @ jac_inv  # (m, 3, 2) physical gradients
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
