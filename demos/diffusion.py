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
# We solve
#
# $$
# -\nabla\cdot(g\,\nabla u) = 1 \quad\text{in } \Omega = [0,1]^2, \qquad u = 0 \text{ on }
# \partial\Omega,
# $$
#
# with $g = \exp(1.5\,Z)$ drawn independently on every triangle ($Z$ standard normal:
# neighbouring cells differ by orders of magnitude), on the paper's jittered Delaunay mesh
# with $(N+1)^2$ nodes, and precondition conjugate gradients with the two-grid method of
# NeuraLSP:
#
# 1. $K$ random vectors, smoothed by 10 weighted-Jacobi sweeps, give $S$ ($n \times K$):
#    what is left of them is the error that Jacobi cannot damp;
# 2. a coarse basis $P$ ($n \times r$, orthonormal) should span that error. The paper's
#    baseline takes the leading left singular vectors of $S$ (one SVD per matrix); NeuraLSP
#    trains a network to predict that subspace from $S$ in one forward pass;
# 3. the two-grid cycle, 5 Jacobi sweeps, a Galerkin coarse solve with $P^T A P$, 5 Jacobi
#    sweeps, preconditions CG. PETSc runs it as a native `PCMG`.
#
# The walk-through: the mesh (Gmsh), the PDE (UFL), the learned model, $S$ and $P$ looked
# at directly, the `LinearProblem` that selects the preconditioner by PETSc options
# alone, the same problem with the other coarse spaces and the solvers a user would pick
# instead, and a figure. `anisotropic.py` and `screened_poisson.py` import the shared
# steps from here and change only the PDE.
#
# Run `python demos/diffusion.py` (`--help` lists the options, `--quick` is the tiny run
# of the test suite); in parallel, `mpiexec -n 2 python demos/diffusion.py`.

# +
from __future__ import annotations

# First: with the pip wheels, importing the package makes dolfinx and petsc4py importable.
import nlss_fenicsx  # noqa: F401

# isort: split
import argparse
import time
from pathlib import Path

import dolfinx
import dolfinx.fem.petsc
import numpy as np
import ufl
from mpi4py import MPI
from petsc4py import PETSc

from nlss_fenicsx import meshes
from nlss_fenicsx._atomic import atomic_path, check_destination
from nlss_fenicsx.coarse import coarse_basis
from nlss_fenicsx.la import attach_node_order, petsc_to_csr, smoothed_vectors_petsc
from nlss_fenicsx.petsc import check_converged

RTOL = 1e-6
# Default sizes: N = 32 (1,089 unknowns), K = r_max = 48 smoothed vectors, coarse rank 32,
# the paper's MLP widths trained for 1000 steps (once; then from the model cache).
# `--quick`: the test suite's tiny run.
DEFAULT = {"N": 32, "K": 48, "rank": 32, "steps": 1000, "hidden": (128, 256, 256, 128)}
QUICK = {"N": 8, "K": 8, "rank": 6, "steps": 30, "hidden": (32, 32)}
# -

# ## Command line
#
# `--out` is checked before any work: a folder that cannot be written is one line of
# error, not a traceback after the training.


