"""Checks and error reporting behind ``nlss-fenicsx`` (private to :mod:`nlss_fenicsx.cli`).

Everything here is cheap and imports nothing heavy at module level, so ``--help`` stays
instant: argument types that name the flag and the value, the memory estimate that refuses
a problem the machine cannot hold, the merge of a checkpoint's settings into the command's
(issue 18), and the one-line report of a failure, the same on every MPI rank (issue 15).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
import time
import traceback

__all__ = [
    "ArgParser",
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "LEARNED",
    "RemoteError",
    "USES_S",
    "UsageError",
    "check_memory",
    "classify",
    "grid_n",
    "guarded",
    "mesh_or_grid",
    "int_at_least",
    "jitter",
    "merge_model_settings",
    "mpi_world",
    "on_root",
    "open_unit_interval",
    "positive_float",
    "report",
    "resolve_solve",
    "seed_value",
    "sweeps_value",
    "serial_only",
    "smoother_weight",
    "solve_bytes",
    "train_bytes",
    "widths",
]

LEARNED = ("nlss", "subspace", "gnn")
USES_S = ("svd", *LEARNED)  # the coarse kinds built from the smoothed vectors S
EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED = 1, 2, 70, 130
GRACE_SECONDS = 10.0
"""How long a failing MPI rank waits for the others to fail too before it aborts the job."""
DRAIN_SECONDS = 0.5
"""How long a rank waits between printing its line and MPI Abort: the launcher forwards a
rank's stderr asynchronously, and an abort that comes first can drop the line (seen under load
with MPICH Hydra 5.0)."""


class UsageError(ValueError):
    """Bad command-line input found after parsing (one line, exit status 2)."""


# --------------------------------------------------------------------------- argument types
def _number(text: str, kind=float):
    try:
        return kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def int_at_least(lo: int, why: str = ""):
    """Argparse type: an integer >= ``lo``; ``why`` says what a smaller one would break."""
    def parse(text: str) -> int:
        value = _number(text, int)
        if value < lo:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}{why}, got {value}")
        return value

    return parse


def sweeps_value(text: str) -> int:
    """Argparse type: Jacobi sweeps for S, ``0 <= sweeps <= MAX_SWEEPS``."""
    from nlss_fenicsx.options import MAX_SWEEPS

    value = _number(text, int)
    if not 0 <= value <= MAX_SWEEPS:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, {MAX_SWEEPS}] (S has "
                                         f"converged long before), got {value}")
    return value


def seed_value(text: str) -> int:
    """Argparse type: a seed, ``0 <= seed < 2**32`` (every generator here takes those)."""
    value = _number(text, int)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, {2**32 - 1}], got {value}")
    return value


def positive_float(text: str) -> float:
    """Argparse type: a finite number > 0."""
    value = _number(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def open_unit_interval(text: str) -> float:
    """Argparse type: 0 < value < 1 (a relative tolerance)."""
    value = _number(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected 0 < value < 1, got {text}")
    return value


def jitter(text: str) -> float:
    """Argparse type: a node jitter, a fraction of h in [0, 0.5)."""
    value = _number(text)
    if not 0.0 <= value < 0.5:
        raise argparse.ArgumentTypeError(f"expected 0 <= jitter < 0.5, got {text}")
    return value


def smoother_weight(text: str) -> str | float:
    """Argparse type: ``auto`` or a weight in (0, 2) (the smoother's damping omega)."""
    if text == "auto":
        return text
    value = _number(text)
    if not 0 < value < 2:
        raise argparse.ArgumentTypeError(f"expected 'auto' or 0 < omega < 2, got {text}")
    return value


def widths(text: str) -> tuple[int, ...]:
    """Argparse type: comma-separated positive integers (hidden widths)."""
    try:
        out = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")\
            from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"expected positive widths, got {text!r}")
    return out


# --------------------------------------------------------------------------- memory
def solve_bytes(n: int, K: int = 0, r: int = 0, model_bytes: int = 0) -> int:
    """Rough peak memory of meshing, assembling and solving one instance with n nodes.

    Mesh, function space and matrices take about 1.5 kB per node (measured with Gmsh and
    dolfinx 0.11); S, its SVD work space and P add 8 bytes per entry, three copies of S.
    A learned model is held twice (float32 weights and the inference copy).
    """
    return 200 * 2**20 + n * (1500 + 8 * (3 * K + 2 * r)) + 2 * model_bytes


def train_bytes(n: int, K: int, r: int, hidden: tuple[int, ...], *, arch: str = "mlp",
                batch: int = 1, layers: int = 5) -> int:
    """Rough peak memory of training, in bytes.

    Weights, gradients and Adam's two moments in float32 (16 bytes a parameter, plus a
    checkpoint copy) and a batch of S; for the GNN, the activations kept for the backward
    pass (about 7 matrix entries per node).
    """
    if arch == "gnn":
        w = hidden[0]
        acts = 4 * 6 * layers * w * 8 * n * batch
        return solve_bytes(n, K, r) + acts + 24 * layers * 4 * w * w
    sizes = (n * K, *hidden, n * r)
    params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    return solve_bytes(n, K, r) + 24 * params + 8 * batch * n * K


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(need: int, what: str) -> None:
    """Refuse in one line when ``need`` bytes exceed this machine's physical memory."""
    have = _physical_memory()
    if have is not None and need > have:
        raise UsageError(f"{what} needs about {need / 2**30:.3g} GiB of memory; this machine "
                         f"has {have / 2**30:.3g} GiB")


# --------------------------------------------------------------------------- checkpoints
def merge_model_settings(args, settings, model: str) -> dict:
    """Fill ``--pde``, ``--N`` and ``--preset`` from the checkpoint when not given (issue 18).

    ``args`` holds ``None`` for a flag not given; a given value that contradicts the
    checkpoint is refused in one line naming both. A model trained on a mesh of its own
    needs ``--mesh``. (K, sweeps and the rank follow the PC's rule,
    :func:`nlss_fenicsx.options.merge_checkpoint`.) Returns what was taken from the model.
    """
    if settings.N is None and getattr(args, "mesh", None) is None:
        raise UsageError(f"the model {model} was trained on a mesh of its own: give that "
                         "mesh with --mesh")
    taken = {}
    for field in ("pde", "N", "preset"):
        theirs, mine = getattr(settings, field), getattr(args, field)
        if theirs is None or (field == "N" and getattr(args, "mesh", None) is not None):
            continue
        if mine is None:
            setattr(args, field, theirs)
            taken[field] = theirs
        elif mine != theirs:
            raise UsageError(f"--{field} {mine} contradicts {model}, which was trained with "
                             f"{field}={theirs}; leave --{field} out to use the model's")
    return taken


# --------------------------------------------------------------------------- MPI
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE")


def mpi_world():
    """Return ``MPI.COMM_WORLD`` under mpiexec with more than one rank, else ``None``.

    Decided from the launcher's environment first, so a serial run imports no MPI.
    """
    sizes = [os.environ.get(v, "") for v in _SIZE_VARS]
    if not any(s.isdigit() and int(s) > 1 for s in sizes):
        return None
    from nlss_fenicsx._fenicsx import MPI

    return MPI.COMM_WORLD if MPI.COMM_WORLD.size > 1 else None


# --------------------------------------------------------------------------- errors
def _chain(err: BaseException):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _raised_here(err: BaseException) -> bool:
    """Tell whether the innermost frame that raised ``err`` is this package's own code.

    A ValueError from deep inside NumPy or SciPy is a missing check (a bug), not bad input.
    """
    tb = err.__traceback__
    if tb is None:
        return True
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_globals.get("__name__", "").startswith(("nlss_fenicsx", "argparse"))


def classify(err: BaseException) -> tuple[int, str]:
    """Exit status and one-line message for an exception that ended a command.

    A PETSc error raised around a Python callback carries the real exception as its
    cause: that one is reported. A KeyboardInterrupt anywhere in the chain is an interrupt.
    """
    from nlss_fenicsx._atomic import RecoveredError

    chain = list(_chain(err))
    if any(isinstance(e, KeyboardInterrupt) for e in chain):
        return EXIT_INTERRUPTED, "interrupted"
    if type(err).__module__.startswith("petsc4py") and err.__cause__ is not None:
        err = err.__cause__
    text = " ".join(str(err).split()) or type(err).__name__
    if len(text) > 400:
        text = text[:400] + " ..."
    if isinstance(err, ValueError | FileNotFoundError) and _raised_here(err):
        return EXIT_BAD_INPUT, f"error: {text}"
    if isinstance(err, MemoryError):
        return EXIT_FAILED, "failed: ran out of memory"
    if isinstance(err, RecoveredError | OSError | RuntimeError):
        return EXIT_FAILED, f"failed: {text}"
    return EXIT_INTERNAL, (f"internal error: {type(err).__name__}: {text} (please report "
                           "this; NLSS_FENICSX_DEBUG=1 or --debug shows the traceback)")


def report(line: str, code: int, comm, handshake) -> int:
    """Print ``line`` once and return ``code``, the same on every MPI rank.

    Serial: print it. Under MPI every failing rank joins a non-blocking barrier on
    ``handshake`` (a duplicate of ``comm``, so it cannot match the library's collectives);
    when all ranks failed, rank 0 alone prints. A rank whose peers did not fail within
    :data:`GRACE_SECONDS` prints its line with its rank and aborts the job (no hang).
    """
    if comm is None:
        print(line, file=sys.stderr, flush=True)
        return code
    request = handshake.Ibarrier()
    deadline = time.monotonic() + GRACE_SECONDS
    while not request.Test():
        if time.monotonic() > deadline:
            print(f"{line} [MPI rank {comm.rank} of {comm.size}; the other ranks did not "
                  "stop: aborting]", file=sys.stderr, flush=True)
            time.sleep(DRAIN_SECONDS)
            comm.Abort(code)
        time.sleep(0.005)
    if comm.rank == 0:
        print(line, file=sys.stderr, flush=True)
    return code


# --------------------------------------------------------------------------- commands
def _env_rank() -> int:
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


class ArgParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (once under mpiexec), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n" if _env_rank() == 0
                  else None)


