"""The steps the PDE demos share: instance, cached model, LinearProblem solve, comparison,
outputs.

``demos/diffusion.py``, ``demos/anisotropic.py`` and ``demos/screened_poisson.py`` differ
only in the PDE family, so each is prose plus a call to :func:`run`; the steps are
public functions here, readable top to bottom, and reusable in your own scripts:

1. :func:`instance`: Gmsh builds the jittered mesh, :func:`nlss_fenicsx.pdes.sample`
   draws the coefficient field (a `Problem` with UFL forms and the Dirichlet condition);
2. :func:`learned_model`: the NLSS model for the family and size, from the on-disk
   cache (:func:`nlss_fenicsx.nn.cache.cached_model`), trained on first use;
3. :func:`solve_linear_problem`: dolfinx's ``LinearProblem`` with CG and
   ``TwoGridPC`` (``nlss_coarse nlss``), selected by :func:`nlss_options` alone;
4. :func:`compare`: the same assembled system through every method of
   :func:`nlss_fenicsx.bench.methods.run_method`, after one warm-up run each;
5. :func:`write_solution` (VTX ``.bp`` for ParaView, else XDMF) and :func:`plot`
   (one PNG: mesh and coefficient, solution, convergence histories).

Serial (the phase-by-phase benchmark runner is).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nlss_fenicsx._fenicsx import MPI, PETSc, dolfinx

__all__ = [
    "DEFAULT",
    "QUICK",
    "RTOL",
    "DemoSizes",
    "LPResult",
    "compare",
    "format_table",
    "instance",
    "learned_model",
    "nlss_options",
    "parse_args",
    "plot",
    "run",
    "solve_linear_problem",
    "train_config",
    "write_solution",
]

RTOL = 1e-6
COMPARED = ("nlss", "svd", "sa", "jacobi", "icc", "gamg", "cholesky")


@dataclass(frozen=True)
class DemoSizes:
    """Problem, model and training sizes of a demo run."""

    N: int
    K: int
    rank: int
    steps: int
    hidden: tuple[int, ...]


# N=32 (1,089 unknowns), K=48, r_max=48, the paper's MLP widths (13.6M parameters),
# 1000 steps: 23 s of training on the quiet 2-core development CPU, once; the first run of a
# demo stays under 5 minutes and a cached run takes seconds. `--quick` is for the tests.
DEFAULT = DemoSizes(N=32, K=48, rank=32, steps=1000, hidden=(128, 256, 256, 128))
QUICK = DemoSizes(N=8, K=8, rank=6, steps=30, hidden=(32, 32))


def parse_args(pde: str, argv=None, *, description: str | None = None) -> argparse.Namespace:
    """Command line of the PDE demos (``--help`` lists it)."""
    d, q = DEFAULT, QUICK
    p = argparse.ArgumentParser(
        description=description or f"NeuraLSP demo: {pde} on a jittered Gmsh mesh, solved "
        "by dolfinx LinearProblem with the learned two-grid preconditioner and compared "
        "with SVD and SA-AMG two-grid, Jacobi-CG, ICC(0)-CG, GAMG-CG and Cholesky.")
    p.add_argument("--N", type=int, default=None, help=f"cells per side (default {d.N})")
    p.add_argument("--K", type=int, default=None,
                   help=f"smoothed vectors K, also the model's r_max (default {d.K})")
    p.add_argument("--rank", type=int, default=None, help=f"coarse rank r (default {d.rank})")
    p.add_argument("--steps", type=int, default=None,
                   help=f"training steps of the model (default {d.steps})")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the solved instance's mesh jitter and coefficient")
    p.add_argument("--out", type=Path, default=Path("out") / pde,
                   help=f"output folder (default out/{pde})")
    p.add_argument("--retrain", action="store_true",
                   help="train the model again even if the cache has it")
    p.add_argument("--quick", action="store_true",
                   help=f"tiny run for tests: N {q.N}, K {q.K}, rank {q.rank}, {q.steps} "
                        f"training steps, hidden widths {q.hidden}")
    args = p.parse_args(argv)
    sizes = q if args.quick else d
    for name in ("N", "K", "rank", "steps"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(sizes, name))
    args.hidden = sizes.hidden
    args.pde = pde
    if args.N < 2:
        p.error(f"--N must be >= 2, got {args.N}")
    if not 1 <= args.rank <= args.K <= (args.N + 1) ** 2:
        p.error(f"need 1 <= --rank <= --K <= (N+1)^2, got rank {args.rank}, K {args.K}, "
                f"N {args.N}")
    if args.steps < 1:
        p.error(f"--steps must be >= 1, got {args.steps}")
    return args


# ---------------------------------------------------------------- 1. instance
def instance(pde: str, N: int, seed: int):
    """A fresh instance: Gmsh jittered mesh (seed ``seed``) and a coefficient draw."""
    from nlss_fenicsx import meshes, pdes

    mesh = meshes.jittered_square(N, seed=seed)
    return pdes.sample(pde, mesh, rng=seed)


# ---------------------------------------------------------------- 2. model
def train_config(args):
    """The training settings of the demo's model (the authors' protocol, smaller sizes)."""
    from nlss_fenicsx.nn.train import TrainConfig

    return TrainConfig(pde=args.pde, N=args.N, K=args.K, r_max=args.K, steps=args.steps,
                       hidden=tuple(args.hidden), ckpt_every=max(100, args.steps // 5))


def learned_model(args, *, log=print):
    """``(model, path, trained)`` from :func:`nlss_fenicsx.nn.cache.cached_model`."""
    from nlss_fenicsx.nn.cache import cached_model

    return cached_model(train_config(args), retrain=args.retrain, progress=True, log=log)


# ---------------------------------------------------------------- 3. LinearProblem
def nlss_options(model_path, rank: int, K: int, *, pde: str | None = None) -> dict:
    """PETSc options that make a ``LinearProblem`` use CG + the learned two-grid PC."""
    opts = {
        "ksp_type": "cg", "ksp_rtol": RTOL, "ksp_atol": 0.0,
        "ksp_norm_type": "unpreconditioned", "ksp_error_if_not_converged": True,
        "pc_type": "python", "pc_python_type": "nlss_fenicsx.petsc.TwoGridPC",
        "nlss_coarse": "nlss", "nlss_model": str(model_path),
        "nlss_rank": rank, "nlss_K": K, "nlss_sweeps": 10, "nlss_nu": 5, "nlss_omega": 0.66,
    }
    if pde is not None:
        opts["nlss_pde"] = pde  # the PC checks it against the checkpoint
    return opts


@dataclass
class LPResult:
    """A timed ``LinearProblem.solve()``."""

    problem: object
    uh: object
    iterations: int
    seconds: float
    history: list[float]
    timings: dict


def solve_linear_problem(problem, options: dict, *, prefix: str = "nlss_demo_",
                         grid_order=None) -> LPResult:
    """Solve ``problem`` (a :class:`nlss_fenicsx.pdes.Problem`) with dolfinx's LinearProblem.

    The grid order of the dofs is attached to the operator first (the learned coarse
    space presents ``S`` to the network in grid order); one warm-up ``solve()`` takes the
    first-call costs (model loading, PETSc set-up) out of the timed second one, which
    re-assembles ``A`` and ``b`` and re-runs the preconditioner's set-up.
    """
    from nlss_fenicsx import meshes
    from nlss_fenicsx.petsc import attach_grid_order, check_converged

    lp = dolfinx.fem.petsc.LinearProblem(problem.a, problem.L, bcs=problem.bcs,
                                         petsc_options_prefix=prefix, petsc_options=options)
    order = meshes.grid_order(problem.V) if grid_order is None else grid_order
    attach_grid_order(lp.A, order)
    lp.solve()  # warm-up
    lp.solver.setConvergenceHistory(reset=True)
    t0 = time.perf_counter()
    uh = lp.solve()
    seconds = time.perf_counter() - t0
    its = check_converged(lp.solver)
    nb = lp.b.norm()
    history = [float(h) / (nb if nb > 0 else 1.0) for h in lp.solver.getConvergenceHistory()]
    ctx = lp.solver.getPC().getPythonContext()
    return LPResult(problem=lp, uh=uh, iterations=its, seconds=seconds, history=history,
                    timings=dict(ctx.timings))


# ---------------------------------------------------------------- 4. comparison
def compare(system, model_path, rank: int, K: int, methods=COMPARED) -> list:
    """Every method on ``system``, timed phase by phase with residual histories.

    Each method runs once to warm up (first-call costs: model loading, PyAMG/PETSc
    set-up code paths) and once more for the record.
    """
    import gc

    from nlss_fenicsx.bench.methods import MethodSpec, run_method

    records = []
    gc.collect()  # once, so that no full collection lands inside a timed run
    for name in methods:
        if name in ("nlss", "svd"):
            spec = MethodSpec(name, rank=rank, K=K, rtol=RTOL,
                              model=str(model_path) if name == "nlss" else None)
        else:
            spec = MethodSpec(name, rtol=RTOL)
        run_method(system, spec)  # warm-up
        records.append(run_method(system, spec, history=True))
    return records


def format_table(records) -> str:
    """The comparison as a fixed-width table (times in ms)."""
    head = (f"{'method':<11} {'coarse':>6} {'its':>5} {'smooth':>8} {'infer':>8} "
            f"{'setup':>8} {'solve':>8} {'total':>8} {'rel. res.':>9}")
    lines = [head, "-" * len(head)]
    for r in records:
        p = {k: 1e3 * v for k, v in r.phases.items()}
        coarse = "-" if r.coarse_size is None else str(r.coarse_size)
        lines.append(f"{r.method:<11} {coarse:>6} {r.iterations:>5d} {p['smoothing']:>8.2f} "
                     f"{p['inference']:>8.2f} {p['setup']:>8.2f} {p['solve']:>8.2f} "
                     f"{p['total']:>8.2f} {r.rel_residual:>9.1e}")
    lines.append("(times in ms, after one warm-up run per method; Cholesky's 'its' is one "
                 "direct solve)")
    return "\n".join(lines)


# ---------------------------------------------------------------- 5. outputs
def _coefficient(problem):
    """``(values per owned cell, title, kind)`` of the family's coefficient, for plotting."""
    c = problem.coefficients
    mesh = problem.V.mesh
    n_cells = mesh.topology.index_map(mesh.topology.dim).size_local

    def cells(fn):
        return fn.x.array[fn.function_space.dofmap.list[:n_cells, 0]]

    if problem.family == "diffusion":
        return cells(c["g"]), "coefficient g (per triangle, log scale)", "log"
    if problem.family == "anisotropic":
        angle = np.mod(np.asarray(c["angle"])[:n_cells], np.pi)
        return angle, (f"direction of the strong axis (k1 = {c['k1']:g}), "
                       "angle in [0, pi)"), "angle"
    alpha = float(c["alpha"].value)
    return cells(c["kappa"]), f"kappa (log scale); alpha = {alpha:.3g}", "log"


