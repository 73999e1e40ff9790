# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: light
#       format_version: '1.5'
#       jupytext_version: 1.16.0
# ---

# # Your own FEniCSx model: train the coarse space on your mesh, then solve in parallel
#
# You have a model of your own: here a Gmsh domain that is not the paper's square (the
# unit square minus a disk), a conductivity that varies from one solve to the next, and a
# dolfinx `LinearProblem`. This demo
#
# 1. builds the mesh with Gmsh and the forms with UFL, as you would;
# 2. trains a NeuraLSP coarse space for *your family* on *your mesh* with the library's
#    training API: `pdes.smoothed_sampler` turns your instances into smoothed vectors $S$,
#    `nn.train.train` fits the network;
# 3. solves new members of the family with `TwoGridPC`, chosen by PETSc options, beside
#    the SVD coarse space, GAMG and a direct solver.
#
# The network sees the mesh's nodes in their input order, which dolfinx keeps whatever the
# partition: the model trained by a serial run gives the same iterations under
# `mpiexec -n 2 python demos/your_model.py` (training itself runs in one process).
#
# We solve $-\nabla\cdot(k\nabla u) = 1$ on $\Omega = [0,1]^2 \setminus B((0.5, 0.5), 0.2)$,
# $u = 0$ on the outer square, $k\,\partial_n u = 0$ on the hole (insulated), with
#
# $$
# k(x) = 1 + \sum_{j=1}^{m} a_j \exp(-20 |x - c_j|^2),\qquad m \in \{1, 2, 3\},\
# a_j = 10^{U(0, 2)},\ c_j \sim U([0,1]^2).
# $$

# +
from __future__ import annotations

import nlss_fenicsx  # noqa: F401  first: makes the DOLFINx wheel's libraries importable

# isort: split
import argparse
from pathlib import Path

import dolfinx
import dolfinx.fem.petsc
import dolfinx.io.gmsh
import gmsh
import numpy as np
import ufl
from mpi4py import MPI
from petsc4py import PETSc

from nlss_fenicsx import pdes
from nlss_fenicsx._atomic import check_destination
from nlss_fenicsx.la import attach_node_order
from nlss_fenicsx.nn.train import TrainConfig, train
from nlss_fenicsx.petsc import check_converged

OUTER, HOLE = 1, 2  # Gmsh physical tags of the boundary curves
# -

# ## The mesh: Gmsh on rank 0, distributed by dolfinx


# +
def square_with_hole(comm, h: float):
    gmsh.initialize()
    gmsh.option.setNumber("General.Terminal", 0)
    if comm.rank == 0:
        occ = gmsh.model.occ
        domain, _ = occ.cut([(2, occ.addRectangle(0, 0, 0, 1, 1))],
                            [(2, occ.addDisk(0.5, 0.5, 0, 0.2, 0.2))])
        occ.synchronize()
        # The circle's centre of mass is the disk's centre; the four sides' are not.
        curves = [c for _, c in gmsh.model.getBoundary(domain, oriented=False)]
        hole = [c for c in curves
                if np.hypot(*np.subtract(occ.getCenterOfMass(1, c)[:2], 0.5)) < 1e-8]
        gmsh.model.addPhysicalGroup(2, [t for _, t in domain], 1)
        gmsh.model.addPhysicalGroup(1, [c for c in curves if c not in hole], OUTER)
        gmsh.model.addPhysicalGroup(1, hole, HOLE)
        gmsh.option.setNumber("Mesh.MeshSizeMax", h)
        gmsh.model.mesh.generate(2)
    mesh_data = dolfinx.io.gmsh.model_to_mesh(gmsh.model, comm, 0, gdim=2)
    gmsh.finalize()
    return mesh_data


# -

# ## The family: one compiled form, a coefficient updated in place
#
# $k$ is a P1 `Function`; drawing member $t$ of the family is one `interpolate`. The
# problem is the same `(V, a, L, bcs)` for every member.


# +
def member(t: int):
    """Bump centres and amplitudes of member ``t``."""
    rng = np.random.default_rng(t)
    m = int(rng.integers(1, 4))
    return rng.uniform(0.0, 1.0, (m, 2)), 10.0 ** rng.uniform(0.0, 2.0, m)


def set_member(k, t: int) -> None:
    centres, amplitudes = member(t)

    def values(x):
        return 1.0 + sum(a * np.exp(-20.0 * ((x[0] - cx) ** 2 + (x[1] - cy) ** 2))
                         for (cx, cy), a in zip(centres, amplitudes, strict=True))

    k.interpolate(values)


def family(mesh_data):
    mesh = mesh_data.mesh
    V = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    k = dolfinx.fem.Function(V, name="k")
    u, v = ufl.TrialFunction(V), ufl.TestFunction(V)
    a = k * ufl.inner(ufl.grad(u), ufl.grad(v)) * ufl.dx
    L = dolfinx.fem.Constant(mesh, PETSc.ScalarType(1.0)) * v * ufl.dx
    outer = dolfinx.fem.locate_dofs_topological(V, 1, mesh_data.facet_tags.find(OUTER))
    bcs = [dolfinx.fem.dirichletbc(PETSc.ScalarType(0.0), outer, V)]
    return V, k, a, L, bcs


# -

# ## Train on your mesh
#
# `pdes.smoothed_sampler` calls `problem(t)` for instance $t$, assembles $A$ with your
# boundary conditions and smooths $K$ random vectors, returning $S$ in the mesh's node
# order; `train` takes one Adam step per instance and writes the checkpoint with the
# settings and the mesh's identity. A checkpoint that is already complete with the same
# settings is reused, so the second run of this demo trains nothing.


