# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: light
#       format_version: '1.5'
#       jupytext_version: 1.16.0
# ---

# # Plug the two-grid preconditioner into your own FEniCSx model
#
# This demo is the "plug-in" story of `nlss_fenicsx`: you have a FEniCSx model of your own
# (here: not the unit square of the paper, but a Gmsh domain with a hole and a smooth,
# strongly varying coefficient), you solve it with a dolfinx
# {py:class}`LinearProblem <dolfinx.fem.petsc.LinearProblem>`, and you switch the
# preconditioner to the NeuraLSP two-grid method by changing *PETSc options only*.
#
# We solve
#
# $$
# -\nabla\cdot\big(k(x)\,\nabla u\big) = f \quad \text{in } \Omega,\qquad
# u = 0 \ \text{on } \Gamma_\text{outer},\qquad
# k\,\partial_n u = 0 \ \text{on } \Gamma_\text{hole},
# $$
#
# on $\Omega = [0,1]^2 \setminus B\big((0.5, 0.5), 0.2\big)$ with $f = 1$ and
#
# $$
# k(x) = 1 + 50\, \exp\!\big(-20\, |x - (0.25, 0.75)|^2\big),
# $$
#
# a conductivity bump of contrast 51 in the upper-left corner. The hole is *insulated*
# (natural, zero-flux condition): that is the boundary condition a user most often meets
# on an inner obstacle, and it keeps the hole's boundary nodes as unknowns, so the
# preconditioner has to deal with a boundary it cannot simply eliminate. The outer square
# is held at $u = 0$ (Dirichlet), which makes the problem well posed and the matrix SPD.
#
# The preconditioners compared, all with conjugate gradients on the same `LinearProblem`:
#
# | label | PETSc options | what it is |
# |---|---|---|
# | TwoGridPC (SVD) | `pc_type python` (*) | this package's two-grid cycle |
# | Jacobi-CG | `pc_type jacobi` | diagonal scaling |
# | ICC(0)-CG | `pc_type icc` | incomplete Cholesky, no fill |
# | GAMG-CG | `pc_type gamg` | PETSc's smoothed-aggregation AMG |
# | direct | `ksp_type preonly`, `pc_type cholesky` | MUMPS; the reference |
#
# (*) with `pc_python_type nlss_fenicsx.petsc.TwoGridPC`: the coarse space is spanned by
# the top 32 left singular vectors of 48 Jacobi-smoothed random vectors.
#
# With `--learned` the demo also does what the package is for: it trains an NLSS model
# for *your* mesh and a *family* of coefficients on it (random conductivity bumps), adds
# "TwoGridPC (NLSS)" to the table, and then solves several new members of the family
# with the learned and the SVD coarse space: train once, solve many.
#
# Run it as a plain script (`python demos/your_model.py --help`); `--quick` is a tiny
# run (about 600 unknowns) for the test suite.

# +
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

# The dense products of the set-up (S^T S with K columns) are small: BLAS threads buy
# nothing there, and on a busy 2-core machine OpenBLAS's threads made them 100x
# slower. Single-threaded BLAS unless you say otherwise (read when numpy loads).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# Likewise torch's threads for the batch-1 network of `--learned` (an Adam step of a
# 13M-parameter model: 350 ms with 2 threads on a busy 2-core machine, 20 ms with 1).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

# `nlss_fenicsx.petsc` must come before dolfinx/petsc4py: it loads the wheel's PETSc and
# makes `nlss_fenicsx.petsc.TwoGridPC` importable by PETSc's python PC.
import nlss_fenicsx.petsc  # noqa: E402, F401
from nlss_fenicsx._fenicsx import MPI, PETSc, dolfinx, ufl  # noqa: E402
from nlss_fenicsx.bench.machine import machine_line  # noqa: E402
from nlss_fenicsx.petsc import attach_grid_order, check_converged  # noqa: E402

# Tags of the Gmsh physical groups.
DOMAIN, OUTER, HOLE = 1, 1, 2
# Default mesh size: about 10k P1 unknowns; `--quick`: about 600. With `--learned` the
# default is coarser (about 1,300 unknowns): the network's first and last layers grow
# with n, and the model should train in about a minute on a laptop.
H_DEFAULT, H_QUICK, H_LEARNED = 0.01, 0.045, 0.03
# `--learned`: training steps and hidden widths (default, quick).
LEARNED_STEPS, LEARNED_HIDDEN = 300, (128, 256, 256, 128)
QUICK_STEPS, QUICK_HIDDEN = 30, (32, 32)
# -

