"""Training data of the paper's families: smoothed vectors S of random instances (NumPy).

One *instance* is a jittered unit-square mesh, a random coefficient field of a PDE family
and the assembled P1 matrix, all from :mod:`nlss_fenicsx.grid` (NumPy and SciPy: no Gmsh,
no dolfinx), and ``S`` from :func:`nlss_fenicsx.smoothing.smoothed_vectors`, in grid order
(row ``i + (N+1)*j``) as float32, ready for the network. A user's own problems come in
through a sampler instead (:func:`nlss_fenicsx.nn.train.train`).

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

from nlss_fenicsx._atomic import atomic_path, cache_root

__all__ = [
    "TEST_SEED_OFFSET",
    "DataConfig",
    "FreshSampler",
    "Instances",
    "cache_dir",
    "instance",
    "instance_seed",
    "instance_seeds",
    "load_dataset",
]

TEST_SEED_OFFSET = 1_000_003  # test instances never share a seed with training instances


@dataclass(frozen=True)
class DataConfig:
    """What an instance is: PDE family, mesh size and how ``S`` is made.

    Parameters
    ----------
    pde : str
        One of :data:`nlss_fenicsx.grid.FAMILIES`.
    N : int
        Cells per side (``n = (N+1)**2`` unknowns).
    K : int
        Smoothed vectors, ``1 <= K <= n``.
    sweeps : int
        Jacobi sweeps applied to the random start block.
    omega : float
        Jacobi weight of those sweeps.
    preset : str
        Coefficient preset (:data:`nlss_fenicsx.grid.PRESETS`).
    jitter : float
        Interior node jitter as a fraction of ``h``, ``0 <= jitter < 0.5``.

    Raises
    ------
    ValueError
        Naming the field, what is expected and what was given.
    """

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
        """Number of unknowns ``(N+1)**2``."""
        return (self.N + 1) ** 2


def instance_seed(seed: int, index: int) -> int:
    """Return a 63-bit seed for instance ``index`` of a stream seeded by ``seed``.

    Examples
    --------
    >>> instance_seed(0, 1) == instance_seed(0, 1) != instance_seed(1, 1)
    True
    """
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0]
               >> np.uint64(1))


def instance(cfg: DataConfig, seed: int):
    """One training instance in grid order: ``(problem, S)``.

    :func:`nlss_fenicsx.grid.jittered_points` + Delaunay + vectorised P1 assembly in grid
    order (NumPy and SciPy only; ``tests/test_nn_data.py`` checks it against the dolfinx
    route of :mod:`nlss_fenicsx.meshes` and :mod:`nlss_fenicsx.pdes`), then ``S`` from
    :func:`nlss_fenicsx.smoothing.smoothed_vectors`. The mesh jitter, the coefficients and
    the random start block (drawn in grid order) all derive from ``seed``.

    Parameters
    ----------
    cfg : DataConfig
    seed : int

    Returns
    -------
    problem : nlss_fenicsx.grid.GridProblem
        ``.A`` (SciPy CSR) and ``.b`` in grid order.
    S : numpy.ndarray
        float32, shape ``(n, K)``, grid order, columns of unit norm.

    Examples
    --------
    >>> problem, S = instance(DataConfig(N=4, K=3), seed=0)
    >>> problem.A.shape, S.shape, S.dtype
    ((25, 25), (25, 3), dtype('float32'))
    """
    from nlss_fenicsx import grid
    from nlss_fenicsx.smoothing import gaussian_start, smoothed_vectors

    mesh_seed, coef_seed, s_seed = instance_seeds(seed)
    S0 = gaussian_start(s_seed, cfg.n, cfg.K).astype(np.float64)  # grid order
    pts = grid.jittered_points(cfg.N, jitter=cfg.jitter, seed=mesh_seed)
    tri = grid.delaunay_triangles(pts)
    draws = grid.coefficient_draws(cfg.pde, cfg.preset, len(tri), coef_seed)
    gp = grid.assemble_p1(cfg.pde, pts, tri, draws, boundary=grid.boundary_mask(cfg.N))
    S = smoothed_vectors(gp.A, cfg.K, sweeps=cfg.sweeps, omega=cfg.omega, S0=S0)
    return gp, np.ascontiguousarray(S, dtype=np.float32)


def instance_seeds(seed: int) -> tuple[int, int, int]:
    """Derive the mesh, coefficient and start-block seeds of instance ``seed``.

    As :func:`instance` derives them: a dolfinx route that builds the same instance uses
    these (``tests/test_nn_data.py`` does).

    Examples
    --------
    >>> len(instance_seeds(0))
    3
    """
    ss = np.random.SeedSequence(int(seed))
    mesh_seed, coef_seed, s_seed = (int(s.generate_state(1)[0]) for s in ss.spawn(3))
    return mesh_seed, coef_seed, s_seed


class FreshSampler:
    """The ``code`` protocol: instance ``t`` of the stream seeded by ``seed``.

    Examples
    --------
    >>> sampler = FreshSampler(DataConfig(N=4, K=3), seed=0)
    >>> sampler(0).shape
    (25, 3)
    """

    def __init__(self, cfg: DataConfig, seed: int = 0):
        self.cfg = cfg
        self.seed = int(seed)

    def __call__(self, t: int) -> np.ndarray:
        """``S`` of training instance ``t``, float32 ``(n, K)``, grid order."""
        return instance(self.cfg, instance_seed(self.seed, t))[1]

    def batch(self, t0: int, size: int) -> np.ndarray:
        """Instances ``t0 .. t0+size-1`` stacked, shape ``(size, n, K)``."""
        return np.stack([self(t) for t in range(t0, t0 + size)])

    def test_set(self, count: int) -> np.ndarray:
        """``count`` held-out instances (seeds disjoint from the training stream)."""
        return np.stack([self.test_instance(i)[1] for i in range(count)])

    def test_instance(self, i: int):
        """Held-out instance ``i``: ``(problem, S)`` as :func:`instance` returns them."""
        return instance(self.cfg, instance_seed(self.seed + TEST_SEED_OFFSET, i))


def cache_dir() -> Path:
    """Return ``$NLSS_FENICSX_CACHE`` or ``~/.cache/nlss_fenicsx`` (one rule: ``cache_root``)."""
    return cache_root()


def _dataset_key(cfg: DataConfig, n_train: int, n_test: int, seed: int) -> tuple[dict, str]:
    from nlss_fenicsx import __version__

    meta = {"data": asdict(cfg), "n_train": n_train, "n_test": n_test, "seed": seed,
            "version": __version__, "format": 1}
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
    return meta, digest


def load_dataset(cfg: DataConfig, *, n_train: int = 1000, n_test: int = 100, seed: int = 0,
                 directory: str | os.PathLike | None = None, progress: bool = True
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Load (or build and cache) the ``dataset`` protocol's ``(train, test)`` arrays.

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


class Instances:
    """The instances of a training run: the paper's family (grid order) or a user's sampler.

    Parameters
    ----------
    cfg : nlss_fenicsx.nn.train.TrainConfig
        Uses ``K``, ``seed``, ``steps``, ``batch``, ``arch``, ``protocol``, ``n_train``,
        ``n_test`` and, without a sampler, ``data`` (the family).
    sampler : callable, optional
        ``sampler(t) -> S`` or ``-> (A, S)`` in node order (see
        :func:`nlss_fenicsx.nn.train.train`).

    Attributes
    ----------
    n : int
        Unknowns per instance.
    train_set : numpy.ndarray or None
        The fixed training set of the ``dataset`` protocol.

    Raises
    ------
    ValueError
        A sampler returning a non-finite ``S`` or one with other than ``K`` columns, or no
        ``A`` for the GNN.
    """

    def __init__(self, cfg, sampler=None) -> None:
        self.cfg, self.sampler = cfg, sampler
        self.data = cfg.data if sampler is None else None
        self.train_set = None
        self._first = None
        if sampler is None and cfg.protocol == "dataset":
            self.train_set, _ = load_dataset(self.data, n_train=cfg.n_train,
                                             n_test=cfg.n_test, seed=cfg.seed, progress=False)
        if sampler is None:
            self.n = self.data.n
        else:
            self._first = self._call(0)
            self.n = self._first[1].shape[0]

    def _call(self, t: int):
        out = self.sampler(t)
        A, S = out if isinstance(out, tuple) else (None, out)
        S = np.asarray(S)
        n = S.shape[0] if self._first is None else self._first[1].shape[0]
        if S.ndim != 2 or S.shape != (n, self.cfg.K):
            want = f"(n, K={self.cfg.K})" if self._first is None else f"({n}, {self.cfg.K})"
            raise ValueError(f"sampler({t}) must return S of shape {want} (the same n at "
                             f"every call); got shape {S.shape}")
        if not np.isfinite(S).all():
            raise ValueError(f"sampler({t}) returned an S with "
                             f"{int(np.count_nonzero(~np.isfinite(S)))} NaN or Inf entries")
        if self.cfg.arch == "gnn" and A is None:
            raise ValueError("arch 'gnn' needs A: the sampler must return (A_csr, S)")
        return A, np.ascontiguousarray(S, dtype=np.float32)

    def get(self, t: int, *, held: bool = False):
        """Training instance ``t`` or held-out instance ``t``: ``(A or None, S)``.

        Held-out instances are the test seeds (with a sampler: index ``steps*batch + t``).
        ``S`` is float32 ``(n, K)`` in node order.
        """
        cfg = self.cfg
        if self.sampler is not None:
            if t == 0 and not held and self._first is not None:
                return self._first
            return self._call(cfg.steps * cfg.batch + t if held else t)
        seed = cfg.seed + TEST_SEED_OFFSET if held else cfg.seed
        problem, S = instance(self.data, instance_seed(seed, t))
        return problem.A, S

    def settings(self) -> dict:
        """Return the :class:`~nlss_fenicsx.nn.checkpoint.ModelSettings` fields of the source."""
        cfg, s = self.cfg, self.sampler
        if s is None:
            return {"N": cfg.N, "pde": cfg.pde, "preset": cfg.preset, "sweeps": cfg.sweeps,
                    "omega": cfg.omega, "node_order": "grid"}
        return {"pde": cfg.pde, "sweeps": getattr(s, "sweeps", None),
                "omega": getattr(s, "omega", None), "node_order": getattr(s, "node_order", "mesh"),
                "mesh_id": getattr(s, "mesh_id", None)}
