"""Small FEniCSx programs written the way the FEniCSx tutorial writes them (issue 14, item 8).

Each ``*_program`` function is a user's model as a new user would write it: a mesh, a
function space, UFL forms, boundary conditions (and, where the tutorial attaches one, a
near-nullspace or a nullspace). It returns a :class:`Program` that holds what a solve
needs; nothing in it knows about ``nlss_fenicsx``. The preconditioner is chosen only by the
PETSc options handed to :func:`solve` (a dolfinx ``LinearProblem``) or :func:`ksp_solve`
(an explicitly assembled system and a KSP, as the tutorial's singular-Poisson and
time-dependent pages do).

Programs (sizes are arguments; the defaults are CI sizes, each solve well under a second):

- :func:`poisson_disk`: the tutorial's deflection of a membrane, -div(kappa grad w) = p on
  a Gmsh disk of radius 1, w = 0 on the circle (P1 triangles).
- :func:`poisson_box`: -Laplace(u) = -12 on the unit cube, u = 1 + x^2 + 2y^2 + 3z^2 on the
  boundary (P1 tetrahedra).
- :func:`elasticity_program`: linear elasticity of a cube clamped at x = 0 under gravity,
  P1 tetrahedra or Q1 hexahedra, the six rigid-body modes attached as near-nullspace (as
  dolfinx's elasticity demo does for GAMG).
- :func:`heat_program`: the tutorial's diffusion of a Gaussian hill, backward Euler; one
  matrix assembled once and one KSP reused for every step (:func:`heat_run`).
- :func:`neumann_program`: -Laplace(u) = f with a pure Neumann condition; the constant
  nullspace attached to A and removed from b (tutorial's singular Poisson).
- :func:`hyperelastic_program`: a compressible neo-Hookean beam clamped at x = 0 under a
  body force; the linear system of its first Newton step J(u0) du = -F(u0) from u0 = 0
  (SPD), and the full Newton solve through a ``NonlinearProblem``.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nlss_fenicsx._fenicsx import MPI, PETSc, dolfinx, ufl

__all__ = [
    "LU",
    "GAMG",
    "ICC",
    "Program",
    "Solve",
    "elasticity_program",
    "heat_program",
    "heat_run",
    "hyperelastic_program",
    "neumann_program",
    "poisson_box",
    "poisson_disk",
    "disk_instances",
    "rigid_body_modes",
    "solve",
    "ksp_solve",
    "twogrid",
    "relative_error",
    "PROGRAMS",
]

# ------------------------------------------------------------------ solver options

#: Direct reference: MUMPS LU (serial and parallel; the wheel's PETSc has it).
LU = {"ksp_type": "preonly", "pc_type": "lu", "pc_factor_mat_solver_type": "mumps"}
#: PETSc's algebraic multigrid, the tutorial's iterative choice (uses the near-nullspace).
GAMG = {"ksp_type": "cg", "pc_type": "gamg"}
#: Incomplete Cholesky, serial only (block Jacobi + ICC(0) in parallel).
ICC = {"ksp_type": "cg", "pc_type": "icc"}


def twogrid(coarse: str, **nlss: Any) -> dict:
    """The options a user adds to select TwoGridPC; ``nlss`` are extra ``nlss_*`` options.

    Everything not given keeps the PC's default (the point of these tests).
    """
    opts = {"ksp_type": "cg", "pc_type": "python",
            "pc_python_type": "nlss_fenicsx.petsc.TwoGridPC", "nlss_coarse": coarse}
    opts.update({f"nlss_{k}": v for k, v in nlss.items()})
    return opts


def krylov(options: dict, rtol: float) -> dict:
    """``options`` with the stopping test on the true (unpreconditioned) residual.

    Keys given in ``options`` win (e.g. a test's ``ksp_max_it``).

    Every iterative method then stops at the same ``||b - A x|| / ||b|| < rtol``, so the
    iteration counts compare, and a solution checked against LU is meaningful.
    """
    if options.get("ksp_type") == "preonly":
        return dict(options)
    return {"ksp_rtol": rtol, "ksp_atol": 0.0, "ksp_max_it": 2000,
            "ksp_norm_type": "unpreconditioned", **options}


# ------------------------------------------------------------------ the program record


@dataclass
class Program:
    """What a solve needs: the forms, the space, the conditions, the (near-)nullspace.

    Attributes
    ----------
    name : str
        Short name (``poisson_disk``, ``elasticity_tet``, ...).
    V : dolfinx.fem.FunctionSpace
        The solution space (block size 3 for the vector problems).
    a, L : ufl.Form
        Bilinear and linear forms (for the hyperelastic program: J(u0) and -F(u0)).
    bcs : list of dolfinx.fem.DirichletBC
        Dirichlet conditions (empty for the pure-Neumann program).
    near_nullspace : bool
        Attach the rigid-body modes of ``V`` to A (``A.setNearNullSpace``).
    nullspace : bool
        A has the constant vector as its nullspace: attach it and make b consistent.
    extra : dict
        Program-specific objects (the heat program's previous step, the hyperelastic
        residual and unknown, the disk's coefficient, ...).
    """

    name: str
    V: Any
    a: Any
    L: Any
    bcs: list
    near_nullspace: bool = False
    nullspace: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Global number of unknowns (dofs times block size)."""
        im = self.V.dofmap.index_map
        return im.size_global * self.V.dofmap.index_map_bs

    @property
    def comm(self):
        """The mesh's MPI communicator."""
        return self.V.mesh.comm


@dataclass
class Solve:
    """Result of one solve: solution rows owned by this rank, and the KSP's report."""

    x: np.ndarray  # owned entries of the solution vector (PETSc layout)
    iterations: int
    reason: int
    seconds: float
    pc: Any = None  # the python context, for TwoGridPC (set-up timings, P)
    problem: Any = None  # the LinearProblem or KSP that solved it

    @property
    def converged(self) -> bool:
        """PETSc's converged reason is positive."""
        return self.reason > 0


# ------------------------------------------------------------------ meshes and spaces


def _gmsh_disk(comm, h: float, radius: float = 1.0):
    """A Gmsh disk of ``radius`` with mesh size ``h``, built on rank 0 (tutorial membrane)."""
    import dolfinx.io.gmsh
    import gmsh

    owner = not gmsh.isInitialized()
    if owner:
        gmsh.initialize(interruptible=False)
    gmsh.option.setNumber("General.Terminal", 0)
    try:
        if comm.rank == 0:
            gmsh.model.add("disk")
            disk = gmsh.model.occ.addDisk(0.0, 0.0, 0.0, radius, radius)
            gmsh.model.occ.synchronize()
            gmsh.model.addPhysicalGroup(2, [disk], 1, name="membrane")
            gmsh.option.setNumber("Mesh.MeshSizeMin", h)
            gmsh.option.setNumber("Mesh.MeshSizeMax", h)
            gmsh.model.mesh.generate(2)
        data = dolfinx.io.gmsh.model_to_mesh(gmsh.model, comm, 0, gdim=2)
    finally:
        if owner:
            gmsh.finalize()
        else:
            gmsh.model.remove()
    return data.mesh


def _boundary_bc(V, value):
    """Dirichlet condition ``value`` (a Constant-able scalar or a Function) on every
    exterior facet."""
    mesh = V.mesh
    fdim = mesh.topology.dim - 1
    mesh.topology.create_connectivity(fdim, mesh.topology.dim)
    facets = dolfinx.mesh.exterior_facet_indices(mesh.topology)
    dofs = dolfinx.fem.locate_dofs_topological(V, fdim, facets)
    if isinstance(value, dolfinx.fem.Function):
        return dolfinx.fem.dirichletbc(value, dofs)
    return dolfinx.fem.dirichletbc(PETSc.ScalarType(value), dofs, V)


def _clamp(V, where):
    """Zero displacement (all components) on the facets where ``where(x)`` holds."""
    mesh = V.mesh
    fdim = mesh.topology.dim - 1
    facets = dolfinx.mesh.locate_entities_boundary(mesh, fdim, where)
    dofs = dolfinx.fem.locate_dofs_topological(V, fdim, facets)
    zero = np.zeros(mesh.geometry.dim, dtype=PETSc.ScalarType)
    return dolfinx.fem.dirichletbc(zero, dofs, V)


# ------------------------------------------------------------------ the programs


def poisson_disk(comm=MPI.COMM_WORLD, *, h: float = 0.07, kappa=None) -> Program:
    """The tutorial's membrane: -div(kappa grad w) = p on the unit disk, w = 0 on the circle.

    ``p = 4 exp(-beta^2 (x^2 + (y - R0)^2))``, beta = 8, R0 = 0.6 (a load centred at
    (0, 0.6)); P1 on a Gmsh mesh of size ``h``. ``kappa``: None (1, the tutorial's) or a
    callable ``kappa(mesh) -> UFL expression`` (:func:`disk_instances` draws those for
    training a model on this mesh).
    """
    mesh = _gmsh_disk(comm, h)
    return _disk_forms(dolfinx.fem.functionspace(mesh, ("Lagrange", 1)), kappa)


def _disk_forms(V, kappa=None) -> Program:
    mesh = V.mesh
    x = ufl.SpatialCoordinate(mesh)
    beta, R0 = 8.0, 0.6
    p = 4 * ufl.exp(-(beta**2) * (x[0] ** 2 + (x[1] - R0) ** 2))
    k = 1.0 if kappa is None else kappa(mesh)
    w, v = ufl.TrialFunction(V), ufl.TestFunction(V)
    a = k * ufl.dot(ufl.grad(w), ufl.grad(v)) * ufl.dx
    L = p * v * ufl.dx
    return Program("poisson_disk", V, a, L, [_boundary_bc(V, 0.0)])


def disk_instances(V, seed: int, *, sigma: float = 1.0):
    """One training instance ``(V, a, L, bcs)`` of the disk problem with a random coefficient.

    kappa = exp(sigma * N(0, 1)) per cell (the paper's diffusion coefficient, milder), drawn
    from ``seed`` in the mesh's input cell order (so the same instance on any number of
    ranks). The test problem itself has kappa = 1: the model must generalise to it.
    """
    mesh = V.mesh
    tdim = mesh.topology.dim
    n_local = mesh.topology.index_map(tdim).size_local
    n_global = mesh.topology.index_map(tdim).size_global
    draw = np.exp(sigma * np.random.default_rng(seed).standard_normal(n_global))
    Q = dolfinx.fem.functionspace(mesh, ("DG", 0))
    c = dolfinx.fem.Function(Q)
    original = mesh.topology.original_cell_index[:n_local]
    c.x.array[:n_local] = draw[original]
    c.x.scatter_forward()
    prog = _disk_forms(V, lambda _mesh: c)
    return prog.V, prog.a, prog.L, prog.bcs


def poisson_box(comm=MPI.COMM_WORLD, *, n: int = 12) -> Program:
    """-Laplace(u) = -12 on the unit cube, u = u_D = 1 + x^2 + 2y^2 + 3z^2 on the boundary.

    P1 on ``n^3`` cubes split into tetrahedra: ``(n+1)^3`` unknowns.
    """
    mesh = dolfinx.mesh.create_unit_cube(comm, n, n, n, dolfinx.mesh.CellType.tetrahedron)
    V = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    u_D = dolfinx.fem.Function(V)
    u_D.interpolate(lambda x: 1 + x[0] ** 2 + 2 * x[1] ** 2 + 3 * x[2] ** 2)
    u, v = ufl.TrialFunction(V), ufl.TestFunction(V)
    f = dolfinx.fem.Constant(mesh, PETSc.ScalarType(-12.0))
    a = ufl.dot(ufl.grad(u), ufl.grad(v)) * ufl.dx
    L = f * v * ufl.dx
    return Program("poisson_box", V, a, L, [_boundary_bc(V, u_D)], extra={"u_D": u_D})


def _lame(E: float, nu: float) -> tuple[float, float]:
    return E / (2 * (1 + nu)), E * nu / ((1 + nu) * (1 - 2 * nu))


def elasticity_program(comm=MPI.COMM_WORLD, *, n: int = 6, cell: str = "tetrahedron",
                       E: float = 1.0e4, nu: float = 0.3) -> Program:
    """Linear elasticity of the unit cube, clamped at x = 0, under its own weight.

    sigma(u) = 2 mu eps(u) + lambda tr(eps(u)) I with (E, nu); body force (0, 0, -rho g).
    Vector P1 on tetrahedra (``cell="tetrahedron"``) or Q1 on hexahedra
    (``cell="hexahedron"``), ``n^3`` cubes: ``3 (n+1)^3`` unknowns. The rigid-body modes
    are attached as A's near-nullspace (``Program.near_nullspace``), as dolfinx's
    elasticity demo does for GAMG.
    """
    kinds = {"tetrahedron": dolfinx.mesh.CellType.tetrahedron,
             "hexahedron": dolfinx.mesh.CellType.hexahedron}
    if cell not in kinds:
        raise ValueError(f"cell must be one of {tuple(kinds)}, got {cell!r}")
    mesh = dolfinx.mesh.create_unit_cube(comm, n, n, n, kinds[cell])
    V = dolfinx.fem.functionspace(mesh, ("Lagrange", 1, (3,)))
    mu, lmbda = _lame(E, nu)

    def epsilon(u):
        return ufl.sym(ufl.grad(u))

    def sigma(u):
        return 2.0 * mu * epsilon(u) + lmbda * ufl.tr(epsilon(u)) * ufl.Identity(3)

    u, v = ufl.TrialFunction(V), ufl.TestFunction(V)
    body = dolfinx.fem.Constant(mesh, PETSc.ScalarType((0.0, 0.0, -1.0)))
    a = ufl.inner(sigma(u), epsilon(v)) * ufl.dx
    L = ufl.dot(body, v) * ufl.dx
    bc = _clamp(V, lambda x: np.isclose(x[0], 0.0))
    name = "elasticity_tet" if cell == "tetrahedron" else "elasticity_hex"
    return Program(name, V, a, L, [bc], near_nullspace=True)


def heat_program(comm=MPI.COMM_WORLD, *, n: int = 40, T: float = 0.1,
                 steps: int = 5) -> Program:
    """The tutorial's diffusion of a Gaussian hill, backward Euler, u = 0 on the boundary.

    On [-2, 2]^2 (``n x n`` squares split into triangles), u0 = exp(-5 (x^2 + y^2)),
    du/dt = Laplace(u); each step solves (u - u_n)/dt = Laplace(u) with dt = T / steps:
    ``a = u v + dt grad u . grad v`` (assembled once), ``L = u_n v`` (each step).
    Run the loop with :func:`heat_run`.
    """
    mesh = dolfinx.mesh.create_rectangle(comm, [np.array([-2.0, -2.0]), np.array([2.0, 2.0])],
                                         [n, n], dolfinx.mesh.CellType.triangle)
    V = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    u_n = dolfinx.fem.Function(V)
    u_n.interpolate(lambda x: np.exp(-5.0 * (x[0] ** 2 + x[1] ** 2)))
    dt = T / steps
    u, v = ufl.TrialFunction(V), ufl.TestFunction(V)
    a = u * v * ufl.dx + dt * ufl.dot(ufl.grad(u), ufl.grad(v)) * ufl.dx
    L = u_n * v * ufl.dx
    return Program("heat", V, a, L, [_boundary_bc(V, 0.0)],
                   extra={"u_n": u_n, "steps": steps, "dt": dt})


def neumann_program(comm=MPI.COMM_WORLD, *, n: int = 40) -> Program:
    """-Laplace(u) = f on the unit square, grad(u).n = g on the whole boundary.

    Manufactured u_ex = 1 + x^2 + 2y^2: f = -6, g = grad(u_ex).n, so the data are
    compatible (int f + int g = 0) and u is defined up to a constant. P1 triangles,
    ``(n+1)^2`` unknowns. The constant nullspace is attached to A and removed from b
    (:func:`ksp_solve`), as the tutorial's singular Poisson does.
    """
    mesh = dolfinx.mesh.create_unit_square(comm, n, n, dolfinx.mesh.CellType.triangle)
    V = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    x = ufl.SpatialCoordinate(mesh)
    u_ex = 1 + x[0] ** 2 + 2 * x[1] ** 2
    f = -ufl.div(ufl.grad(u_ex))
    g = ufl.dot(ufl.grad(u_ex), ufl.FacetNormal(mesh))
    u, v = ufl.TrialFunction(V), ufl.TestFunction(V)
    a = ufl.dot(ufl.grad(u), ufl.grad(v)) * ufl.dx
    L = f * v * ufl.dx + g * v * ufl.ds
    return Program("neumann", V, a, L, [], nullspace=True, extra={"u_ex": u_ex})


def hyperelastic_program(comm=MPI.COMM_WORLD, *, n: int = 4, length: float = 4.0,
                         E: float = 1.0e4, nu: float = 0.3, load: float = 5.0) -> Program:
    """A compressible neo-Hookean beam clamped at x = 0 under a body force (tutorial).

    Beam [0, length] x [0, 1] x [0, 1], ``(length n) x n x n`` hexahedra, Q1 vectors.
    psi = mu/2 (I_C - 3) - mu ln J + lambda/2 (ln J)^2; residual
    F(u) = int P(u) : grad v - int B . v, B = (0, 0, -load). ``a`` and ``L`` are the first
    Newton step from u0 = 0, J(u0) du = -F(u0) (SPD: at u0 = 0 the tangent is the linear
    elastic operator); ``extra`` holds F, u and the clamp for a full Newton solve
    (:func:`newton_solve`). The rigid-body modes are attached as near-nullspace.
    """
    nx = int(round(length * n))
    mesh = dolfinx.mesh.create_box(comm, [np.zeros(3), np.array([length, 1.0, 1.0])],
                                   [nx, n, n], dolfinx.mesh.CellType.hexahedron)
    V = dolfinx.fem.functionspace(mesh, ("Lagrange", 1, (3,)))
    mu, lmbda = _lame(E, nu)
    u = dolfinx.fem.Function(V, name="displacement")  # u0 = 0
    v, du = ufl.TestFunction(V), ufl.TrialFunction(V)
    I = ufl.Identity(3)
    defgrad = ufl.variable(I + ufl.grad(u))
    C = defgrad.T * defgrad
    jac = ufl.det(defgrad)
    psi = (mu / 2) * (ufl.tr(C) - 3) - mu * ufl.ln(jac) + (lmbda / 2) * ufl.ln(jac) ** 2
    P = ufl.diff(psi, defgrad)
    B = dolfinx.fem.Constant(mesh, PETSc.ScalarType((0.0, 0.0, -load)))
    # The tutorial's quadrature degree: UFL's estimate for ln J on Q1 is far higher.
    dx = ufl.Measure("dx", domain=mesh, metadata={"quadrature_degree": 4})
    F = ufl.inner(ufl.grad(v), P) * dx - ufl.dot(B, v) * dx
    J = ufl.derivative(F, u, du)
    bc = _clamp(V, lambda x: np.isclose(x[0], 0.0))
    return Program("hyperelastic", V, J, -F, [bc], near_nullspace=True,
                   extra={"F": F, "u": u})


#: name -> (builder, CI keyword arguments).
PROGRAMS = {
    "poisson_disk": (poisson_disk, {}),
    "poisson_box": (poisson_box, {}),
    "elasticity_tet": (elasticity_program, {"cell": "tetrahedron"}),
    "elasticity_hex": (elasticity_program, {"cell": "hexahedron"}),
    "heat": (heat_program, {}),
    "neumann": (neumann_program, {}),
    "hyperelastic": (hyperelastic_program, {}),
}


# ------------------------------------------------------------------ nullspaces


def rigid_body_modes(V) -> PETSc.NullSpace:
    """The six rigid-body modes of a 3D vector space as an orthonormal PETSc near-nullspace.

    Three translations and three rotations about the origin, evaluated at the dof
    coordinates, orthonormalised (modified Gram-Schmidt, global dot products) as
    ``MatNullSpaceCreate`` requires.
    """
    bs = V.dofmap.index_map_bs
    if bs != 3:
        raise ValueError(f"rigid_body_modes needs a 3D vector space (block size 3), got {bs}")
    comm = V.mesh.comm
    n_local = V.dofmap.index_map.size_local
    xyz = V.tabulate_dof_coordinates()[:n_local]
    modes = np.zeros((6, n_local, 3))
    for c in range(3):
        modes[c, :, c] = 1.0  # translations
    x, y, z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    modes[3, :, 0], modes[3, :, 1] = -y, x  # rotation about z
    modes[4, :, 1], modes[4, :, 2] = -z, y  # about x
    modes[5, :, 0], modes[5, :, 2] = z, -x  # about y
    basis = modes.reshape(6, -1)
    for i in range(6):
        for j in range(i):
            basis[i] -= comm.allreduce(basis[i] @ basis[j], op=MPI.SUM) * basis[j]
        basis[i] /= np.sqrt(comm.allreduce(basis[i] @ basis[i], op=MPI.SUM))
    vecs = []
    for row in basis:
        vec = dolfinx.la.petsc.create_vector([(V.dofmap.index_map, bs)])
        vec.array_w[: row.size] = row
        vecs.append(vec)
    return PETSc.NullSpace().create(vectors=vecs, comm=comm)


def attach_nullspaces(program: Program, A) -> PETSc.NullSpace | None:
    """Attach ``program``'s near-nullspace or nullspace to ``A``; returns the nullspace."""
    if program.near_nullspace:
        A.setNearNullSpace(rigid_body_modes(program.V))
    if program.nullspace:
        ns = PETSc.NullSpace().create(constant=True, comm=program.comm)
        A.setNullSpace(ns)
        return ns
    return None


# ------------------------------------------------------------------ solves

_count = itertools.count()


def _prefix(tag: str) -> str:
    # dolfinx wants a prefix unique in the programme and the same on every rank.
    return f"client_{tag}_{next(_count)}_"


def _pc_context(ksp):
    pc = ksp.getPC()
    if pc.getType() != PETSc.PC.Type.PYTHON:
        return None
    return pc.getPythonContext()


def solve(program: Program, options: dict, *, rtol: float = 1e-10, prepare=None) -> Solve:
    """Solve ``program`` with a dolfinx ``LinearProblem`` and the PETSc ``options``.

    The (near-)nullspace is attached to ``problem.A`` before ``solve()``, as a user would;
    ``prepare(problem)`` then runs (e.g. to attach the node order for the learned route).
    Programs with a nullspace need b made consistent after assembly: use :func:`ksp_solve`.
    Raises nothing on non-convergence: the caller checks :attr:`Solve.converged`.
    """
    if program.nullspace:
        raise ValueError(f"{program.name}: a singular system needs ksp_solve (b made "
                         "consistent), not LinearProblem")
    from dolfinx.fem.petsc import LinearProblem

    problem = LinearProblem(program.a, program.L, bcs=program.bcs,
                            petsc_options_prefix=_prefix(program.name),
                            petsc_options=krylov(options, rtol))
    attach_nullspaces(program, problem.A)
    if prepare is not None:
        prepare(problem)
    t0 = time.perf_counter()
    problem.solve()
    seconds = time.perf_counter() - t0
    ksp = problem.solver
    return Solve(problem.x.getArray().copy(), ksp.getIterationNumber(),
                 ksp.getConvergedReason(), seconds, _pc_context(ksp), problem)


def assemble_system(program: Program):
    """Assemble ``(A, b)`` as the tutorial does (lifting, ghost update, Dirichlet values).

    The (near-)nullspace is attached to A, and b is made consistent with it (its
    component along the constant nullspace removed).
    """
    import dolfinx.fem.petsc as fem_petsc

    a, L = dolfinx.fem.form(program.a), dolfinx.fem.form(program.L)
    A = fem_petsc.assemble_matrix(a, bcs=program.bcs)
    A.assemble()
    b = fem_petsc.create_vector(L.function_spaces)
    _assemble_rhs(b, a, L, program.bcs)
    ns = attach_nullspaces(program, A)
    if ns is not None:
        ns.remove(b)
    return A, b, (a, L)


def _assemble_rhs(b, a, L, bcs) -> None:
    import dolfinx.fem.petsc as fem_petsc

    with b.localForm() as loc:
        loc.set(0.0)
    fem_petsc.assemble_vector(b, L)
    fem_petsc.apply_lifting(b, [a], bcs=[bcs])
    b.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
    fem_petsc.set_bc(b, bcs)


def make_ksp(A, options: dict, *, rtol: float = 1e-10):
    """A KSP on ``A`` configured from ``options`` under a fresh prefix (then removed)."""
    ksp = PETSc.KSP().create(A.getComm())
    ksp.setOperators(A)
    prefix = _prefix("ksp")
    ksp.setOptionsPrefix(prefix)
    db = PETSc.Options()
    opts = krylov(options, rtol)
    try:
        for key, value in opts.items():
            db[prefix + key] = value
        ksp.setFromOptions()
    finally:
        # By full name: petsc4py's delValue ignores a pushed prefix.
        for key in opts:
            del db[prefix + key]
    return ksp


def ksp_solve(program: Program, options: dict, *, rtol: float = 1e-10,
              system=None) -> Solve:
    """Solve the explicitly assembled system of ``program`` with a KSP built from ``options``.

    ``system``: an ``(A, b, forms)`` from :func:`assemble_system` to reuse.
    """
    A, b, _ = assemble_system(program) if system is None else system
    ksp = make_ksp(A, options, rtol=rtol)
    x = A.createVecRight()
    t0 = time.perf_counter()
    ksp.solve(b, x)
    seconds = time.perf_counter() - t0
    return Solve(x.getArray().copy(), ksp.getIterationNumber(), ksp.getConvergedReason(),
                 seconds, _pc_context(ksp), ksp)


def heat_run(program: Program, options: dict, *, rtol: float = 1e-10,
             timings: dict | None = None) -> list[Solve]:
    """The tutorial's time loop: A assembled once, one KSP reused for every step.

    Each step assembles b from u_n, solves, and copies the solution into u_n. Returns one
    :class:`Solve` per step (the KSP's python PC context is the same object in all).
    The program's u_n is reset to the initial condition first, so runs are repeatable.
    ``timings``: a dict that receives ``setup`` (seconds of ``KSPSetUp``, before the loop).
    """
    import dolfinx.fem.petsc as fem_petsc

    u_n = program.extra["u_n"]
    u_n.interpolate(lambda x: np.exp(-5.0 * (x[0] ** 2 + x[1] ** 2)))
    a, L = dolfinx.fem.form(program.a), dolfinx.fem.form(program.L)
    A = fem_petsc.assemble_matrix(a, bcs=program.bcs)
    A.assemble()
    b = fem_petsc.create_vector(L.function_spaces)
    ksp = make_ksp(A, options, rtol=rtol)
    t0 = time.perf_counter()
    ksp.setUp()
    if timings is not None:
        timings["setup"] = time.perf_counter() - t0
    uh = dolfinx.fem.Function(program.V)
    out = []
    for _ in range(program.extra["steps"]):
        _assemble_rhs(b, a, L, program.bcs)
        t0 = time.perf_counter()
        ksp.solve(b, uh.x.petsc_vec)
        seconds = time.perf_counter() - t0
        uh.x.scatter_forward()
        out.append(Solve(uh.x.petsc_vec.getArray().copy(), ksp.getIterationNumber(),
                         ksp.getConvergedReason(), seconds, _pc_context(ksp)))
        u_n.x.array[:] = uh.x.array
    ksp.destroy()
    A.destroy()
    b.destroy()
    return out


def newton_solve(program: Program, options: dict, *, rtol: float = 1e-10):
    """Full Newton solve of the hyperelastic program with a dolfinx ``NonlinearProblem``.

    ``options``: the linear solver's (KSP/PC) options; SNES is Newton with a line search,
    relative tolerance 1e-8. u is reset to 0 first. Returns the SNES (caller checks it)
    and the owned entries of u.
    """
    from dolfinx.fem.petsc import NonlinearProblem

    u = program.extra["u"]
    u.x.array[:] = 0.0
    petsc_options = {"snes_type": "newtonls", "snes_linesearch_type": "basic",
                     "snes_rtol": 1e-8, "snes_atol": 1e-12, "snes_max_it": 20,
                     **krylov(options, rtol)}
    problem = NonlinearProblem(program.extra["F"], u, bcs=program.bcs,
                               petsc_options_prefix=_prefix("newton"),
                               petsc_options=petsc_options)
    attach_nullspaces(program, problem.A)
    problem.solve()
    return problem, u.x.petsc_vec.getArray().copy()


def relative_error(x: np.ndarray, x_ref: np.ndarray, comm) -> float:
    """Global ``||x - x_ref|| / ||x_ref||`` of distributed owned rows."""
    num = comm.allreduce(float(np.sum((x - x_ref) ** 2)), op=MPI.SUM)
    den = comm.allreduce(float(np.sum(x_ref**2)), op=MPI.SUM)
    return float(np.sqrt(num / den))


def zero_mean(x: np.ndarray, comm) -> np.ndarray:
    """``x`` minus its global mean (the component along the constant nullspace)."""
    total = comm.allreduce(float(np.sum(x)), op=MPI.SUM)
    count = comm.allreduce(int(x.size), op=MPI.SUM)
    return x - total / count
