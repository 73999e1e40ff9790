"""Jittered Delaunay meshes of the unit square, built as Gmsh models, loaded into dolfinx.

The paper's meshes (section 5.1, "Dataset Preparation") start from the regular
``(N+1) x (N+1)`` grid of ``[0, 1]^2``, move every interior node by a random offset while
the boundary stays locked, and connect exactly those nodes by the Delaunay triangulation.

Pipeline
--------
1. :func:`jittered_points` draws the node set in lexicographic grid order
   (node ``i + (N+1)*j`` sits near ``(i*h, j*h)``).
2. :func:`delaunay_triangles` triangulates exactly those nodes (Qhull's Delaunay, with
   positively oriented triangles; no node is added or removed).
3. :func:`gmsh_model` stores nodes and triangles as a discrete Gmsh surface with physical
   groups, so Gmsh writes the ``.msh`` file and hands the mesh to dolfinx
   (:func:`dolfinx.io.gmsh.model_to_mesh`), which distributes it over the communicator.

Gmsh's own 2-D algorithms were measured against this: MeshAdapt with embedded points keeps
the node count for N >= 32 but adds nodes at small N and is not Delaunay (hundreds of
edges differ from the Delaunay triangulation at N = 64); the Delaunay algorithms insert
extra nodes. Neither meets the paper's definition, so the triangulation is computed here
and Gmsh is the container and the file format.

Because dolfinx renumbers dofs, :func:`grid_order` gives for each lexicographic grid node
its P1 dof (a global index, identical on every rank). :func:`node_order` does the same for
any mesh from the mesh's input node index, which dolfinx keeps and which does not depend on
the partition; on the jittered square the two are equal (node tags are ``1 + grid index``).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np

from nlss_fenicsx._atomic import atomic_path
from nlss_fenicsx._checks import check_int
from nlss_fenicsx._fenicsx import MPI, dolfinx
from nlss_fenicsx.grid import delaunay_triangles, jittered_points

__all__ = [
    "delaunay_triangles",
    "grid_order",
    "jittered_points",
    "jittered_square",
    "mesh_id",
    "node_order",
    "read_msh",
    "write_msh",
]

_SURFACE_TAG = 1
_CELL_GROUP = 1


def _gmsh():
    import gmsh

    return gmsh


def gmsh_model(points: np.ndarray, triangles: np.ndarray, *, name: str = "jittered_square"):
    """Store nodes and triangles as a discrete Gmsh surface (Gmsh must be initialised).

    Node tags are ``1 + grid index``; physical group 1 holds the triangles. No boundary
    group is stored: the boundary is the mesh's exterior facets, which dolfinx finds
    itself (:func:`nlss_fenicsx.pdes.boundary_dofs`).

    Parameters
    ----------
    points : numpy.ndarray, shape (n, 2)
        Node coordinates in grid order.
    triangles : numpy.ndarray, shape (m, 3)
        Node indices of each triangle, positively oriented.
    name : str
        Name of the Gmsh model.

    Returns
    -------
    module
        ``gmsh.model``, holding the surface.
    """
    gmsh = _gmsh()
    gmsh.model.add(name)
    gmsh.model.addDiscreteEntity(2, _SURFACE_TAG)
    n = len(points)
    xyz = np.zeros((n, 3))
    xyz[:, :2] = points
    gmsh.model.mesh.addNodes(2, _SURFACE_TAG, np.arange(1, n + 1), xyz.ravel())
    m = len(triangles)
    gmsh.model.mesh.addElementsByType(
        _SURFACE_TAG, 2, np.arange(1, m + 1), (triangles + 1).ravel()
    )
    gmsh.model.addPhysicalGroup(2, [_SURFACE_TAG], _CELL_GROUP, name="domain")
    return gmsh.model


class _GmshSession:
    """Initialise Gmsh if needed and finalise only what we initialised."""

    def __enter__(self):
        gmsh = _gmsh()
        self.owner = not gmsh.isInitialized()
        if self.owner:
            gmsh.initialize(interruptible=False)
        gmsh.option.setNumber("General.Terminal", 0)
        return gmsh

    def __exit__(self, *exc):
        gmsh = _gmsh()
        if self.owner:
            gmsh.finalize()
        else:
            gmsh.model.remove()


def _to_dolfinx(comm, build) -> dolfinx.mesh.Mesh:
    """Run ``build()`` (which fills the current Gmsh model) on rank 0, then distribute."""
    rank = 0
    with _GmshSession():
        model = build() if comm.rank == rank else None
        data = dolfinx.io.gmsh.model_to_mesh(model if model is not None else _gmsh().model,
                                             comm, rank, gdim=2)
    return data.mesh


def jittered_square(
    N: int,
    *,
    jitter: float = 0.35,
    seed: int | None = 0,
    comm=None,
) -> dolfinx.mesh.Mesh:
    """Build the paper's jittered Delaunay mesh of the unit square as a dolfinx Mesh.

    Parameters
    ----------
    N : int
        Cells per side; the mesh has exactly ``(N+1)**2`` nodes and ``2*N**2`` triangles.
    jitter : float
        Interior-node jitter as a fraction of ``h = 1/N`` (``0 <= jitter < 0.5``).
    seed : int or None
        Seed of the jitter; the same seed gives the same mesh.
    comm : mpi4py.MPI.Comm, optional
        Communicator to distribute over (default ``MPI.COMM_WORLD``).

    Returns
    -------
    dolfinx.mesh.Mesh
        Use :func:`grid_order` on a P1 space to map grid nodes to dofs.

    Examples
    --------
    >>> mesh = jittered_square(8, seed=0)
    >>> mesh.topology.index_map(0).size_global
    81
    """
    comm = MPI.COMM_WORLD if comm is None else comm
    N = check_int("N", N, 2)  # on every rank: only rank 0 draws the points
    # Checked on every rank: only rank 0 draws the points, and a rank 0 that raised alone
    # would leave the others waiting in the collective mesh distribution.
    if not 0.0 <= float(jitter) < 0.5:
        raise ValueError(f"jitter must satisfy 0 <= jitter < 0.5 (fraction of h), got {jitter!r}")
    pts = jittered_points(N, jitter=jitter, seed=seed) if comm.rank == 0 else None

    def build():
        return gmsh_model(pts, delaunay_triangles(pts), name=f"jittered_square_N{N}")

    return _to_dolfinx(comm, build)


def grid_order(V, N: int | None = None) -> np.ndarray:
    """Return the global P1 dof of each lexicographic grid node, ``order[i + (N+1)*j]``.

    Matches dof coordinates to the jittered grid by position (each node lies within
    ``0.5 h`` of its grid point, so the nearest grid point identifies it uniquely).
    Collective over ``V.mesh.comm``; every rank receives the full array. For any mesh use
    :func:`node_order` (equal to this on :func:`jittered_square` meshes).

    Parameters
    ----------
    V : dolfinx.fem.FunctionSpace
        Scalar P1 space on a jittered unit-square mesh.
    N : int, optional
        Cells per side (default: from the number of dofs).

    Returns
    -------
    numpy.ndarray, shape ((N+1)**2,), int64

    Raises
    ------
    ValueError
        If the space is blocked, has not ``(N+1)^2`` dofs, or its dofs do not lie near
        (and one-to-one onto) the grid points.
    """
    comm = V.mesh.comm
    imap = V.dofmap.index_map
    bs = V.dofmap.index_map_bs
    if bs != 1:
        raise ValueError(f"grid_order needs a scalar P1 space (block size 1), got block size {bs}")
    n_global = imap.size_global
    if N is None:
        N = int(round(np.sqrt(n_global))) - 1
    if (N + 1) ** 2 != n_global:
        raise ValueError(
            f"space has {n_global} dofs, which is not (N+1)^2 for N={N}: not a P1 space on a "
            "jittered_square mesh"
        )
    owned = imap.size_local
    x = V.tabulate_dof_coordinates()[:owned, :2]
    ij = np.rint(x * N).astype(np.int64)
    if np.any(np.abs(x * N - ij) >= 0.5) or np.any((ij < 0) | (ij > N)):
        raise ValueError("dof coordinates do not lie near the (N+1)^2 grid")
    g = ij[:, 0] + (N + 1) * ij[:, 1]
    dofs = np.arange(imap.local_range[0], imap.local_range[1], dtype=np.int64)
    all_g = np.concatenate(comm.allgather(g))
    all_d = np.concatenate(comm.allgather(dofs))
    order = np.full(n_global, -1, dtype=np.int64)
    order[all_g] = all_d
    if np.any(order < 0) or np.unique(all_g).size != n_global:
        raise ValueError("dof coordinates do not map one-to-one onto the grid nodes")
    return order


def _dof_nodes(V):
    """Local geometry node of each local dof block, or ValueError if dofs are not nodes."""
    mesh = V.mesh
    imap = V.dofmap.index_map
    geom = mesh.geometry
    if (imap.size_global != geom.index_map().size_global
            or V.dofmap.list.shape[1] != geom.dofmaps[0].shape[1]):
        raise ValueError(
            "node_order needs a Lagrange space whose dofs are the mesh nodes (P1 on a "
            f"straight-sided mesh); got {imap.size_global} dof blocks for "
            f"{geom.index_map().size_global} mesh nodes")
    nodes = np.full(imap.size_local + imap.num_ghosts, -1, dtype=np.int64)
    nodes[np.asarray(V.dofmap.list).ravel()] = np.asarray(geom.dofmaps[0]).ravel()
    owned = nodes[: imap.size_local]
    x_dof = V.tabulate_dof_coordinates()[: imap.size_local]
    if np.any(owned < 0) or not np.allclose(x_dof, geom.x[owned], rtol=0, atol=1e-12):
        raise ValueError("node_order needs a Lagrange space whose dofs sit on the mesh nodes "
                         "(its dofs do not coincide with the geometry nodes)")
    return owned


def node_order(V) -> np.ndarray:
    """Return the global dof of each input node of the mesh: ``order[i]`` for node ``i``.

    The input node index is the position of the node in the data the mesh was created
    from (for a Gmsh model, the node tags in increasing order); dolfinx keeps it, and it
    does not depend on the number of ranks or the partition. On :func:`jittered_square`
    meshes it is the grid index, so ``node_order(V)`` equals :func:`grid_order`.
    Collective over ``V.mesh.comm``; every rank receives the full array.

    Parameters
    ----------
    V : dolfinx.fem.FunctionSpace
        A Lagrange space whose dofs are the mesh nodes (P1 on a straight-sided mesh),
        scalar or blocked (vector) with block size ``bs``.

    Returns
    -------
    numpy.ndarray, shape (n,), int64
        A permutation of ``range(n)`` with ``n`` the global number of dofs; for ``bs > 1``,
        ``order[bs*i + c]`` is the dof of component ``c`` at input node ``i``.

    Raises
    ------
    ValueError
        If the space's dofs are not the mesh nodes (e.g. P2 on a P1 mesh, DG).

    Examples
    --------
    >>> from nlss_fenicsx._fenicsx import dolfinx
    >>> V = dolfinx.fem.functionspace(jittered_square(4, seed=0), ("Lagrange", 1))
    >>> bool((node_order(V) == grid_order(V)).all())
    True
    """
    comm = V.mesh.comm
    imap = V.dofmap.index_map
    bs = V.dofmap.index_map_bs
    failure = None
    try:
        owned = _dof_nodes(V)
    except ValueError as err:
        failure, owned = err, np.zeros(0, dtype=np.int64)
    messages = [m for m in comm.allgather(None if failure is None else str(failure)) if m]
    if messages:  # the same line on every rank, not only where the check failed
        raise ValueError(messages[0])
    inputs = np.asarray(V.mesh.geometry.input_global_indices, dtype=np.int64)[owned]
    blocks = np.arange(imap.local_range[0], imap.local_range[1], dtype=np.int64)
    all_inputs = np.concatenate(comm.allgather(inputs))
    all_blocks = np.concatenate(comm.allgather(blocks))
    nb = imap.size_global
    if not (np.all((all_inputs >= 0) & (all_inputs < nb))
            and np.unique(all_inputs).size == nb):
        raise ValueError(f"the mesh's input node indices are not 0..{nb - 1}: cannot order "
                         "the dofs by input node")
    order = np.empty(nb, dtype=np.int64)
    order[all_inputs] = all_blocks
    if bs == 1:
        return order
    return (bs * order[:, None] + np.arange(bs)[None, :]).ravel()


def mesh_id(mesh) -> str:
    """Identify a mesh by a hash of its node coordinates in input order and its cells.

    The same mesh read on any number of ranks gives the same string; a checkpoint trained
    on one mesh records it, so a model can be checked against the mesh it is used on.
    Collective over ``mesh.comm``.

    Parameters
    ----------
    mesh : dolfinx.mesh.Mesh

    Returns
    -------
    str
        ``"sha1:"`` followed by 16 hexadecimal digits.

    Examples
    --------
    >>> mesh_id(jittered_square(4, seed=0)) == mesh_id(jittered_square(4, seed=0))
    True
    """
    comm = mesh.comm
    geom = mesh.geometry
    owned = geom.index_map().size_local
    inputs = np.concatenate(comm.allgather(
        np.asarray(geom.input_global_indices, dtype=np.int64)[:owned]))
    x = np.concatenate(comm.allgather(np.asarray(geom.x[:owned], dtype=np.float64)))
    cells = mesh.topology.index_map(mesh.topology.dim).size_global
    digest = hashlib.sha1(np.round(x[np.argsort(inputs)], 12).tobytes())
    digest.update(f"{len(inputs)}:{cells}".encode())
    return "sha1:" + digest.hexdigest()[:16]


def write_msh(path: str | os.PathLike, N: int, *, jitter: float = 0.35,
              seed: int | None = 0) -> Path:
    """Write the jittered mesh to a Gmsh ``.msh`` file (format 4.1), atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Destination (a temporary beside it is renamed into place).
    N, jitter, seed
        As :func:`jittered_square`.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        On a bad ``N`` or ``jitter``.
    OSError
        If ``path`` cannot be written.
    """
    path = Path(path)
    pts = jittered_points(N, jitter=jitter, seed=seed)
    with atomic_path(path, suffix=".msh") as tmp, _GmshSession() as gmsh:
        gmsh_model(pts, delaunay_triangles(pts), name=path.stem)
        gmsh.option.setNumber("Mesh.MshFileVersion", 4.1)
        gmsh.write(str(tmp))
        _check_complete(tmp, path)
    return path


def _check_complete(tmp: Path, path: Path) -> None:
    """Gmsh does not report a failed write (a full disk): check that the file is whole."""
    with open(tmp, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - 64))
        whole = fh.read().rstrip().endswith(b"$EndElements")
    if not whole:
        free = shutil.disk_usage(tmp.parent).free
        raise OSError(errno.ENOSPC if free < 1 << 20 else errno.EIO,
                      f"could not write the whole mesh to {path} (Gmsh wrote an incomplete "
                      f"file; {free} bytes free on that file system)")


def read_msh(path: str | os.PathLike, *, comm=None) -> dolfinx.mesh.Mesh:
    """Read a 2-D Gmsh ``.msh`` file (e.g. from :func:`write_msh`) into a dolfinx Mesh.

    Any 2-D Gmsh mesh works (a user's own, for training on it); its node tags give the
    input node order (:func:`node_order`).

    Parameters
    ----------
    path : str or os.PathLike
    comm : mpi4py.MPI.Comm, optional
        Communicator to distribute over (default ``MPI.COMM_WORLD``).

    Returns
    -------
    dolfinx.mesh.Mesh

    Raises
    ------
    FileNotFoundError
        If ``path`` is not a file.
    ValueError
        If Gmsh cannot read it.
    """
    comm = MPI.COMM_WORLD if comm is None else comm
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mesh file not found: {path}")
    with _GmshSession() as gmsh:  # quiet: dolfinx's read_from_msh prints Gmsh's log
        error = None
        if comm.rank == 0:
            try:
                gmsh.model.add(path.stem)
                gmsh.merge(str(path))
            except Exception as err:  # Gmsh reports parse errors as plain Exceptions.
                error = str(err)
        error = comm.bcast(error, root=0)  # every rank raises, none waits in the collective
        if error is not None:
            raise ValueError(f"could not read Gmsh mesh {path}: {error}")
        data = dolfinx.io.gmsh.model_to_mesh(gmsh.model, comm, 0, gdim=2)
    return data.mesh
