"""Mesh generation + assembly time per instance: dolfinx vs a per-triangle Python loop.

The loop assembler is written here as a timing reference for the straightforward approach
(one Python iteration per triangle, scattering a 3x3 element matrix into a sparse matrix);
it is not the paper authors' code, whose timings are not measured here. Both build the
same jittered Delaunay mesh first (ours through Gmsh into a dolfinx Mesh).

Writes ``--out``/assembly.json and assembly.md (medians in ms) atomically. Usage::

    python benchmarks/bench_assembly.py [--N 64 128 256] [--repeats 5] [--out results/assembly]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from nlss_fenicsx import meshes, pdes
from nlss_fenicsx.bench.machine import machine_info, machine_line
from nlss_fenicsx.bench.report import write_atomic, write_json


def loop_assembly(points: np.ndarray, tris: np.ndarray, g: np.ndarray) -> sp.csr_matrix:
    """Per-triangle Python loop, P1 diffusion stiffness with Dirichlet rows/cols zeroed."""
    n = len(points)
    rows, cols, vals = [], [], []
    for t, tri in enumerate(tris):
        p = points[tri]
        B = np.array([[p[1, 0] - p[0, 0], p[2, 0] - p[0, 0]],
                      [p[1, 1] - p[0, 1], p[2, 1] - p[0, 1]]])
        area = 0.5 * abs(np.linalg.det(B))
        G = np.array([[-1.0, -1.0], [1.0, 0.0], [0.0, 1.0]]) @ np.linalg.inv(B)
        Ke = g[t] * area * (G @ G.T)
        for a in range(3):
            for b in range(3):
                rows.append(tri[a])
                cols.append(tri[b])
                vals.append(Ke[a, b])
    A = sp.coo_matrix((vals, (rows, cols)), shape=(n, n)).tocsr()
    on_bnd = np.any((points == 0.0) | (points == 1.0), axis=1)
    keep = sp.diags((~on_bnd).astype(float))
    return (keep @ A @ keep + sp.diags(on_bnd.astype(float))).tocsr()


def time_dolfinx(N: int, seed: int) -> tuple[float, float]:
    """(mesh, sample + assembly) seconds through Gmsh and dolfinx."""
    t0 = time.perf_counter()
    mesh = meshes.jittered_square(N, seed=seed)
    t1 = time.perf_counter()
    pdes.assemble(pdes.sample("diffusion", mesh, rng=seed))
    return t1 - t0, time.perf_counter() - t1


def time_loop(N: int, seed: int) -> tuple[float, float]:
    """(node set + Delaunay, per-triangle loop assembly) seconds."""
    t0 = time.perf_counter()
    pts = meshes.jittered_points(N, seed=seed)
    tris = meshes.delaunay_triangles(pts)
    t1 = time.perf_counter()
    g = np.exp(1.5 * np.random.default_rng(seed).standard_normal(len(tris)))
    loop_assembly(pts, tris, g)
    return t1 - t0, time.perf_counter() - t1


def _median_pair(samples):
    samples = list(samples)
    return (statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples))


def main(argv=None) -> None:
    """Measure and write ``assembly.{json,md}``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--N", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("results/assembly"))
    args = ap.parse_args(argv)
    from nlss_fenicsx._atomic import check_destination

    args.out = check_destination(args.out, what="--out", kind="dir")  # before any work
    command = (f"python benchmarks/bench_assembly.py --N {' '.join(map(str, args.N))} "
               f"--repeats {args.repeats}")
    time_dolfinx(8, 0)  # warm-up: JIT compilation of the forms is excluded
    rows = []
    lines = ["# Mesh generation and assembly per instance", "", f"machine: {machine_line()}",
             "", "Medians in ms; 'mesh' = nodes + Delaunay (+ Gmsh model and dolfinx Mesh for "
             "ours); 'loop' = a per-triangle Python loop written here as a reference (not "
             f"the authors' code). {args.repeats} repeats (the loop: "
             f"{max(1, args.repeats // 2)}). Command: `{command}`", "",
             "| N | n | ours: mesh | ours: assemble | ours: total | loop: mesh | "
             "loop: assemble | loop: total | assembly ratio | total ratio |",
             "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for N in args.N:
        fm, fa = _median_pair(time_dolfinx(N, s) for s in range(args.repeats))
        lm, la = _median_pair(time_loop(N, s) for s in range(max(1, args.repeats // 2)))
        rows.append({"N": N, "n": (N + 1) ** 2, "ours_mesh_ms": 1e3 * fm,
                     "ours_assemble_ms": 1e3 * fa, "loop_mesh_ms": 1e3 * lm,
                     "loop_assemble_ms": 1e3 * la})
        lines.append(f"| {N} | {(N + 1) ** 2} | {1e3 * fm:.1f} | {1e3 * fa:.1f} | "
                     f"{1e3 * (fm + fa):.1f} | {1e3 * lm:.1f} | {1e3 * la:.1f} | "
                     f"{1e3 * (lm + la):.1f} | {la / fa:.1f}x | {(lm + la) / (fm + fa):.1f}x |")
        print(lines[-1], flush=True)
        write_json(args.out / "assembly.json", {"machine": machine_info(),
                                                "repeats": args.repeats, "rows": rows,
                                                "command": command})
        write_atomic(args.out / "assembly.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    try:
        main()
    except ValueError as err:  # bad input (e.g. an --out that cannot be written): one line
        sys.exit(f"bench_assembly.py: {err}")
