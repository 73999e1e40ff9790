# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: light
#       format_version: '1.5'
#       jupytext_version: 1.16.0
# ---

# # Anisotropic diffusion with a learned coarse space
#
# The second family of the paper (Eq. 6): $-\nabla\cdot(\mathbf{K}\nabla u) = 1$ in
# $[0,1]^2$, $u = 0$ on the boundary, with a diffusion tensor constant on each triangle,
#
# $$
# \mathbf{K} = R(\phi)\,\mathrm{diag}(10^5, 1)\,R(\phi)^T, \qquad \phi \sim N(0, \pi^2),
# $$
#
# drawn independently per triangle: every cell conducts $10^5$ times better along its own
# random direction than across it. Pointwise smoothers (Jacobi, and the Jacobi sweeps inside
# the two-grid cycle) damp only the error that is smooth *along* the strong directions, so
# the error left after smoothing, and with it the coarse space that corrects it, is far from
# the smooth functions a geometric coarse grid offers.
#
# Everything but the PDE is the diffusion demo, imported from `diffusion.py` (run from the
# `demos` folder, or with it on the path): the same mesh, model cache, $S$ and $P$,
# `LinearProblem` with `TwoGridPC`, comparison and figure. The figure colours each triangle
# by the angle of its strong axis. `--help` lists the options.

# +
from __future__ import annotations

import nlss_fenicsx  # noqa: F401  first: makes the DOLFINx wheel's libraries importable

# isort: split
import dolfinx
import numpy as np
import ufl
from diffusion import cell_function, dirichlet_zero, run  # the shared steps
from petsc4py import PETSc

K1 = 1e5  # conductivity along the strong axis (across: 1)
# -

# ## The PDE
#
# The tensor is a DG0 function with 2 x 2 values per cell; UFL's `dot(K, grad(u))` does the
# rest. The angle is kept as a second DG0 field for the figure.


# +
def anisotropic_forms(mesh, seed: int):
    """``(V, a, L, bcs, angle)``: P1 forms of -div(K grad u) = 1, K rotated per cell."""
    n_cells = mesh.topology.index_map(mesh.topology.dim).size_global
    phi = np.pi * np.random.default_rng(seed).standard_normal(n_cells)
    c, s = np.cos(phi), np.sin(phi)
    # K = R diag(K1, 1) R^T, row by row.
    tensor = np.stack([K1 * c * c + s * s, (K1 - 1) * c * s,
                       (K1 - 1) * c * s, K1 * s * s + c * c], axis=1)
    K = cell_function(mesh, tensor, "K", shape=(2, 2))
    angle = cell_function(mesh, np.mod(phi, np.pi), "angle of the strong axis")
    V = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    u, v = ufl.TrialFunction(V), ufl.TestFunction(V)
    a = ufl.inner(ufl.dot(K, ufl.grad(u)), ufl.grad(v)) * ufl.dx
    L = dolfinx.fem.Constant(mesh, PETSc.ScalarType(1.0)) * v * ufl.dx
    return V, a, L, dirichlet_zero(V), angle


def main(argv=None) -> dict:
    return run("anisotropic", anisotropic_forms, argv, log_scale=False)


# -

# ## What to expect
#
# Fewer CG iterations with the learned coarse space than with the SVD of $S$ at the same
# rank, as in the paper; and, as for diffusion, the free sine basis is a strong competitor.
# The measured numbers are in `results/standard/anisotropic/tables.md`.

# +
if __name__ == "__main__":
    from nlss_fenicsx.cli import run_script  # one line, not a traceback, on any failure

    raise SystemExit(run_script("anisotropic.py", main))
# -
