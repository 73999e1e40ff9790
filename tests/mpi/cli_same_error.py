"""Run under mpiexec: ``nlss-fenicsx solve`` where every rank fails with the same error
(a collective check): one line printed by rank 0, the same exit status on every rank.

Usage: cli_same_error.py -- CLI ARGS; prints "RANK r EXIT c" on stdout of every rank.
"""

import sys

from nlss_fenicsx import pdes
from nlss_fenicsx._atomic import check_destination
from nlss_fenicsx._fenicsx import MPI
from nlss_fenicsx.cli import main

comm = MPI.COMM_WORLD


def assemble(*args, **kwargs):
    comm.barrier()
    check_destination(".", kind="injected-on-every-rank")  # the package's own ValueError


pdes.assemble = assemble
code = main(sys.argv[2:])
print(f"RANK {comm.rank} EXIT {code}", file=sys.__stdout__, flush=True)
sys.exit(code)
