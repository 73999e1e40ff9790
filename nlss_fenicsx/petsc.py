"""The NeuraLSP two-grid preconditioner as a PETSc python PC, for any dolfinx model.

Select it purely through PETSc options, e.g. in a dolfinx ``LinearProblem``::

    petsc_options = {
        "ksp_type": "cg", "ksp_rtol": 1e-6,
        "pc_type": "python", "pc_python_type": "nlss_fenicsx.petsc.TwoGridPC",
        "nlss_coarse": "svd", "nlss_rank": 48, "nlss_K": 72,
    }

The ``nlss_*`` options (table in :mod:`nlss_fenicsx.options`) are read under the PC's own
prefix (``LinearProblem``'s ``petsc_options_prefix``) as strings when PETSc calls
``setFromOptions``; a bad value is one ``ValueError`` raised at set-up (the first solve),
so the options database and every later solver in the process stay as they were.

Set-up (collective; any rank's failure is the same error on every rank):

1. options: parsed; with ``nlss_model``, every setting not given comes from the checkpoint;
   options the coarse kind does not use are reported in one warning line; those that define
   the operator (all but ``nlss_model``, ``nlss_basis``, ``nlss_pde``, ``nlss_precision``:
   rank 0's are used) must be equal on every rank (checked after parsing and the merge);
2. ``lambda_max(D^-1 A)`` estimated by Lanczos (distributed ``MatMult`` and all-reduced dot
   products, :func:`nlss_fenicsx.relaxation.lambda_max_estimate`); the Jacobi weight
   (``nlss_omega auto``: 0.66 where safe) or the Chebyshev interval follow from it;
3. ``S``: serial SciPy float32 sweeps, or distributed PETSc block products; the random start
   is drawn in node order (:mod:`nlss_fenicsx.la`), so ``S`` does not depend on the ranks;
4. ``P`` from :func:`nlss_fenicsx.coarse.coarse_basis` (every kind; the learned one through
   :func:`nlss_fenicsx.nn.inference.load_model`), with the near-nullspace attached to ``A``;
5. ``Ac = P^T A P`` checked by :func:`nlss_fenicsx.twogrid.check_coarse_spd`;
6. a native two-level ``PCMG``: ``P`` is the interpolation, the coarse operator is ``Ac``,
   the level smoother ``nu`` sweeps of Richardson + Jacobi (``jacobi``), Chebyshev + Jacobi
   (``chebyshev``), Richardson + symmetric SOR (``sor``) or Chebyshev + ICC(0) (``icc``: ICC(0)
   factored once, its interval from a CG-Lanczos estimate of ``lambda_max(M^-1 A)``, see
   :mod:`nlss_fenicsx.levels`), the coarse level a Cholesky solve (redundant in parallel).
   Of the user's options under ``<prefix>nlss_mg_`` (never overwritten or deleted) the
   coarse solver's (``mg_coarse_*``), ``pc_mg_cycle_type``, ``pc_mg_multiplicative_cycles``
   and ``pc_mg_log`` are honoured; the level smoother's (``mg_levels_*``: ``nlss_smoother``,
   ``nlss_nu``, ``nlss_omega`` keep it convergent) and anything else are refused in one line.

Every application then runs in C. The operator equals :class:`nlss_fenicsx.twogrid.TwoGrid`
with the same smoother. A PETSc error in set-up is raised as itself; ``NotSPDError`` only
when ``Ac`` is not SPD. Python errors raised inside PETSc reach the caller as
``PETSc.Error`` with the Python exception as ``__cause__``: :func:`python_errors` re-raises
that exception itself (``KeyboardInterrupt`` included).
"""

from __future__ import annotations

import difflib
import time
import warnings

import numpy as np
import scipy.sparse as sp

from nlss_fenicsx import la, levels, options, relaxation
from nlss_fenicsx._fenicsx import PETSc
from nlss_fenicsx.la import (  # noqa: F401 - re-exported: the names the README uses
    attach_grid_order,
    attach_node_order,
    check_converged,
    converged_reason_name,
    python_errors,
)
from nlss_fenicsx.options import TwoGridOptions
from nlss_fenicsx.smoothing import smoothed_vectors

__all__ = [
    "OptionNotUsedWarning",
    "TwoGridPC",
    "attach_grid_order",
    "attach_node_order",
    "check_converged",
    "converged_reason_name",
    "python_errors",
]

