# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: light
#       format_version: '1.5'
#       jupytext_version: 1.16.0
# ---

# # Diffusion with a learned coarse space (NeuraLSP) in a dolfinx `LinearProblem`
#
# We solve $-\nabla\cdot(g\nabla u) = 1$ in $[0,1]^2$, $u = 0$ on the boundary, with
# $g = \exp(1.5 Z)$ drawn independently on every triangle ($Z$ standard normal: a
# contrast of several orders of magnitude between neighbouring cells), on the paper's
# jittered Delaunay mesh with $(N+1)^2$ nodes, and precondition CG with the NeuraLSP
# two-grid method:
#
# 1. $K$ random vectors smoothed by 10 Jacobi sweeps give $S$ ($n \times K$);
# 2. a neural network (an MLP with a QR head, trained with the nested NLSS loss to
#    predict the leading left singular subspace of $S$) maps $S$ to an orthonormal
#    coarse basis $P$ ($n \times r$) in one forward pass, with no SVD per instance;
# 3. the two-grid cycle (5 + 5 weighted-Jacobi sweeps around a Galerkin coarse solve
#    with $P^T A P$) is the preconditioner, run by PETSc as a native `PCMG`.
#
# The steps live in `nlss_fenicsx.bench.demo` (shared with `anisotropic.py` and
# `screened_poisson.py`, which differ only in the PDE family); this file is the
# walk-through.
#
# **The model is trained once and cached.** The first run trains it (the authors'
# protocol: a fresh random instance per Adam step) with a progress bar, and stores it
# under `$NLSS_FENICSX_CACHE` (default `~/.cache/nlss_fenicsx/models/`), named after
# its settings. At the default size, $N = 32$ ($n = 1089$), $K = r_\max = 48$, the
# paper's widths 128-256-256-128 (13.6M parameters) and 1000 steps, that took 21 s
# of training (27 s for the whole first run) on the quiet 2-core development machine, and
# up to about a minute when other work shares the cores; every later run loads the file
# and takes seconds. `--retrain` trains again; a corrupt or stale cache file is reported and
# retrained. (The paper's $N = 64$, $K = r_\max = 72$ model has 78M parameters and
# trains in about 2 minutes here: use `nlss-fenicsx train` for it and pass your own
# checkpoint to the PC.)
#
# **Plugging it into dolfinx** takes PETSc options only, plus one call that tells the
# PC how dofs map to grid nodes (the network sees $S$ in grid order):
#
# ```python
# from nlss_fenicsx.petsc import attach_grid_order
# lp = LinearProblem(a, L, bcs=bcs, petsc_options_prefix="diffusion_demo_", petsc_options={
#     "ksp_type": "cg", "ksp_rtol": 1e-6, "ksp_norm_type": "unpreconditioned",
#     "pc_type": "python", "pc_python_type": "nlss_fenicsx.petsc.TwoGridPC",
#     "nlss_coarse": "nlss", "nlss_model": str(path), "nlss_rank": 32, "nlss_K": 48})
# attach_grid_order(lp.A, meshes.grid_order(V))
# uh = lp.solve()
# ```
#
# Run `python demos/diffusion.py` (`--help` for the options; `--quick` is the tiny run
# of the test suite). It prints a table of every method on the same assembled system
# and writes `out/diffusion/diffusion.png` and `out/diffusion/solution.bp` (ParaView).

# +
from __future__ import annotations

import os

# BLAS and torch threads: the products here are small (S^T S, a batch-1 MLP), and on a
# busy 2-core machine extra threads made them 10-100x slower (an Adam step of the 13.6M
# parameter model: 350 ms with 2 threads, 20 ms with 1). Override by setting them.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from nlss_fenicsx.bench import demo  # noqa: E402  (imports dolfinx/petsc4py in order)

# -

# ## What the run does
#
# `demo.run("diffusion", argv)` performs, in order:
#
# * `demo.instance`: `meshes.jittered_square(N, seed)` builds the mesh as a Gmsh model
#   and hands it to dolfinx; `pdes.sample("diffusion", mesh, rng=seed)` draws $g$ per
#   triangle and returns the UFL forms and the boundary condition. This instance is
#   fresh: the model never saw it (training draws its instances from other seeds);
# * `demo.learned_model`: `nn.cache.cached_model(TrainConfig(...))`;
# * `demo.solve_linear_problem`: the `LinearProblem` above, a warm-up `solve()` and a
#   timed one, convergence checked with `petsc.check_converged`;
# * `demo.compare`: `pdes.assemble(problem)` gives the same matrix as a `System`, and
#   `bench.methods.run_method` solves it with NLSS, SVD and SA-AMG two-grid (the
#   paper's baselines: exact truncated SVD of $S$; PyAMG's smoothed-aggregation
#   prolongator) and the solvers a user would otherwise pick: Jacobi-CG, ICC(0)-CG,
#   GAMG-CG and a sparse Cholesky. Each method runs once to warm up, then once timed,
#   phase by phase: *smooth* (building $S$), *infer* ($P$ from $S$, or from $A$ for
#   SA-AMG), *setup* (Galerkin product and Cholesky of $P^T A P$, or the peer's own
#   set-up) and *solve* (CG to $\|b - Ax\|/\|b\| < 10^{-6}$);
# * `demo.write_solution` and `demo.plot`: VTX files and one PNG with the mesh over
#   the coefficient, the solution and every method's residual history.

# +
PDE = "diffusion"


def main(argv=None) -> dict:
    """Run the demo; returns the numbers it printed (see `demo.run`)."""
    return demo.run(PDE, argv)


# -

# ## What to expect
#
# On the development machine (2-core AMD EPYC, default sizes, rank 32, the model trained
# for 1000 steps) the learned basis needs 16 CG iterations where the exact SVD basis of
# the same rank needs 29: the network does not reproduce the SVD of this particular $S$
# (its captured energy is lower) but predicts, from what it saw over 1000 instances, a
# subspace that is a better coarse space for the family. SA-AMG's two-grid uses a
# prolongator almost four times larger (121 columns) and needs 14; GAMG-CG 18, ICC(0)-CG
# 33, Jacobi-CG 153.
#
# The clock tells a different story at this size, and the table shows why: the int8
# forward pass at rank 32 reads about 11 MB of weights (1.1-1.4 ms on this CPU) where
# the SVD of the $1089 \times 48$ matrix $S$ takes 0.6 ms, so NLSS's set-up costs about
# as much as the CG iterations it saves (3.4-3.7 ms in all against 3.2-3.4 ms for SVD),
# and ICC(0)-CG (0.3-0.4 ms), Jacobi-CG (0.6-0.7 ms), a sparse Cholesky (1.3 ms) and GAMG
# (1.9 ms) beat every two-grid variant on a single system of 1,089 unknowns. The two-grid methods
# are aimed at families of larger related systems solved many times (`demos/your_model.py
# --learned` shows that workflow on your own mesh).

# +
if __name__ == "__main__":
    main()
# -
