"""Beyond the paper (issue 17): the best two-level configuration against the classical peers.

For each family and size: a grid over coarse space (sine, eig-ref, nlss-family, corrected,
corrected-learned, and the paper's NLSS where a checkpoint is given) x smoother (jacobi 5,
chebyshev 3, sor 1, icc 1) x coarse rank, and in the same run ICC(0)-CG, GAMG-CG, sparse
Cholesky and the SA-AMG two-grid; one KSP per configuration with A re-assembled in place
per instance (many related solves on one mesh). The best configuration and the fastest
peer are chosen on validation instances and reported on the test instances. Writes
DIR/summary.json (per family and size: the best configuration's PETSc options, its median
total and iterations, the fastest peer's name and median total, their ratio),
DIR/tables.md, DIR/beyond.png and DIR/results_<pde>_N<N>.json. Offline work (basis files,
the learned corrector's training) is reported apart from the per-instance totals.

Example (the standard run, one thread, on a quiet machine)::

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/bench_beyond.py \\
        --pde diffusion anisotropic screened_poisson --N 64 128 256 --instances 20 \\
        --out results/beyond
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

FAMILIES = ("diffusion", "anisotropic", "screened_poisson")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("Example")[0].strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Example:\n  " + __doc__.split("::")[1].strip())
    p.add_argument("--pde", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    p.add_argument("--N", nargs="+", type=_positive, default=[64, 128],
                   help="sizes (default 64 128); at N >= --big only the coarse spaces that "
                   "need no per-size training run")
    p.add_argument("--instances", type=_positive, default=10, help="test instances per size")
    p.add_argument("--select", type=_positive, default=3,
                   help="validation instances that choose the best configuration (default 3)")
    p.add_argument("--ranks", nargs="+", type=_positive, default=[16, 32, 48])
    p.add_argument("--smoothers", nargs="+", default=["jacobi", "chebyshev", "sor", "icc"],
                   choices=("jacobi", "chebyshev", "sor", "icc"))
    p.add_argument("--coarse", nargs="+", default=None,
                   choices=("sine", "eig-ref", "nlss-family", "corrected",
                            "corrected-learned", "nlss"), help="coarse spaces (default all)")
    p.add_argument("--big", type=_positive, default=256)
    p.add_argument("--family-instances", type=_positive, default=24,
                   help="training instances of the nlss-family basis (default 24)")
    p.add_argument("--corrector-N", type=_positive, default=32,
                   help="size the learned corrector trains at, once per family (default 32)")
    p.add_argument("--corrector-steps", type=int, default=300)
    p.add_argument("--nlss", default=None,
                   help="NLSS checkpoint pattern, e.g. 'models/{pde}_N{N}.pt' (rows where "
                   "the file exists)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    import time

    from nlss_fenicsx._atomic import check_destination
    from nlss_fenicsx.bench.beyond import COARSE, run_beyond

    try:
        out = check_destination(args.out, what="--out", kind="dir")
    except ValueError as err:
        print(f"bench_beyond: {err}", file=sys.stderr)
        return 2
    coarse = tuple(args.coarse or COARSE)
    corrector = {}
    if "corrected-learned" in coarse:
        from nlss_fenicsx.nn.corrector import CorrectorConfig, train_corrector

        for pde in args.pde:
            path = out / "models" / f"corrector_{pde}_N{args.corrector_N}.npz"
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                t0 = time.perf_counter()
                train_corrector(CorrectorConfig(pde=pde, N=args.corrector_N,
                                                r=min(32, (args.corrector_N - 1) ** 2),
                                                steps=args.corrector_steps), path,
                                progress=not args.no_progress)
                print(f"offline {pde}: learned corrector trained in "
                      f"{time.perf_counter() - t0:.1f} s -> {path}", flush=True)
            corrector[pde] = path
    nlss = ({f"{pde}_N{N}": Path(args.nlss.format(pde=pde, N=N))
             for pde in args.pde for N in args.N} if args.nlss else None)
    try:
        run_beyond(args.pde, args.N, args.instances, out, select=args.select,
                   ranks=tuple(args.ranks), smoothers=tuple(args.smoothers), coarse=coarse,
                   big=args.big, family_instances=args.family_instances,
                   corrector=corrector, nlss=nlss, progress=not args.no_progress,
                   log=lambda line: print(line, flush=True))
    except ValueError as err:
        print(f"bench_beyond: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}/summary.json, tables.md, beyond.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