# +
def parse_args(argv=None, *, pde: str = "diffusion") -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=f"NeuraLSP demo: {pde} on a jittered Gmsh mesh, solved by dolfinx "
                    "LinearProblem with the learned two-grid preconditioner and compared "
                    "with the other coarse spaces, GAMG, ICC(0), Jacobi and Cholesky.")
    p.add_argument("--N", type=int, help=f"cells per side (default {DEFAULT['N']})")
    p.add_argument("--K", type=int, help=f"smoothed vectors, also the model's r_max "
                                         f"(default {DEFAULT['K']})")
    p.add_argument("--rank", type=int, help=f"coarse rank r (default {DEFAULT['rank']})")
    p.add_argument("--steps", type=int, help=f"training steps (default {DEFAULT['steps']})")
    p.add_argument("--seed", type=int, default=0, help="seed of the mesh jitter and "
                                                       "coefficient of the solved instance")
    p.add_argument("--out", type=Path, default=Path("out") / pde,
                   help=f"output folder (default out/{pde})")
    p.add_argument("--retrain", action="store_true", help="train the model again")
    p.add_argument("--quick", action="store_true",
                   help=f"tiny run for the tests: {QUICK}")
    args = p.parse_args(argv)
    sizes = QUICK if args.quick else DEFAULT
    for key, value in sizes.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.N < 2 or args.seed < 0 or args.steps < 1:
        p.error(f"need --N >= 2, --seed >= 0, --steps >= 1; got {args.N}, {args.seed}, "
                f"{args.steps}")
    if not 1 <= args.rank <= args.K <= (args.N + 1) ** 2:
        p.error(f"need 1 <= --rank <= --K <= (N+1)^2; got rank {args.rank}, K {args.K}, "
                f"N {args.N}")
    try:
        check_destination(args.out, what="--out", kind="dir")
    except ValueError as err:
        p.error(str(err))
    args.pde = pde
    return args


# -

# ## The mesh: Gmsh
#
# `meshes.jittered_square` builds the paper's mesh: the $(N+1)^2$ grid nodes, interior
# ones moved by up to $0.35h$, triangulated by Delaunay, stored as a Gmsh model that
# dolfinx reads and distributes over the ranks. dolfinx keeps each node's input index
# (here: its grid index), which is how the learned model sees the nodes in the same order
# whatever the partition.
#
# ## The PDE: UFL
#
# The coefficient is piecewise constant, a DG0 function. Its values are drawn over the
# mesh's *input* cell numbering and each rank picks its own cells, so the same seed gives
# the same field on any number of ranks. The Dirichlet condition is imposed on the
# exterior facets; `LinearProblem` keeps the boundary rows with 1 on the diagonal, so $A$
# is SPD of size $n = (N+1)^2$.


# +
def cell_function(mesh, values, name: str, shape=None):
    """A DG0 function from values given per input cell (``values[i]``: input cell i)."""
    tdim = mesh.topology.dim
    imap = mesh.topology.index_map(tdim)
    cells = np.asarray(mesh.topology.original_cell_index)[: imap.size_local + imap.num_ghosts]
    Q = dolfinx.fem.functionspace(mesh, ("DG", 0) if shape is None else ("DG", 0, shape))
    fn = dolfinx.fem.Function(Q, name=name)
    rows = Q.dofmap.list[np.arange(len(cells)), 0]
    fn.x.array.reshape(len(fn.x.array) // Q.dofmap.bs, -1)[rows] = values[cells].reshape(
        len(cells), -1)
    return fn


def dirichlet_zero(V):
    """``u = 0`` on the whole exterior boundary."""
    mesh = V.mesh
    fdim = mesh.topology.dim - 1
    mesh.topology.create_connectivity(fdim, fdim + 1)
    dofs = dolfinx.fem.locate_dofs_topological(
        V, fdim, dolfinx.mesh.exterior_facet_indices(mesh.topology))
    return [dolfinx.fem.dirichletbc(PETSc.ScalarType(0.0), dofs, V)]


def diffusion_forms(mesh, seed: int):
    """``(V, a, L, bcs, coefficient)``: P1 forms of -div(g grad u) = 1, g = exp(1.5 Z)."""
    n_cells = mesh.topology.index_map(mesh.topology.dim).size_global
    g = cell_function(mesh, np.exp(1.5 * np.random.default_rng(seed).standard_normal(n_cells)),
                      "g")
    V = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    u, v = ufl.TrialFunction(V), ufl.TestFunction(V)
    a = g * ufl.inner(ufl.grad(u), ufl.grad(v)) * ufl.dx
    L = dolfinx.fem.Constant(mesh, PETSc.ScalarType(1.0)) * v * ufl.dx
    return V, a, L, dirichlet_zero(V), g


# -

