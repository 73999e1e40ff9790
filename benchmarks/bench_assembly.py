"""Mesh generation + assembly time per instance: dolfinx vs a per-triangle Python loop.

The loop assembler is the straightforward approach of the paper authors' code (one
Python iteration per triangle, scattering a 3x3 element matrix into a sparse matrix), used
here only as a timing reference. Both build the same jittered Delaunay mesh first.

Usage: python benchmarks/bench_assembly.py [--N 64 128 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import scipy.sparse as sp

from nlss_fenicsx import meshes, pdes
from nlss_fenicsx.bench.machine import machine_line


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--N", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    time_dolfinx(8, 0)  # warm-up: JIT compilation of the forms is excluded
    print(f"machine: {machine_line()}")
    print("medians in ms; 'mesh' = nodes + Delaunay (+ Gmsh model and dolfinx Mesh for ours)")
    print(f"{'N':>5} {'n':>7} | {'ours: mesh':>10} {'assemble':>9} {'total':>8} | "
          f"{'loop: mesh':>10} {'assemble':>9} {'total':>8} | {'asm ratio':>9} {'total ratio':>11}")
    for N in args.N:
        fm, fa = _median_pair(time_dolfinx(N, s) for s in range(args.repeats))
        lm, la = _median_pair(time_loop(N, s) for s in range(max(1, args.repeats // 2)))
        print(f"{N:>5} {(N + 1) ** 2:>7} | {1e3 * fm:>10.1f} {1e3 * fa:>9.1f} "
              f"{1e3 * (fm + fa):>8.1f} | {1e3 * lm:>10.1f} {1e3 * la:>9.1f} "
              f"{1e3 * (lm + la):>8.1f} | {la / fa:>8.0f}x {(lm + la) / (fm + fa):>10.1f}x")


if __name__ == "__main__":
    main()