class OptionNotUsedWarning(UserWarning):
    """An ``nlss_*`` option was given that the chosen coarse space does not use."""


def _note(category, message: str) -> None:
    # warn_explicit with no source line: one line on stderr, and filterable.
    warnings.warn_explicit(message, category, "nlss_fenicsx.petsc", 0)


def _database(prefix: str) -> tuple[dict, dict]:
    """Read the ``nlss_*`` entries under ``prefix`` (as strings) and the ``nlss_mg_*`` ones."""
    db = PETSc.Options()
    own, inner = {}, {}
    for key, value in db.getAll().items():
        if not key.startswith(prefix + "nlss_"):
            continue
        rest = key[len(prefix):]
        if rest.startswith("nlss_mg_"):
            inner[rest[len("nlss_mg_"):]] = value
        else:
            own[rest] = value
            db.hasName(key)  # marks it used (no "option left" warning at exit)
    return own, inner


# What defines the operator (the files and the checks against them are rank 0's only).
_SAME = ("coarse", "r", "K", "sweeps", "smoothing_omega", "nu", "omega", "smoother", "seed")


def _same_on_every_rank(comm, opts: TwoGridOptions) -> None:
    """Raise the same ValueError on every rank if a setting of the operator differs."""
    every = comm.allgather([getattr(opts, f) for f in _SAME]) if comm.size > 1 else []
    for i, name in enumerate(_SAME):  # coarse first: then the ranks agree on what it uses
        j = next((j for j, values in enumerate(every) if values[i] != every[0][i]), 0)
        if j and (name == "coarse" or opts.uses("K" if name == "smoothing_omega" else name)):
            what = options.OPTION_NAMES.get(name, "the weight of S")
            raise ValueError(f"nlss options differ between MPI ranks: {what} is "
                             f"{every[0][i]} on rank 0 and {every[j][i]} on rank {j}")


