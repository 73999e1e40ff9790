# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: light
#       format_version: '1.5'
#       jupytext_version: 1.16.0
# ---

# # Diffusion on a jittered mesh with the two-grid preconditioner
#
# *Interim demo.* The paper's method learns the coarse basis $P$ from the smoothed vectors
# $S$ with a neural network. Until the learning stack lands, this demo uses the exact
# truncated SVD of $S$ (`nlss_coarse svd`), the target that the network is trained to
# approximate, and shows the rest of the pipeline end to end:
#
# 1. Gmsh builds the paper's jittered Delaunay mesh of $[0,1]^2$ with $(N+1)^2$ nodes;
# 2. one diffusion instance $-\nabla\cdot(g\nabla u) = 1$, $u = 0$ on the boundary, with
#    $g = \exp(1.5 Z)$ drawn independently on every triangle (a contrast of several
#    orders of magnitude);
# 3. dolfinx's `LinearProblem` solves it with CG preconditioned by
#    `nlss_fenicsx.petsc.TwoGridPC`, chosen purely through PETSc options;
# 4. the same assembled system is solved by the peers (SA-AMG two-grid, Jacobi-CG,
#    ICC(0)-CG, GAMG-CG, sparse Cholesky), each timed phase by phase.
#
# All iterative solves stop at the paper's tolerance, a true relative residual
# $\|b - Ax\|/\|b\| < 10^{-6}$. The demo is serial (the phase-by-phase benchmark runner
# is). `python demos/diffusion.py --help` lists the options; `--quick` is the tiny run
# ($N = 16$) used by the test suite.

# +
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

# The dense products of the set-up (S^T S with K columns) are small: BLAS threads buy
# nothing there, and on a busy 2-core machine OpenBLAS's threads made them 100x
# slower. Single-threaded BLAS unless you say otherwise (read when numpy loads).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

# `nlss_fenicsx.petsc` must come before dolfinx/petsc4py (it loads the wheel's PETSc).
import nlss_fenicsx.petsc  # noqa: E402, F401
from nlss_fenicsx import meshes, pdes  # noqa: E402
from nlss_fenicsx._fenicsx import MPI, dolfinx  # noqa: E402
from nlss_fenicsx.bench.machine import machine_line  # noqa: E402
from nlss_fenicsx.bench.methods import MethodSpec, run_method  # noqa: E402
from nlss_fenicsx.petsc import check_converged  # noqa: E402

RTOL = 1e-6
# -

# ## Mesh and PDE instance
#
# `meshes.jittered_square` returns a dolfinx mesh; `pdes.sample` draws the coefficient
# per triangle (in Gmsh's cell order, so a seed always gives the same field) and returns
# a `Problem` holding the UFL forms `a`, `L` and the Dirichlet condition.


# +
def instance(N: int, seed: int):
    mesh = meshes.jittered_square(N, seed=seed)
    return pdes.sample("diffusion", mesh, rng=seed)


# -

# ## Solve through `LinearProblem` with TwoGridPC
#
# Nothing here is specific to this package except the option values: `pc_type python`
# with `pc_python_type nlss_fenicsx.petsc.TwoGridPC` selects the preconditioner, and the
# `nlss_*` options set it up: `K` random vectors smoothed by 10 Jacobi sweeps give $S$,
# the top `rank` left singular vectors of $S$ are the coarse basis $P$, and a native
# two-level PCMG (5 + 5 Jacobi sweeps, Galerkin $P^T A P$ with a Cholesky coarse solve)
# is what CG applies. We solve once to warm up and time a second `solve()`, which
# re-assembles $A$ and $b$ and re-runs the preconditioner set-up.