# ## The learned model
#
# The network is trained for the *family* (random coefficients on random jittered meshes
# of this size), not for the instance solved here. `cached_model` trains it once, with a
# progress bar, the authors' protocol (a fresh instance per Adam step), and keeps it in
# the model cache (`$NLSS_FENICSX_CACHE`, default `~/.cache/nlss_fenicsx`) under a name
# made from its settings; later runs load it. Under `mpiexec` every rank asks for it; a
# lock lets one train while the others wait. (`nlss_fenicsx.nn` imports torch, so it is
# imported where it is needed.)


# +
def learned_model(args) -> Path:
    from nlss_fenicsx.nn.cache import cached_model
    from nlss_fenicsx.nn.train import TrainConfig

    cfg = TrainConfig(pde=args.pde, N=args.N, K=args.K, r_max=args.K, steps=args.steps,
                      hidden=tuple(args.hidden))
    _, path, trained = cached_model(cfg, retrain=args.retrain,
                                    progress=MPI.COMM_WORLD.rank == 0)
    return Path(path)


# -

# ## $S$ and $P$, looked at directly
#
# Before handing everything to PETSc, we build $S$ and three coarse bases from it with
# the library's own functions, on this rank's rows: the SVD of $S$ (the paper's
# baseline), the network's prediction, and the $r$ lowest sine modes of the grid (free:
# they do not depend on the instance). The *captured energy* $\|P^T S\|_F^2 / \|S\|_F^2$
# says how much of $S$ each basis holds; the SVD holds the most by construction, yet
# which basis makes the better coarse space is for CG to decide below.


# +
def look_at_S_and_P(a, bcs, V, model_path: Path, args) -> dict:
    from nlss_fenicsx.nn.inference import load_model

    comm = V.mesh.comm
    A = dolfinx.fem.petsc.assemble_matrix(dolfinx.fem.form(a), bcs=bcs)
    A.assemble()
    order = attach_node_order(A, V)  # node i of the mesh -> its dof, on every rank
    S = smoothed_vectors_petsc(A, args.K, seed=args.seed, node_order=order)  # n_local x K
    A_local = petsc_to_csr(A)
    bases = {
        "SVD of S": coarse_basis("svd", A_local, r=args.rank, S=S, comm=comm),
        "NLSS (learned)": coarse_basis("nlss", A_local, r=args.rank, S=S, comm=comm,
                                       model=load_model(model_path), node_order=order),
        "sine modes": coarse_basis("sine", A_local, r=args.rank, node_order=order,
                                   comm=comm),
    }
    total = comm.allreduce(float(np.sum(S * S)))
    energy = {}
    for label, P in bases.items():
        projection = comm.allreduce(np.asarray(P.T @ S))  # r x K, summed over the ranks
        energy[label] = float(np.sum(projection**2) / total)
    A.destroy()
    return energy


# -

# ## The solve: `LinearProblem` and PETSc options
#
# The preconditioner is chosen by options only. `nlss_coarse nlss` with `nlss_model`
# selects the learned coarse space; the PC reads $K$, the sweeps and the Jacobi weight
# from the checkpoint, so only the rank is given. The same options with `nlss_coarse svd`,
# `sine` or `eig-ref` give the other coarse spaces, and the usual PETSc options give the
# solvers a user would otherwise pick. Each `LinearProblem` has its own options prefix:
# dolfinx pushes the options under it and removes them again, so the runs cannot leak
# options into each other. The learned space needs one more line, `attach_node_order`,
# which tells the PC how the mesh's nodes map to dofs.


