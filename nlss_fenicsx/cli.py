"""The ``nlss-fenicsx`` command line (also ``python -m nlss_fenicsx``).

Each sub-command has ``--help``. Bad input ends with one line on stderr naming the input
and exit status 2, never a traceback; outputs are checked before any work. Heavy modules
(dolfinx, petsc4py, torch) are imported only by the sub-command that runs, so ``--help``
is instant. The checks and the error report live in :mod:`nlss_fenicsx._cli_checks`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import textwrap
import time
import warnings
from pathlib import Path

from nlss_fenicsx._cli_checks import (
    LEARNED,
    USES_S,
    ArgParser,
    UsageError,
    check_memory,
    grid_n,
    guarded,
    int_at_least,
    jitter,
    mesh_or_grid,
    on_root,
    open_unit_interval,
    positive_float,
    resolve_solve,
    seed_value,
    serial_only,
    smoother_weight,
    solve_bytes,
    sweeps_value,
    train_bytes,
    widths,
)

__all__ = ["build_parser", "main", "run_script"]

FAMILIES = ("diffusion", "anisotropic", "screened_poisson")
COARSE = (*LEARNED, "svd", "sa", "sine", "eig-ref", "eig", "fixed")
EPILOG = """exit status: 0 done, 1 failed (no convergence, diverged training, disk full),
2 bad input (one line naming it), 70 internal error (a bug: please report it),
130 interrupted. NLSS_FENICSX_DEBUG=1 (or --debug) adds the traceback.
Under mpiexec: solve and mesh run (one writer); train, energy, bench, basis refuse."""


# --------------------------------------------------------------------------- mesh
def _cmd_mesh(args, comm) -> int:
    from nlss_fenicsx._atomic import check_destination

    out = check_destination(args.out or Path("meshes") / f"square_N{args.N}_s{args.seed}.msh")
    check_memory(solve_bytes((args.N + 1) ** 2), f"--N {args.N}")

    def write():
        from nlss_fenicsx import meshes

        t0 = time.perf_counter()
        path = meshes.write_msh(out, args.N, jitter=args.jitter, seed=args.seed)
        return f"wrote {path}: {(args.N + 1) ** 2} nodes, {2 * args.N**2} triangles " \
               f"(jitter {args.jitter} h, seed {args.seed}) in {time.perf_counter() - t0:.3f} s"

    print(on_root(comm, write))
    return 0


# --------------------------------------------------------------------------- solve
def _cmd_solve(args, comm) -> int:
    if comm is not None and args.path == "scipy":
        raise UsageError("--path scipy is the serial reference; under mpiexec use --path petsc")
    taken = resolve_solve(args, comm)
    if args.mesh is None:
        size = args.model.stat().st_size if args.model else 0
        uses_s = args.coarse in USES_S
        check_memory(solve_bytes((args.N + 1) ** 2, args.K if uses_s else 0, args.rank, size),
                     f"--N {args.N}")
    from nlss_fenicsx import meshes, pdes
    from nlss_fenicsx.bench.methods import MethodSpec, run_method
    from nlss_fenicsx.options import DEFAULT_NU

    t0 = time.perf_counter()
    mesh = (meshes.read_msh(args.mesh) if args.mesh else
            meshes.jittered_square(args.N, seed=args.seed))
    t1 = time.perf_counter()
    system = pdes.assemble(pdes.sample(args.pde, mesh, rng=args.seed, preset=args.preset))
    t2 = time.perf_counter()
    if args.nu is None:
        args.nu = DEFAULT_NU[args.smoother]
    spec = MethodSpec(name=args.coarse, rank=args.rank, K=args.K, sweeps=args.sweeps,
                      nu=args.nu, omega=args.omega, smoother=args.smoother, rtol=args.rtol,
                      path=args.path, model=str(args.model) if args.model else None,
                      seed=args.seed, basis=str(args.basis) if args.basis else None)
    with warnings.catch_warnings():  # its notes (e.g. a clipped rank) come with the timed run
        warnings.simplefilter("ignore")
        run_method(system, spec)  # warm-up: first-call costs are not per-instance costs
    rec = run_method(system, spec)
    where = f"mesh {args.mesh}" if args.mesh else f"N={args.N}"
    print(f"{args.pde} {where} (n={system.n}), preset {args.preset}, seed {args.seed}"
          + (f", {comm.size} MPI ranks" if comm is not None else ""))
    print(f"mesh {1e3 * (t1 - t0):.1f} ms, sample + assemble {1e3 * (t2 - t1):.1f} ms")
    if taken:
        print(f"from the model {args.model}: "
              + ", ".join(f"{k}={v}" for k, v in taken.items()))
    size = f"rank {rec.rank}" if rec.rank else f"coarse size {rec.coarse_size}"
    if rec.rank and rec.coarse_size is not None and rec.coarse_size < rec.rank:
        size = f"rank {rec.coarse_size} (clipped from {rec.rank})"
    s_part = f", K={args.K}, {args.sweeps} sweeps" if args.coarse in USES_S else ""
    print(f"method {rec.method} ({size}{s_part}, {args.smoother} nu={args.nu}, "
          f"{args.path} path)")
    print(f"iterations {rec.iterations}, final relative residual {rec.rel_residual:.3e}")
    print("phases (ms): " + ", ".join(f"{k} {1e3 * v:.2f}" for k, v in rec.phases.items()))
    return 0


# --------------------------------------------------------------------------- train
GNN_LAYERS = 5  # the authors' message-passing depth


def _train_config(args):
    """Build the :class:`~nlss_fenicsx.nn.train.TrainConfig` of ``train``'s flags."""
    hidden = args.hidden
    if args.arch == "gnn":
        if hidden is not None and len(hidden) != 1:
            raise UsageError("--arch gnn takes --hidden WIDTH (one integer, the width of the "
                             f"message-passing layers); got {','.join(map(str, hidden))}")
        if args.loss is not None:
            raise UsageError(f"--arch gnn trains on the two-grid loss; --loss {args.loss} "
                             "does not apply")
        if args.protocol != "code":
            raise UsageError("--arch gnn trains on a fresh instance per step; --protocol "
                             f"{args.protocol} does not apply")
        hidden = hidden and hidden * GNN_LAYERS
    from nlss_fenicsx.nn.train import TrainConfig  # torch: after the cheap checks

    return TrainConfig(arch=args.arch, pde=args.pde, K=args.K, r_max=args.rank, loss=args.loss,
                       steps=args.steps, lr=args.lr, batch=args.batch, seed=args.seed,
                       protocol=args.protocol, preset=args.preset, hidden=hidden,
                       **({"N": args.N} if args.mesh is None else {}),
                       **({"ckpt_every": args.ckpt_every} if args.ckpt_every else {}))