# ## The domain: Gmsh's OpenCASCADE kernel
#
# The unit square minus a disk is one boolean `cut`. We then sort the boundary curves:
# the circle (its centre of mass is the disk's centre) is the hole, the four straight
# sides are the outer boundary. Physical groups carry those tags into dolfinx, where
# `model_to_mesh` turns them into `facet_tags`. Gmsh runs on rank 0 only; dolfinx
# distributes the mesh.


# +
def build_gmsh_model(gmsh, h: float):
    """Fill the current Gmsh model with a meshed square-with-a-hole of mesh size ``h``."""
    gmsh.model.add("square_with_hole")
    occ = gmsh.model.occ
    square = occ.addRectangle(0.0, 0.0, 0.0, 1.0, 1.0)
    disk = occ.addDisk(0.5, 0.5, 0.0, 0.2, 0.2)
    domain, _ = occ.cut([(2, square)], [(2, disk)])
    occ.synchronize()
    outer, hole = [], []
    for dim, tag in gmsh.model.getBoundary(domain, oriented=False):
        com = occ.getCenterOfMass(dim, tag)
        (hole if np.hypot(com[0] - 0.5, com[1] - 0.5) < 1e-8 else outer).append(tag)
    gmsh.model.addPhysicalGroup(2, [t for _, t in domain], DOMAIN, name="domain")
    gmsh.model.addPhysicalGroup(1, outer, OUTER, name="outer")
    gmsh.model.addPhysicalGroup(1, hole, HOLE, name="hole")
    gmsh.option.setNumber("Mesh.MeshSizeMin", h)
    gmsh.option.setNumber("Mesh.MeshSizeMax", h)
    gmsh.model.mesh.generate(2)
    return gmsh.model


def square_with_hole(comm, h: float):
    """dolfinx MeshData (mesh, cell and facet tags) of the square with a hole."""
    import dolfinx.io.gmsh
    import gmsh

    owner = not gmsh.isInitialized()
    if owner:
        gmsh.initialize(interruptible=False)
    gmsh.option.setNumber("General.Terminal", 0)
    try:
        if comm.rank == 0:
            build_gmsh_model(gmsh, h)
        return dolfinx.io.gmsh.model_to_mesh(gmsh.model, comm, 0, gdim=2)
    finally:
        if owner:
            gmsh.finalize()
        else:
            gmsh.model.remove()


# -

# ## The model: UFL forms and the boundary condition
#
# The coefficient is written once, as a function of the coordinates and of an `exp`: UFL
# gets `ufl.SpatialCoordinate` and `ufl.exp` (the form integrates the exact formula),
# the plot gets NumPy arrays and `np.exp`.


# +
def conductivity(x, exp):
    """k(x) = 1 + 50 exp(-20 |x - (0.25, 0.75)|^2) for UFL or NumPy ``x``."""
    return 1.0 + 50.0 * exp(-20.0 * ((x[0] - 0.25) ** 2 + (x[1] - 0.75) ** 2))


def forms(mesh_data):
    """P1 space, bilinear and linear forms, and the Dirichlet condition on the outer square."""
    mesh = mesh_data.mesh
    V = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    u, v = ufl.TrialFunction(V), ufl.TestFunction(V)
    k = conductivity(ufl.SpatialCoordinate(mesh), ufl.exp)
    f = dolfinx.fem.Constant(mesh, PETSc.ScalarType(1.0))
    a = k * ufl.inner(ufl.grad(u), ufl.grad(v)) * ufl.dx
    L = f * v * ufl.dx
    # Dirichlet u = 0 on the facets tagged OUTER; nothing to do on the hole (natural BC).
    fdim = mesh.topology.dim - 1
    outer_facets = mesh_data.facet_tags.find(OUTER)
    dofs = dolfinx.fem.locate_dofs_topological(V, fdim, outer_facets)
    bc = dolfinx.fem.dirichletbc(PETSc.ScalarType(0.0), dofs, V)
    return V, a, L, [bc]


# -

