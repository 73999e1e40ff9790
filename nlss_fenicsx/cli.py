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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UsageError, ValueError, FileNotFoundError) as err:
        print(f"nlss-fenicsx {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