def _cmd_train(args, comm) -> int:
    from nlss_fenicsx._atomic import check_destination

    serial_only(comm, "train")
    args.N = mesh_or_grid(args, 64)
    if args.rank > args.K:
        raise UsageError(f"--rank must be <= --K, got rank {args.rank} > K {args.K}")
    n = grid_n(args)
    if n is not None and args.K > n:
        raise UsageError(f"--K must be <= n = (N+1)^2 = {n}, got {args.K}")
    if args.mesh is not None and not args.mesh.is_file():
        raise UsageError(f"--mesh: mesh file not found: {args.mesh}")
    stem = args.mesh.stem if args.mesh else f"N{args.N}"
    tag = "gnn" if args.arch == "gnn" else args.loss or "nlss"
    out = check_destination(args.out or Path(
        f"models/{args.pde}_{stem}_K{args.K}_r{args.rank}_{tag}.pt"))
    if n is not None:
        hidden = args.hidden or ((488,) if args.arch == "gnn" else (128, 256, 256, 128))
        check_memory(train_bytes(n, args.K, args.rank, hidden, arch=args.arch,
                                 batch=args.batch), f"training at --N {args.N}")
    cfg = _train_config(args)
    sampler = None
    if args.mesh is not None:
        from nlss_fenicsx import meshes, pdes

        sampler = pdes.training_sampler(args.pde, meshes.read_msh(args.mesh), K=args.K,
                                        sweeps=cfg.sweeps, omega=cfg.omega, seed=args.seed,
                                        preset=args.preset, with_A=args.arch == "gnn")
    from nlss_fenicsx.nn.train import peak_rss_mib, train

    t0 = time.perf_counter()
    model = train(cfg, out, sampler=sampler, device=args.device, resume=not args.restart,
                  progress=not args.no_progress)
    net = (f"GNN width {cfg.hidden[0]}, {len(cfg.hidden)} layers" if args.arch == "gnn"
           else f"MLP {','.join(map(str, cfg.hidden))}")
    print(f"wrote {out}: {net}, {model.num_parameters():,} parameters, step {model.step}, "
          f"{time.perf_counter() - t0:.1f} s wall, peak RSS {peak_rss_mib():.0f} MiB")
    last = (model.train_state.get("history") or [{}])[-1]
    held = {k: v for k, v in last.items() if k.startswith(("gap@", "eval_loss"))}
    if held:
        print(f"held-out at step {last.get('step')}: "
              + ", ".join(f"{k} {v:.4f}" for k, v in held.items()))
    return 0


