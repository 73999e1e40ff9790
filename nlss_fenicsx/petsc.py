"""The NeuraLSP two-grid preconditioner as a PETSc python PC, for any dolfinx model.

Select it purely through PETSc options, e.g. in a dolfinx ``LinearProblem``::

    petsc_options = {
        "ksp_type": "cg", "ksp_rtol": 1e-6,
        "pc_type": "python", "pc_python_type": "nlss_fenicsx.petsc.TwoGridPC",
        "nlss_coarse": "svd", "nlss_rank": 48, "nlss_K": 72,
    }

Options are read under the PC's own prefix (``LinearProblem``'s ``petsc_options_prefix``):

==================  =======  =========================================================
option              default  meaning
==================  =======  =========================================================
``nlss_coarse``     svd      coarse space: ``svd`` | ``sa`` | ``nlss`` (learned model)
``nlss_model``               checkpoint path, for ``nlss``
``nlss_pde``                 optional: PDE family to check against the checkpoint
``nlss_rank``       48       coarse rank r (svd, nlss)
``nlss_K``          72       number of smoothed vectors K
``nlss_sweeps``     10       Jacobi sweeps that smooth the K random vectors
``nlss_nu``         5        pre- and post-smoothing sweeps of the two-grid cycle
``nlss_omega``      0.66     Jacobi weight (smoothing of S and the cycle)
``nlss_seed``       0        seed of the random start vectors
``nlss_precision``  int8     the MLP's inference weights: ``int8`` (dynamic quantisation,
                             several times faster on a CPU, same iterations) | ``float32``
==================  =======  =========================================================

On ``setUp`` the PC takes ``A`` from its operators, builds ``S`` (distributed by rows,
PETSc dense block products), the coarse basis ``P`` and then a native two-level
``PCMG``: ``P`` is the interpolation (a dense, or MPI dense, matrix), the coarse operator is
Galerkin, each level smoother is ``nu`` sweeps of Richardson + Jacobi scaled by ``omega``,
and the coarse level is a Cholesky solve (redundant in parallel). Every application then
runs in C. It is the same operator as :class:`nlss_fenicsx.twogrid.TwoGrid`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from nlss_fenicsx._fenicsx import MPI, PETSc
from nlss_fenicsx.smoothing import RENORM_EVERY, smoothed_vectors

__all__ = [
    "GRID_ORDER_KEY",
    "PCOptions",
    "attach_grid_order",
    "grid_order_of",
    "petsc_to_csr",
    "TwoGridPC",
    "check_converged",
    "converged_reason_name",
    "dense_from_rows",
    "smoothed_vectors_petsc",
]

COARSE_KINDS = ("svd", "sa", "nlss", "subspace", "gnn")


def converged_reason_name(reason: int) -> str:
    """PETSc's name for a KSP converged reason (e.g. ``DIVERGED_ITS``)."""
    for name in dir(PETSc.KSP.ConvergedReason):
        if not name.startswith("_") and getattr(PETSc.KSP.ConvergedReason, name) == reason:
            return name
    return str(reason)


def check_converged(ksp) -> int:
    """Raise ``RuntimeError`` naming PETSc's reason unless ``ksp`` converged.

    Returns the iteration count. A non-converging solve is never silent.
    """
    from nlss_fenicsx.twogrid import ConvergenceError

    reason = ksp.getConvergedReason()
    if reason <= 0:
        raise ConvergenceError(
            f"KSP did not converge: {converged_reason_name(reason)} ({reason}) after "
            f"{ksp.getIterationNumber()} iterations, residual norm {ksp.getResidualNorm():.3e}",
            None,
        )
    return ksp.getIterationNumber()


