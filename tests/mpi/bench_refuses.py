"""Under mpiexec: run_bench and run_scalability refuse at once, on every rank."""

import sys


def main(out: str) -> None:
    from nlss_fenicsx.bench.harness import run_bench
    from nlss_fenicsx.bench.scalability import run_scalability

    for run in (run_bench, run_scalability):
        try:
            run("diffusion", "smoke", out, progress=False)
        except ValueError as err:
            print(f"{run.__name__}: {err}", flush=True)


if __name__ == "__main__":  # a script for mpiexec, not a module to import
    main(sys.argv[1])