# --------------------------------------------------------------------------- energy, bench
def _cmd_energy(args, comm) -> int:
    from nlss_fenicsx._atomic import check_destination

    serial_only(comm, "energy")
    out = check_destination(args.out, kind="dir")
    from nlss_fenicsx.bench.energy import EnergyConfig, run_energy

    for pde in FAMILIES if args.pde == "all" else (args.pde,):
        cfg = EnergyConfig(pde=pde, steps=args.steps, seed=args.seed,
                           n_train=args.n_train, n_test=args.n_test)
        res = run_energy(cfg, out, progress=not args.no_progress)
        print(f"{pde}: captured-energy gap to SVD (mean over {cfg.n_test} test samples)")
        print("   r   NLSS      subspace")
        for r in (r for r in (1, 2, 4, 8, 16, 24, 32) if r <= cfg.K):
            print(f"  {r:>2}  {res['losses']['nlss']['gap_mean'][r - 1]:.4f}    "
                  f"{res['losses']['subspace']['gap_mean'][r - 1]:.4f}")
        print(f"  wrote {out / f'energy_{pde}.png'} and energy_{pde}.json")
    return 0


def _cmd_bench(args, comm) -> int:
    from nlss_fenicsx._atomic import check_destination

    serial_only(comm, "bench")
    out = check_destination(args.out, kind="dir")
    from nlss_fenicsx.bench.harness import run_bench
    from nlss_fenicsx.bench.scalability import run_scalability

    for pde in FAMILIES if args.pde == "all" else (args.pde,):
        where = out / pde if args.pde == "all" else out
        if args.scalability:
            run_scalability(pde, args.budget, where, resume=args.resume,
                            progress=not args.no_progress)
            print((where / "scalability.md").read_text())
            continue
        res = run_bench(pde, args.budget, where, ranks=args.ranks, resume=args.resume,
                        progress=not args.no_progress)
        print((where / "tables.md").read_text())
        print(f"wrote {where}/results.json, tables.md and figures ({res['wall_s']:.0f} s)")
    return 0


# --------------------------------------------------------------------------- basis
def _cmd_basis(args, comm) -> int:
    from nlss_fenicsx._atomic import check_destination

    serial_only(comm, "basis")
    n = (args.N + 1) ** 2
    if args.rank >= n:
        raise UsageError(f"--rank must be < n = (N+1)^2 = {n}, got {args.rank}")
    out = check_destination(args.out or Path(
        f"bases/{args.pde}_N{args.N}_s{args.seed}_{args.kind}_r{args.rank}.npz"))
    check_memory(solve_bytes(n, 0, 3 * args.rank), f"--N {args.N}")
    import numpy as np

    from nlss_fenicsx import coarse, grid

    t0 = time.perf_counter()
    if args.kind == "nlss-family":
        from nlss_fenicsx.bench.progress import Progress
        from nlss_fenicsx.family import build_family_basis

        with Progress(args.instances, "nlss-family instances",
                      enabled=not args.no_progress) as bar:
            P, meta = build_family_basis(args.pde, args.N, args.rank,
                                         instances=args.instances, target=args.target,
                                         preset=args.preset, seed=1000 + args.seed,
                                         progress=lambda done: bar.update())
    else:
        # The family's mean-coefficient operator on the mesh of --seed, in grid order (=
        # the jittered square's node order): eig-ref's reference; sine only needs its size.
        R = grid.reference_operator(args.pde, args.N, seed=args.seed, preset=args.preset)
        P = coarse.coarse_basis(args.kind, R, r=args.rank, node_order=np.arange(n),
                                reference=R)
        meta = {"kind": args.kind, "family": args.pde, "preset": args.preset, "N": args.N,
                "mesh": f"jittered unit square N={args.N} seed={args.seed}"}
    meta = coarse.save_basis(out, P, meta=meta)
    print(f"wrote {out}: {args.kind} basis of {args.pde} on N={args.N} (n={meta['n']}, "
          f"r_max={meta['r_max']}) in {time.perf_counter() - t0:.2f} s; use it with "
          f"`solve --coarse fixed --basis {out}` or nlss_coarse fixed, nlss_basis {out}")
    return 0


