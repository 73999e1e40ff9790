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
# drawn independently per triangle: every cell conducts $10^5$ times better along its
# own random direction than across it. Pointwise smoothers (Jacobi, and the Jacobi sweeps
# inside the two-grid cycle) damp only the error that is smooth *along* the strong
# directions, so the error left after smoothing, and with it the coarse space that
# corrects it, is far from the smooth functions a geometric coarse grid offers. This is
# where a coarse space learned from smoothed vectors is meant to help.
#
# Everything else is the diffusion demo (`demos/diffusion.py` explains each step): a
# fresh Gmsh jittered mesh and coefficient draw, the NLSS model from the on-disk cache
# (trained on the first run, under a minute at the default size), dolfinx's
# `LinearProblem` with `TwoGridPC` (`nlss_coarse nlss`), and the same system through
# SVD and SA-AMG two-grid, Jacobi-CG, ICC(0)-CG, GAMG-CG and Cholesky. The PNG colours
# each triangle by the angle of its strong axis. `--help` lists the options.

# +
from __future__ import annotations

import os

# Single-threaded BLAS and torch by default: see demos/diffusion.py.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from nlss_fenicsx.bench import demo  # noqa: E402  (imports dolfinx/petsc4py in order)

PDE = "anisotropic"


def main(argv=None) -> dict:
    """Run the demo; returns the numbers it printed (see `demo.run`)."""
    return demo.run(PDE, argv)


# -

# ## What to expect
#
# Measured on the development machine (2-core AMD EPYC, default sizes except a model
# trained for `--steps 300`; the default 1000-step model was not timed): NLSS needs 15
# CG iterations where the exact SVD basis of the same rank (32) needs 25, SA-AMG's
# two-grid (121 coarse columns) 12, GAMG-CG 15, ICC(0)-CG 34 and Jacobi-CG 129. Per
# solve, the forward pass (about 4 ms for 13.6M weights on this CPU) costs more than
# the SVD it replaces (1 ms) at $n = 1089$, so NLSS's 8 ms per solve is behind SVD
# (5 ms), GAMG (2 ms) and Cholesky (1.4 ms) here; see the discussion at the end of
# `demos/diffusion.py`.

# +
if __name__ == "__main__":
    main()
# -
