"""tests/mpi holds scripts run by mpiexec (and user snippets run in fresh processes), not
test modules: pytest must not import them (its --doctest-modules collection would run
them in the test process)."""

collect_ignore_glob = ["*.py"]