def serial_only(comm, command: str) -> None:
    """Refuse, in one line on every rank, a command that runs on one MPI rank only."""
    if comm is not None:
        raise UsageError(f"{command} runs on one MPI rank; got {comm.size}: run it without "
                         "mpiexec")


def mesh_or_grid(args, default_N: int | None) -> int | None:
    """Return ``--N`` (``default_N`` if not given); refuse ``--N`` together with ``--mesh``.

    Raises
    ------
    UsageError
        Both given: the mesh sets the problem's size.
    """
    if getattr(args, "mesh", None) is not None and args.N is not None:
        raise UsageError(f"--N {args.N} and --mesh {args.mesh}: give one (the mesh sets the "
                         "size of the problem)")
    return default_N if args.N is None else args.N


def grid_n(args) -> int | None:
    """Unknowns of the unit-square problem, ``(N+1)^2``; ``None`` on a mesh of one's own."""
    return None if getattr(args, "mesh", None) else (args.N + 1) ** 2


def on_root(comm, work):
    """Run ``work`` on rank 0 only (one writer); every rank gets its outcome or its error."""
    if comm is None:
        return work()
    outcome = None
    if comm.rank == 0:
        try:
            outcome = ("ok", work())
        except Exception as err:
            outcome = ("err", classify(err))
            comm.bcast(outcome, root=0)
            raise
    outcome = comm.bcast(outcome, root=0)
    if outcome[0] == "err":
        raise RemoteError(*outcome[1])
    return outcome[1]