# +
def twogrid_options(rank: int, K: int) -> dict:
    return {
        "ksp_type": "cg", "ksp_rtol": RTOL, "ksp_atol": 0.0,
        "ksp_norm_type": "unpreconditioned", "ksp_error_if_not_converged": True,
        "pc_type": "python", "pc_python_type": "nlss_fenicsx.petsc.TwoGridPC",
        "nlss_coarse": "svd", "nlss_rank": rank, "nlss_K": K,
        "nlss_sweeps": 10, "nlss_nu": 5, "nlss_omega": 0.66,
    }


def solve_with_twogrid(problem, rank: int, K: int):
    lp = dolfinx.fem.petsc.LinearProblem(problem.a, problem.L, bcs=problem.bcs,
                                         petsc_options_prefix="diffusion_demo_",
                                         petsc_options=twogrid_options(rank, K))
    lp.solve()  # warm-up
    t0 = time.perf_counter()
    uh = lp.solve()
    seconds = time.perf_counter() - t0
    its = check_converged(lp.solver)
    return lp, uh, its, seconds


# -

# ## The same system, every method
#
# `pdes.assemble` gives the `System` (PETSc matrix, SciPy CSR copy, right-hand side) that
# `LinearProblem` solved: the same forms, boundary rows and columns replaced by the
# identity. `bench.methods.run_method` solves it with one method and times the phases
# *smoothing* (building $S$), *inference* (the basis $P$), *setup* (everything else
# before the first iteration) and *solve*.


# +
def compare(system, rank: int, K: int) -> list:
    specs = [MethodSpec("svd", rank=rank, K=K, rtol=RTOL), MethodSpec("sa", rtol=RTOL)]
    specs += [MethodSpec(name, rtol=RTOL) for name in ("jacobi", "icc", "gamg", "cholesky")]
    return [run_method(system, spec) for spec in specs]


def print_table(records) -> None:
    head = (f"{'method':<12} {'coarse':>6} {'its':>5} {'smooth':>8} {'infer':>8} "
            f"{'setup':>8} {'solve':>8} {'total':>8} {'rel. res.':>10}")
    print(head + "\n" + "-" * len(head))
    for r in records:
        p = {k: 1e3 * v for k, v in r.phases.items()}
        coarse = "-" if r.coarse_size is None else str(r.coarse_size)
        print(f"{r.method:<12} {coarse:>6} {r.iterations:>5d} {p['smoothing']:>8.2f} "
              f"{p['inference']:>8.2f} {p['setup']:>8.2f} {p['solve']:>8.2f} "
              f"{p['total']:>8.2f} {r.rel_residual:>10.2e}")
    print("(times in ms; 'its' for Cholesky is PETSc's count for one preonly application)")


# -

# Reading the table: the two-grid rows split their set-up into *smoothing* and
# *inference*; SA-AMG's "inference" is PyAMG building its aggregation prolongator, whose
# coarse size (about 500 at $N = 64$) is ten times the SVD rank. The SVD two-grid pays
# for an exact SVD on every instance; that cost is what the learned NLSS model is meant
# to remove, and it is the row a later version of this demo adds.

# ## Picture: mesh, coefficient and solution
#
# The P1 dof coordinates and the cell-to-dof map give a `matplotlib.tri.Triangulation`
# whose triangles are the mesh's cells in dolfinx's local order, so the per-cell
# coefficient (a DG0 function) can be painted on the same triangles.


# +
def plot(path: Path, problem, uh) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm
    from matplotlib.tri import Triangulation

    V = uh.function_space
    n_cells = V.mesh.topology.index_map(V.mesh.topology.dim).size_local
    xy = V.tabulate_dof_coordinates()[:, :2]
    tri = Triangulation(xy[:, 0], xy[:, 1], V.dofmap.list[:n_cells])
    g = problem.coefficients["g"]
    g_cells = g.x.array[g.function_space.dofmap.list[:n_cells, 0]]

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), constrained_layout=True)
    axes[0].triplot(tri, color="k", lw=0.3)
    axes[0].set_title(f"jittered mesh ({V.dofmap.index_map.size_global} nodes)")
    im = axes[1].tripcolor(tri, facecolors=g_cells, norm=LogNorm(), cmap="viridis")
    axes[1].set_title("coefficient g (per triangle, log scale)")
    fig.colorbar(im, ax=axes[1], shrink=0.85)
    im = axes[2].tricontourf(tri, uh.x.array, levels=24, cmap="magma")
    axes[2].set_title("solution u")
    fig.colorbar(im, ax=axes[2], shrink=0.85)
    for ax in axes:
        ax.set_aspect("equal")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -

