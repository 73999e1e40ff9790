"""Run under mpiexec: ``nlss-fenicsx solve`` where one rank fails and the others wait in a
collective (an error that is not collective). The failing rank must print its line and end
the job (MPI Abort) instead of leaving the others waiting for ever.

Usage: cli_one_rank_fails.py FAILING_RANK -- CLI ARGS
"""

import sys

from nlss_fenicsx import pdes
from nlss_fenicsx._atomic import check_destination
from nlss_fenicsx._fenicsx import MPI
from nlss_fenicsx.cli import main

failing = int(sys.argv[1])
comm = MPI.COMM_WORLD


def assemble(*args, **kwargs):
    if comm.rank == failing:  # a ValueError raised by the package's own code
        check_destination(".", kind=f"injected-on-rank-{failing}")
    comm.barrier()  # the others wait for the failing rank, which never comes
    raise AssertionError("unreachable: the failing rank never joins")


pdes.assemble = assemble
sys.exit(main(sys.argv[3:]))