class RemoteError(Exception):
    """The error that rank 0 met, re-raised on the other ranks with the same status."""

    def __init__(self, code: int, line: str):
        super().__init__(line)
        self.code, self.line = code, line


def _learned_label(settings) -> str:
    return "gnn" if settings.arch == "gnn" else settings.loss


def _from_model(args) -> dict:
    """Fill what the user did not give from the checkpoint (issue 18); return what was taken.

    The PC's own rule (options.merge_checkpoint) decides K, sweeps, omega and the rank;
    N, the mesh and the preset are the command's.
    """
    from nlss_fenicsx.nn.checkpoint import read_settings
    from nlss_fenicsx.options import merge_checkpoint, parse_options

    settings = read_settings(args.model)  # one-line CheckpointError when unreadable
    label = _learned_label(settings)
    if args.coarse is None:
        args.coarse = label
    elif args.coarse not in LEARNED:
        raise UsageError(f"--model applies to --coarse {', '.join(LEARNED)}; got --coarse "
                         f"{args.coarse}")
    elif args.coarse != label:
        what = "a GNN" if settings.arch == "gnn" else f"an MLP ({settings.loss} loss)"
        raise UsageError(f"--coarse {args.coarse}: {args.model} is {what} checkpoint; use "
                         f"--coarse {label}")
    given = {f"nlss_{k}": str(getattr(args, k)) for k in ("rank", "K", "sweeps", "omega", "pde")
             if getattr(args, k) is not None}
    try:
        opts = merge_checkpoint(parse_options({"nlss_coarse": "nlss", **given}), settings,
                                where=str(args.model))
    except ValueError as err:  # name the flags, not the PETSc options
        raise UsageError(re.sub(r"\bnlss_(\w+)", r"--\1", str(err))) from None
    taken = {}
    for name, field in (("rank", "r"), ("K", "K"), ("sweeps", "sweeps")):
        if args.__dict__[name] is None:
            args.__dict__[name] = getattr(opts, field)
            taken[name] = f"{args.rank} (r_max)" if name == "rank" else getattr(opts, field)
    if settings.omega is not None:  # S is smoothed as in training; --omega is the cycle's
        taken["omega of S"] = settings.omega
    return {**merge_model_settings(args, settings, str(args.model)), **taken}