def write_solution(out: Path, uh, problem) -> Path:
    """``u`` and the coefficient field for ParaView: VTX ``.bp`` folders (else XDMF)."""
    comm = uh.function_space.mesh.comm
    uh.name = "u"
    fields = [v for v in problem.coefficients.values() if isinstance(v, dolfinx.fem.Function)]
    if dolfinx.has_adios2:
        path = out / "solution.bp"
        with dolfinx.io.VTXWriter(comm, path, [uh], engine="BP4") as vtx:
            vtx.write(0.0)
        if fields:  # a DG0 field cannot share a VTX file with a P1 one
            with dolfinx.io.VTXWriter(comm, out / "coefficient.bp", fields,
                                      engine="BP4") as vtx:
                vtx.write(0.0)
    else:  # pragma: no cover - depends on the dolfinx build
        path = out / "solution.xdmf"
        with dolfinx.io.XDMFFile(comm, path, "w") as xdmf:
            xdmf.write_mesh(uh.function_space.mesh)
            xdmf.write_function(uh)
    return path


def plot(path: Path, problem, uh, records, *, title: str = "") -> Path:
    """One PNG: mesh over the coefficient, the solution, every method's convergence."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm
    from matplotlib.tri import Triangulation

    V = uh.function_space
    n_cells = V.mesh.topology.index_map(V.mesh.topology.dim).size_local
    xy = V.tabulate_dof_coordinates()[:, :2]
    tri = Triangulation(xy[:, 0], xy[:, 1], V.dofmap.list[:n_cells])
    values, ctitle, kind = _coefficient(problem)

    fig, axes = plt.subplots(1, 3, figsize=(17, 5.0), constrained_layout=True)
    if kind == "log":
        im = axes[0].tripcolor(tri, facecolors=values, norm=LogNorm(), cmap="viridis")
    else:
        im = axes[0].tripcolor(tri, facecolors=values, cmap="twilight", vmin=0, vmax=np.pi)
    axes[0].triplot(tri, color="k", lw=0.25, alpha=0.5)
    axes[0].set_title(f"mesh ({V.dofmap.index_map.size_global} nodes) and {ctitle}",
                      fontsize=9)
    fig.colorbar(im, ax=axes[0], shrink=0.85)
    im = axes[1].tricontourf(tri, uh.x.array, levels=24, cmap="magma")
    axes[1].set_title("solution u (NLSS two-grid PCG)")
    fig.colorbar(im, ax=axes[1], shrink=0.85)
    for ax in axes[:2]:
        ax.set_aspect("equal")
    ax = axes[2]
    for r in records:
        h = np.asarray(r.history if r.history is not None else [])
        if r.method == "Cholesky":  # one direct solve: a legend entry, not a curve
            ax.plot([], [], " ", label=f"Cholesky (direct): {r.rel_residual:.0e}")
            continue
        if h.size == 0:
            continue
        style = {"lw": 2.6, "color": "k"} if r.method == "NLSS" else {"lw": 1.3}
        ax.semilogy(np.arange(h.size), h, label=f"{r.method} ({r.iterations})", **style)
    ax.axhline(RTOL, color="gray", ls="--", lw=1)
    ax.text(0.45, RTOL, "rtol", transform=ax.get_yaxis_transform(), ha="center",
            va="bottom", fontsize=8, color="gray")
    ax.set_xlabel("iteration")
    ax.set_ylabel(r"$\|b - A x_k\| / \|b\|$")
    ax.set_title("convergence (CG; iterations in brackets)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- all together
def run(pde: str, argv=None, *, description: str | None = None) -> dict:
    """Run the demo for ``pde``: parse ``argv``, steps 1-5, print, return the numbers."""
    from nlss_fenicsx import pdes
    from nlss_fenicsx.bench.machine import machine_line

    args = parse_args(pde, argv, description=description)
    if MPI.COMM_WORLD.size > 1:
        raise SystemExit(f"the {pde} demo is serial (its benchmark runner is); run "
                         "demos/your_model.py under mpiexec instead")

    t0 = time.perf_counter()
    problem = instance(pde, args.N, args.seed)
    n = problem.V.dofmap.index_map.size_global
    print(f"{pde} on a jittered Gmsh mesh, N={args.N}: n = {n} unknowns (instance seed "
          f"{args.seed}, preset {problem.coefficients.get('preset_effective', 'default')}); "
          f"mesh + coefficient {time.perf_counter() - t0:.2f} s", flush=True)

    model, path, trained = learned_model(args)
    extra = model.metadata.get("extra", {})
    print(f"NLSS model ({model.num_parameters():,} parameters, hidden "
          f"{tuple(args.hidden)}, K={args.K}, r_max={model.r_max}, {model.step} steps, "
          f"{extra.get('train_seconds', float('nan')):.1f} s of training"
          f"{'' if trained else ', from the cache'}): {path}", flush=True)

    options = nlss_options(path, args.rank, args.K, pde=pde)
    lp = solve_linear_problem(problem, options, prefix=f"{pde}_demo_")
    print(f"\nLinearProblem + TwoGridPC (nlss, rank {args.rank}, K {args.K}): "
          f"{lp.iterations} CG iterations, solve() {1e3 * lp.seconds:.1f} ms "
          "(assembly included)")
    print("  set-up phases: " + ", ".join(f"{k} {1e3 * v:.2f} ms"
                                          for k, v in lp.timings.items()))

    system = pdes.assemble(problem)
    x = lp.uh.x.array[: system.A_csr.shape[0]]
    rel_res = float(np.linalg.norm(system.b - system.A_csr @ x) / np.linalg.norm(system.b))
    print(f"  final ||b - A x|| / ||b|| = {rel_res:.2e}")
    if rel_res >= RTOL:
        raise RuntimeError(f"final relative residual {rel_res:.2e} >= {RTOL}")

    print("\nthe same system, every method (bench.methods.run_method):", flush=True)
    records = compare(system, path, args.rank, args.K)
    print(format_table(records))
    print(machine_line())

    args.out.mkdir(parents=True, exist_ok=True)
    solution = write_solution(args.out, lp.uh, problem)
    png = plot(args.out / f"{pde}.png", problem, lp.uh, records,
               title=f"{pde}, N={args.N}, n={n}: NLSS two-grid rank {args.rank} vs peers")
    print(f"wrote {png} and {solution} (open in ParaView)")
    PETSc.garbage_cleanup()
    return {
        "pde": pde,
        "N": args.N,
        "n": int(n),
        "K": args.K,
        "rank": args.rank,
        "steps": int(model.step or 0),
        "model": str(path),
        "trained": bool(trained),
        "train_seconds": float(extra.get("train_seconds", float("nan"))),
        "iterations": int(lp.iterations),
        "solve_s": lp.seconds,
        "rel_residual": rel_res,
        "history": lp.history,
        "twogrid_timings": lp.timings,
        "methods": {r.method: r.as_dict() for r in records},
        "files": {"png": str(png), "solution": str(solution)},
    }
