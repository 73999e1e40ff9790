"""Training data: smoothed vectors S of random PDE instances, in grid order.

One *instance* is a jittered mesh (:func:`nlss_fenicsx.meshes.jittered_square`), a random
coefficient field of a PDE family (:func:`nlss_fenicsx.pdes.sample`), the assembled
matrix, and ``S`` from :func:`nlss_fenicsx.smoothing.smoothed_vectors`, returned in grid
order (row ``i + (N+1)*j``) as float32, ready for the network.

Two protocols:

``code`` (default, the authors' public code)
    :class:`FreshSampler`: a fresh mesh and coefficient field at every training step.
    Instance ``t`` is drawn from the seed ``(seed, t)``, so a resumed run sees exactly
    the data it would have seen without the interruption.
``dataset`` (the paper's text)
    :func:`load_dataset`: a fixed set of 1000 training and 100 test instances, cached on
    disk as a compressed ``.npz`` with its parameters, regenerated when they change.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from nlss_fenicsx._atomic import atomic_path

__all__ = [
    "DataConfig",
    "FreshSampler",
    "cache_dir",
    "instance",
    "BACKENDS",
    "instance_seed",
    "load_dataset",
]

TEST_SEED_OFFSET = 1_000_003  # test instances never share a seed with training instances


@dataclass(frozen=True)
class DataConfig:
    """What an instance is: PDE family, mesh size and how S is made."""

    pde: str = "diffusion"
    N: int = 64
    K: int = 72
    sweeps: int = 10
    omega: float = 0.66
    preset: str = "default"
    jitter: float = 0.35

    def __post_init__(self):
        from nlss_fenicsx.grid import FAMILIES, PRESETS

        if self.pde not in FAMILIES:
            raise ValueError(f"Unrecognized PDE family {self.pde!r}; expected one of {FAMILIES}")
        if self.preset not in PRESETS:
            raise ValueError(f"Unrecognized preset {self.preset!r}; expected one of {PRESETS}")
        if self.N < 2:
            raise ValueError(f"N must be >= 2, got {self.N}")
        if not 1 <= self.K <= self.n:
            raise ValueError(f"K must satisfy 1 <= K <= n = (N+1)^2 = {self.n}, got {self.K}")
        if not 0.0 <= self.jitter < 0.5:
            raise ValueError(f"jitter must satisfy 0 <= jitter < 0.5 (fraction of h), got "
                             f"{self.jitter!r}")

    @property
    def n(self) -> int:
        return (self.N + 1) ** 2


def instance_seed(seed: int, index: int) -> int:
    """A 63-bit seed for instance ``index`` of a stream seeded by ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0]
               >> np.uint64(1))


BACKENDS = ("numpy", "dolfinx")


def instance(cfg: DataConfig, seed: int, *, backend: str = "numpy"):
    """Build one instance; returns ``(problem, S_grid)`` with ``S_grid`` float32 ``(n, K)``.

    The mesh jitter, the coefficients and the random start of ``S`` all derive from
    ``seed``, and the start block is drawn in grid order, so both backends give the same
    ``S`` (the tests check it):

    ``numpy`` (default)
        :mod:`nlss_fenicsx.grid`: Delaunay + vectorised P1 assembly in grid order;
        ``problem`` is a :class:`nlss_fenicsx.grid.GridProblem` (``.A``, ``.b`` in grid
        order). Needs neither Gmsh nor dolfinx.
    ``dolfinx``
        :func:`nlss_fenicsx.meshes.jittered_square` + :func:`nlss_fenicsx.pdes.assemble`
        on ``MPI.COMM_SELF``; ``problem`` is the :class:`nlss_fenicsx.pdes.System`.
    """
    from nlss_fenicsx.smoothing import gaussian_start, smoothed_vectors

    ss = np.random.SeedSequence(int(seed))
    mesh_seed, coef_seed, s_seed = (int(s.generate_state(1)[0]) for s in ss.spawn(3))
    S0 = gaussian_start(s_seed, cfg.n, cfg.K).astype(np.float64)  # grid order
    if backend == "numpy":
        from nlss_fenicsx import grid

        pts = grid.jittered_points(cfg.N, jitter=cfg.jitter, seed=mesh_seed)
        tri = grid.delaunay_triangles(pts)
        draws = grid.coefficient_draws(cfg.pde, cfg.preset, len(tri), coef_seed)
        gp = grid.assemble_p1(cfg.pde, pts, tri, draws, boundary=grid.boundary_mask(cfg.N))
        S = smoothed_vectors(gp.A, cfg.K, sweeps=cfg.sweeps, omega=cfg.omega, S0=S0)
        return gp, np.ascontiguousarray(S, dtype=np.float32)
    if backend != "dolfinx":
        raise ValueError(f"Unrecognized backend {backend!r}; expected one of {BACKENDS}")
    from nlss_fenicsx import meshes, pdes
    from nlss_fenicsx._fenicsx import MPI

    mesh = meshes.jittered_square(cfg.N, jitter=cfg.jitter, seed=mesh_seed, comm=MPI.COMM_SELF)
    system = pdes.assemble(pdes.sample(cfg.pde, mesh, rng=coef_seed, preset=cfg.preset))
    S0_dof = np.empty_like(S0)
    S0_dof[system.grid_order] = S0
    S = smoothed_vectors(system.A_csr, cfg.K, sweeps=cfg.sweeps, omega=cfg.omega, S0=S0_dof)
    return system, np.ascontiguousarray(S[system.grid_order], dtype=np.float32)


