"""User snippet (README, plug-in): TwoGridPC on a LinearProblem of your own, any mesh."""

import nlss_fenicsx  # noqa: F401, I001 - first: makes the wheel's dolfinx importable

import numpy as np
import ufl
from dolfinx import fem, mesh
from dolfinx.fem.petsc import LinearProblem
from mpi4py import MPI

from nlss_fenicsx.petsc import attach_node_order, check_converged

domain = mesh.create_unit_square(MPI.COMM_WORLD, 32, 32)
V = fem.functionspace(domain, ("Lagrange", 1))
u, v = ufl.TrialFunction(V), ufl.TestFunction(V)
x = ufl.SpatialCoordinate(domain)
a = (1 + x[0] ** 2) * ufl.inner(ufl.grad(u), ufl.grad(v)) * ufl.dx
L = ufl.sin(3 * x[1]) * v * ufl.dx
facets = mesh.locate_entities_boundary(domain, 1, lambda x: np.full(x.shape[1], True))
bcs = [fem.dirichletbc(0.0, fem.locate_dofs_topological(V, 1, facets), V)]

problem = LinearProblem(a, L, bcs=bcs, petsc_options_prefix="my_", petsc_options={
    "ksp_type": "cg", "ksp_rtol": 1e-6,
    "pc_type": "python", "pc_python_type": "nlss_fenicsx.petsc.TwoGridPC",
    "nlss_coarse": "svd",        # svd | sa | sine | eig-ref | eig | fixed | nlss
    "nlss_smoother": "jacobi"})  # jacobi | chebyshev | sor (nlss_omega auto: 0.66 where safe)
attach_node_order(problem.A, V)  # any mesh; needed by nlss, sine and fixed
uh = problem.solve()
print("iterations", check_converged(problem))  # raises, naming PETSc's reason