# ## Putting it together


# +
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Interim NeuraLSP demo: one diffusion instance on the jittered mesh, "
                    "solved by dolfinx LinearProblem with TwoGridPC (exact-SVD coarse "
                    "space), then compared with SA-AMG two-grid, Jacobi-CG, ICC(0)-CG, "
                    "GAMG-CG and Cholesky.")
    p.add_argument("--N", type=int, default=None, help="cells per side (default 64)")
    p.add_argument("--rank", type=int, default=None, help="coarse rank r (default 48)")
    p.add_argument("--K", type=int, default=None, help="smoothed vectors K (default 72)")
    p.add_argument("--seed", type=int, default=0, help="seed of mesh jitter and coefficient")
    p.add_argument("--quick", action="store_true",
                   help="tiny run for tests: N 16, rank 16, K 24")
    p.add_argument("--out", type=Path, default=Path("out/diffusion"),
                   help="output folder for the PNG (default out/diffusion)")
    args = p.parse_args(argv)
    quick = {"N": 16, "rank": 16, "K": 24}
    full = {"N": 64, "rank": 48, "K": 72}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.N < 2:
        p.error(f"--N must be >= 2, got {args.N}")
    if not 1 <= args.rank <= args.K <= (args.N + 1) ** 2:
        p.error(f"need 1 <= --rank <= --K <= (N+1)^2, got rank {args.rank}, K {args.K}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if MPI.COMM_WORLD.size > 1:
        raise SystemExit("demos/diffusion.py is serial (its benchmark runner is); "
                         "run demos/your_model.py under mpiexec instead")

    t0 = time.perf_counter()
    problem = instance(args.N, args.seed)
    t_mesh = time.perf_counter() - t0
    lp, uh, its, seconds = solve_with_twogrid(problem, args.rank, args.K)
    ctx = lp.solver.getPC().getPythonContext()

    system = pdes.assemble(problem)
    n = system.n
    x = uh.x.array[: system.A_csr.shape[0]]
    rel_res = float(np.linalg.norm(system.b - system.A_csr @ x) / np.linalg.norm(system.b))

    print(f"diffusion, jittered mesh N={args.N} (seed {args.seed}): n = {n} unknowns; "
          f"mesh + coefficient {t_mesh:.2f} s")
    print(f"LinearProblem + TwoGridPC (svd, rank {args.rank}, K {args.K}): {its} CG "
          f"iterations, solve() {1e3 * seconds:.1f} ms, final ||b - A x|| / ||b|| = "
          f"{rel_res:.2e}")
    print("  set-up phases: " + ", ".join(f"{k} {1e3 * v:.2f} ms"
                                          for k, v in ctx.timings.items()))
    assert rel_res < RTOL, f"final relative residual {rel_res:.2e} >= {RTOL}"

    print("\nthe same system, every method (bench.methods.run_method):")
    records = compare(system, args.rank, args.K)
    print_table(records)
    print(machine_line())

    args.out.mkdir(parents=True, exist_ok=True)
    png = plot(args.out / "diffusion.png", problem, uh)
    print(f"wrote {png}")
    return {
        "N": args.N,
        "n": n,
        "rank": args.rank,
        "K": args.K,
        "iterations": its,
        "solve_s": seconds,
        "rel_residual": rel_res,
        "twogrid_timings": dict(ctx.timings),
        "methods": {r.method: r.as_dict() for r in records},
        "files": {"png": str(png)},
    }


if __name__ == "__main__":
    main()
# -
