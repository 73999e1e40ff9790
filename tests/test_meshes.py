"""The jittered Delaunay meshes: node set, boundary, triangle quality, grid order, I/O."""

from pathlib import Path

import numpy as np
import pytest

from nlss_fenicsx import meshes
from nlss_fenicsx._fenicsx import MPI, dolfinx


def _cells_and_points(mesh):
    """Triangles as indices into the geometry, and the 2-D geometry points."""
    x = mesh.geometry.x[:, :2]
    cells = np.asarray(mesh.geometry.dofmaps[0])
    return cells, x


def _signed_areas(x, cells):
    p0, p1, p2 = x[cells[:, 0]], x[cells[:, 1]], x[cells[:, 2]]
    return 0.5 * ((p1[:, 0] - p0[:, 0]) * (p2[:, 1] - p0[:, 1])
                  - (p1[:, 1] - p0[:, 1]) * (p2[:, 0] - p0[:, 0]))


@pytest.mark.parametrize("N", [2, 5, 16])
def test_node_count_and_coordinates(N):
    mesh = meshes.jittered_square(N, seed=3)
    assert mesh.topology.index_map(0).size_global == (N + 1) ** 2
    assert mesh.topology.index_map(2).size_global == 2 * N * N  # Euler: no extra nodes
    V = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    order = meshes.grid_order(V)
    expected = meshes.jittered_points(N, seed=3)
    got = V.tabulate_dof_coordinates()[order, :2]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-14)


def test_boundary_nodes_on_regular_grid_and_jitter_bounded():
    N, jitter = 12, 0.35
    p = meshes.jittered_points(N, jitter=jitter, seed=1)
    h = 1.0 / N
    i, j = np.meshgrid(np.arange(N + 1), np.arange(N + 1), indexing="xy")
    grid = np.column_stack([i.ravel() * h, j.ravel() * h])
    on_bnd = (i.ravel() == 0) | (i.ravel() == N) | (j.ravel() == 0) | (j.ravel() == N)
    np.testing.assert_array_equal(p[on_bnd], grid[on_bnd])
    off = np.abs(p[~on_bnd] - grid[~on_bnd])
    assert off.max() <= jitter * h + 1e-15
    assert off.max() > 0.5 * jitter * h  # the jitter is really applied
    assert np.all((p > 0) & (p < 1) | on_bnd[:, None])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_triangles_positive_and_empty_circumcircle(seed):
    N = 10
    mesh = meshes.jittered_square(N, seed=seed)
    cells, x = _cells_and_points(mesh)
    areas = np.abs(_signed_areas(x, cells))
    assert areas.min() > 1e-3 / N**2
    np.testing.assert_allclose(areas.sum(), 1.0, rtol=1e-12)
    # Empty circumcircle: no mesh node strictly inside any triangle's circumcircle.
    a, b, c = x[cells[:, 0]], x[cells[:, 1]], x[cells[:, 2]]
    d = 2 * (a[:, 0] * (b[:, 1] - c[:, 1]) + b[:, 0] * (c[:, 1] - a[:, 1])
             + c[:, 0] * (a[:, 1] - b[:, 1]))
    sa, sb, sc = (a**2).sum(1), (b**2).sum(1), (c**2).sum(1)
    ux = (sa * (b[:, 1] - c[:, 1]) + sb * (c[:, 1] - a[:, 1]) + sc * (a[:, 1] - b[:, 1])) / d
    uy = (sa * (c[:, 0] - b[:, 0]) + sb * (a[:, 0] - c[:, 0]) + sc * (b[:, 0] - a[:, 0])) / d
    centre = np.column_stack([ux, uy])
    radius2 = ((a - centre) ** 2).sum(1)
    dist2 = ((x[None, :, :] - centre[:, None, :]) ** 2).sum(-1)  # (cells, nodes)
    own = np.zeros_like(dist2, dtype=bool)
    own[np.arange(len(cells))[:, None], cells] = True
    inside = (dist2 < radius2[:, None] * (1 - 1e-10)) & ~own
    assert not inside.any(), f"{inside.sum()} node(s) inside circumcircles"


def test_grid_order_maps_to_same_coordinates():
    N = 9
    mesh = meshes.jittered_square(N, seed=5)
    V = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    order = meshes.grid_order(V)
    assert sorted(order.tolist()) == list(range((N + 1) ** 2))
    # dolfinx reorders dofs: the map is not the identity.
    assert not np.array_equal(order, np.arange((N + 1) ** 2))
    xdof = V.tabulate_dof_coordinates()[:, :2]
    h = 1.0 / N
    for g in range(0, (N + 1) ** 2, 7):
        i, j = g % (N + 1), g // (N + 1)
        assert np.linalg.norm(xdof[order[g]] - (i * h, j * h)) < 0.5 * np.sqrt(2) * h


def test_same_seed_same_mesh_and_different_seed_differs():
    m1 = meshes.jittered_square(8, seed=11)
    m2 = meshes.jittered_square(8, seed=11)
    m3 = meshes.jittered_square(8, seed=12)
    np.testing.assert_array_equal(m1.geometry.x, m2.geometry.x)
    np.testing.assert_array_equal(m1.geometry.dofmaps[0], m2.geometry.dofmaps[0])
    assert not np.array_equal(m1.geometry.x, m3.geometry.x)


