"""The bench's test instances and how one of them is run (eig-ref's reference included).

Every instance ``i`` has its own jittered mesh and coefficients, both drawn from the seed
``TEST_SEED + i``. eig-ref's reference operator (issue 16, item 1) is the family's
mean-coefficient matrix on that very mesh (:func:`family_reference`); building it and its
eigensolve are work done once per mesh, reported as the phase ``once`` apart from the
per-instance ``total``. Since no two bench instances share a mesh, the bench pays ``once``
for every instance: the tables show it in its own column and say so.
"""

from __future__ import annotations

import time

import numpy as np

from nlss_fenicsx.bench.report import run_one

__all__ = ["TEST_SEED", "family_reference", "instances", "run_instance"]

TEST_SEED = 7000


def instances(pde: str, N: int, count: int, preset="default"):
    """Generate ``count`` assembled test instances (seeds ``TEST_SEED + i``).

    Returns ``(systems, seconds)``: the :class:`~nlss_fenicsx.pdes.System` of each and the
    time each took to generate (Gmsh mesh, coefficient draw, assembly).
    """
    from nlss_fenicsx import meshes, pdes

    systems, gen = [], []
    for i in range(count):
        t0 = time.perf_counter()
        mesh = meshes.jittered_square(N, seed=TEST_SEED + i)
        systems.append(pdes.assemble(pdes.sample(pde, mesh, rng=TEST_SEED + i, preset=preset)))
        gen.append(time.perf_counter() - t0)
    return systems, gen


def family_reference(system, pde: str, N: int, *, mesh_seed: int, preset: str = "default"):
    """eig-ref's reference operator for an instance of the jittered unit square.

    The family's mean-coefficient matrix (:func:`nlss_fenicsx.grid.reference_operator`,
    assembled in grid order on the mesh of ``mesh_seed``, Dirichlet rows as in the
    instances), permuted to the dof order of ``system`` with its node order:
    ``R_dof[node_order[i], node_order[j]] = R_grid[i, j]``.

    Parameters
    ----------
    system : nlss_fenicsx.pdes.System
        An instance on :func:`nlss_fenicsx.meshes.jittered_square` ``(N, seed=mesh_seed)``.
    pde, preset : str
        The family and its coefficient preset.
    N : int
        Cells per side (``system.n == (N+1)^2``).
    mesh_seed : int
        The seed of the instance's mesh (its jitter).

    Returns
    -------
    scipy.sparse.csr_matrix, shape (n_local, n)
        This rank's rows (the whole matrix serially).

    Raises
    ------
    ValueError
        ``system.n != (N+1)^2``, or an unknown family or preset.
    """
    from nlss_fenicsx.grid import reference_operator

    n = (int(N) + 1) ** 2
    if system.n != n:
        raise ValueError(f"expected an instance with (N+1)^2 = {n} unknowns for N = {N}, got "
                         f"n = {system.n}")
    R = reference_operator(pde, int(N), seed=mesh_seed, preset=preset)
    node_of_dof = np.empty(n, dtype=np.int64)
    node_of_dof[np.asarray(system.node_order)] = np.arange(n)
    lo, hi = system.A.getOwnershipRange()
    return R[node_of_dof[lo:hi]][:, node_of_dof].tocsr()


def run_instance(system, spec, *, pde: str, N: int, index: int, preset: str = "default",
                 **given) -> dict:
    """Run instance ``index`` of the bench with ``spec``; a JSON-ready record.

    As :func:`nlss_fenicsx.bench.report.run_one` (failures recorded, not raised), except for
    eig-ref with ``spec.reference == "family"``: the reference cache is emptied first, so
    the eigensolve is really done for this mesh, the family's mean-coefficient matrix on the
    instance's mesh (seed ``TEST_SEED + index``) is built and passed as ``reference=``, and
    ``phases["once"]`` holds both the seconds of building it and of the eigensolve.
    """
    if spec.name != "eig-ref" or spec.reference != "family":
        return run_one(system, spec, **given)
    from nlss_fenicsx.coarse import clear_reference_cache

    clear_reference_cache()
    t0 = time.perf_counter()
    R = family_reference(system, pde, N, mesh_seed=TEST_SEED + index, preset=preset)
    t_build = time.perf_counter() - t0
    rec = run_one(system, spec, reference=R, **given)
    if rec.get("ok"):
        rec["phases"]["once"] = rec["phases"].get("once", 0.0) + t_build
    return rec