class FreshSampler:
    """The ``code`` protocol: instance ``t`` of the stream seeded by ``seed``.

    Examples
    --------
    >>> sampler = FreshSampler(DataConfig(N=4, K=3), seed=0)
    >>> sampler(0).shape
    (25, 3)
    """

    def __init__(self, cfg: DataConfig, seed: int = 0, *, backend: str = "numpy"):
        self.cfg = cfg
        self.seed = int(seed)
        self.backend = backend

    def __call__(self, t: int) -> np.ndarray:
        return instance(self.cfg, instance_seed(self.seed, t), backend=self.backend)[1]

    def batch(self, t0: int, size: int) -> np.ndarray:
        """Instances ``t0 .. t0+size-1`` stacked, shape ``(size, n, K)``."""
        return np.stack([self(t) for t in range(t0, t0 + size)])

    def test_set(self, count: int) -> np.ndarray:
        """``count`` held-out instances (seeds disjoint from the training stream)."""
        return np.stack([instance(self.cfg, instance_seed(self.seed + TEST_SEED_OFFSET, i),
                                  backend=self.backend)[1] for i in range(count)])


def cache_dir() -> Path:
    """``$NLSS_FENICSX_CACHE`` or ``~/.cache/nlss_fenicsx``."""
    root = os.environ.get("NLSS_FENICSX_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "nlss_fenicsx"


def _dataset_key(cfg: DataConfig, n_train: int, n_test: int, seed: int) -> tuple[dict, str]:
    from nlss_fenicsx import __version__

    meta = {"data": asdict(cfg), "n_train": n_train, "n_test": n_test, "seed": seed,
            "version": __version__, "format": 1}
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
    return meta, digest


def load_dataset(cfg: DataConfig, *, n_train: int = 1000, n_test: int = 100, seed: int = 0,
                 directory: str | os.PathLike | None = None, progress: bool = True
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The ``dataset`` protocol: ``(train, test)`` arrays of shape ``(count, n, K)``.

    Cached as ``<cache>/datasets/<pde>_N<N>_K<K>_<hash>.npz`` with the parameters stored
    inside; a file whose parameters differ, or that cannot be read, is regenerated.
    """
    from tqdm.auto import tqdm

    meta, digest = _dataset_key(cfg, n_train, n_test, seed)
    folder = Path(directory) if directory is not None else cache_dir() / "datasets"
    path = folder / f"{cfg.pde}_N{cfg.N}_K{cfg.K}_{digest}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as data:
                if json.loads(str(data["meta"])) == meta:
                    return data["train"], data["test"]
        except Exception:  # unreadable or partial cache entry: rebuild it below
            pass
    train_seeds = [instance_seed(seed, i) for i in range(n_train)]
    test_seeds = [instance_seed(seed + TEST_SEED_OFFSET, i) for i in range(n_test)]
    arrays = []
    for seeds, label in ((train_seeds, "train"), (test_seeds, "test")):
        it = tqdm(seeds, desc=f"{cfg.pde} N={cfg.N} {label} set",
                  disable=None if progress else True)
        arrays.append(np.stack([instance(cfg, s)[1] for s in it]) if seeds else
                      np.zeros((0, cfg.n, cfg.K), np.float32))
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, train=arrays[0], test=arrays[1], meta=json.dumps(meta))
    return arrays[0], arrays[1]