# --------------------------------------------------------------------------- parser
def _ranks(text: str) -> list[int]:
    values = widths(text)  # comma-separated positive integers
    return list(values)


def _sub(sub, name: str, helptext: str, description: str, func):
    p = sub.add_parser(name, help=helptext, description=textwrap.fill(description, 88),
                       epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=func)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the traceback of a failure (also NLSS_FENICSX_DEBUG=1)")
    return p


def _common(p, *, pde=FAMILIES, N_default=64, seed=True, mesh=False):
    p.add_argument("--pde", choices=pde, default=None if N_default is None else pde[0],
                   help="PDE family" + (" (default: the model's, else diffusion)"
                                        if N_default is None else " (default %(default)s)"))
    p.add_argument("--N", type=int_at_least(2), default=None if mesh else N_default,
                   help="cells per side of the unit square" + (
                       " (default: the model's, else 64)" if N_default is None
                       else f" (default {N_default})"))
    if mesh:
        p.add_argument("--mesh", type=Path, default=None,
                       help="a Gmsh .msh file of your own instead of the unit square")
    if seed:
        p.add_argument("--seed", type=seed_value, default=0,
                       help="random seed, >= 0 (default 0)")


def build_parser() -> argparse.ArgumentParser:
    """Build the ``nlss-fenicsx`` argument parser (cheap: imports nothing heavy)."""
    parser = ArgParser(prog="nlss-fenicsx", epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     description="NeuraLSP learned two-grid preconditioning for FEniCSx/PETSc.")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of a failure (also NLSS_FENICSX_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _sub(sub, "mesh", "write a jittered Delaunay mesh of the unit square (.msh)",
             "Write the paper's jittered (N+1)^2-node Delaunay mesh as a Gmsh .msh file.",
             _cmd_mesh)
    p.add_argument("--N", type=int_at_least(2), default=64, help="cells per side (default 64)")
    p.add_argument("--seed", type=seed_value, default=0, help="jitter seed (default 0)")
    p.add_argument("--jitter", type=jitter, default=0.35,
                   help="node jitter as a fraction of h, 0 <= jitter < 0.5 (default 0.35)")
    p.add_argument("--out", type=Path, default=None,
                   help="output file (default meshes/square_N{N}_s{seed}.msh)")

    p = _sub(sub, "solve", "sample one PDE instance and solve it with two-grid PCG",
             "Sample a PDE instance, build the coarse space, solve with PCG and print the "
             "iterations and the time of each phase. With --model, the settings you do not "
             "give (pde, N, K, sweeps, preset, rank = r_max) come from the checkpoint; one "
             "that contradicts it is refused.", _cmd_solve)
    _common(p, N_default=None, mesh=True)
    p.add_argument("--coarse", choices=COARSE, default=None,
                   help="coarse space (default: the model's kind with --model, else svd)")
    p.add_argument("--model", type=Path, default=None, help="checkpoint of a learned model")
    p.add_argument("--basis", type=Path, default=None, help="basis file for --coarse fixed")
    p.add_argument("--rank", type=int_at_least(1), default=None,
                   help="coarse rank r (default: the model's r_max, else 48)")
    p.add_argument("--K", type=int_at_least(1), default=None,
                   help="smoothed vectors (default: the model's, else 72)")
    p.add_argument("--sweeps", type=sweeps_value, default=None,
                   help="Jacobi sweeps that make S (default: the model's, else 10)")
    p.add_argument("--smoother", choices=("jacobi", "chebyshev", "sor", "icc"),
                   default="jacobi", help="two-grid smoother (default jacobi, as the paper; "
                                          "icc: Chebyshev on ICC(0))")
    p.add_argument("--nu", type=int_at_least(1, " (with no smoothing the two-grid operator "
                                                "is singular)"), default=None,
                   help="pre- and post-smoothing sweeps (default 5, 1 for icc)")
    p.add_argument("--omega", type=smoother_weight, default=None,
                   help="Jacobi weight: auto (0.66 where safe) or 0 < omega < 2")
    p.add_argument("--rtol", type=open_unit_interval, default=1e-6,
                   help="relative residual tolerance, 0 < rtol < 1 (default 1e-6)")
    p.add_argument("--preset", choices=("default", "paper", "code"), default=None,
                   help="coefficient preset (default: the model's, else default)")
    p.add_argument("--path", choices=("petsc", "scipy"), default="petsc",
                   help="PETSc TwoGridPC (default) or the serial SciPy reference")

    p = _sub(sub, "train", "train an NLSS (or subspace-loss, or GNN) model",
             "Train the NeuraLSP MLP (or the GNN baseline, --arch gnn) on fresh random "
             "instances of the unit square or of your own mesh (--mesh). An interrupted run "
             "resumes from its checkpoint; a diverging one stops at the first non-finite "
             "loss and keeps the last good checkpoint. Off a terminal, progress is a line "
             "every 10 % or 30 s.", _cmd_train)
    _common(p, mesh=True)
    p.add_argument("--K", type=int_at_least(1), default=72, help="smoothed vectors (default 72)")
    p.add_argument("--rank", type=int_at_least(1), default=72,
                   help="r_max, the largest rank (default 72; truncate at solve time)")
    p.add_argument("--loss", choices=("nlss", "subspace"), default=None,
                   help="MLP loss (default nlss; the GNN has its two-grid loss)")
    p.add_argument("--arch", choices=("mlp", "gnn"), default="mlp")
    p.add_argument("--steps", type=int_at_least(1), default=1000)
    p.add_argument("--batch", type=int_at_least(1), default=1)
    p.add_argument("--lr", type=positive_float, default=None,
                   help="Adam learning rate (default: the paper's, 1e-3 MLP, 1e-4 GNN)")
    p.add_argument("--hidden", type=widths, default=None,
                   help="MLP hidden widths, e.g. 128,256,256,128; GNN: one width (488)")
    p.add_argument("--protocol", choices=("code", "dataset"), default="code",
                   help="fresh instance per step (code) or a fixed 1000/100 set (dataset)")
    p.add_argument("--preset", choices=("default", "paper", "code"), default="default")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--out", type=Path, default=None, help="checkpoint path (default models/...)")
    p.add_argument("--ckpt-every", type=int_at_least(1), default=None,
                   help="checkpoint every this many steps (default 250); also at the end and "
                        "on Ctrl-C / SIGTERM")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress output")

    p = _sub(sub, "energy", "captured-energy experiment (paper Figs. 3-5)",
             "Train NLSS and subspace-loss models at N=9, K=32 to full rank, truncate to "
             "r=1..32 and plot the captured-energy gap to the exact SVD over the test set.",
             _cmd_energy)
    p.add_argument("--pde", choices=(*FAMILIES, "all"), default="all")
    p.add_argument("--steps", type=int_at_least(1), default=4000)
    p.add_argument("--n-train", type=int_at_least(1), default=1000)
    p.add_argument("--n-test", type=int_at_least(1), default=100)
    p.add_argument("--seed", type=seed_value, default=0)
    p.add_argument("--out", type=Path, default=Path("results/energy"), help="output folder")
    p.add_argument("--no-progress", action="store_true")

    p = _sub(sub, "bench", "the paper's tables and figures, with the peers",
             "Train (or reuse cached) NLSS, Subspace and GNN models, then time every two-grid "
             "method and the classical peers on the test instances. Writes OUT/results.json, "
             "OUT/tables.md and OUT/*.png; --resume continues a killed run.", _cmd_bench)
    p.add_argument("--pde", choices=(*FAMILIES, "all"), default="diffusion")
    p.add_argument("--budget", choices=("smoke", "standard", "paper"), default="smoke")
    p.add_argument("--ranks", type=_ranks, default=None,
                   help="comma-separated coarse ranks (default: the budget's)")
    p.add_argument("--out", type=Path, default=Path("results/bench"), help="output folder")
    p.add_argument("--resume", action="store_true",
                   help="continue a killed run: keep what OUT/results.json holds")
    p.add_argument("--scalability", action="store_true",
                   help="paper Table 4 / Fig. 6: growing N, end-to-end times")
    p.add_argument("--no-progress", action="store_true")

    p = _sub(sub, "basis", "build a coarse basis once per family (for --coarse fixed)",
             "Build a coarse basis once for a PDE family on the jittered unit square (the "
             "mesh of --N and --seed, as solve makes it) and write it for `solve --coarse "
             "fixed --basis PATH` (PETSc: nlss_coarse fixed, nlss_basis PATH): sine (the "
             "grid's lowest sine modes), eig-ref (the lowest eigenvectors of the family's "
             "mean-coefficient operator), nlss-family (the minimiser of the NLSS loss over "
             "one basis on --instances training instances, seeds 1000+seed..., in closed "
             "form: a PCA of their --target vectors). Any r <= r_max leading columns are the "
             "basis of rank r.", _cmd_basis)
    p.add_argument("--kind", choices=("sine", "eig-ref", "nlss-family"), required=True)
    _common(p)
    p.add_argument("--rank", type=int_at_least(1), default=72,
                   help="r_max, columns of the basis (default 72)")
    p.add_argument("--preset", choices=("default", "paper", "code"), default="default")
    p.add_argument("--instances", type=int_at_least(1), default=32,
                   help="nlss-family: training instances (default 32)")
    p.add_argument("--target", choices=("eig", "smooth"), default="eig",
                   help="nlss-family: what each instance contributes: its lowest "
                   "eigenvectors of (A, diag A) (eig, default) or 300-sweep smoothed vectors")
    p.add_argument("--out", type=Path, default=None, help="basis file (default bases/...)")
    p.add_argument("--no-progress", action="store_true")
    return parser


# --------------------------------------------------------------------------- main
def _run(args, comm) -> int:
    with contextlib.ExitStack() as stack:
        if comm is not None and comm.rank != 0:  # one writer of the output: rank 0
            stack.enter_context(contextlib.redirect_stdout(
                stack.enter_context(open(os.devnull, "w"))))
        return int(args.func(args, comm) or 0)


def main(argv: list[str] | None = None) -> int:
    """Run ``nlss-fenicsx`` with ``argv``; return the exit status (see the epilog)."""
    args = build_parser().parse_args(argv)
    # torch reads this once, before its first allocation: huge pages for training's buffers.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    return guarded(f"nlss-fenicsx {args.command}", lambda comm: _run(args, comm),
                    debug=args.debug)


def run_script(name: str, work, argv: list[str] | None = None) -> int:
    """Run a script's ``work(argv)`` with the command line's error handling.

    The demos end with ``raise SystemExit(run_script("diffusion.py", main))``: bad input is
    one line and exit status 2, a failure (a full disk, a read-only cache) one line and 1,
    Ctrl-C or SIGTERM "interrupted" and 130, the same on every MPI rank; ``--debug`` is not
    parsed here, ``NLSS_FENICSX_DEBUG=1`` shows the traceback.

    Parameters
    ----------
    name : str
        How the lines name the script (e.g. ``"diffusion.py"``).
    work : callable
        ``work(argv)``; its return value is ignored.
    argv : list of str, optional
        Passed to ``work``.

    Returns
    -------
    int
        The exit status.
    """
    return guarded(name, lambda comm: work(argv) and 0)