# +
def solver_options(model_path: Path, args, comm) -> dict[str, dict]:
    cg = {"ksp_type": "cg", "ksp_rtol": RTOL, "ksp_atol": 0.0, "ksp_max_it": 20000,
          "ksp_norm_type": "unpreconditioned"}
    two_grid = cg | {"pc_type": "python", "pc_python_type": "nlss_fenicsx.petsc.TwoGridPC",
                     "nlss_rank": args.rank}
    methods = {
        "NLSS (learned)": two_grid | {"nlss_coarse": "nlss", "nlss_model": str(model_path)},
        "SVD of S": two_grid | {"nlss_coarse": "svd", "nlss_K": args.K},
        "sine modes": two_grid | {"nlss_coarse": "sine"},
        "eig-ref": two_grid | {"nlss_coarse": "eig-ref"},
        "GAMG": cg | {"pc_type": "gamg"},
        # PETSc's ICC is sequential; in parallel, ICC(0) on each rank's block.
        "ICC(0)": cg | ({"pc_type": "icc"} if comm.size == 1
                        else {"pc_type": "bjacobi", "sub_pc_type": "icc"}),
        "Jacobi": cg | {"pc_type": "jacobi"},
        "Cholesky (direct)": {"ksp_type": "preonly", "pc_type": "cholesky",
                              "pc_factor_mat_solver_type": "mumps"},
    }
    if comm.size == 1:  # PyAMG's aggregation is serial
        methods["SA-AMG two-grid"] = two_grid | {"nlss_coarse": "sa"}
        del methods["SA-AMG two-grid"]["nlss_rank"]
    return methods


def solve(a, L, bcs, V, options: dict, prefix: str) -> dict:
    """One warm-up ``solve()``, then a timed one; iterations, time, residual history."""
    problem = dolfinx.fem.petsc.LinearProblem(a, L, bcs=bcs, petsc_options_prefix=prefix,
                                              petsc_options=options)
    attach_node_order(problem.A, V)
    problem.solve()  # warm-up: model loading, first-call costs
    problem.solver.setConvergenceHistory(reset=True)
    t0 = time.perf_counter()
    uh = problem.solve()
    seconds = time.perf_counter() - t0
    its = check_converged(problem)
    nb = problem.b.norm()
    history = [float(h) / nb for h in problem.solver.getConvergenceHistory()]
    return {"uh": uh, "iterations": its, "seconds": seconds, "history": history}


# -

# `solve()` assembles $A$ and $b$ again and so also re-runs the preconditioner's set-up
# (for the two-grid methods: smoothing, the basis, $P^T A P$ and its Cholesky factor): the
# time is that of a user's `solve()` call. Every solution is compared with the direct one.


# +
def compare(a, L, bcs, V, model_path: Path, args) -> dict:
    comm = V.mesh.comm
    runs = {}
    for label, options in solver_options(model_path, args, comm).items():
        prefix = f"{args.pde}_{''.join(c for c in label.lower() if c.isalnum())}_"
        runs[label] = solve(a, L, bcs, V, options, prefix)
    ref = runs["Cholesky (direct)"]["uh"].x.petsc_vec
    for run in runs.values():
        diff = run["uh"].x.petsc_vec.copy()
        diff.axpy(-1.0, ref)
        run["rel_error"] = diff.norm() / ref.norm()
        diff.destroy()
    return runs


def report(runs: dict, energy: dict, comm) -> None:
    if comm.rank != 0:
        return
    print(f"\n{'method':<18} {'iterations':>10} {'solve() ms':>11} {'vs direct':>10} "
          f"{'energy of S':>12}")
    for label, run in runs.items():
        e = f"{energy[label]:.3f}" if label in energy else ""
        print(f"{label:<18} {run['iterations']:>10d} {1e3 * run['seconds']:>11.1f} "
              f"{run['rel_error']:>10.1e} {e:>12}")
    print("(one solve() after a warm-up, assembly and preconditioner set-up included; "
          "'energy of S': ||P^T S||^2 / ||S||^2)")


# -

# ## A figure
#
# The mesh over the coefficient, the solution, and the convergence of every iterative
# method. In serial only: matplotlib draws from the rank's own dofs and cells.