# ## The solvers: one `LinearProblem` each, told apart by PETSc options
#
# Every iterative run uses CG with the *unpreconditioned* residual norm (so all methods
# stop at the same true relative residual, $\|b - Ax\| / \|b\| < 10^{-8}$: tight enough
# that comparing with the direct solution to $10^{-5}$ is meaningful) and
# `ksp_error_if_not_converged`, so a solve that fails raises instead of returning garbage.
# Each `LinearProblem` has its own options prefix: dolfinx pushes the options under it,
# applies them, and removes them again, so the runs cannot leak options into each other.


# +
def twogrid_options(coarse: str, rank: int, K: int, model=None) -> dict:
    """The ``nlss_*`` options of TwoGridPC (``coarse``: ``svd`` or ``nlss``)."""
    opts = {"pc_type": "python", "pc_python_type": "nlss_fenicsx.petsc.TwoGridPC",
            "nlss_coarse": coarse, "nlss_rank": rank, "nlss_K": K,
            "nlss_sweeps": 10, "nlss_nu": 5, "nlss_omega": 0.66}
    if model is not None:
        opts["nlss_model"] = str(model)
    return opts


def solver_options(comm, rank: int = 32, K: int = 48, model=None) -> dict[str, dict]:
    """PETSc options of each method, by label (the direct solve comes last).

    ``model``: a checkpoint of the learned coarse space (``--learned``) adds
    "TwoGridPC (NLSS)".
    """
    cg = {"ksp_type": "cg", "ksp_rtol": 1e-8, "ksp_atol": 0.0,
          "ksp_norm_type": "unpreconditioned", "ksp_error_if_not_converged": True,
          "ksp_max_it": 20000}
    serial = comm.size == 1
    learned = {} if model is None else {
        "TwoGridPC (NLSS)": cg | twogrid_options("nlss", rank, K, model)}
    return {
        "TwoGridPC (SVD)": cg | twogrid_options("svd", rank, K),
        **learned,
        "Jacobi-CG": cg | {"pc_type": "jacobi"},
        # PETSc's ICC is sequential; in parallel, ICC(0) on each rank's block.
        "ICC(0)-CG": cg | ({"pc_type": "icc"} if serial
                           else {"pc_type": "bjacobi", "sub_pc_type": "icc"}),
        "GAMG-CG": cg | {"pc_type": "gamg"},
        "direct (Cholesky)": {"ksp_type": "preonly", "pc_type": "cholesky",
                              "pc_factor_mat_solver_type": "mumps"},
    }


def prefix_of(label: str) -> str:
    """A PETSc options prefix made from a label: 'GAMG-CG' -> 'your_model_gamg_cg_'."""
    word = "".join(c if c.isalnum() else "_" for c in label.lower()).strip("_")
    while "__" in word:
        word = word.replace("__", "_")
    return f"your_model_{word}_"


def timed_solves(problem, repeat: int) -> tuple[object, float]:
    """One warm-up ``solve()``, then the median wall time of ``repeat`` more."""
    uh = problem.solve()  # warm-up: first-call costs (PC creation, symbolic factorisation)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        uh = problem.solve()
        times.append(time.perf_counter() - t0)
    return uh, float(np.median(times))


# -

# A note on what the timing measures: `LinearProblem.solve()` assembles $A$ and $b$ again
# and then calls `KSPSolve`; because $A$ was re-assembled, PETSc also re-runs the
# preconditioner's set-up (for TwoGridPC: smoothing, SVD, Galerkin product and Cholesky of
# the coarse matrix). So the figure is the honest cost of one `solve()` call. The forms are
# JIT-compiled when the `LinearProblem` is built, not inside `solve()`; the warm-up solve
# takes the remaining first-call costs out of the figure. (If your matrix does not change
# between solves, `problem.solver.setReusePreconditioner(True)` skips the set-up.)
#
# Differences to the direct solution are measured in the relative $L^2(\Omega)$ norm,
# $\|u_h - u_\text{direct}\|_{L^2} / \|u_\text{direct}\|_{L^2}$.


# +
def l2_norm(form, comm) -> float:
    return float(np.sqrt(comm.allreduce(dolfinx.fem.assemble_scalar(form), op=MPI.SUM)))


