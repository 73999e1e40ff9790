"""``nlss-fenicsx bench``: the paper's tables and figures, with honest baselines.

For one PDE family and a budget, :func:`run_bench`

1. obtains the learned models (NLSS, Subspace, GNN), trained on demand and cached
   (:func:`nlss_fenicsx.nn.cache.cached_model`);
2. draws ``instances`` test instances (seeds ``TEST_SEED + i``: jittered mesh, coefficients,
   assembled through dolfinx);
3. solves each with every method and rank, timing the phases of DESIGN.md section 4
   (:mod:`nlss_fenicsx.bench.methods`) after one warm-up run per method;
4. writes ``results.json`` (schema in :mod:`nlss_fenicsx.bench.results`), ``tables.md``
   (:mod:`nlss_fenicsx.bench.tables`) and the figures, atomically, after every method, so
   a killed run keeps what it had and ``resume=True`` continues.

Methods (issue 16): the paper's two-grid five (NLSS, Subspace, GNN, SVD, SA-AMG); the SVD
of S with many sweeps (``Budget.many_sweeps``); the coarse spaces that cost nothing per
instance (``sine``, ``eig-ref``); the instance's own eigenvectors (``eig``, an oracle);
all through :class:`~nlss_fenicsx.petsc.TwoGridPC`; the SciPy reference path as separate
rows (NLSS and SVD); and the peers Jacobi-CG, ICC(0)-CG, PyAMG SA V-cycle CG, PETSc
GAMG-CG and sparse direct Cholesky. The bench runs on one MPI rank (one writer).
"""

from __future__ import annotations

import gc
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from nlss_fenicsx._atomic import check_destination
from nlss_fenicsx.bench.instances import TEST_SEED, instances, run_instance
from nlss_fenicsx.bench.methods import LEARNED, PEERS, MethodSpec, method_class
from nlss_fenicsx.bench.progress import Progress
from nlss_fenicsx.bench.report import frozen_heap, summarize, write_atomic, write_json
from nlss_fenicsx.bench.results import (
    SCHEMA_VERSION,
    check_same_run,
    load_results,
    require_one_rank,
)
from nlss_fenicsx.bench.tables import plot_bench, render_tables

__all__ = ["BUDGETS", "TEST_SEED", "Budget", "energy_vs_rank", "instances", "method_plan",
           "obtain_models", "run_bench", "train_config"]

PAPER_HIDDEN = (128, 256, 256, 128)


@dataclass(frozen=True)
class Budget:
    """How much to train and measure.

    Attributes
    ----------
    name : str
        ``smoke``, ``standard`` or ``paper``.
    N, K, r_max : int
        Grid cells per side (n = (N+1)^2), smoothed vectors, the models' largest rank.
    steps, hidden, protocol : int, tuple of int, str
        Training of the MLPs (see :class:`nlss_fenicsx.nn.train.TrainConfig`).
    instances : int
        Test instances per method.
    gnn_width, gnn_layers, gnn_steps, gnn_instances : int, int, int, int or None
        The GNN baseline's size, training steps and test instances (None: all).
    ranks : tuple of int
        Coarse ranks of the tables.
    many_sweeps : int
        Sweeps of the "SVD of S with many sweeps" row.
    scal_N, scal_train_N : tuple of int
        Scalability sizes (paper Table 4: K = N, r = K/2), and the sizes at which NLSS is
        trained (r_max = K/2); at the others NLSS runs only if the model cache already
        holds it. N = 128 (409M parameters, about 6.3 GiB to train) fits a 24 GiB CPU
        machine; N = 256 (3,255M parameters, about 44 GiB) does not
        (``benchmarks/bench_mlp_size.py`` measures both).
    scal_steps, scal_instances : int
        Training steps and test instances of the scalability run.
    note : str
        Printed under the tables.
    """

    name: str
    N: int
    K: int
    r_max: int
    steps: int
    hidden: tuple[int, ...]
    instances: int
    gnn_width: int
    gnn_layers: int
    gnn_steps: int
    protocol: str = "code"
    ranks: tuple[int, ...] = (24, 36, 48, 64)
    many_sweeps: int = 300
    scal_N: tuple[int, ...] = (16, 32, 48, 64, 80, 128, 256)
    scal_train_N: tuple[int, ...] = (16, 32, 48, 64, 80, 128)
    scal_steps: int = 300
    scal_instances: int = 10
    gnn_instances: int | None = None  # the GNN's forward pass is seconds at width 488 on a CPU
    note: str = ""


