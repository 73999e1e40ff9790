"""The ``nlss-fenicsx`` command line.

Each sub-command has ``--help``. Bad input ends with exit status 2 and one line on
stderr, never a traceback. Heavy modules (dolfinx, petsc4py, torch) are imported only by
the sub-command that needs them, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["build_parser", "main"]

FAMILIES = ("diffusion", "anisotropic", "screened_poisson")


class UsageError(ValueError):
    """Bad command-line input discovered after parsing."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (no usage block), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _int_at_least(lo: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {value}")
        return value

    return parse


def _jitter(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value < 0.5:
        raise argparse.ArgumentTypeError(f"expected 0 <= jitter < 0.5, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


# --------------------------------------------------------------------------- mesh
def _cmd_mesh(args) -> int:
    from nlss_fenicsx import meshes

    out = args.out or Path("meshes") / f"square_N{args.N}_s{args.seed}.msh"
    t0 = time.perf_counter()
    path = meshes.write_msh(out, args.N, jitter=args.jitter, seed=args.seed)
    dt = time.perf_counter() - t0
    print(f"wrote {path}: {(args.N + 1) ** 2} nodes, {2 * args.N**2} triangles "
          f"(jitter {args.jitter} h, seed {args.seed}) in {dt:.3f} s")
    return 0


# --------------------------------------------------------------------------- solve
def _cmd_solve(args) -> int:
    from nlss_fenicsx import meshes, pdes
    from nlss_fenicsx.bench.methods import MethodSpec, run_method

    if args.coarse in ("nlss", "subspace", "gnn") and args.model is None:
        raise UsageError(f"--coarse {args.coarse} needs --model PATH (see `nlss-fenicsx train`)")
    if args.model is not None and not args.model.is_file():
        raise UsageError(f"--model: checkpoint not found: {args.model}")
    if args.coarse != "sa" and args.rank > args.K:
        raise UsageError(f"--rank must be <= --K, got rank {args.rank} > K {args.K}")
    n = (args.N + 1) ** 2
    if args.K > n:
        raise UsageError(f"--K must be <= n = (N+1)^2 = {n}, got {args.K}")
    t0 = time.perf_counter()
    mesh = meshes.jittered_square(args.N, seed=args.seed)
    t1 = time.perf_counter()
    system = pdes.assemble(pdes.sample(args.pde, mesh, rng=args.seed, preset=args.preset))
    t2 = time.perf_counter()
    spec = MethodSpec(name=args.coarse, rank=args.rank, K=args.K, sweeps=args.sweeps,
                      nu=args.nu, omega=args.omega, rtol=args.rtol, path=args.path,
                      model=str(args.model) if args.model else None, seed=args.seed)
    run_method(system, spec)  # warm-up: first-call costs are not per-instance costs
    rec = run_method(system, spec)
    print(f"{args.pde} N={args.N} (n={system.n}), preset {args.preset}, seed {args.seed}")
    print(f"mesh {1e3 * (t1 - t0):.1f} ms, sample + assemble {1e3 * (t2 - t1):.1f} ms")
    rank = f"rank {rec.rank}" if rec.rank else f"coarse size {rec.coarse_size}"
    print(f"method {rec.method} ({rank}, K={args.K}, {args.path} path)")
    print(f"iterations {rec.iterations}, final relative residual {rec.rel_residual:.3e}")
    print("phases (ms): " + ", ".join(f"{k} {1e3 * v:.2f}" for k, v in rec.phases.items()))
    return 0


# --------------------------------------------------------------------------- train
def _cmd_train(args) -> int:
    from nlss_fenicsx.nn.train import TrainConfig, peak_rss_mib, train

    if args.rank > args.K:
        raise UsageError(f"--rank must be <= --K, got rank {args.rank} > K {args.K}")
    if args.arch == "gnn":
        from nlss_fenicsx.nn.gnn import train_gnn_cli  # the GNN baseline

        return train_gnn_cli(args)
    hidden = tuple(int(h) for h in args.hidden.split(",")) if args.hidden else None
    cfg = TrainConfig(pde=args.pde, N=args.N, K=args.K, r_max=args.rank, loss=args.loss,
                      steps=args.steps, lr=1e-3 if args.lr is None else args.lr,
                      batch=args.batch, seed=args.seed,
                      protocol=args.protocol, preset=args.preset,
                      **({"hidden": hidden} if hidden else {}),
                      **({"ckpt_every": args.ckpt_every} if args.ckpt_every else {}))
    out = args.out or Path(f"models/{args.pde}_N{args.N}_K{args.K}_r{args.rank}_{args.loss}.pt")
    t0 = time.perf_counter()
    model = train(cfg, out, device=args.device, resume=not args.restart,
                  progress=not args.no_progress)
    extra = model.metadata["extra"]
    last = extra["history"][-1] if extra.get("history") else {}
    print(f"wrote {out}: {model.num_parameters():,} parameters, step {model.step}, "
          f"{extra.get('train_seconds', 0):.1f} s training "
          f"({time.perf_counter() - t0:.1f} s wall), peak RSS {peak_rss_mib():.0f} MiB")
    if last:
        print("held-out captured-energy gap to SVD: " + ", ".join(
            f"r={k.split('@')[1]}: {v:.4f}" for k, v in last.items() if k.startswith("gap")))
    return 0


# --------------------------------------------------------------------------- energy
def _cmd_energy(args) -> int:
    from nlss_fenicsx.bench.energy import EnergyConfig, run_energy

    pdes_ = FAMILIES if args.pde == "all" else (args.pde,)
    for pde in pdes_:
        cfg = EnergyConfig(pde=pde, steps=args.steps, seed=args.seed,
                           n_train=args.n_train, n_test=args.n_test)
        res = run_energy(cfg, args.out, progress=not args.no_progress)
        print(f"{pde}: captured-energy gap to SVD (mean over {cfg.n_test} test samples)")
        print("   r   NLSS      subspace")
        for r in (1, 2, 4, 8, 16, 24, 32):
            if r <= cfg.K:
                print(f"  {r:>2}  {res['losses']['nlss']['gap_mean'][r - 1]:.4f}    "
                      f"{res['losses']['subspace']['gap_mean'][r - 1]:.4f}")
        print(f"  wrote {Path(args.out) / f'energy_{pde}.png'} and energy_{pde}.json")
    return 0


# --------------------------------------------------------------------------- bench
def _ranks(text: str) -> list[int]:
    try:
        ranks = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")\
            from None
    if not ranks or min(ranks) < 1:
        raise argparse.ArgumentTypeError(f"expected positive ranks, got {text!r}")
    return ranks


def _cmd_bench(args) -> int:
    from nlss_fenicsx.bench.harness import run_bench, run_scalability

    pdes_ = FAMILIES if args.pde == "all" else (args.pde,)
    for pde in pdes_:
        out = args.out / pde if args.pde == "all" else args.out
        if args.scalability:
            res = run_scalability(pde, args.budget, out, progress=not args.no_progress)
            print((out / "scalability.md").read_text())
            continue
        res = run_bench(pde, args.budget, out, ranks=args.ranks, resume=args.resume,
                        progress=not args.no_progress)
        print((out / "tables.md").read_text())
        print(f"wrote {out}/results.json, tables.md and figures ({res['wall_s']:.0f} s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nlss-fenicsx",
        description="NeuraLSP learned two-grid preconditioning for FEniCSx/PETSc.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("mesh", help="write a jittered Delaunay mesh of the unit square (.msh)",
                       description="Write the paper's jittered (N+1)^2-node Delaunay mesh "
                                   "as a Gmsh .msh file.")
    p.add_argument("--N", type=_int_at_least(2), default=64, help="cells per side (default 64)")
    p.add_argument("--seed", type=int, default=0, help="jitter seed (default 0)")
    p.add_argument("--jitter", type=_jitter, default=0.35, help="fraction of h (default 0.35)")
    p.add_argument("--out", type=Path, default=None,
                   help="output file (default meshes/square_N{N}_s{seed}.msh)")
    p.set_defaults(func=_cmd_mesh)

    p = sub.add_parser("solve", help="sample one PDE instance and solve it with two-grid PCG",
                       description="Sample a PDE instance, build the coarse space, solve with "
                                   "PCG and print iterations and the time of each phase.")
    p.add_argument("--pde", choices=FAMILIES, default="diffusion")
    p.add_argument("--N", type=_int_at_least(2), default=64, help="cells per side (default 64)")
    p.add_argument("--coarse", choices=("svd", "sa", "nlss", "subspace", "gnn"), default="svd",
                   help="coarse space (default svd)")
    p.add_argument("--rank", type=_int_at_least(1), default=48, help="coarse rank r")
    p.add_argument("--K", type=_int_at_least(1), default=72, help="smoothed vectors K")
    p.add_argument("--sweeps", type=_int_at_least(0), default=10, help="Jacobi sweeps for S")
    p.add_argument("--nu", type=_int_at_least(0), default=5, help="pre/post smoothing sweeps")
    p.add_argument("--omega", type=_positive_float, default=0.66, help="Jacobi weight")
    p.add_argument("--rtol", type=_positive_float, default=1e-6, help="relative tolerance")
    p.add_argument("--seed", type=int, default=0, help="seed of mesh, coefficients and S")
    p.add_argument("--preset", choices=("default", "paper", "code"), default="default")
    p.add_argument("--path", choices=("petsc", "scipy"), default="petsc",
                   help="PETSc TwoGridPC (native PCMG) or the SciPy reference (default petsc)")
    p.add_argument("--model", type=Path, default=None, help="checkpoint for --coarse nlss")
    p.set_defaults(func=_cmd_solve)

    p = sub.add_parser("train", help="train an NLSS (or subspace-loss) model",
                       description="Train the NeuraLSP MLP on fresh random instances (the "
                                   "authors' code protocol) or a fixed cached dataset. An "
                                   "interrupted run resumes from its checkpoint.")
    p.add_argument("--pde", choices=FAMILIES, default="diffusion")
    p.add_argument("--N", type=_int_at_least(2), default=64, help="cells per side (default 64)")
    p.add_argument("--K", type=_int_at_least(1), default=72, help="smoothed vectors (default 72)")
    p.add_argument("--rank", type=_int_at_least(1), default=72,
                   help="r_max, the rank trained for (default 72; truncate at solve time)")
    p.add_argument("--loss", choices=("nlss", "subspace"), default="nlss")
    p.add_argument("--arch", choices=("mlp", "gnn"), default="mlp")
    p.add_argument("--steps", type=_int_at_least(1), default=1000)
    p.add_argument("--batch", type=_int_at_least(1), default=1)
    p.add_argument("--lr", type=_positive_float, default=None,
                   help="Adam learning rate (default: the paper's, 1e-3 MLP, 1e-4 GNN)")
    p.add_argument("--hidden", default=None,
                   help="comma-separated hidden widths (default 128,256,256,128)")
    p.add_argument("--protocol", choices=("code", "dataset"), default="code",
                   help="fresh instance per step (code) or fixed 1000/100 set (dataset)")
    p.add_argument("--preset", choices=("default", "paper", "code"), default="default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--out", type=Path, default=None, help="checkpoint path (default models/...)")
    p.add_argument("--ckpt-every", type=_int_at_least(1), default=None,
                   help="checkpoint every this many steps (default 250); also on the last "
                        "step and on Ctrl-C / SIGTERM")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("energy", help="captured-energy experiment (paper Figs. 3-5)",
                       description="Train NLSS and subspace-loss models at N=9, K=32 to full "
                                   "rank, truncate to r=1..32 and plot the captured-energy "
                                   "gap to the exact SVD over the test set.")
    p.add_argument("--pde", choices=(*FAMILIES, "all"), default="all")
    p.add_argument("--steps", type=_int_at_least(1), default=4000)
    p.add_argument("--n-train", type=_int_at_least(1), default=1000)
    p.add_argument("--n-test", type=_int_at_least(1), default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("results/energy"))
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_energy)

    p = sub.add_parser("bench", help="the paper's tables and figures, with the peers",
                       description="Train (or reuse cached) NLSS, Subspace and GNN models, "
                                   "then time every two-grid method and the classical peers "
                                   "on the test instances. Writes OUT/results.json, "
                                   "OUT/tables.md and OUT/*.png.")
    p.add_argument("--pde", choices=(*FAMILIES, "all"), default="diffusion")
    p.add_argument("--budget", choices=("smoke", "standard", "paper"), default="smoke")
    p.add_argument("--ranks", type=_ranks, default=None,
                   help="comma-separated coarse ranks (default: the budget's, 24,36,48,64)")
    p.add_argument("--out", type=Path, default=Path("results/bench"))
    p.add_argument("--resume", action="store_true",
                   help="continue a killed run: keep the methods already in OUT/results.json")
    p.add_argument("--scalability", action="store_true",
                   help="paper Table 4 / Fig. 6: N in 16..80, K=N, r=K/2, end-to-end times")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UsageError, ValueError, FileNotFoundError) as err:
        print(f"nlss-fenicsx {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # e.g. a solve that did not converge
        print(f"nlss-fenicsx {args.command}: failed: {err}", file=sys.stderr)
        return 1
    except Exception as err:
        # petsc4py wraps errors raised inside the PC's Python callbacks: show their cause.
        cause = err.__cause__
        if isinstance(cause, ValueError | RuntimeError):
            print(f"nlss-fenicsx {args.command}: error: {cause}", file=sys.stderr)
            return 2 if isinstance(cause, ValueError) else 1
        raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