def solve_all(V, a, L, bcs, *, repeat: int, rank: int, K: int, model=None) -> dict:
    comm = V.mesh.comm
    runs = {}
    options = solver_options(comm, rank=rank, K=K, model=model)
    for label, opts in options.items():
        problem = dolfinx.fem.petsc.LinearProblem(
            a, L, bcs=bcs, petsc_options_prefix=prefix_of(label), petsc_options=opts)
        if opts.get("nlss_coarse") == "nlss":
            # The network sees S in a fixed node order: on a fixed mesh, the dof order.
            attach_grid_order(problem.A, np.arange(V.dofmap.index_map.size_global))
        uh, seconds = timed_solves(problem, repeat)
        its = check_converged(problem.solver)
        runs[label] = {"problem": problem, "uh": uh, "iterations": its, "time_s": seconds}
    # Relative L2 difference of each solution to the direct one (one JIT-compiled form).
    ref = runs["direct (Cholesky)"]["uh"]
    diff = dolfinx.fem.Function(V)
    norm_ref = l2_norm(dolfinx.fem.form(ref * ref * ufl.dx), comm)
    diff_form = dolfinx.fem.form(diff * diff * ufl.dx)
    for run in runs.values():
        diff.x.array[:] = run["uh"].x.array - ref.x.array
        run["rel_l2_diff"] = l2_norm(diff_form, comm) / norm_ref
    return runs


# -

# ## The learned coarse space for your own family (`--learned`)
#
# The SVD coarse space above is rebuilt from scratch for every matrix. NeuraLSP's point
# is to *learn* it once for a family of related problems and then get $P$ from a single
# forward pass per solve. Your family here: the same mesh and boundary conditions, and
# conductivities
#
# $$
# k(x) = 1 + \sum_{j=1}^{m} a_j\, \exp\!\big(-20\, |x - c_j|^2\big), \qquad
# m \in \{1, 2, 3\},\ a_j = 10^{U(0, 2)},\ c_j \sim U([0,1]^2),
# $$
#
# of which the bump above ($m = 1$, $a = 50$, $c = (0.25, 0.75)$) is one member. A
# `dolfinx.fem.Function` holds $k$, so one compiled form serves every member: drawing a
# member is one `interpolate`. The training data of one step is what the PC itself
# computes: the matrix (with the same Dirichlet rows as `LinearProblem`'s) and $K$
# random vectors smoothed by 10 Jacobi sweeps, $S$.
#
# The network cannot know about grids here, and need not: the mesh is fixed, so the
# "grid order" in which it sees the rows of $S$ is simply the dof numbering,
# `np.arange(n)`, attached to each operator with `attach_grid_order`. The training loop
# is the package's (`nlss_fenicsx.nn.train`) in miniature: a fresh member per Adam step,
# the columns of $S$ shuffled (the subspace does not depend on their order), the nested
# NLSS loss. The model is saved next to the outputs (`nlss_model.pt`) with the settings
# and a fingerprint of the mesh, and reused by later runs with the same ones
# (`--retrain` trains again).


# +
FAMILY = "1 + sum_j 10^U(0,2) exp(-20 |x - c_j|^2), j = 1..U{1,3}, c_j ~ U([0,1]^2)"


def family_member(rng):
    """Bump centres and amplitudes of one member of the conductivity family."""
    m = int(rng.integers(1, 4))
    return rng.uniform(0.0, 1.0, (m, 2)), 10.0 ** rng.uniform(0.0, 2.0, m)


def family_conductivity(x, centres, amplitudes):
    """k(x) of a member, for dolfinx's ``interpolate`` (``x`` has shape (3, points))."""
    k = np.ones(x.shape[1])
    for (cx, cy), a in zip(centres, amplitudes, strict=True):
        k += a * np.exp(-20.0 * ((x[0] - cx) ** 2 + (x[1] - cy) ** 2))
    return k