@dataclass(frozen=True)
class PCOptions:
    """The ``nlss_*`` options of :class:`TwoGridPC` (see the module docstring)."""

    coarse: str = "svd"
    model: str | None = None
    pde: str | None = None
    rank: int = 48
    K: int = 72
    sweeps: int = 10
    nu: int = 5
    omega: float = 0.66
    seed: int = 0
    precision: str = "int8"

    def __post_init__(self):
        if self.precision not in ("int8", "float32"):
            raise ValueError(f"Unrecognized nlss_precision {self.precision!r}; expected "
                             "'int8' or 'float32'")
        if self.coarse not in COARSE_KINDS:
            raise ValueError(
                f"Unrecognized nlss_coarse {self.coarse!r}; expected one of {COARSE_KINDS}")
        for name, lo in (("rank", 1), ("K", 1), ("sweeps", 0), ("nu", 0)):
            if getattr(self, name) < lo:
                raise ValueError(f"nlss_{name} must be >= {lo}, got {getattr(self, name)}")
        if not self.omega > 0:
            raise ValueError(f"nlss_omega must be > 0, got {self.omega}")
        if self.coarse in ("svd", "nlss", "subspace", "gnn") and self.rank > self.K:
            raise ValueError(f"nlss_rank must be <= nlss_K, got rank {self.rank} > K {self.K}")

    @classmethod
    def from_petsc(cls, prefix: str | None) -> PCOptions:
        opts = PETSc.Options(prefix or None)
        d = cls()
        model = opts.getString("nlss_model", "") or None
        return cls(
            coarse=opts.getString("nlss_coarse", d.coarse),
            model=model,
            pde=opts.getString("nlss_pde", "") or None,
            rank=opts.getInt("nlss_rank", d.rank),
            K=opts.getInt("nlss_K", d.K),
            sweeps=opts.getInt("nlss_sweeps", d.sweeps),
            nu=opts.getInt("nlss_nu", d.nu),
            omega=opts.getReal("nlss_omega", d.omega),
            seed=opts.getInt("nlss_seed", d.seed),
            precision=opts.getString("nlss_precision", d.precision),
        )


GRID_ORDER_KEY = "nlss_grid_order"


def attach_grid_order(A, grid_order) -> None:
    """Attach the grid order (``grid_order[g]`` = global dof of grid node ``g``) to ``A``.

    The learned coarse space needs it to present ``S`` to the network in grid order.
    :func:`nlss_fenicsx.pdes.assemble` does this itself; for a ``LinearProblem`` call
    ``attach_grid_order(problem.A, meshes.grid_order(V))`` before ``solve()``.
    """
    order = np.asarray(grid_order, dtype=PETSc.IntType)
    index_set = PETSc.IS().createGeneral(order, comm=PETSc.COMM_SELF)
    A.compose(GRID_ORDER_KEY, index_set)
    index_set.destroy()


def grid_order_of(A) -> np.ndarray:
    """The grid order attached by :func:`attach_grid_order`; a clear error if missing."""
    index_set = A.query(GRID_ORDER_KEY)
    if index_set is None:
        raise ValueError(
            "the learned coarse space needs the grid order of the dofs, and none is attached "
            "to the operator: call nlss_fenicsx.petsc.attach_grid_order(A, "
            "nlss_fenicsx.meshes.grid_order(V)) first (pdes.assemble does it for you)")
    order = index_set.getIndices().astype(np.int64)
    if order.size != A.getSize()[0]:
        raise ValueError(f"attached grid order has {order.size} entries; the operator has "
                         f"{A.getSize()[0]} rows")
    return order


def petsc_to_csr(A):
    """SciPy CSR copy of a PETSc AIJ matrix's owned rows (global column indices).

    Stored zeros (the pattern of zeroed Dirichlet rows and columns) are dropped.
    """
    import scipy.sparse as sp

    indptr, indices, data = A.getValuesCSR()
    out = sp.csr_matrix((data.copy(), indices.copy(), indptr.copy()),
                        shape=(A.getLocalSize()[0], A.getSize()[1]))
    out.eliminate_zeros()
    return out


def _rows(A) -> tuple[int, int]:
    return A.getOwnershipRange()


def dense_from_rows(comm, rows: np.ndarray, n_global: int) -> PETSc.Mat:
    """A (MPI) dense PETSc matrix whose owned rows are ``rows`` (local block, n_local x k)."""
    rows = np.asarray(rows)  # any layout (PETSc's is column-major) and any real dtype:
    if not np.issubdtype(rows.dtype, np.floating):  # float32 converts during the copy
        rows = np.asarray(rows, dtype=PETSc.ScalarType)
    if rows.ndim != 2:
        raise ValueError(f"expected a 2-D block of rows, got shape {rows.shape}")
    n_local, k = rows.shape
    M = PETSc.Mat().createDense(((n_local, n_global), (PETSc.DECIDE, k)), comm=comm)
    M.setUp()
    M.getDenseArray()[:] = rows
    M.assemble()
    return M


