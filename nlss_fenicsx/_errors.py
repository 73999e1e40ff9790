"""How failures are reported: the same error on every rank, PETSc's reasons, unwrapping.

Private (re-exported by :mod:`nlss_fenicsx.la` and :mod:`nlss_fenicsx.petsc`); importing it
needs neither petsc4py nor mpi4py, so the NumPy core can raise collectively too (pass any
mpi4py communicator).
"""

from __future__ import annotations

import pickle
from contextlib import contextmanager

__all__ = [
    "check_converged",
    "collective",
    "converged_reason_name",
    "python_errors",
    "raise_collectively",
]


def _shareable(err: BaseException) -> BaseException:
    """``err`` itself if it survives pickling (to send to other ranks), else a RuntimeError."""
    try:
        pickle.loads(pickle.dumps(err))
    except Exception:  # an exception type that cannot travel: keep its text
        return RuntimeError(f"{type(err).__name__}: {err}")
    return err


def raise_collectively(comm, err: BaseException | None) -> None:
    """Raise the same exception on every rank if any rank passes one.

    Collective over ``comm``: every rank must call it. Ranks that passed ``None`` raise a
    copy of the exception of the lowest failing rank; that rank raises its own (with its
    traceback). Other failing ranks also raise the lowest rank's, so every rank reports the
    same one line.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm or None
        ``None`` or a one-rank communicator: ``err`` is raised as it is.
    err : BaseException or None
        This rank's failure, if any.

    Raises
    ------
    BaseException
        The lowest failing rank's exception, when any rank failed.

    Examples
    --------
    >>> raise_collectively(None, None)  # nothing failed: returns
    """
    if comm is None or comm.size == 1:
        if err is not None:
            raise err
        return
    failed = comm.allgather(err is not None)
    if not any(failed):
        return
    root = failed.index(True)
    shared = comm.bcast(_shareable(err) if comm.rank == root else None, root=root)
    if comm.rank == root:
        raise err
    raise shared


@contextmanager
def collective(comm):
    """Run a block of LOCAL work; any rank's exception is raised on every rank.

    The block must not contain collective operations (a rank that raised early would
    leave the others waiting in them). ``KeyboardInterrupt`` is not caught.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm or None

    Raises
    ------
    Exception
        The exception of the lowest rank whose block failed, on every rank.

    Examples
    --------
    >>> with collective(None):
    ...     x = 1 + 1
    """
    err = None
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - every kind must reach the other ranks
        err = exc
    raise_collectively(comm, err)


def _reason_name(enum, reason: int) -> str:
    for name in dir(enum):
        if not name.startswith("_") and getattr(enum, name) == reason:
            return name
    return str(reason)


def converged_reason_name(reason: int, *, snes: bool = False) -> str:
    """Return PETSc's name of a KSP (or SNES) converged reason, e.g. ``DIVERGED_ITS``.

    Parameters
    ----------
    reason : int
    snes : bool
        Name a SNES reason instead of a KSP one.

    Returns
    -------
    str

    Examples
    --------
    >>> converged_reason_name(-3)
    'DIVERGED_MAX_IT'
    """
    from nlss_fenicsx._fenicsx import PETSc

    return _reason_name(PETSc.SNES.ConvergedReason if snes else PETSc.KSP.ConvergedReason,
                        reason)


def check_converged(obj) -> int:
    """Raise unless a solve converged, naming PETSc's reason; return the iterations.

    Parameters
    ----------
    obj : petsc4py.PETSc.KSP or petsc4py.PETSc.SNES or dolfinx LinearProblem or NonlinearProblem
        For a problem, its ``.solver`` is checked.

    Returns
    -------
    int
        KSP iterations, or SNES (Newton) iterations.

    Raises
    ------
    nlss_fenicsx.krylov.ConvergenceError
        If the solver did not converge (e.g. ``DIVERGED_MAX_IT``,
        ``DIVERGED_INDEFINITE_PC``); for a SNES the reason of its last linear solve too.
    TypeError
        If ``obj`` is none of the above.
    """
    from nlss_fenicsx._fenicsx import PETSc
    from nlss_fenicsx.krylov import ConvergenceError

    solver = getattr(obj, "solver", obj)
    if isinstance(solver, PETSc.SNES):
        reason, its = solver.getConvergedReason(), solver.getIterationNumber()
        what = (f"SNES did not converge: {converged_reason_name(reason, snes=True)} "
                f"({reason}) after {its} Newton iterations, residual norm "
                f"{solver.getFunctionNorm():.3e}")
        inner = solver.getKSP().getConvergedReason()
        if inner < 0:
            what += f"; last linear solve {converged_reason_name(inner)} ({inner})"
    elif isinstance(solver, PETSc.KSP):
        reason, its = solver.getConvergedReason(), solver.getIterationNumber()
        what = (f"KSP did not converge: {converged_reason_name(reason)} ({reason}) after "
                f"{its} iterations, residual norm {solver.getResidualNorm():.3e}")
    else:
        raise TypeError("check_converged expects a KSP, a SNES, a LinearProblem or a "
                        f"NonlinearProblem; got {type(obj).__name__}")
    if reason == 0:  # CONVERGED_ITERATING: nothing was solved (or the solve is under way)
        raise ConvergenceError(f"{type(solver).__name__} has not solved anything yet "
                               "(CONVERGED_ITERATING): call solve() first", None)
    if reason < 0:
        raise ConvergenceError(what, None)
    return its


@contextmanager
def python_errors():
    """Re-raise the Python exception that PETSc wrapped, instead of ``PETSc.Error``.

    A Python exception inside a PETSc callback (e.g. a python PC's set-up) reaches the
    caller as ``PETSc.Error: error code ...`` whose ``__cause__`` is the real error; inside
    this context that error (``ValueError``, ``NotSPDError``, ``KeyboardInterrupt``, or
    the ``PETSc.Error`` of a PETSc call made inside the callback) is raised itself. Errors
    of PETSc calls made directly stay as they are.

    Examples
    --------
    >>> with python_errors():
    ...     pass
    """
    from nlss_fenicsx._fenicsx import PETSc

    try:
        yield
        return
    except PETSc.Error as err:
        cause = err.__cause__
        if cause is None:
            raise
    cause.__suppress_context__ = True  # no "during handling of PETSc.Error" in tracebacks
    raise cause