class FamilySampler:
    """Members of the family on a fixed mesh: ``sampler(seed)`` returns S (float32, n x K).

    Parameters
    ----------
    V : P1 function space; k : its Function holding the conductivity (updated in place);
    a_form : the compiled bilinear form in ``k``; bcs : the Dirichlet conditions; K : int.
    """

    def __init__(self, V, k, a_form, bcs, K: int):
        self.V, self.k, self.a_form, self.bcs, self.K = V, k, a_form, bcs, K
        self.A = dolfinx.fem.petsc.create_matrix(a_form)

    def draw(self, seed: int) -> None:
        """Set ``k`` to the member drawn with ``seed``."""
        centres, amplitudes = family_member(np.random.default_rng(seed))
        self.k.interpolate(lambda x: family_conductivity(x, centres, amplitudes))

    def __call__(self, seed: int) -> np.ndarray:
        from nlss_fenicsx.pdes import petsc_to_csr
        from nlss_fenicsx.smoothing import smoothed_vectors

        self.draw(seed)
        self.A.zeroEntries()
        dolfinx.fem.petsc.assemble_matrix(self.A, self.a_form, bcs=self.bcs, diag=1.0)
        self.A.assemble()
        S = smoothed_vectors(petsc_to_csr(self.A), self.K, rng=seed)
        return S.astype(np.float32)


def mesh_fingerprint(V) -> str:
    """A short hash of the dof coordinates: a saved model fits only the same dof order."""
    import hashlib

    xy = np.round(V.tabulate_dof_coordinates()[:, :2], 10)
    return hashlib.sha256(xy.tobytes()).hexdigest()[:16]


def learned_model(path: Path, sampler, *, rank: int, steps: int, hidden, settings: dict,
                  retrain: bool, seed: int = 0):
    """Load the model at ``path`` if it was trained with ``settings``, else train it.

    Returns ``(model, trained)``.
    """
    import torch
    from tqdm.auto import tqdm

    from nlss_fenicsx.nn import CheckpointError, MLPConfig, NLSSModel, nlss_loss
    from nlss_fenicsx.nn.data import instance_seed

    if path.exists() and not retrain:
        try:
            model = NLSSModel.load(path)
        except CheckpointError as err:
            print(f"{path} is corrupt ({str(err).splitlines()[0][:120]}): retraining")
        else:
            if model.metadata.get("extra", {}).get("settings") == settings:
                print(f"reusing the model in {path} (same mesh and settings)")
                model.net.eval()
                return model, False
            print(f"{path} was trained with other settings or on another mesh: retraining")
    n, K = sampler.V.dofmap.index_map.size_global, sampler.K
    torch.manual_seed(seed)
    model = NLSSModel(MLPConfig(n=n, K=K, r_max=rank, hidden=tuple(hidden)), pde="custom",
                      loss="nlss", extra={"settings": settings})
    opt = torch.optim.Adam(model.net.parameters(), lr=1e-3)
    shuffle = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc="train NLSS on your mesh", dynamic_ncols=True)
    for t in bar:
        S = torch.as_tensor(sampler(instance_seed(seed, t)))[None]  # a fresh member
        S = S[:, :, torch.randperm(K, generator=shuffle)]
        loss = nlss_loss(model.net(S), S)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    model.net.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path, step=steps, extra={"train_seconds": time.perf_counter() - t0})
    return NLSSModel.load(path), True


# -

# Then the many-query workflow: one `LinearProblem` per method, built once on the
# family's form; for each new member, update $k$ in place and call `solve()` (which
# re-assembles $A$ and re-runs the PC set-up: for NLSS smoothing, one forward pass and the
# Galerkin product; for SVD smoothing, an SVD and the Galerkin product). The members
# solved here are drawn from seeds the training never used.


# +
def many_queries(V, a_family, L, bcs, sampler, model_path, *, count: int, rank: int,
                 K: int, seed: int = 0) -> list[dict]:
    """Solve ``count`` new members with the learned and the SVD coarse space."""
    from nlss_fenicsx.nn.data import TEST_SEED_OFFSET, instance_seed

    cg = {"ksp_type": "cg", "ksp_rtol": 1e-8, "ksp_atol": 0.0,
          "ksp_norm_type": "unpreconditioned", "ksp_error_if_not_converged": True}
    problems = {}
    for coarse in ("nlss", "svd"):
        problems[coarse] = dolfinx.fem.petsc.LinearProblem(
            a_family, L, bcs=bcs, petsc_options_prefix=f"your_model_family_{coarse}_",
            petsc_options=cg | twogrid_options(coarse, rank, K, model_path
                                               if coarse == "nlss" else None))
    attach_grid_order(problems["nlss"].A, np.arange(V.dofmap.index_map.size_global))
    seeds = [instance_seed(seed + TEST_SEED_OFFSET, i) for i in range(count)]
    sampler.draw(seeds[0])
    for lp in problems.values():
        lp.solve()  # warm-up (loads the model, first-call costs)
    rows = []
    for i, s in enumerate(seeds):
        sampler.draw(s)
        row = {"instance": i}
        for coarse, lp in problems.items():
            t0 = time.perf_counter()
            lp.solve()
            row[f"{coarse}_s"] = time.perf_counter() - t0
            row[f"{coarse}_its"] = check_converged(lp.solver)
        rows.append(row)
    return rows


