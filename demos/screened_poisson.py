# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: light
#       format_version: '1.5'
#       jupytext_version: 1.16.0
# ---

# # Screened Poisson with a learned coarse space
#
# The third family of the paper (Eq. 7): $-\nabla\cdot(\kappa\nabla u) + \alpha u = 1$ in
# $[0,1]^2$, $u = 0$ on the boundary, with $\kappa = \exp(Z)$ per triangle and one
# $\alpha \sim U(0, 20)$ per instance, i.e. $A = K_\kappa + \alpha M$ (stiffness plus
# $\alpha$ times the mass matrix). The reaction term shifts the spectrum: the larger
# $\alpha$, the better conditioned $A$ and the less a coarse correction has to do, so one
# model has to serve a family whose difficulty varies from instance to instance.
#
# Everything but the PDE is the diffusion demo, imported from `diffusion.py`: the same
# mesh, model cache, $S$ and $P$, `LinearProblem` with `TwoGridPC`, comparison and figure.
# `--help` lists the options.

# +
from __future__ import annotations

import nlss_fenicsx  # noqa: F401  first: makes the DOLFINx wheel's libraries importable

# isort: split
import dolfinx
import numpy as np
import ufl
from diffusion import cell_function, dirichlet_zero, run  # the shared steps
from petsc4py import PETSc

# -

# ## The PDE
#
# $\kappa$ is a DG0 function, $\alpha$ a `Constant`: one number for the whole instance.


# +
def screened_poisson_forms(mesh, seed: int):
    """``(V, a, L, bcs, kappa)``: P1 forms of -div(kappa grad u) + alpha u = 1."""
    rng = np.random.default_rng(seed)
    n_cells = mesh.topology.index_map(mesh.topology.dim).size_global
    kappa = cell_function(mesh, np.exp(rng.standard_normal(n_cells)), "kappa")
    alpha = dolfinx.fem.Constant(mesh, PETSc.ScalarType(rng.uniform(0.0, 20.0)))
    V = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    u, v = ufl.TrialFunction(V), ufl.TestFunction(V)
    a = (kappa * ufl.inner(ufl.grad(u), ufl.grad(v)) + alpha * u * v) * ufl.dx
    L = dolfinx.fem.Constant(mesh, PETSc.ScalarType(1.0)) * v * ufl.dx
    return V, a, L, dirichlet_zero(V), kappa


def main(argv=None) -> dict:
    return run("screened_poisson", screened_poisson_forms, argv)


# -

# ## What to expect
#
# The reaction term makes this the easiest family of the three: every method needs fewer
# iterations than for diffusion, the learned space again fewer than the SVD of $S$ at the
# same rank, and the free sine basis about as few. The measured numbers are in
# `results/standard/screened_poisson/tables.md`.

# +
if __name__ == "__main__":
    from nlss_fenicsx.cli import run_script  # one line, not a traceback, on any failure

    raise SystemExit(run_script("screened_poisson.py", main))
# -