BUDGETS = {
    "smoke": Budget("smoke", N=8, K=8, r_max=8, steps=30, hidden=(32, 32), instances=3,
                    gnn_width=16, gnn_layers=2, gnn_steps=10, ranks=(4, 8), many_sweeps=30,
                    scal_N=(6, 8, 10), scal_train_N=(6, 8), scal_steps=20, scal_instances=2,
                    note="CI smoke test: tiny sizes, a few training steps"),
    "standard": Budget("standard", N=64, K=72, r_max=72, steps=1000, hidden=PAPER_HIDDEN,
                       instances=100, gnn_width=488, gnn_layers=5, gnn_steps=12,
                       gnn_instances=10,
                       note="one 2-core CPU; MLPs get the code protocol's 1000 steps, the "
                            "GNN (width 488, seconds per training step and per inference "
                            "here) only 12 steps and the first 10 test instances; every "
                            "other row (the eig oracle, SVD with 300 sweeps and eig-ref, "
                            "whose eigensolve is paid per instance here, included) runs "
                            "all 100 instances at every rank"),
    "paper": Budget("paper", N=64, K=72, r_max=72, steps=1_000_000, hidden=PAPER_HIDDEN,
                    instances=100, gnn_width=488, gnn_layers=5, gnn_steps=1_000_000,
                    protocol="dataset", scal_steps=1000,
                    note="the paper's protocol (1000 samples x 1000 epochs); needs a GPU"),
}


# --------------------------------------------------------------------------- models
def resolve_budget(budget: Budget | str) -> Budget:
    """Return ``budget`` itself, or the budget of that name.

    Raises
    ------
    ValueError
        An unknown budget name.
    """
    if isinstance(budget, Budget):
        return budget
    if budget not in BUDGETS:
        raise ValueError(f"Unrecognized budget {budget!r}; expected one of {tuple(BUDGETS)}")
    return BUDGETS[budget]


def train_config(pde: str, budget: Budget, loss: str = "nlss", *, N=None, K=None, steps=None,
                 preset="default"):
    """Build the :class:`~nlss_fenicsx.nn.train.TrainConfig` of a budget's model.

    ``loss`` is ``nlss`` or ``subspace`` (MLPs) or ``gnn`` (the GNN baseline, trained with
    the two-grid loss); ``N``, ``K``, ``steps`` override the budget's (scalability).
    """
    from nlss_fenicsx.nn.train import TrainConfig

    N = budget.N if N is None else N
    K = budget.K if K is None else K
    if loss == "gnn":
        return TrainConfig(arch="gnn", loss="twogrid", pde=pde, N=N, K=K,
                           r_max=min(budget.r_max, K), steps=budget.gnn_steps,
                           hidden=(budget.gnn_width,) * budget.gnn_layers, preset=preset)
    return TrainConfig(pde=pde, N=N, K=K, r_max=min(budget.r_max, K), loss=loss,
                       steps=budget.steps if steps is None else steps, hidden=budget.hidden,
                       protocol=budget.protocol, preset=preset)


def obtain_models(pde: str, budget: Budget, *, which=LEARNED, progress=True,
                  log=print) -> dict:
    """Trained models (cached), as ``{name: {"path", "steps", "train_seconds", ...}}``."""
    from nlss_fenicsx.nn.cache import cached_model

    out = {}
    for name in which:
        model, path, trained = cached_model(train_config(pde, budget, name),
                                            progress=progress, log=log)
        state = model.train_state
        out[name] = {"path": str(path), "steps": int(model.step or 0),
                     "train_seconds": state.get("seconds"),
                     "peak_rss_mib": state.get("peak_rss_mib"),
                     "parameters": model.num_parameters(), "trained_now": bool(trained)}
        if name == "gnn":
            out[name].update(width=budget.gnn_width, layers=budget.gnn_layers)
    return out


