"""User snippet (README, vector problems): elasticity with the rigid-body near-nullspace."""

import nlss_fenicsx  # noqa: F401, I001 - first: makes the wheel's dolfinx importable

import numpy as np
import ufl
from dolfinx import fem, mesh
from dolfinx.fem.petsc import LinearProblem
from mpi4py import MPI
from petsc4py import PETSc

from nlss_fenicsx.petsc import check_converged

domain = mesh.create_box(MPI.COMM_WORLD, [[0, 0, 0], [1, 1, 1]], [6, 6, 6],
                         mesh.CellType.hexahedron)
V = fem.functionspace(domain, ("Lagrange", 1, (3,)))
u, v = ufl.TrialFunction(V), ufl.TestFunction(V)
eps = ufl.sym(ufl.grad(u))
a = ufl.inner(2 * eps + ufl.tr(eps) * ufl.Identity(3), ufl.sym(ufl.grad(v))) * ufl.dx
L = ufl.dot(fem.Constant(domain, (0.0, 0.0, -1.0)), v) * ufl.dx
clamped = mesh.locate_entities_boundary(domain, 2, lambda x: np.isclose(x[0], 0.0))
bcs = [fem.dirichletbc(np.zeros(3), fem.locate_dofs_topological(V, 2, clamped), V)]

problem = LinearProblem(a, L, bcs=bcs, petsc_options_prefix="elasticity_", petsc_options={
    "ksp_type": "cg", "ksp_rtol": 1e-8,
    "pc_type": "python", "pc_python_type": "nlss_fenicsx.petsc.TwoGridPC",
    "nlss_coarse": "svd"})         # or "sa" (serial): PyAMG with the modes as its B
# The rigid-body modes, as for GAMG: used by every coarse space (sa's B; appended to others).
xyz = V.tabulate_dof_coordinates()[: V.dofmap.index_map.size_local]
coordinates = PETSc.Vec().createWithArray(xyz.ravel(), bsize=3, comm=domain.comm)
problem.A.setNearNullSpace(PETSc.NullSpace().createRigidBody(coordinates))
uh = problem.solve()
print("iterations", check_converged(problem))