# +
def trained_model(V, k, a, L, bcs, args) -> Path:
    path = args.out / "model.pt"
    if MPI.COMM_WORLD.size > 1:  # trained by a serial run (checked in main)
        return path

    def problem(t: int):
        set_member(k, t)
        return V, a, L, bcs

    sampler = pdes.smoothed_sampler(problem, K=args.K, seed=0)
    cfg = TrainConfig(pde="diffusion", K=args.K, r_max=args.K, steps=args.steps,
                      hidden=args.hidden, n_eval=2)
    try:
        train(cfg, path, sampler=sampler)
    except ValueError as err:  # e.g. a model.pt trained on another mesh: one line
        raise SystemExit(f"your_model.py: {err}") from None
    return path


# -

# ## Solve new members with `TwoGridPC`
#
# One `LinearProblem` per method, built once; for each new member, $k$ is updated in place
# and `solve()` re-assembles $A$ and re-runs the preconditioner's set-up. The PC reads $K$
# and the smoothing from the checkpoint; `attach_node_order` tells it how the mesh's nodes
# map to dofs, on any mesh and partition.


# +
def solve_members(V, k, a, L, bcs, model: Path, args) -> dict[str, list[int]]:
    cg = {"ksp_type": "cg", "ksp_rtol": 1e-8, "ksp_atol": 0.0,
          "ksp_norm_type": "unpreconditioned"}
    two_grid = cg | {"pc_type": "python", "pc_python_type": "nlss_fenicsx.petsc.TwoGridPC",
                     "nlss_rank": args.rank}
    methods = {"TwoGridPC (NLSS)": two_grid | {"nlss_coarse": "nlss", "nlss_model": str(model)},
               "TwoGridPC (SVD)": two_grid | {"nlss_coarse": "svd", "nlss_K": args.K},
               "GAMG": cg | {"pc_type": "gamg"},
               "direct": {"ksp_type": "preonly", "pc_type": "cholesky",
                          "pc_factor_mat_solver_type": "mumps"}}
    problems = {}
    for i, (label, options) in enumerate(methods.items()):
        problems[label] = dolfinx.fem.petsc.LinearProblem(
            a, L, bcs=bcs, petsc_options_prefix=f"your_model_{i}_", petsc_options=options)
        attach_node_order(problems[label].A, V)
    iterations = {label: [] for label in methods}
    for t in range(10_000, 10_000 + args.members):  # members training never saw
        set_member(k, t)
        solutions = {label: lp.solve() for label, lp in problems.items()}
        ref = solutions["direct"].x.petsc_vec
        for label, lp in problems.items():
            iterations[label].append(check_converged(lp))
            error = (solutions[label].x.petsc_vec - ref).norm() / ref.norm()
            if error > 1e-6:
                raise RuntimeError(f"{label}: {error:.1e} away from the direct solution")
    return iterations


# -

# ## Putting it together


# +
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="Train the NeuraLSP coarse space on your own "
                                "Gmsh mesh and solve new members of your family with it.")
    p.add_argument("--h", type=float, default=0.03, help="Gmsh mesh size (default 0.03)")
    p.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    p.add_argument("--members", type=int, default=3, help="new members solved (default 3)")
    p.add_argument("--out", type=Path, default=Path("out/your_model"), help="output folder")
    p.add_argument("--quick", action="store_true", help="tiny run for the tests")
    args = p.parse_args(argv)
    args.K, args.rank, args.hidden = (8, 6, (32, 32)) if args.quick else (48, 32,
                                                                           (128, 256, 256, 128))
    if args.quick:
        args.h, args.steps = 0.1, 20
    if not (args.h > 0 and args.steps >= 1 and args.members >= 1):
        p.error(f"need --h > 0, --steps >= 1, --members >= 1; got {args.h}, {args.steps}, "
                f"{args.members}")
    try:
        check_destination(args.out, what="--out", kind="dir")
    except ValueError as err:
        p.error(str(err))
    comm = MPI.COMM_WORLD
    if comm.size > 1 and not (args.out / "model.pt").exists():
        raise SystemExit(f"your_model.py: no model at {args.out / 'model.pt'}: train it "
                         f"first with a serial run, `python demos/your_model.py --out "
                         f"{args.out}`, then solve under mpiexec")
    V, k, a, L, bcs = family(square_with_hole(comm, args.h))
    model = trained_model(V, k, a, L, bcs, args)
    iterations = solve_members(V, k, a, L, bcs, model, args)
    n = V.dofmap.index_map.size_global
    if comm.rank == 0:
        print(f"square with a hole, h={args.h}: n = {n}, {comm.size} rank(s); CG iterations "
              f"for {args.members} new members (rtol 1e-8):")
        for label, its in iterations.items():
            print(f"  {label:<17} {its}")
    return {"n": n, "model": str(model), "iterations": iterations}


# -

# ## What to expect
#
# The learned coarse space needs fewer CG iterations than the SVD of $S$ at the same rank
# on every new member, and the same on 1, 2 or 3 ranks. GAMG, a multilevel method, needs
# fewer still on this smooth problem: a fixed-rank two-grid method pays off where many
# related systems are solved with a model trained once.

# +
if __name__ == "__main__":
    from nlss_fenicsx.cli import run_script  # one line, not a traceback, on any failure

    raise SystemExit(run_script("your_model.py", main))
# -
