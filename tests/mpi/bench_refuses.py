"""Under mpiexec: run_bench and run_scalability refuse at once, on every rank."""

import sys

from nlss_fenicsx.bench.harness import run_bench
from nlss_fenicsx.bench.scalability import run_scalability

out = sys.argv[1]
for run in (run_bench, run_scalability):
    try:
        run("diffusion", "smoke", out, progress=False)
    except ValueError as err:
        print(f"{run.__name__}: {err}", flush=True)