# --------------------------------------------------------------------------- methods
def method_plan(ranks, models: dict, budget: Budget) -> dict[str, MethodSpec]:
    """``{key: MethodSpec}`` in run order (keys as in :mod:`nlss_fenicsx.bench.results`).

    Per rank: the learned methods present in ``models`` (NLSS with int8 inference, the
    PC's default, and ``nlss-f32``: the same model in float32), SVD (10 and
    ``many_sweeps`` sweeps), sine, eig-ref (reference: the family's mean-coefficient matrix
    on the instance's mesh), the eig oracle, then the SciPy rows (NLSS, SVD); then SA-AMG
    (PETSc and SciPy paths) and the peers.
    """
    def spec(name, r=None, **kw):
        return MethodSpec(name=name, rank=r or budget.r_max, K=budget.K, **kw)

    plan = {}
    for r in ranks:
        for name in LEARNED:
            if name in models:
                plan[f"{name}@{r}"] = spec(name, r, model=models[name]["path"])
            if name == "nlss" and name in models:
                plan[f"nlss-f32@{r}"] = spec(name, r, model=models[name]["path"],
                                             precision="float32")
        plan[f"svd@{r}"] = spec("svd", r)
        plan[f"svd-s{budget.many_sweeps}@{r}"] = spec("svd", r, sweeps=budget.many_sweeps)
        plan[f"sine@{r}"] = spec("sine", r)
        plan[f"eig-ref@{r}"] = spec("eig-ref", r, reference="family")
        plan[f"eig@{r}"] = spec("eig", r)
        if "nlss" in models:
            plan[f"nlss-scipy@{r}"] = spec("nlss", r, path="scipy", model=models["nlss"]["path"])
        plan[f"svd-scipy@{r}"] = spec("svd", r, path="scipy")
    plan["sa"] = spec("sa")
    plan["sa-scipy"] = spec("sa", path="scipy")
    for p in PEERS:
        plan[p] = spec(p)
    return plan


def _label(spec: MethodSpec, budget: Budget, models: dict) -> str:
    label = spec.label
    if spec.name == "gnn" and "gnn" in models:
        g = models["gnn"]
        label += f" (width {g['width']}, {g['steps']} steps"
        label += f", {budget.gnn_instances} instances)" if budget.gnn_instances else ")"
    return label


def energy_vs_rank(systems, models: dict, budget: Budget, ranks) -> dict:
    """Mean captured energy (Eq. 8) of each learned basis and of the exact SVD vs rank.

    Returns ``{"ranks": [...], "svd": [...], name: [...]}``, means over ``systems`` (the
    GNN over its first ``budget.gnn_instances``).
    """
    from nlss_fenicsx.nn.inference import load_model
    from nlss_fenicsx.smoothing import smoothed_vectors

    ranks = [r for r in ranks if r <= budget.r_max]
    out: dict = {"ranks": list(ranks)}
    S_all = [smoothed_vectors(s.A_csr, budget.K, rng=TEST_SEED + i)
             for i, s in enumerate(systems)]
    sig2 = [np.linalg.svd(S, compute_uv=False) ** 2 for S in S_all]
    out["svd"] = [float(np.mean([s[:r].sum() / s.sum() for s in sig2])) for r in ranks]
    for name, info in models.items():
        model = load_model(info["path"])
        count = budget.gnn_instances if name == "gnn" and budget.gnn_instances else len(S_all)
        energies = []
        for S, system in zip(S_all[:count], systems[:count], strict=True):
            # Every model's basis is nested (QR of the head's columns): one forward pass
            # at the largest rank gives every truncation.
            P = model.basis(S, max(ranks), node_order=system.grid_order,
                            A=system.A_csr if model.needs_A else None)
            proj = np.cumsum(((P.T @ S) ** 2).sum(axis=1))
            energies.append([proj[r - 1] / np.linalg.norm(S) ** 2 for r in ranks])
        out[name] = [float(v) for v in np.mean(energies, axis=0)]
    return out


# --------------------------------------------------------------------------- driver
def _write(res: dict, out: Path) -> None:
    write_json(out / "results.json", res)
    write_atomic(out / "tables.md", render_tables(res))


def _start(pde: str, budget: Budget, ranks, out: Path, resume: bool) -> dict:
    """Start a fresh results dict, or read the one on disk when resuming (one-line errors)."""
    from nlss_fenicsx.bench.machine import machine_info

    fresh = {"schema_version": SCHEMA_VERSION, "kind": "bench", "pde": pde,
             "budget": {**asdict(budget), "hidden": list(budget.hidden)}, "ranks": list(ranks),
             "seeds": {"test": [TEST_SEED + i for i in range(budget.instances)], "train": 0},
             "models": {}, "methods": {},
             "started": datetime.now(UTC).isoformat(timespec="seconds"), "complete": False}
    path = out / "results.json"
    if not (resume and path.exists()):
        return {**fresh, "machine": machine_info()}
    res = load_results(path)
    if res["pde"] != pde or res["budget"].get("name") != budget.name:
        raise ValueError(f"{path} holds pde={res['pde']!r}, budget="
                         f"{res['budget'].get('name')!r}; cannot resume pde={pde!r}, "
                         f"budget={budget.name!r}")
    check_same_run(path, res, fresh)  # every field of the budget, and the seeds
    bad = [r for r in res["ranks"] if type(r) is not int or not 1 <= r <= budget.r_max]
    if bad:
        raise ValueError(f"{path}: holds ranks {bad}; expected integers in 1..r_max="
                         f"{budget.r_max}; move it away or run without --resume")
    res["ranks"] = sorted(set(res["ranks"]) | set(ranks))
    res["complete"] = False
    return res