def smoothed_vectors_petsc(A, K: int, *, sweeps: int = 10, omega: float = 0.66,
                           seed: int = 0, S0: np.ndarray | None = None) -> np.ndarray:
    """Distributed :func:`nlss_fenicsx.smoothing.smoothed_vectors` on a PETSc matrix.

    Each sweep is one sparse x dense block product ``A S`` in PETSc, then
    ``S -= omega D^{-1} A S`` and a renormalisation of each column (norms all-reduced).
    The start block is the rows of the global ``n x K`` draw
    :func:`nlss_fenicsx.smoothing.gaussian_start` with ``seed``
    (or ``S0``, this rank's rows of a given start), so the result does not depend on the
    number of ranks for a fixed global numbering.

    Returns this rank's rows of ``S`` (``n_local x K``).
    """
    comm = A.getComm().tompi4py()
    lo, hi = _rows(A)
    n = A.getSize()[0]
    if S0 is None:
        from nlss_fenicsx.smoothing import gaussian_start

        S0 = gaussian_start(seed, n, K)[lo:hi].astype(np.float64)
    d = A.getDiagonal().getArray().copy()
    # Every check is collective: a rank that raised alone would leave the others waiting.
    bad = int(np.count_nonzero(~np.isfinite(d) | (d <= 0)))
    if comm.allreduce(bad, op=MPI.SUM):
        raise ValueError("smoothing needs a matrix with a positive, finite diagonal (SPD A); "
                         f"got {comm.allreduce(bad, op=MPI.SUM)} nonpositive, NaN or Inf "
                         "diagonal entries")
    scale = (omega / d)[:, None]
    S = dense_from_rows(comm, S0, n)
    arr = S.getDenseArray()
    T = None
    for k in range(1, sweeps + 1):
        T = A.matMult(S, result=T)
        arr -= scale * T.getDenseArray()
        if k % RENORM_EVERY == 0 or k == sweeps:  # linear sweeps: rescaling commutes
            norms = np.sqrt(comm.allreduce(np.einsum("ij,ij->j", arr, arr), op=MPI.SUM))
            arr /= np.where(norms > 0, norms, 1.0)
    out = arr.copy()
    S.destroy()
    if T is not None:
        T.destroy()
    # An off-diagonal NaN or Inf in A reaches every column of S within a few sweeps: one
    # pass over S (n x K, cheap next to the sweeps) makes it a clear error.
    if not comm.allreduce(bool(np.all(np.isfinite(out))), op=MPI.LAND):
        raise ValueError(f"A contains NaN or Inf: the smoothed vectors S are not finite after "
                         f"{sweeps} Jacobi sweeps (expected a finite SPD matrix)")
    return out