# -

# The two functions `main` calls: set up the family and its model, and report the
# queries with the training cost they have to pay back.


# +
def learn_family(V, L, bcs, args, *, rank: int, K: int) -> dict:
    """The family's form and sampler, and its NLSS model (trained or reused)."""
    u, v = ufl.TrialFunction(V), ufl.TestFunction(V)
    k = dolfinx.fem.Function(V, name="k")
    a_family = k * ufl.inner(ufl.grad(u), ufl.grad(v)) * ufl.dx
    sampler = FamilySampler(V, k, dolfinx.fem.form(a_family), bcs, K)
    settings = {"family": FAMILY, "h": args.h, "mesh": mesh_fingerprint(V), "K": K,
                "r_max": rank, "hidden": list(args.hidden), "steps": args.steps, "seed": 0}
    path = args.out / "nlss_model.pt"
    t0 = time.perf_counter()
    model, trained = learned_model(path, sampler, rank=rank, steps=args.steps,
                                   hidden=args.hidden, settings=settings,
                                   retrain=args.retrain)
    seconds = float(model.metadata["extra"].get("train_seconds", time.perf_counter() - t0))
    print(f"NLSS model for your family: {model.num_parameters():,} parameters, "
          f"{args.steps} steps, {seconds:.1f} s of training"
          f"{'' if trained else ' (reused)'}: {path}")
    return {"model": str(path), "trained": trained, "train_seconds": seconds,
            "parameters": model.num_parameters(), "a": a_family, "sampler": sampler}


def report_queries(learned: dict, rows: list[dict]) -> None:
    """Print the NLSS-vs-SVD table of the queries and store it in ``learned``."""
    print(f"\nmany queries: {len(rows)} new members of the family, one LinearProblem per "
          "coarse space, k updated in place")
    print(f"{'member':>6} {'NLSS its':>9} {'NLSS solve() ms':>16} {'SVD its':>8} "
          f"{'SVD solve() ms':>15}")
    for r in rows:
        print(f"{r['instance']:>6d} {r['nlss_its']:>9d} {1e3 * r['nlss_s']:>16.1f} "
              f"{r['svd_its']:>8d} {1e3 * r['svd_s']:>15.1f}")
    med = {key: float(np.median([r[key] for r in rows]))
           for key in ("nlss_its", "svd_its", "nlss_s", "svd_s")}
    print(f"{'median':>6} {med['nlss_its']:>9.1f} {1e3 * med['nlss_s']:>16.1f} "
          f"{med['svd_its']:>8.1f} {1e3 * med['svd_s']:>15.1f}")
    saved = med["svd_s"] - med["nlss_s"]
    if saved > 0:
        print(f"each solve() saves {1e3 * saved:.1f} ms: the {learned['train_seconds']:.0f} s "
              f"of training pay back after about {learned['train_seconds'] / saved:,.0f} "
              "solves")
    else:
        print("here a solve() with NLSS is not faster than with SVD: "
              + ("fewer CG iterations, but the forward pass costs more than the small SVD "
                 "it replaces" if med["nlss_its"] < med["svd_its"] else
                 "the model needs more training (--steps) for this family"))
    learned["queries"] = rows
    learned["median"] = med


# -

# ## Output: VTX (or XDMF) for ParaView, and a PNG
#
# The wheel's dolfinx is built with ADIOS2, so `VTXWriter` writes a `.bp` folder that
# ParaView opens directly; on a build without ADIOS2 we fall back to XDMF. The PNG draws
# the mesh over the coefficient and the solution, using the P1 dof coordinates as the
# vertices of a `matplotlib.tri.Triangulation` (in serial; under `mpiexec` only the
# VTX/XDMF file is written).


