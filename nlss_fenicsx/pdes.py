"""The paper's three PDE families as UFL forms on P1, their samplers, and assembly.

Families (paper section 5.1, Eqs. 5-7), all with ``u = 0`` on the boundary of ``[0,1]^2``:

``diffusion``
    ``-div(g grad u) = f`` with ``g`` constant per triangle.
``anisotropic``
    ``-div(K grad u) = f`` with ``K = R(t) diag(k1, 1) R(t)^T`` constant per triangle.
``screened_poisson``
    ``-div(kappa grad u) + alpha u = f`` with ``kappa`` per triangle and one ``alpha``
    per instance (the paper's ``A = K + alpha M``).

Coefficient presets (DESIGN.md section 4; ``Z`` is a standard normal per triangle):

============  =========================  ==============================  =====================
preset        diffusion ``g``            anisotropic ``K``               screened Poisson
============  =========================  ==============================  =====================
``paper``     ``exp(sqrt(1.5) Z)``       ``k1=1e5``, ``t ~ N(0, pi^2)``  ``kappa=exp(Z)``,
              (``N(0, 1.5)``, variance)                                  ``alpha ~ U(0, 20)``
``code``      ``exp(1.5 Z)``             ``k1=1e3``, ``t ~ U(0, pi)``    ``kappa=exp(Z)``,
                                                                         ``alpha=10^U(0, 2)``
``default``   as ``code``                as ``paper``                    as ``paper``
============  =========================  ==============================  =====================

Random draws are made over the mesh's *original* (Gmsh) cell numbering, so the same
seed gives the same coefficient field whatever dolfinx's reordering or partitioning.

The Dirichlet condition follows the authors' code: the boundary rows and columns of ``A``
are zeroed with 1 on the diagonal, so ``A`` keeps its full size ``n = (N+1)^2`` and stays
SPD, and the boundary entries of ``b`` are 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from nlss_fenicsx._fenicsx import PETSc, dolfinx, ufl
from nlss_fenicsx.grid import FAMILIES, PRESETS, coefficient_draws
from nlss_fenicsx.petsc import petsc_to_csr

__all__ = [
    "FAMILIES",
    "PRESETS",
    "Problem",
    "System",
    "assemble",
    "boundary_dofs",
    "forms",
    "make_problem",
    "petsc_to_csr",
    "sample",
]



@dataclass(frozen=True)
class Problem:
    """One PDE instance: forms, boundary condition and coefficients (not yet assembled).

    Attributes
    ----------
    family, preset : str
    V : dolfinx.fem.FunctionSpace
        The P1 space.
    a, L : ufl.Form
        Bilinear and linear forms.
    bcs : list of dolfinx.fem.DirichletBC
        ``u = 0`` on the whole boundary.
    coefficients : dict
        The sampled fields (dolfinx Functions/Constants) and scalars by name.
    """

    family: str
    preset: str
    V: Any
    a: Any
    L: Any
    bcs: list
    coefficients: dict = field(default_factory=dict)


@dataclass(frozen=True)
class System:
    """An assembled instance.

    Attributes
    ----------
    A : petsc4py.PETSc.Mat
        Boundary rows/columns zeroed, 1 on the diagonal, size ``n = (N+1)^2``.
    A_csr : scipy.sparse.csr_matrix
        The same matrix in dof order (in parallel: this rank's owned rows, global columns).
    b : numpy.ndarray
        Right-hand side (owned entries), 0 on the boundary.
    boundary_dofs : numpy.ndarray
        Global indices of the boundary dofs owned by this rank.
    grid_order : numpy.ndarray
        ``grid_order[i + (N+1)*j]`` is the global dof of grid node ``(i, j)``.
    V : dolfinx.fem.FunctionSpace
    problem : Problem
    """

    A: Any
    A_csr: sp.csr_matrix
    b: np.ndarray
    boundary_dofs: np.ndarray
    grid_order: np.ndarray
    V: Any
    problem: Problem | None = None

    @property
    def n(self) -> int:
        """Global number of unknowns."""
        return int(self.A.getSize()[0])


def _check_family(family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"Unrecognized PDE family {family!r}; expected one of {FAMILIES}")
    return family


def _check_preset(preset: str) -> str:
    if preset not in PRESETS:
        raise ValueError(f"Unrecognized coefficient preset {preset!r}; expected one of {PRESETS}")
    return preset


def forms(family: str, V, coefficients: dict, f=1.0):
    """UFL bilinear and linear forms of ``family`` for given coefficients.

    ``coefficients`` holds UFL expressions (Functions, Constants or formulas in
    ``ufl.SpatialCoordinate``): ``g`` (diffusion), ``K`` (anisotropic, 2x2),
    ``kappa`` and ``alpha`` (screened Poisson). ``f`` is any UFL expression or number.
    """
    _check_family(family)
    u, v = ufl.TrialFunction(V), ufl.TestFunction(V)
    dx = ufl.dx(domain=V.mesh)
    if family == "diffusion":
        a = coefficients["g"] * ufl.inner(ufl.grad(u), ufl.grad(v)) * dx
    elif family == "anisotropic":
        a = ufl.inner(ufl.dot(coefficients["K"], ufl.grad(u)), ufl.grad(v)) * dx
    else:
        a = (coefficients["kappa"] * ufl.inner(ufl.grad(u), ufl.grad(v))
             + coefficients["alpha"] * u * v) * dx
    if isinstance(f, int | float):
        f = dolfinx.fem.Constant(V.mesh, PETSc.ScalarType(f))
    L = f * v * dx
    return a, L


def boundary_dofs(V) -> np.ndarray:
    """Local indices of the dofs on the exterior boundary (owned and ghost)."""
    mesh = V.mesh
    tdim = mesh.topology.dim
    mesh.topology.create_connectivity(tdim - 1, tdim)
    facets = dolfinx.mesh.exterior_facet_indices(mesh.topology)
    return dolfinx.fem.locate_dofs_topological(V, tdim - 1, facets)


def _dg0(mesh, values: np.ndarray, shape=None, name="c"):
    Q = dolfinx.fem.functionspace(mesh, ("DG", 0) if shape is None else ("DG", 0, shape))
    fn = dolfinx.fem.Function(Q, name=name)
    # DG0: dof i of Q is cell i (one dof per cell, local numbering of cells).
    cells = np.arange(len(values), dtype=np.int32)
    dofs = Q.dofmap.list[cells, 0]
    bs = Q.dofmap.bs
    arr = fn.x.array.reshape(-1, bs)
    arr[dofs] = values.reshape(len(values), bs)
    fn.x.scatter_forward()
    return fn


def _sample_coefficients(family: str, preset: str, mesh, rng: np.random.Generator):
    """Draw with :func:`nlss_fenicsx.grid.coefficient_draws` over the global cells in
    original (Gmsh) order, keep those of this rank's cells, and wrap them as DG0."""
    tdim = mesh.topology.dim
    imap = mesh.topology.index_map(tdim)
    draws = coefficient_draws(family, preset, imap.size_global, rng)
    local = np.asarray(mesh.topology.original_cell_index)[: imap.size_local + imap.num_ghosts]
    coeffs: dict = {"preset_effective": draws["preset"]}
    if family == "diffusion":
        coeffs["g"] = _dg0(mesh, draws["g"][local], name="g")
    elif family == "anisotropic":
        coeffs["K"] = _dg0(mesh, draws["K"][local].reshape(-1, 4), shape=(2, 2), name="K")
        coeffs["angle"] = draws["angle"][local]
        coeffs["k1"] = draws["k1"]
    else:
        coeffs["kappa"] = _dg0(mesh, draws["kappa"][local], name="kappa")
        coeffs["alpha"] = dolfinx.fem.Constant(mesh, PETSc.ScalarType(draws["alpha"]))
    return coeffs


def sample(family: str, mesh_or_V, rng=None, *, preset: str = "default", f=1.0) -> Problem:
    """Draw one random instance of a PDE family on a mesh.

    Parameters
    ----------
    family : {'diffusion', 'anisotropic', 'screened_poisson'}
    mesh_or_V : dolfinx.mesh.Mesh or dolfinx.fem.FunctionSpace
        A mesh (a P1 space is created) or an existing P1 space (to reuse it).
    rng : numpy.random.Generator or int or None
        Source of randomness (an int is a seed).
    preset : {'default', 'paper', 'code'}
        Coefficient distributions, see the module docstring.
    f : float or UFL expression
        Right-hand side; default 1.

    Returns
    -------
    Problem

    Examples
    --------
    >>> from nlss_fenicsx import meshes
    >>> prob = sample("diffusion", meshes.jittered_square(8, seed=0), rng=0)
    >>> prob.family
    'diffusion'
    """
    _check_family(family)
    _check_preset(preset)
    rng = np.random.default_rng(rng)
    if isinstance(mesh_or_V, dolfinx.mesh.Mesh):
        V = dolfinx.fem.functionspace(mesh_or_V, ("Lagrange", 1))
    else:
        V = mesh_or_V
    coeffs = _sample_coefficients(family, preset, V.mesh, rng)
    return make_problem(family, V, coeffs, f=f, preset=preset)


def make_problem(family: str, V, coefficients: dict, *, f=1.0, preset: str = "custom") -> Problem:
    """A :class:`Problem` from given coefficients (UFL expressions, Functions or Constants).

    Use this for your own coefficient fields; :func:`sample` draws random ones.

    Examples
    --------
    >>> from nlss_fenicsx import meshes
    >>> from nlss_fenicsx._fenicsx import dolfinx, ufl
    >>> V = dolfinx.fem.functionspace(meshes.jittered_square(8, seed=0), ("Lagrange", 1))
    >>> x = ufl.SpatialCoordinate(V.mesh)
    >>> prob = make_problem("diffusion", V, {"g": 1 + x[0] ** 2})
    """
    _check_family(family)
    a, L = forms(family, V, coefficients, f=f)
    zero = dolfinx.fem.Constant(V.mesh, PETSc.ScalarType(0.0))
    bcs = [dolfinx.fem.dirichletbc(zero, boundary_dofs(V), V)]
    return Problem(family=family, preset=preset, V=V, a=a, L=L, bcs=bcs,
                   coefficients=coefficients)


def assemble(problem: Problem, *, grid_order: np.ndarray | None = None) -> System:
    """Assemble a :class:`Problem` into PETSc and SciPy views.

    Parameters
    ----------
    problem : Problem
    grid_order : numpy.ndarray, optional
        Reuse a grid order computed for the same space (saves a collective step).

    Returns
    -------
    System
    """
    from nlss_fenicsx.meshes import grid_order as _grid_order

    V = problem.V
    a = dolfinx.fem.form(problem.a)
    L = dolfinx.fem.form(problem.L)
    A = dolfinx.fem.petsc.assemble_matrix(a, bcs=problem.bcs, diag=1.0)
    A.assemble()
    A.setOption(PETSc.Mat.Option.SPD, True)  # all three families are SPD (GAMG, Cholesky use it)
    bvec = dolfinx.fem.petsc.assemble_vector(L)
    dolfinx.fem.petsc.apply_lifting(bvec, [a], bcs=[problem.bcs])
    bvec.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
    dolfinx.fem.petsc.set_bc(bvec, problem.bcs)
    b = bvec.getArray().copy()
    bvec.destroy()
    imap = V.dofmap.index_map
    bdofs_local = boundary_dofs(V)
    bdofs_local = bdofs_local[bdofs_local < imap.size_local]
    bdofs = imap.local_to_global(bdofs_local.astype(np.int32)).astype(np.int64)
    order = _grid_order(V) if grid_order is None else np.asarray(grid_order)
    from nlss_fenicsx.petsc import attach_grid_order  # noqa: I001 - same module as above

    attach_grid_order(A, order)
    A_csr = petsc_to_csr(A)
    return System(A=A, A_csr=A_csr, b=b, boundary_dofs=bdofs, grid_order=order, V=V,
                  problem=problem)