# +
def plot(path: Path, V, coefficient, uh, runs: dict, *, title: str, log_scale=True) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm
    from matplotlib.tri import Triangulation

    n_cells = V.mesh.topology.index_map(V.mesh.topology.dim).size_local
    xy = V.tabulate_dof_coordinates()[:, :2]
    tri = Triangulation(xy[:, 0], xy[:, 1], V.dofmap.list[:n_cells])
    values = coefficient.x.array[coefficient.function_space.dofmap.list[:n_cells, 0]]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5), constrained_layout=True)
    im = axes[0].tripcolor(tri, facecolors=values, cmap="viridis",
                           norm=LogNorm() if log_scale else None)
    axes[0].triplot(tri, color="k", lw=0.2, alpha=0.5)
    axes[0].set_title(f"mesh ({V.dofmap.index_map.size_global} nodes) and {coefficient.name}")
    fig.colorbar(im, ax=axes[0], shrink=0.85)
    im = axes[1].tricontourf(tri, uh.x.array[: len(xy)], levels=24, cmap="magma")
    axes[1].set_title("solution u")
    fig.colorbar(im, ax=axes[1], shrink=0.85)
    for ax in axes[:2]:
        ax.set_aspect("equal")
    for label, run in runs.items():
        if label != "Cholesky (direct)":
            style = {"lw": 2.5, "color": "k"} if label.startswith("NLSS") else {"lw": 1.2}
            axes[2].semilogy(run["history"], label=f"{label} ({run['iterations']})", **style)
    axes[2].axhline(RTOL, color="gray", ls="--", lw=1)
    axes[2].set(xlabel="CG iteration", ylabel=r"$\|b - A x_k\| / \|b\|$",
                title="convergence (iterations in brackets)")
    axes[2].grid(alpha=0.3)
    axes[2].legend(fontsize=8)
    fig.suptitle(title)
    with atomic_path(path, suffix=".png") as tmp:  # a killed run leaves no half-written file
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


# -

# ## Putting it together
#
# `run` is the whole demo for any PDE family: it takes the function that builds the forms,
# so the other two demos reuse it with their own.


# +
def run(pde: str, forms, argv=None, *, log_scale: bool = True) -> dict:
    args = parse_args(argv, pde=pde)
    comm = MPI.COMM_WORLD

    def say(*items):
        if comm.rank == 0:
            print(*items, flush=True)

    mesh = meshes.jittered_square(args.N, seed=args.seed, comm=comm)
    V, a, L, bcs, coefficient = forms(mesh, args.seed)
    n = V.dofmap.index_map.size_global
    say(f"{pde} on a jittered Gmsh mesh, N={args.N}: n = {n} unknowns on {comm.size} "
        f"rank(s), instance seed {args.seed}")
    model_path = learned_model(args)
    say(f"NLSS model: {model_path}")
    energy = look_at_S_and_P(a, bcs, V, model_path, args)
    runs = compare(a, L, bcs, V, model_path, args)
    report(runs, energy, comm)
    files = {}
    if comm.size == 1:
        args.out.mkdir(parents=True, exist_ok=True)
        files["png"] = str(plot(args.out / f"{pde}.png", V, coefficient,
                                runs["NLSS (learned)"]["uh"], runs, log_scale=log_scale,
                                title=f"{pde}, N={args.N}, n={n}, coarse rank {args.rank}"))
        say(f"wrote {files['png']}")
    return {"pde": pde, "n": n, "N": args.N, "rank": args.rank, "K": args.K,
            "model": str(model_path), "energy": energy, "files": files,
            "iterations": {k: r["iterations"] for k, r in runs.items()},
            "seconds": {k: r["seconds"] for k, r in runs.items()},
            "rel_error": {k: r["rel_error"] for k, r in runs.items()}}


def main(argv=None) -> dict:
    return run("diffusion", diffusion_forms, argv)


# -

# ## What to expect
#
# With the default sizes the learned basis needs about half the CG iterations of the SVD
# basis of the same rank, although it holds less of $S$'s energy: the network learned a
# coarse space for the family, not the SVD of each $S$. The sine modes, free for every
# instance, do as well or better, and on a single system of a thousand unknowns GAMG,
# ICC(0) and the direct solver are faster than any two-grid variant. The measured numbers
# for all methods are in `results/` (`nlss-fenicsx bench`), with the machine they ran on.

# +
if __name__ == "__main__":
    from nlss_fenicsx.cli import run_script  # one line, not a traceback, on any failure

    raise SystemExit(run_script("diffusion.py", main))
# -