# +
def write_outputs(out: Path, V, uh, mesh_data) -> dict:
    comm = V.mesh.comm
    out.mkdir(parents=True, exist_ok=True)
    k_h = dolfinx.fem.Function(V, name="k")
    k_h.interpolate(lambda x: conductivity(x, np.exp))
    uh.name = "u"
    files = {}
    if dolfinx.has_adios2:
        path = out / "solution.bp"
        with dolfinx.io.VTXWriter(comm, path, [uh, k_h], engine="BP4") as vtx:
            vtx.write(0.0)
    else:  # pragma: no cover - depends on the dolfinx build
        path = out / "solution.xdmf"
        with dolfinx.io.XDMFFile(comm, path, "w") as xdmf:
            xdmf.write_mesh(V.mesh)
            xdmf.write_function(uh)
            xdmf.write_function(k_h)
    files["solution"] = str(path)
    if comm.size == 1:
        files["png"] = str(plot(out / "your_model.png", V, uh, k_h))
    return files


def plot(path: Path, V, uh, k_h) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.tri import Triangulation

    xy = V.tabulate_dof_coordinates()[:, :2]
    n_cells = V.mesh.topology.index_map(V.mesh.topology.dim).size_local
    tri = Triangulation(xy[:, 0], xy[:, 1], V.dofmap.list[:n_cells])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), constrained_layout=True)
    im = axes[0].tripcolor(tri, k_h.x.array, shading="gouraud", cmap="viridis")
    axes[0].triplot(tri, color="white", lw=0.15, alpha=0.6)
    axes[0].set_title(f"mesh ({n_cells} triangles) and k(x)")
    fig.colorbar(im, ax=axes[0], shrink=0.85)
    im = axes[1].tricontourf(tri, uh.x.array, levels=24, cmap="magma")
    axes[1].set_title("solution u (insulated hole, u = 0 outside)")
    fig.colorbar(im, ax=axes[1], shrink=0.85)
    for ax in axes:
        ax.set_aspect("equal")
        ax.set_xlabel("x")
        ax.set_ylabel("y")
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


# -

# ## What to expect
#
# On the development machine (2-core AMD EPYC) the default run, 10,479 unknowns, gives:
# TwoGridPC 95 CG iterations, Jacobi 316, ICC(0) 94, GAMG 11, and every iterative
# solution within $3 \cdot 10^{-10}$ of the direct one. A fixed 32-dimensional coarse
# space built from exact singular vectors is a small correction at this size, and its
# set-up (smoothing 48 vectors, their SVD) is paid on every `solve()`; GAMG's
# multi-level hierarchy wins on this single, smooth-coefficient problem. The two-grid
# method is aimed at families of related systems, where the learned model replaces the
# per-instance SVD. (The timings assume single-threaded BLAS, set at the top of this
# script: with OpenBLAS's default threads on a busy 2-core machine the SVD step of the
# set-up went from 3 ms to 650 ms.)
#
# With `--learned` (mesh size 0.03, 1,287 unknowns; 300 training steps of the paper's
# widths, 13.4M parameters, 25 s of training; 29 s for the whole run): on the bump
# above, TwoGridPC (NLSS) needs 14 CG iterations and TwoGridPC (SVD) 25. On five new
# members of the family NLSS needs 12-13 iterations and SVD 22-24, but a `solve()`
# takes about 8.7 ms with NLSS and 5.6 ms with SVD: on this CPU the forward pass
# (reading 13M weights, about 4.5 ms) costs more than the small SVD it replaces and
# the iterations it saves. The learned basis is the better coarse space; whether it is
# the faster solve depends on how the inference is run (the paper uses a GPU) and on
# the cost of an iteration, which grows with n.

# ## Putting it together