def test_msh_roundtrip(tmp_path):
    path = meshes.write_msh(tmp_path / "sq.msh", 6, seed=2)
    assert path.exists() and not list(tmp_path.glob(".*"))  # no temporary left behind
    mesh = meshes.read_msh(path)
    ref = meshes.jittered_square(6, seed=2)
    assert mesh.topology.index_map(0).size_global == 49
    np.testing.assert_allclose(np.sort(mesh.geometry.x, axis=0), np.sort(ref.geometry.x, axis=0))


def test_reference_mesh_is_committed_and_readable():
    mesh = meshes.read_msh(Path(__file__).resolve().parents[1] / "meshes" / "square_N8_s0.msh")
    V = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    got = V.tabulate_dof_coordinates()[meshes.grid_order(V), :2]
    np.testing.assert_allclose(got, meshes.jittered_points(8, seed=0), atol=1e-14)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"N": 1}, "expected N >= 2, got N = 1"), ({"N": 4, "jitter": 0.5}, "jitter"),
     ({"N": 4, "jitter": -0.1}, "jitter"),
     ({"N": 4.0}, "expected N to be an integer >= 2, got 4.0")],
)
def test_bad_arguments(kwargs, match):
    N = kwargs.pop("N")
    with pytest.raises(ValueError, match=match):
        meshes.jittered_square(N, seed=0, **kwargs)


def test_read_msh_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        meshes.read_msh(tmp_path / "missing.msh")
    bad = tmp_path / "bad.msh"
    bad.write_text("$MeshFormat\nnot a mesh\n")
    with pytest.raises(ValueError, match="could not read"):
        meshes.read_msh(bad)


def test_serial_comm_is_default():
    mesh = meshes.jittered_square(4, seed=0, comm=MPI.COMM_SELF)
    assert mesh.comm.size == 1


def test_node_order_equals_grid_order_on_the_jittered_square():
    V = dolfinx.fem.functionspace(meshes.jittered_square(9, seed=5), ("Lagrange", 1))
    np.testing.assert_array_equal(meshes.node_order(V), meshes.grid_order(V))


def test_node_order_of_a_gmsh_disk_follows_the_node_tags():
    """Input node i of a Gmsh model is its i-th node tag (in increasing order)."""
    gmsh = pytest.importorskip("gmsh")
    gmsh.initialize(interruptible=False)
    try:
        gmsh.option.setNumber("General.Terminal", 0)
        gmsh.model.add("disk")
        disk = gmsh.model.occ.addDisk(0, 0, 0, 1, 1)
        gmsh.model.occ.synchronize()
        gmsh.model.addPhysicalGroup(2, [disk], 1)
        gmsh.option.setNumber("Mesh.CharacteristicLengthMax", 0.3)
        gmsh.model.mesh.generate(2)
        tags, xyz, _ = gmsh.model.mesh.getNodes()
        xyz = xyz.reshape(-1, 3)[np.argsort(tags), :2]
        mesh = dolfinx.io.gmsh.model_to_mesh(gmsh.model, MPI.COMM_WORLD, 0, gdim=2).mesh
    finally:
        gmsh.finalize()
    V = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    order = meshes.node_order(V)
    assert sorted(order.tolist()) == list(range(len(xyz)))
    np.testing.assert_allclose(V.tabulate_dof_coordinates()[order, :2], xyz, atol=1e-14)


def test_node_order_of_a_vector_space_interleaves_components():
    mesh = dolfinx.mesh.create_unit_square(MPI.COMM_WORLD, 3, 2)
    V = dolfinx.fem.functionspace(mesh, ("Lagrange", 1, (2,)))
    scalar = meshes.node_order(dolfinx.fem.functionspace(mesh, ("Lagrange", 1)))
    order = meshes.node_order(V)
    np.testing.assert_array_equal(order[0::2], 2 * scalar)
    np.testing.assert_array_equal(order[1::2], 2 * scalar + 1)


@pytest.mark.parametrize("element", [("Lagrange", 2), ("DG", 1)])
def test_node_order_refuses_dofs_that_are_not_nodes(element):
    V = dolfinx.fem.functionspace(meshes.jittered_square(3, seed=0), element)
    with pytest.raises(ValueError, match="node_order needs a Lagrange space whose dofs"):
        meshes.node_order(V)


def test_mesh_id_identifies_the_mesh():
    a, b = meshes.jittered_square(5, seed=1), meshes.jittered_square(5, seed=1)
    assert meshes.mesh_id(a) == meshes.mesh_id(b)
    assert meshes.mesh_id(a) != meshes.mesh_id(meshes.jittered_square(5, seed=2))
    assert meshes.mesh_id(a).startswith("sha1:") and len(meshes.mesh_id(a)) == 21


def test_an_incomplete_gmsh_write_is_an_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    # Gmsh does not report a full disk: it leaves a truncated file and returns. The write
    # must fail and leave the previous file as it was (atomic), with no temporary behind.
    import gmsh

    out = tmp_path / "m.msh"
    meshes.write_msh(out, 4, seed=0)
    before = out.read_bytes()
    real = gmsh.write

    def truncated(name):
        real(name)
        with open(name, "r+b") as fh:
            fh.truncate(100)

    monkeypatch.setattr(gmsh, "write", truncated)
    with pytest.raises(OSError, match=r"could not write the whole mesh to .*m\.msh"):
        meshes.write_msh(out, 6, seed=1)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.msh"]