def resolve_solve(args, comm) -> dict:
    """Resolve ``solve``'s model settings and defaults; return those taken from the model."""
    args.N = mesh_or_grid(args, None)
    taken = _from_model(args) if args.model is not None else {}
    args.coarse = args.coarse or "svd"
    if args.coarse in LEARNED and args.model is None:
        raise UsageError(f"--coarse {args.coarse} needs --model PATH (see `nlss-fenicsx train`)")
    if args.coarse == "fixed" and args.basis is None:
        raise UsageError("--coarse fixed needs --basis PATH (see `nlss-fenicsx basis`)")
    ignored = [f"--{k}" for k in ("rank", "K", "sweeps") if getattr(args, k) is not None
               and (args.coarse == "sa" or (k != "rank" and args.coarse not in USES_S))]
    ignored += ["--basis"] if args.basis is not None and args.coarse != "fixed" else []
    if args.coarse == "fixed" and args.rank is None:  # the file's r_max, as a model's
        from nlss_fenicsx.basisfile import load_basis

        args.rank = load_basis(args.basis)[1]["r_max"]
    if ignored and (comm is None or comm.rank == 0):
        print(f"nlss-fenicsx solve: note: {', '.join(ignored)} not used by --coarse "
              f"{args.coarse} (ignored)", file=sys.stderr)
    for name, default in (("pde", "diffusion"), ("N", 64), ("K", 72), ("sweeps", 10),
                          ("rank", 48), ("preset", "default"), ("omega", "auto")):
        if getattr(args, name) is None:
            setattr(args, name, default)
    n = grid_n(args)
    if args.coarse in USES_S:
        if args.rank > args.K:
            raise UsageError(f"--rank must be <= --K, got rank {args.rank} > K {args.K}")
        if n is not None and args.K > n:
            raise UsageError(f"--K must be <= n = (N+1)^2 = {n}, got {args.K}")
    elif args.coarse != "sa" and n is not None and args.rank > n:
        raise UsageError(f"--rank must be <= n = (N+1)^2 = {n}, got {args.rank}")
    return taken


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM: unwind as Ctrl-C does, so temporaries are removed


def guarded(label: str, work, *, debug: bool = False) -> int:
    """Run ``work(comm)``; map what ends it to one line and an exit status (the epilog).

    ``comm`` is the MPI world under mpiexec, else None. SIGTERM unwinds as Ctrl-C does.
    """
    debug = debug or os.environ.get("NLSS_FENICSX_DEBUG", "0") not in ("", "0")
    comm = handshake = None
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    try:
        comm = mpi_world()
        handshake = comm.Dup() if comm is not None else None  # for the error handshake only
        return int(work(comm) or 0)
    except BaseException as err:
        if not isinstance(err, Exception | KeyboardInterrupt):
            raise  # SystemExit and the like
        if debug:
            traceback.print_exc()
        code, line = (err.code, err.line) if isinstance(err, RemoteError) else classify(err)
        if isinstance(err, KeyboardInterrupt) and comm is not None:
            # mpiexec forwards Ctrl-C to every rank: rank 0 says it, no handshake.
            return report(f"{label}: {line}", code, None, None) if comm.rank == 0 else code
        return report(f"{label}: {line}", code, comm, handshake)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