# +
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Your own FEniCSx model (square with an insulated hole, variable k) "
                    "solved with TwoGridPC, Jacobi-CG, ICC(0)-CG, GAMG-CG and a direct "
                    "solver through dolfinx LinearProblem.")
    p.add_argument("--h", type=float, default=None,
                   help=f"Gmsh mesh size (default {H_DEFAULT}: about 10k P1 unknowns; with "
                        f"--learned {H_LEARNED}: about 1,300)")
    p.add_argument("--quick", action="store_true",
                   help=f"tiny run for tests: mesh size {H_QUICK} (about 600 unknowns), "
                        f"one timed solve; with --learned {QUICK_STEPS} training steps of "
                        f"a {QUICK_HIDDEN} network")
    p.add_argument("--learned", action="store_true",
                   help="train (or reuse) an NLSS model for a family of conductivities on "
                        "this mesh, add it to the table, then solve --queries new members "
                        "with NLSS and SVD (serial)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"training steps with --learned (default {LEARNED_STEPS}, quick "
                        f"{QUICK_STEPS})")
    p.add_argument("--queries", type=int, default=5,
                   help="new family members solved with --learned (default 5)")
    p.add_argument("--retrain", action="store_true",
                   help="with --learned: train again even if out/nlss_model.pt fits")
    p.add_argument("--repeat", type=int, default=None,
                   help="timed solves per method after the warm-up (median; default 3, "
                        "quick 1)")
    p.add_argument("--out", type=Path, default=Path("out/your_model"),
                   help="output folder (default out/your_model)")
    args = p.parse_args(argv)
    if args.h is None:
        args.h = H_QUICK if args.quick else (H_LEARNED if args.learned else H_DEFAULT)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.steps is None:
        args.steps = QUICK_STEPS if args.quick else LEARNED_STEPS
    args.hidden = QUICK_HIDDEN if args.quick else LEARNED_HIDDEN
    if not args.h > 0:
        p.error(f"--h must be > 0, got {args.h}")
    if args.repeat < 1:
        p.error(f"--repeat must be >= 1, got {args.repeat}")
    if args.steps < 1 or args.queries < 1:
        p.error(f"--steps and --queries must be >= 1, got {args.steps}, {args.queries}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    comm = MPI.COMM_WORLD
    rank, K = 32, 48
    if args.learned and comm.size > 1:
        raise SystemExit("--learned trains and solves in serial: run it without mpiexec")

    def say(*items):
        if comm.rank == 0:
            print(*items, flush=True)

    t0 = time.perf_counter()
    mesh_data = square_with_hole(comm, args.h)
    V, a, L, bcs = forms(mesh_data)
    n = V.dofmap.index_map.size_global
    say(f"square with a hole, mesh size h={args.h}: {n} P1 unknowns, "
        f"{mesh_data.mesh.topology.index_map(2).size_global} triangles, "
        f"{comm.size} MPI rank(s); mesh + forms {time.perf_counter() - t0:.2f} s")

    learned = None
    if args.learned:
        learned = learn_family(V, L, bcs, args, rank=rank, K=K)
    runs = solve_all(V, a, L, bcs, repeat=args.repeat, rank=rank, K=K,
                     model=None if learned is None else learned["model"])

    say(f"\n{'method':<20} {'iterations':>10} {'solve() [ms]':>13} {'rel. L2 diff':>13}")
    say("-" * 59)
    for label, run in runs.items():
        say(f"{label:<20} {run['iterations']:>10d} {1e3 * run['time_s']:>13.1f} "
            f"{run['rel_l2_diff']:>13.2e}")
    say(f"(median of {args.repeat} solve() call(s) after a warm-up; each includes assembly "
        "and preconditioner set-up)\n")

    # What TwoGridPC built, with its set-up phase timings (of the last solve).
    tg = runs["TwoGridPC (SVD)"]["problem"].solver.getPC()
    if comm.rank == 0:
        tg.getPythonContext().view(tg)
    say(machine_line())

    # Every iterative solution must agree with the direct one.
    for label, run in runs.items():
        assert run["rel_l2_diff"] < 1e-5, (
            f"{label}: relative L2 difference to the direct solution is "
            f"{run['rel_l2_diff']:.2e} > 1e-5")

    if learned is not None:
        report_queries(learned, many_queries(
            V, learned["a"], L, bcs, learned["sampler"], learned["model"],
            count=args.queries, rank=rank, K=K))

    files = write_outputs(args.out, V, runs["direct (Cholesky)"]["uh"], mesh_data)
    say("wrote " + ", ".join(files.values()))
    ctx = tg.getPythonContext()
    return {
        "learned": None if learned is None else {
            k: v for k, v in learned.items() if k not in ("a", "sampler")},
        "n": int(n),
        "h": args.h,
        "rank": rank,
        "K": K,
        "coarse_size": int(ctx.coarse_size),
        "twogrid_timings": dict(ctx.timings),
        "methods": {label: {k: run[k] for k in ("iterations", "time_s", "rel_l2_diff")}
                    for label, run in runs.items()},
        "files": files,
    }


if __name__ == "__main__":
    main()
# -