class TwoGridPC:
    """PETSc python-PC context: NeuraLSP two-grid preconditioner with a native PCMG inside.

    Created by PETSc from ``pc_python_type nlss_fenicsx.petsc.TwoGridPC`` (options as in
    the module docstring), or directly with keyword overrides::

        pc.setType("python")
        pc.setPythonContext(TwoGridPC(P=my_basis))   # P: this rank's rows, n_local x r

    Parameters
    ----------
    P : numpy.ndarray, optional
        A given coarse basis (this rank's rows); skips S and the basis construction.
    S : numpy.ndarray, optional
        Given smoothed vectors (this rank's rows); the basis is then built from them.
    options : PCOptions, optional
        Overrides the PETSc options database.

    Attributes
    ----------
    timings : dict
        Seconds spent in ``smoothing``, ``inference`` and ``setup`` by the last ``setUp``;
        for a learned coarse space also ``inference``'s parts on this rank: ``gather``
        (S to rank 0), ``model`` (the network, on rank 0) and ``scatter`` (P's rows back).
    P : numpy.ndarray or scipy.sparse matrix
        The coarse basis built by the last ``setUp`` (this rank's rows): float32 for the
        learned MLP spaces (the network's precision; PETSc holds it in float64), float64
        for ``svd`` and ``gnn``, sparse for ``sa``.
    """

    def __init__(self, *, P=None, S=None, options: PCOptions | None = None):
        self._given_P = P
        self._given_S = S
        self._given_options = options
        self.options: PCOptions | None = options
        self._options_error: ValueError | None = None
        self.timings: dict[str, float] = {}
        self.P = None
        self.S = None
        self.inner = None
        self._Pmat = None
        self._Ac = None
        self.coarse_size = 0

    # PETSc calls: create, setFromOptions, setUp, apply, view, destroy.
    def create(self, pc):
        self.inner = None

    def setFromOptions(self, pc):
        if self._given_options is None:
            # A bad option is raised at setUp, not here: dolfinx's LinearProblem calls
            # setFromOptions between a prefix push and pop of the global options database
            # and does not pop it when an error escapes, which would corrupt every later
            # option lookup in the process.
            try:
                self.options = PCOptions.from_petsc(pc.getOptionsPrefix())
                self._options_error = None
            except ValueError as err:
                self.options, self._options_error = None, err

    def _ensure_options(self, pc):
        if self._options_error is not None:
            raise self._options_error
        if self.options is None:
            self.options = PCOptions.from_petsc(pc.getOptionsPrefix())
        return self.options

    def setUp(self, pc):
        opts = self._ensure_options(pc)
        A, _ = pc.getOperators()
        comm = A.getComm().tompi4py()
        n = A.getSize()[0]
        self.timings = {"smoothing": 0.0, "inference": 0.0, "setup": 0.0}
        # 1. smoothed vectors S.
        t0 = time.perf_counter()
        need_S = self._given_P is None and opts.coarse != "sa"
        if need_S:
            if opts.K > n:
                raise ValueError(f"nlss_K must be <= n, got K={opts.K} > n={n}")
            if self._given_S is not None:
                S = np.asarray(self._given_S, dtype=np.float64)
            elif comm.size == 1:
                # Serial: SciPy's CSR x dense in float32 (half the bytes of PETSc's float64
                # product); the same random start as smoothed_vectors_petsc.
                S = smoothed_vectors(petsc_to_csr(A), opts.K, sweeps=opts.sweeps,
                                     omega=opts.omega, rng=opts.seed, dtype=np.float32)
                if not np.all(np.isfinite(S)):
                    raise ValueError(f"A contains NaN or Inf: the smoothed vectors S are not "
                                     f"finite after {opts.sweeps} Jacobi sweeps (expected a "
                                     "finite SPD matrix)")
            else:
                S = smoothed_vectors_petsc(A, opts.K, sweeps=opts.sweeps, omega=opts.omega,
                                           seed=opts.seed)
            self.S = S
        t1 = time.perf_counter()
        # 2. coarse basis P ("inference").
        if self._given_P is not None:
            P = self._given_P
        else:
            P = self._basis(A, comm, opts)
        t2 = time.perf_counter()
        # 3. native PCMG: Galerkin Ac = P^T A P and its Cholesky factor.
        self._build_mg(pc, A, comm, P, opts)
        t3 = time.perf_counter()
        self.P = P
        self.timings.update(smoothing=t1 - t0, inference=t2 - t1, setup=t3 - t2)

    def _basis(self, A, comm, opts: PCOptions):
        from nlss_fenicsx.coarse import sa_amg_basis, svd_basis_from_gram

        if opts.coarse == "svd":
            S = np.asarray(self.S, dtype=np.float64)  # the Gram route wants float64
            G = S.T @ S
            if comm.size > 1:
                G = comm.allreduce(G, op=MPI.SUM)
            return svd_basis_from_gram(G, S, opts.rank,
                                       allreduce=lambda x: comm.allreduce(x, op=MPI.SUM))
        if opts.coarse == "sa":
            if comm.size > 1:
                raise ValueError("nlss_coarse sa (PyAMG smoothed aggregation) is serial-only; "
                                 "use svd or nlss under mpiexec")
            return sa_amg_basis(petsc_to_csr(A), seed=opts.seed)
        # Learned coarse spaces arrive through nlss_fenicsx.nn (loaded lazily).
        return self._learned_basis(A, comm, opts)

    def _learned_basis(self, A, comm, opts: PCOptions):
        if opts.model is None:
            raise ValueError(f"nlss_coarse {opts.coarse} needs nlss_model PATH (a checkpoint "
                             "written by `nlss-fenicsx train`)")
        from nlss_fenicsx.nn.inference import learned_basis

        return learned_basis(A, comm, self.S, opts, grid_order_of(A), self.timings)

    def _build_mg(self, pc, A, comm, P, opts: PCOptions):
        import scipy.sparse as sp

        from nlss_fenicsx.twogrid import NotSPDError

        n = A.getSize()[0]
        lo, hi = A.getOwnershipRange()
        if sp.issparse(P):
            P = P.tocsr()
            Pmat = PETSc.Mat().createAIJ(size=((hi - lo, n), (PETSc.DECIDE, P.shape[1])),
                                         csr=(P.indptr, P.indices, P.data), comm=comm)
            Pmat.assemble()
        else:
            P = np.asarray(P)
            if P.ndim != 2 or P.shape[0] != hi - lo:
                raise ValueError(f"coarse basis must have {hi - lo} local rows (n={n}); got "
                                 f"shape {P.shape}")
            Pmat = dense_from_rows(comm, P, n)
        self.coarse_size = Pmat.getSize()[1]
        if self.inner is not None:
            self.inner.destroy()
        for old in (self._Pmat, self._Ac):
            if old is not None:
                old.destroy()
        self._Pmat = Pmat
        mg = PETSc.PC().create(comm=comm)
        prefix = (pc.getOptionsPrefix() or "") + "nlss_mg_"
        mg.setOptionsPrefix(prefix)
        mg.setOperators(A, A)
        mg.setType(PETSc.PC.Type.MG)
        mg.setMGLevels(2)
        mg.setMGType(PETSc.PC.MGType.MULTIPLICATIVE)
        mg.setMGCycleType(PETSc.PC.MGCycleType.V)
        mg.setMGInterpolation(1, Pmat)
        # Galerkin coarse operator, formed here rather than by PCMG: PCMG's own product
        # puts 1 on an empty diagonal, which would hide a rank-deficient P.
        Ac = A.ptap(Pmat)
        self._Ac = Ac
        self._check_coarse_spd(Ac, comm)
        mg.getMGCoarseSolve().setOperators(Ac, Ac)
        # petsc4py lacks setters for several of these: push them as options under a
        # private prefix, apply with setFromOptions, then remove them so the global
        # database stays clean (as dolfinx's LinearProblem does).
        private = {
            "pc_mg_galerkin": "none",
            "mg_levels_ksp_type": "richardson",
            "mg_levels_ksp_richardson_scale": repr(float(opts.omega)),
            "mg_levels_ksp_max_it": str(opts.nu),
            "mg_levels_ksp_norm_type": "none",
            "mg_levels_pc_type": "jacobi",
            "mg_coarse_ksp_type": "preonly",
            "mg_coarse_pc_factor_shift_type": "none",
        }
        if comm.size > 1:
            private["mg_coarse_pc_type"] = "redundant"
            private["mg_coarse_redundant_pc_type"] = "cholesky"
        else:
            private["mg_coarse_pc_type"] = "cholesky"
        db = PETSc.Options()
        for key, value in private.items():
            db[prefix + key] = value
        try:
            mg.setFromOptions()
            # The level and coarse solvers read their options during set-up.
            mg.setUp()
        except PETSc.Error as err:
            raise NotSPDError(
                f"coarse operator Ac = P^T A P ({self.coarse_size} x {self.coarse_size}) is not "
                "symmetric positive definite (Cholesky failed); A must be SPD and P of full "
                "column rank") from err
        finally:
            for key in private:
                del db[prefix + key]
        self._check_factor(mg)
        self.inner = mg

    def _check_coarse_spd(self, Ac, comm):
        """NotSPDError unless ``Ac`` is symmetric positive definite and finite.

        PETSc's dense "Cholesky" of a matrix not flagged SPD is a symmetric-indefinite
        (Bunch-Kaufman) factorisation that reads one triangle: a non-symmetric or
        indefinite ``A`` would pass unnoticed. A dense ``Ac`` is r x r, so every rank
        checks the whole of it here with LAPACK's Cholesky (as TwoGrid does). A sparse
        ``Ac`` (SA-AMG, serial) gets the symmetry check only.
        """
        from nlss_fenicsx.twogrid import NotSPDError

        r = self.coarse_size
        msg = (f"coarse operator Ac = P^T A P ({r} x {r}) is not symmetric positive definite; "
               "A must be SPD (and finite) and P of full column rank")
        if Ac.getType() in (PETSc.Mat.Type.SEQDENSE, PETSc.Mat.Type.MPIDENSE):
            full = np.concatenate(comm.allgather(np.array(Ac.getDenseArray())), axis=0)
            if not np.all(np.isfinite(full)):
                raise NotSPDError(f"{msg} (Ac has NaN or Inf entries)")
            scale, asym = np.abs(full).max(), np.abs(full - full.T).max()
            if not asym <= 1e-10 * scale:
                raise NotSPDError(f"{msg} (not symmetric: max|Ac - Ac^T| = {asym:.3e}, "
                                  f"max|Ac| = {scale:.3e})")
            try:
                L = np.linalg.cholesky(0.5 * (full + full.T))
            except np.linalg.LinAlgError as err:
                raise NotSPDError(f"{msg} (Cholesky failed: {err})") from err
            pivots = np.diag(L) ** 2
            if not pivots.min() > r * np.finfo(np.float64).eps * np.max(np.diag(full)):
                raise NotSPDError(f"{msg} (numerically singular: smallest Cholesky pivot "
                                  f"{pivots.min():.3e})")
            return
        AcT = Ac.transpose(PETSc.Mat())  # out of place: transpose() alone works in place
        scale = Ac.norm(PETSc.NormType.FROBENIUS)
        AcT.axpy(-1.0, Ac, structure=PETSc.Mat.Structure.DIFFERENT_NONZERO_PATTERN)
        asym = AcT.norm(PETSc.NormType.FROBENIUS)
        AcT.destroy()
        if not (np.isfinite(scale) and asym <= 1e-10 * scale):
            raise NotSPDError(f"{msg} (not symmetric: |Ac - Ac^T|_F = {asym:.3e}, "
                              f"|Ac|_F = {scale:.3e})")

    def _check_factor(self, mg):
        from nlss_fenicsx.twogrid import NotSPDError

        coarse_pc = mg.getMGCoarseSolve().getPC()
        try:
            reason = coarse_pc.getFailedReason()
        except AttributeError:  # older petsc4py
            return
        if reason != 0:
            raise NotSPDError(
                f"coarse operator Ac = P^T A P ({self.coarse_size} x {self.coarse_size}) is not "
                f"symmetric positive definite (Cholesky failed: PCFailedReason {reason}); A "
                "must be SPD and P of full column rank")

    def apply(self, pc, x, y):
        self.inner.apply(x, y)

    def applySymmetricLeft(self, pc, x, y):  # pragma: no cover - not used by CG
        self.inner.apply(x, y)

    def view(self, pc, viewer=None):
        o = self.options or PCOptions()
        lines = [
            "NeuraLSP two-grid preconditioner (nlss_fenicsx.petsc.TwoGridPC)",
            f"  coarse space: {o.coarse}, coarse size {self.coarse_size}"
            + (f", model {o.model}" if o.model else ""),
            f"  smoothed vectors: K={o.K}, {o.sweeps} Jacobi sweeps, omega={o.omega}, "
            f"seed {o.seed}",
            f"  cycle: PCMG 2 levels, Galerkin, {o.nu}+{o.nu} Richardson/Jacobi sweeps, "
            "Cholesky coarse solve",
            "  set-up time: " + ", ".join(f"{k} {1e3 * v:.2f} ms"
                                          for k, v in self.timings.items()),
        ]
        if viewer is None:
            print("\n".join(lines))
            return
        for line in lines:
            viewer.printfASCII(line + "\n")

    def destroy(self, pc):
        for obj in (self.inner, self._Pmat, self._Ac):
            if obj is not None:
                obj.destroy()
        self.inner = None
        self._Pmat = None
        self._Ac = None