def run_bench(pde: str, budget: Budget | str, out: str | Path, *, ranks=None,
              resume: bool = False, methods: tuple[str, ...] | None = None,
              progress: bool = True, log=print) -> dict:
    """Run the benchmark for one PDE family; returns the results dict (also on disk).

    Parameters
    ----------
    pde : str
        ``diffusion``, ``anisotropic`` or ``screened_poisson``.
    budget : Budget or str
        A :class:`Budget` or the name of one in ``BUDGETS``.
    out : path-like
        Folder for ``results.json``, ``tables.md`` and the PNG figures.
    ranks : sequence of int, optional
        Coarse ranks (default ``budget.ranks``), each in ``1..budget.r_max``.
    resume : bool
        Continue from ``out/results.json``: methods already complete are not rerun. The
        file must hold the same family, budget (every field) and seeds; its ranks are
        joined with ``ranks``.
    methods : tuple of str, optional
        Only these method names (e.g. ``("svd", "sine", "gamg")``; ``svd`` includes its
        many-sweeps and SciPy rows).
    progress : bool
        Progress bar on a terminal, a line every 10 % or 30 s elsewhere.
    log : callable
        Where training messages go.

    Returns
    -------
    dict
        The results (schema in :mod:`nlss_fenicsx.bench.results`).

    Raises
    ------
    ValueError
        Bad ranks, an unknown budget, more than one MPI rank, an output folder that cannot
        be written (all raised before any work), or a damaged ``results.json`` or one of
        another run with ``resume`` (one line naming the file and what differs).
    """
    require_one_rank("nlss-fenicsx bench")
    budget = resolve_budget(budget)
    ranks = [int(r) for r in (ranks or budget.ranks)]
    bad = [r for r in ranks if not 1 <= r <= budget.r_max]
    if bad:
        raise ValueError(f"ranks must lie in 1..r_max={budget.r_max} for budget "
                         f"{budget.name!r}; got {bad}")
    out = check_destination(out, what="out", kind="dir")  # before any work
    t_start = time.perf_counter()
    res = _start(pde, budget, ranks, out, resume)
    wanted = LEARNED if methods is None else tuple(m for m in LEARNED if m in methods)
    res["models"] = obtain_models(pde, budget, which=wanted, progress=progress, log=log)
    systems, gen = instances(pde, budget.N, budget.instances)
    res["generation_ms_median"] = 1e3 * float(np.median(gen))
    plan = method_plan(res["ranks"], res["models"], budget)
    if methods is not None:
        plan = {k: v for k, v in plan.items() if v.name in methods}

    def subset(spec):
        gnn = spec.name == "gnn" and budget.gnn_instances
        return systems[: budget.gnn_instances] if gnn else systems

    todo = {k: v for k, v in plan.items()
            if not (k in res["methods"] and len(res["methods"][k]["records"]) == len(subset(v)))}
    with Progress(sum(len(subset(v)) for v in todo.values()), f"bench {pde}",
                  enabled=progress) as bar, frozen_heap():
        for key, spec in todo.items():
            gc.collect()  # between methods, not inside a timed solve (see run_one)
            run_instance(systems[0], replace(spec, seed=TEST_SEED), pde=pde, N=budget.N,
                         index=0)  # warm-up, not recorded
            records = []
            for i, system in enumerate(subset(spec)):
                records.append(run_instance(system, replace(spec, seed=TEST_SEED + i), pde=pde,
                                            N=budget.N, index=i))
                bar.update(note=key)
            res["methods"][key] = {"method": _label(spec, budget, res["models"]),
                                   "name": spec.name, "class": method_class(spec.name),
                                   "rank": spec.rank if spec.ranked else None,
                                   "path": spec.path, "sweeps": spec.sweeps,
                                   "records": records, "summary": summarize(records)}
            _write(res, out)
    if res["models"] and "energy" not in res:
        res["energy"] = energy_vs_rank(systems[: min(20, len(systems))], res["models"],
                                       budget, sorted(set(ranks) | {1, 2, 4, 8, 16,
                                                                    budget.r_max}))
    res["wall_s"] = res.get("wall_s", 0.0) + time.perf_counter() - t_start
    res["complete"] = True
    _write(res, out)
    plot_bench(res, out)
    return res