class TwoGridPC:
    """PETSc python-PC context: the NeuraLSP two-grid preconditioner, a native PCMG inside.

    Created by PETSc from ``pc_python_type nlss_fenicsx.petsc.TwoGridPC`` (options in
    :mod:`nlss_fenicsx.options`), or directly::

        pc.setType("python")
        pc.setPythonContext(TwoGridPC(P=my_basis))   # P: this rank's rows, n_local x r

    Parameters
    ----------
    P : numpy.ndarray or scipy.sparse matrix, shape (n_local, r), optional
        A given coarse basis (this rank's rows); skips ``S`` and the basis construction.
    S : numpy.ndarray, shape (n_local, K), optional
        Given smoothed vectors (this rank's rows); the basis is then built from them.
    options : TwoGridOptions, optional
        Used instead of the PETSc options database.
    reference : scipy.sparse matrix, shape (n_local, n), optional
        For ``eig-ref`` only: this rank's rows (dof order) of the reference operator, e.g.
        the family's mean-coefficient matrix (default: the Laplacian of A's graph).

    Attributes
    ----------
    options : TwoGridOptions
        The settings of the last set-up (after the checkpoint merge and any clipping).
    timings : dict
        Seconds of the last set-up: ``estimate`` (lambda_max; for ``icc`` also the ICC(0)
        factorisation), ``smoothing`` (S), ``inference`` (P), ``setup`` (Ac, check, PCMG).
    P : numpy.ndarray or scipy.sparse matrix
        This rank's rows of the coarse basis of the last set-up.
    coarse_size : int
        Columns of ``P``.
    omega, omega_reason : float or None, str
        The level smoother's weight and why (one line; also shown by ``-ksp_view``).
    lam_max : float or None
        The estimate of ``lambda_max(D^-1 A)`` (of ``lambda_max(M^-1 A)``, M = ICC(0), for
        ``nlss_smoother icc``; None when nothing needed it).
    """

    def __init__(self, *, P=None, S=None, options: TwoGridOptions | None = None, reference=None):
        self._given_P, self._given_S, self._given_options = P, S, options
        self._reference, self.options = reference, options
        self._options_error: ValueError | None = None
        self._mg_user, self.timings = {}, {}
        self.P = self.S = self.inner = self._P_mat = self._Ac = self._icc = None
        self._key, self._A_handle, self._singular = None, None, False
        self.coarse_size, self.omega_reason, self._unused = 0, "", ()
        self.lam_max: float | None = None
        self.omega: float | None = None
        self._model = self._S_omega = self._interval = None

    # ---------------------------------------------------------------- PETSc callbacks
    def create(self, pc):
        """PETSc callback: nothing to do before the options are known."""

    def setFromOptions(self, pc):  # noqa: N802 - PETSc's name
        """PETSc callback: read ``nlss_*`` and ``nlss_mg_*`` as strings; errors wait for setUp.

        dolfinx's ``LinearProblem`` calls this between a push and a pop of its options
        prefix and does not pop it when an error escapes, which would misfile every later
        solver's options; so a bad value is kept and raised by :meth:`setUp`.
        """
        own, self._mg_user = _database(pc.getOptionsPrefix() or "")
        if self._given_options is None:
            try:
                self.options, self._options_error = options.parse_options(own), None
            except ValueError as err:
                self.options, self._options_error = None, err

    def setUp(self, pc):  # noqa: N802 - PETSc's name
        """PETSc callback: build ``S``, ``P``, ``Ac`` and the inner PCMG (collective)."""
        A, _ = pc.getOperators()
        comm = A.getComm().tompi4py()
        try:
            self._set_up(pc, A, comm)
        except BaseException:
            self._release()  # nothing half-built survives a failure or Ctrl-C
            raise

    def apply(self, pc, x, y):
        """PETSc callback: ``y = B x`` with the two-grid operator ``B``.

        A second ``setFromOptions`` with ``pc_python_type`` set makes petsc4py replace this
        context by a fresh one while PETSc still counts the PC as set up (same operator):
        the fresh context then sets itself up here, on its first application.
        """
        if self.inner is None:
            self.setUp(pc)
        self.inner.apply(x, y)

    def applySymmetricLeft(self, pc, x, y):  # noqa: N802  # pragma: no cover - not CG's
        """PETSc callback: the operator is symmetric; same as :meth:`apply`."""
        self.apply(pc, x, y)

    def view(self, pc, viewer=None):
        """PETSc callback (``-ksp_view``): what was built, with which values and why."""
        lines = self.describe()
        if viewer is None:
            print("\n".join(lines))
            return
        for line in lines:
            viewer.printfASCII(line + "\n")
        if self.inner is not None:
            viewer.pushASCIITab()
            self.inner.view(viewer)
            viewer.popASCIITab()

    def destroy(self, pc):
        """PETSc callback: free the inner PCMG and matrices."""
        self._release()

    # ---------------------------------------------------------------- set-up stages
    def _set_up(self, pc, A, comm):
        (lo, hi), n = A.getOwnershipRange(), A.getSize()[0]
        order = la.node_order_of(A)
        opts = self._resolve_options(pc, A, comm, order)
        la.raise_collectively(comm, None if self._reference is None or opts.coarse == "eig-ref"
                              else ValueError(f"reference= is for eig-ref, not {opts.coarse}"))
        key = levels.reuse_key(A, opts, order, given_P=self._given_P is not None)
        same_P = key is not None and key == self._key  # P does not depend on A's values
        if same_P and A.handle == self._A_handle:  # the same Mat, new values
            self._refresh(pc, A, comm, opts, order)
            return
        P_mat = self._P_mat if same_P else None  # a new Mat: keep P, build the PCMG anew
        self._release(keep=P_mat)
        self._key, self._A_handle, self.timings = key, A.handle, {}
        t0 = time.perf_counter()
        needs_S = self._given_P is None and opts.uses("K")
        S_omega = self._S_omega = self._weights(A, comm, opts, order, needs_S)
        t1 = time.perf_counter()
        # sine and fixed read only A's size: no CSR copy of its rows.
        entries = needs_S or (self._given_P is None and opts.coarse not in ("sine", "fixed"))
        A_local = la.petsc_to_csr(A) if entries else sp.csr_matrix((hi - lo, n))
        S = self._smoothed(A, A_local, comm, opts, order, S_omega) if needs_S else None
        t2 = time.perf_counter()
        if self._given_P is not None or same_P:
            P = self._given_P if self._given_P is not None else self.P
        else:
            from nlss_fenicsx.coarse import coarse_basis

            model = opts.model if opts.coarse == "corrected" else self._model
            P = coarse_basis(opts.coarse, A_local, r=opts.r, S=S, model=model,
                             node_order=order, near_nullspace=la.near_nullspace_rows(A),
                             basis_file=opts.basis, reference=self._reference,
                             comm=comm if comm.size > 1 else None, seed=opts.seed,
                             timings=self.timings, block_size=A.getBlockSize())
        t3 = time.perf_counter()
        self._build_mg(pc, A, comm, P, opts, P_mat)
        self.P, self.S = P, S
        self.timings.update(estimate=t1 - t0, smoothing=t2 - t1, inference=t3 - t2,
                            setup=time.perf_counter() - t3)

    def _resolve_options(self, pc, A, comm, order) -> TwoGridOptions:
        """Options after parse errors, the checkpoint merge, clipping to n and reports."""
        with la.collective(comm):
            if self._options_error is not None:
                raise self._options_error
        opts = self.options
        if opts is None:  # never given setFromOptions: read the database now
            own, self._mg_user = _database(pc.getOptionsPrefix() or "")
            with la.collective(comm):
                opts = options.parse_options(own)
        _same_on_every_rank(comm, opts)  # before any rank branches on them
        if (order is None and opts.coarse in ("sine", "fixed", "nlss", "corrected")
                and self._given_P is None):
            raise ValueError(f"nlss_coarse {opts.coarse} needs the node order of the dofs: "
                             "call nlss_fenicsx.petsc.attach_node_order(problem.A, V) before "
                             "solve() (any mesh; pdes.assemble attaches it itself)")
        n = A.getSize()[0]
        if opts.coarse == "nlss" and self._given_P is None:
            opts = self._with_model(A, comm, opts, n)
        limit = n
        if opts.coarse in ("sine", "eig", "eig-ref"):  # these build fewer than n columns
            from nlss_fenicsx.coarse import rank_limit
            limit = rank_limit(opts.coarse, la.petsc_to_csr(A), lo=A.getOwnershipRange()[0],
                               comm=comm)
        opts, note = options.clip_to_problem(opts, n, limit)
        _same_on_every_rank(comm, opts)  # after the checkpoint merge and the clipping
        if note and comm.rank == 0:
            _note(UserWarning, f"TwoGridPC: {note}")
        self._unused = options.unused_options(opts)
        if self._unused and comm.rank == 0:
            _note(OptionNotUsedWarning, f"TwoGridPC: {', '.join(self._unused)} "
                  f"{'is' if len(self._unused) == 1 else 'are'} not used by nlss_coarse "
                  f"{opts.coarse} (ignored)")
        self.options = opts
        return opts

    def _with_model(self, A, comm, opts: TwoGridOptions, n: int) -> TwoGridOptions:
        """Load the checkpoint on the root rank; merge its settings everywhere (issue 18)."""
        with la.collective(comm):
            if opts.model is None:
                raise ValueError("nlss_coarse nlss needs nlss_model PATH (a checkpoint "
                                 "written by `nlss-fenicsx train`)")
        settings = err = None
        if comm.rank == 0:
            try:
                from nlss_fenicsx.nn.inference import load_model  # the lazy door to nn/

                self._model = load_model(opts.model, precision=opts.precision)
                settings = self._model.settings
            except Exception as exc:  # noqa: BLE001 - raised on every rank just below
                err = exc
        la.raise_collectively(comm, err)
        settings = comm.bcast(settings, root=0)
        with la.collective(comm):
            model_n = getattr(settings, "n", None)
            if model_n is not None and int(model_n) != n:
                raise ValueError(f"{opts.model} was trained for n={model_n} unknowns; the "
                                 f"problem has n={n}")
            trained_on, here = getattr(settings, "mesh_id", None), A.getAttr(la.MESH_ID_KEY)
            if trained_on and here and trained_on != here:
                raise ValueError(f"{opts.model} was trained on another mesh (mesh id "
                                 f"{trained_on}; this one is {here})")
            return options.merge_checkpoint(opts, settings, where=opts.model)

    def _weights(self, A, comm, opts, order, needs_S):
        """Estimate lambda_max(D^-1 A) if needed; set the smoother's weight; return S's."""
        self.lam_max, self.omega, self.omega_reason, self._interval = None, None, "", None
        model_w = opts.smoothing_omega
        needs_lam = opts.smoother in ("jacobi", "chebyshev") or (needs_S and model_w is None)
        if needs_lam:
            self.lam_max = la.lambda_max_petsc(A, seed=opts.seed, node_order=order)
        lam_S = self.lam_max
        if opts.smoother == "icc":  # ICC(0) factored once: for its estimate and for PCMG
            if self._icc is None:
                self._icc = levels.icc_preconditioner(A)
            else:  # a refresh: the same PC on A's new values
                self._icc.setOperators(A, A)
                self._icc.setUp()
            self.lam_max = levels.lambda_max_pc(A, self._icc, seed=opts.seed, node_order=order)
        with la.collective(comm):
            if opts.smoother == "jacobi":
                self.omega, self.omega_reason = relaxation.jacobi_weight(opts.omega, lam_S)
            elif opts.smoother == "sor":
                self.omega, self.omega_reason = relaxation.sor_weight(opts.omega)
            else:
                if opts.omega != "auto":
                    raise ValueError(f"nlss_omega {opts.omega}: the {opts.smoother} smoother "
                                     "takes its weights from its interval; leave nlss_omega "
                                     "out (or auto)")
                self._interval = relaxation.chebyshev_interval(self.lam_max)
                lo, hi = self._interval
                of = "M^-1 A), M = ICC(0)" if opts.smoother == "icc" else "D^-1 A)"
                self.omega_reason = (f"Chebyshev on [{lo:.4g}, {hi:.4g}] from "
                                     f"lambda_max({of} ~ {self.lam_max:.4g}")
            if not needs_S:
                return None
            if model_w is not None:
                return model_w
            jacobi_given = opts.smoother == "jacobi" and opts.omega != "auto"
            return relaxation.jacobi_weight(opts.omega if jacobi_given else "auto", lam_S)[0]

    def _smoothed(self, A, A_local, comm, opts, order, omega) -> np.ndarray:
        """Return this rank's rows of S (given, serial SciPy float32, or PETSc's)."""
        n = A.getSize()[0]
        if self._given_S is not None:
            return np.asarray(self._given_S, dtype=np.float64)
        if comm.size > 1:
            return la.smoothed_vectors_petsc(A, opts.K, sweeps=opts.sweeps, omega=omega,
                                             seed=opts.seed, node_order=order)
        # Serial: SciPy's CSR x dense in float32 (half the bytes of PETSc's float64).
        S0 = la.start_block(opts.seed, n, opts.K, 0, n, order)
        S = smoothed_vectors(A_local, opts.K, sweeps=opts.sweeps, omega=omega,
                             dtype=np.float32, S0=S0)
        if not np.all(np.isfinite(S)):
            raise ValueError(f"A contains NaN or Inf: the smoothed vectors S are not finite "
                             f"after {opts.sweeps} Jacobi sweeps (expected a finite SPD A)")
        return S

    def _build_mg(self, pc, A, comm, P, opts: TwoGridOptions, P_mat=None):
        prefix = (pc.getOptionsPrefix() or "") + "nlss_mg_"
        db = PETSc.Options()
        present = {k[len(prefix):]: v for k, v in db.getAll().items() if k.startswith(prefix)}
        with la.collective(comm):
            levels.check_mg_options({**self._mg_user, **present}.items())
        self._P_mat = P_mat = la.mat_from_rows(A, P) if P_mat is None else P_mat
        self.coarse_size = P_mat.getSize()[1]
        # Ac formed here: PCMG's product puts 1 on an empty diagonal (hides a rank-deficient P)
        self._Ac = Ac = A.ptap(P_mat)
        nullspace = A.getNullSpace()
        singular = nullspace is not None and bool(nullspace.handle)
        dense_checked, ac_solve = levels.check_coarse(comm, Ac, singular=singular, pin=True)
        mg = PETSc.PC().create(comm=comm)
        self.inner = mg
        mg.setOptionsPrefix(prefix)
        mg.setOperators(A, A)
        mg.setType(PETSc.PC.Type.MG)
        mg.setMGLevels(2)
        mg.setMGType(PETSc.PC.MGType.MULTIPLICATIVE)
        mg.setMGCycleType(PETSc.PC.MGCycleType.V)
        mg.setMGInterpolation(1, P_mat)
        mg.getMGCoarseSolve().setOperators(Ac, ac_solve)  # Ac, or Ac pinned if singular
        if self._icc is not None:  # already factored (for the estimate): not again
            mg.getMGSmoother(1).setPC(self._icc)
        self._singular, self._svd = singular, singular and not dense_checked
        self._configure(pc, mg, opts, comm)
        levels.check_coarse_solver(mg, dense_checked)

    def _configure(self, pc, target, opts, comm):
        """Our options for the inner PCMG (or its level smoother on a refresh), then set up."""
        wanted = {**levels.mg_defaults(opts.smoother, opts.nu, omega=self.omega,
                                        interval=self._interval, parallel=comm.size > 1,
                                        singular=self._svd),
                  **self._mg_user}
        levels.set_up_with_options(target, (pc.getOptionsPrefix() or "") + "nlss_mg_", wanted)

    def _refresh(self, pc, A, comm, opts, order):
        """Set up again for new values of A with the same P (many related solves).

        The estimate, Ac and the smoother are redone; P, its PETSc matrix and the PCMG are kept.
        """
        t0 = time.perf_counter()
        self._weights(A, comm, opts, order, False)
        t1 = time.perf_counter()
        self._Ac = A.ptap(self._P_mat, result=self._Ac)
        dense_checked, ac_solve = levels.check_coarse(comm, self._Ac, singular=self._singular,
                                                   pin=True)
        mg = self.inner
        mg.setOperators(A, A)
        mg.getMGSmoother(1).setOperators(A, A)  # PCMG keeps a level's operators once set
        mg.getMGCoarseSolve().setOperators(self._Ac, ac_solve)
        self._configure(pc, mg.getMGSmoother(1), opts, comm)  # new weight or interval
        mg.setUp()
        levels.check_coarse_solver(mg, dense_checked)
        self.timings = {"estimate": t1 - t0, "smoothing": 0.0, "inference": 0.0,
                        "setup": time.perf_counter() - t1}

    def _release(self, keep=None):
        for obj in (self.inner, self._P_mat, self._Ac, self._icc):
            if obj is not None and obj is not keep:
                obj.destroy()
        self.inner = self._Ac = self._icc = self._key = self._A_handle = None
        self._P_mat = keep

    def describe(self) -> list[str]:
        """Lines for ``-ksp_view``: coarse space, S, smoother and weight, sources of values.

        Returns
        -------
        list of str
        """
        o = self.options or TwoGridOptions()
        model = f", model {o.model}" if o.coarse == "nlss" and o.model else ""
        lines = ["NeuraLSP two-grid preconditioner (nlss_fenicsx.petsc.TwoGridPC)",
                 f"  coarse space: {o.coarse}, coarse size {self.coarse_size}{model}"]
        if self.S is not None:
            lines.append(f"  smoothed vectors: K={o.K}, {o.sweeps} Jacobi sweeps, "
                         f"omega={self._S_omega:.4g}, seed {o.seed}")
        lines.append(f"  smoother: {o.smoother}, nu={o.nu} pre + {o.nu} post; "
                     f"{self.omega_reason}")
        if o.from_model:
            value = {"nlss_K": o.K, "nlss_rank": o.r, "nlss_sweeps": o.sweeps,
                     options.SMOOTHING_OMEGA: o.smoothing_omega}
            lines.append("  from the model: " + ", ".join(
                f"{k}={value.get(k)}" for k in sorted(o.from_model)))
        if self._unused:
            lines.append(f"  not used by {o.coarse}: {', '.join(self._unused)}")
        lines.append("  set-up time: " + ", ".join(f"{k} {1e3 * v:.2f} ms"
                                                   for k, v in self.timings.items()))
        return lines


def __getattr__(name: str):
    # pc_python_type nlss_fenicsx.petsc.<typo>: PETSc would raise inside setFromOptions,
    # where dolfinx's LinearProblem leaves its options prefix pushed for every later
    # solver. A stand-in that refuses at set-up keeps the database clean.
    if name.upper().endswith("PC") or difflib.get_close_matches(name, ["TwoGridPC"], 1, 0.7):
        return _refusing(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _refusing(name: str):
    class _Unknown:
        def setUp(self, pc):  # noqa: N802 - PETSc's name
            raise ValueError(f"pc_python_type nlss_fenicsx.petsc.{name}: no such "
                             "preconditioner; expected nlss_fenicsx.petsc.TwoGridPC")

        def apply(self, pc, x, y):  # pragma: no cover - setUp always refuses first
            raise ValueError(f"nlss_fenicsx.petsc.{name} is not a preconditioner")

    _Unknown.__name__ = _Unknown.__qualname__ = name
    return _Unknown
