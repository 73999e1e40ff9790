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
from nlss_fenicsx.la import (
    attach_node_order,
    petsc_to_csr,
    smoothed_vectors_petsc,
    start_block,
)
from nlss_fenicsx.meshes import mesh_id, node_order
from nlss_fenicsx.smoothing import smoothed_vectors

__all__ = [
    "FAMILIES",
    "PRESETS",
    "Problem",
    "SmoothedSampler",
    "System",
    "assemble",
    "boundary_dofs",
    "forms",
    "make_problem",
    "sample",
    "smoothed_sampler",
    "training_sampler",
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
    node_order : numpy.ndarray
        ``node_order[i]`` is the global dof of input node ``i`` of the mesh
        (:func:`nlss_fenicsx.meshes.node_order`); also attached to ``A``.
    V : dolfinx.fem.FunctionSpace
    problem : Problem
    """

    A: Any
    A_csr: sp.csr_matrix
    b: np.ndarray
    boundary_dofs: np.ndarray
    node_order: np.ndarray
    V: Any
    problem: Problem | None = None

    @property
    def n(self) -> int:
        """Global number of unknowns."""
        return int(self.A.getSize()[0])

    @property
    def grid_order(self) -> np.ndarray:
        """Dof of each grid node ``i + (N+1)*j`` of the jittered square.

        There the input node index is the grid index, so this is :attr:`node_order`.
        """
        return self.node_order


def _check_family(family: str, preset: str = "default") -> None:
    if family not in FAMILIES:
        raise ValueError(f"Unrecognized PDE family {family!r}; expected one of {FAMILIES}")
    if preset not in PRESETS:
        raise ValueError(f"Unrecognized coefficient preset {preset!r}; expected one of {PRESETS}")


def forms(family: str, V, coefficients: dict, f=1.0):
    """Return the UFL bilinear and linear forms of ``family`` for given coefficients.

    Parameters
    ----------
    family : {'diffusion', 'anisotropic', 'screened_poisson'}
    V : dolfinx.fem.FunctionSpace
    coefficients : dict
        UFL expressions (Functions, Constants or formulas in ``ufl.SpatialCoordinate``):
        ``g`` (diffusion), ``K`` (anisotropic, 2 x 2), ``kappa`` and ``alpha`` (screened
        Poisson).
    f : float or UFL expression
        Right-hand side.

    Returns
    -------
    a, L : ufl.Form

    Raises
    ------
    ValueError
        On an unknown family.
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
    """Return the local indices of the dofs on the exterior boundary (owned and ghost).

    Parameters
    ----------
    V : dolfinx.fem.FunctionSpace

    Returns
    -------
    numpy.ndarray of int32
    """
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
    """Draw coefficients over the global cells in original (Gmsh) order, wrap them as DG0.

    :func:`nlss_fenicsx.grid.coefficient_draws` draws them; this rank keeps its cells'.
    """
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
    _check_family(family, preset)
    rng = np.random.default_rng(rng)
    if isinstance(mesh_or_V, dolfinx.mesh.Mesh):
        V = dolfinx.fem.functionspace(mesh_or_V, ("Lagrange", 1))
    else:
        V = mesh_or_V
    coeffs = _sample_coefficients(family, preset, V.mesh, rng)
    return make_problem(family, V, coeffs, f=f, preset=preset)


def make_problem(family: str, V, coefficients: dict, *, f=1.0, preset: str = "custom") -> Problem:
    """Build a :class:`Problem` from given coefficients (UFL expressions or Functions).

    Use this for your own coefficient fields; :func:`sample` draws random ones.

    Parameters
    ----------
    family : {'diffusion', 'anisotropic', 'screened_poisson'}
    V : dolfinx.fem.FunctionSpace
        A scalar Lagrange space.
    coefficients : dict
        As :func:`forms`.
    f : float or UFL expression
        Right-hand side.
    preset : str
        Label stored on the Problem.

    Returns
    -------
    Problem
        With ``u = 0`` on the whole exterior boundary.

    Raises
    ------
    ValueError
        On an unknown family.

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


def assemble(problem: Problem, *, node_order: np.ndarray | None = None) -> System:
    """Assemble a :class:`Problem` into PETSc and SciPy views, node order attached to ``A``.

    Parameters
    ----------
    problem : Problem
    node_order : numpy.ndarray, optional
        Reuse a node order computed for the same space (saves a collective step).

    Returns
    -------
    System

    Raises
    ------
    ValueError
        If the space's dofs are not the mesh nodes (see
        :func:`nlss_fenicsx.meshes.node_order`).
    """
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
    order = attach_node_order(A, V if node_order is None else node_order)
    return System(A=A, A_csr=petsc_to_csr(A), b=b, boundary_dofs=bdofs, node_order=order,
                  V=V, problem=problem)


def _matrix(problem):
    """Assemble ``A`` of a Problem or of a ``(V, a, L, bcs)`` tuple; return ``(V, A)``."""
    if isinstance(problem, Problem):
        V, a, bcs = problem.V, problem.a, problem.bcs
    elif (isinstance(problem, tuple | list) and len(problem) == 4
          and hasattr(problem[0], "dofmap")):
        V, a, _, bcs = problem
    else:
        raise ValueError("expected make_problem(t) to return a pdes.Problem or a tuple "
                         f"(V, a, L, bcs); got {type(problem).__name__}")
    A = dolfinx.fem.petsc.assemble_matrix(dolfinx.fem.form(a), bcs=list(bcs or []), diag=1.0)
    A.assemble()
    return V, A


class SmoothedSampler:
    """The sampler :func:`smoothed_sampler` returns (see there); ``sampler(t) -> S``.

    Attributes ``K``, ``sweeps``, ``omega``, ``seed`` as given; ``node_order = "mesh"``
    (rows in the mesh's input node order) and ``mesh_id``
    (:func:`nlss_fenicsx.meshes.mesh_id` of the problems' mesh), which
    :func:`nlss_fenicsx.nn.train.train` records in the checkpoint.
    """

    node_order = "mesh"

    def __init__(self, make_problem, *, K: int, sweeps: int = 10, omega: float = 0.66,
                 seed: int = 0, with_A: bool = False):
        if not callable(make_problem):
            raise ValueError(f"expected a callable make_problem(t), got {make_problem!r}")
        self.make_problem, self.with_A = make_problem, with_A
        self.K, self.sweeps, self.omega, self.seed = K, sweeps, omega, seed
        self._mesh_id: str | None = None
        self._last: tuple = (None, None)  # (V, its node order): most users keep one V

    @property
    def mesh_id(self) -> str:
        """Identify the problems' mesh (collective on first use)."""
        if self._mesh_id is None:
            self._mesh_id = mesh_id(_matrix(self.make_problem(0))[0].mesh)
        return self._mesh_id

    def __call__(self, t: int):
        """Return ``S`` (n, K) float32 in node order (with ``with_A``: ``(A_csr, S)``)."""
        V, A = _matrix(self.make_problem(t))
        if self._mesh_id is None:
            self._mesh_id = mesh_id(V.mesh)
        if self._last[0] is not V:
            self._last = (V, node_order(V))
        order = self._last[1]
        comm = A.getComm().tompi4py()
        n = A.getSize()[0]
        rng = np.random.default_rng((self.seed, t, 1))
        if comm.size == 1:
            A_csr = petsc_to_csr(A)
            S = smoothed_vectors(A_csr, self.K, sweeps=self.sweeps, omega=self.omega,
                                 dtype=np.float32, S0=start_block(rng, n, self.K, 0, n, order))
        else:
            S = np.concatenate(comm.allgather(smoothed_vectors_petsc(
                A, self.K, sweeps=self.sweeps, omega=self.omega, seed=rng, node_order=order)))
            A_csr = sp.vstack(comm.allgather(petsc_to_csr(A))).tocsr() if self.with_A else None
        A.destroy()
        S = np.ascontiguousarray(S[order], dtype=np.float32)
        if self.with_A:
            return A_csr[order][:, order].tocsr(), S
        return S


def smoothed_sampler(make_problem, *, K: int, sweeps: int = 10, omega: float = 0.66,
                     seed: int = 0, with_A: bool = False) -> SmoothedSampler:
    """Turn a user's problem generator into a training sampler of smoothed vectors.

    Parameters
    ----------
    make_problem : callable
        ``t -> pdes.Problem`` or ``t -> (V, a, L, bcs)`` (a dolfinx space, UFL bilinear and
        linear forms, Dirichlet conditions): instance ``t`` of the user's family, on one
        mesh whose dofs are its nodes (P1).
    K : int
        Number of smoothed vectors.
    sweeps : int
        Jacobi sweeps (the paper's code: 10).
    omega : float
        Jacobi weight (the paper's: 0.66).
    seed : int
        Seed; instance ``t`` draws its start from ``(seed, t)``.
    with_A : bool
        Return ``(A_csr, S)`` with ``A`` in node order (for the GNN baseline).

    Returns
    -------
    SmoothedSampler
        ``sampler(t) -> S`` of shape ``(n, K)``, float32, rows in node order: instance
        ``t`` is ``make_problem(t)`` assembled (Dirichlet rows and columns zeroed, 1 on
        the diagonal, as :func:`assemble`), and ``S`` is the PC's: ``sweeps`` Jacobi
        sweeps of ``K`` Gaussian vectors drawn in node order from ``(seed, t)``. Node
        order does not depend on the partition, so a model trained serially is used
        unchanged on any number of ranks. Collective; every rank receives all of ``S``.

    Raises
    ------
    ValueError
        If ``make_problem`` is not callable (later: if it returns something else than a
        Problem or a 4-tuple, or the mesh's dofs are not its nodes).

    Examples
    --------
    >>> from nlss_fenicsx import meshes
    >>> V = dolfinx.fem.functionspace(meshes.jittered_square(6, seed=0), ("Lagrange", 1))
    >>> sampler = smoothed_sampler(lambda t: sample("diffusion", V, rng=t), K=4)
    >>> sampler(0).shape, sampler(0).dtype
    ((49, 4), dtype('float32'))
    """
    return SmoothedSampler(make_problem, K=K, sweeps=sweeps, omega=omega, seed=seed,
                           with_A=with_A)


def training_sampler(family: str, mesh_or_V, *, K: int, sweeps: int = 10,
                     omega: float = 0.66, seed: int = 0, preset: str = "default",
                     with_A: bool = False) -> SmoothedSampler:
    """Build a :func:`smoothed_sampler` of one of the package's PDE families on any mesh.

    Instance ``t`` is :func:`sample` ``(family, V, rng=(seed, t, 0), preset=preset)``, e.g.
    on a user's Gmsh mesh (``nlss-fenicsx train --mesh my.msh``). ``mesh_or_V``: a mesh (a
    P1 space is made) or a P1 space; ``family`` and ``preset`` as :func:`sample`; the
    other parameters as :func:`smoothed_sampler`.

    Returns
    -------
    SmoothedSampler

    Raises
    ------
    ValueError
        On an unknown family or preset.
    """
    _check_family(family, preset)
    if isinstance(mesh_or_V, dolfinx.mesh.Mesh):
        mesh_or_V = dolfinx.fem.functionspace(mesh_or_V, ("Lagrange", 1))
    V = mesh_or_V

    def make_problem(t):
        return sample(family, V, np.random.default_rng((seed, t, 0)), preset=preset)

    return SmoothedSampler(make_problem, K=K, sweeps=sweeps, omega=omega, seed=seed,
                           with_A=with_A)
