"""The benchmark that decides issue 17: two-level configurations against the classical peers.

A user with many related solves (one mesh, new coefficients every time) keeps one KSP and
re-assembles ``A`` in place; that is what is timed here. Per family and size, one jittered
mesh (seed ``MESH_SEED``) carries ``select`` validation instances (coefficient seeds 7500+)
and ``instances`` test instances (seeds 7000+). Every configuration runs through PETSc
options only (exactly what a user puts in ``petsc_options``), one KSP per configuration,
``A`` overwritten with the next instance's values before each solve:

- two-level (``TwoGridPC``): coarse space ``sine``, ``eig-ref`` and ``nlss-family`` (basis
  files built once per family and size: their cost is reported as *offline*, not per
  instance), ``corrected`` (per instance: two Chebyshev solves for the homogenisation
  corrector), ``corrected-learned`` (its weights learned once per family at a small size,
  offline), and the paper's ``nlss`` where a checkpoint is given; times smoother ``jacobi``
  (5 sweeps, the paper's), ``chebyshev`` (degree 3), ``sor`` (1 symmetric sweep) and
  ``icc`` (Chebyshev degree 1 on ICC(0)); times coarse rank ``r``;
- classical peers: ICC(0)-CG, GAMG-CG, sparse Cholesky, and the SA-AMG two-grid
  (``nlss_coarse sa``) with each smoother.

Per instance: ``total`` = KSP set-up (for TwoGridPC: estimate, per-instance smoothing and
inference, Galerkin product, factorisations) + solve (CG to ``||b - A x|| / ||b|| < 1e-6``,
unpreconditioned norm), wall clock (:func:`time.perf_counter`) after an untimed warm-up
solve. The best two-level configuration and the fastest peer are **chosen on the validation
instances** and **reported on the test instances** (no figure is tuned on the test set).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["COARSE", "MESH_SEED", "PEERS", "SMOOTHER_NU", "Config", "configurations",
           "offline_bases", "run_beyond", "run_config"]

MESH_SEED = 7000
TEST_SEED, SELECT_SEED = 7000, 7500
SMOOTHER_NU = {"jacobi": 5, "chebyshev": 3, "sor": 1, "icc": 1}
COARSE = ("sine", "eig-ref", "nlss-family", "corrected", "corrected-learned", "nlss")
NO_PER_SIZE_TRAINING = ("sine", "eig-ref", "corrected", "corrected-learned")
PEERS = ("icc-cg", "gamg-cg", "cholesky", "sa-twogrid")
_CG = {"ksp_type": "cg", "ksp_rtol": "1e-6", "ksp_atol": "0", "ksp_max_it": "10000",
       "ksp_norm_type": "unpreconditioned"}
_TWOGRID = {**_CG, "pc_type": "python", "pc_python_type": "nlss_fenicsx.petsc.TwoGridPC"}


@dataclass(frozen=True)
class Config:
    """One row of the grid: a name, its family (``"two-level"`` or ``"peer"``), its options.

    ``options`` are the PETSc options (strings, no prefix) a user would give; ``coarse``
    is the coarse space (or the peer's name).
    """

    name: str
    group: str
    coarse: str
    options: dict = field(hash=False)


def configurations(N: int, files: dict, *, coarse=COARSE, smoothers=tuple(SMOOTHER_NU),
                   ranks=(16, 32, 48), peers=PEERS) -> list[Config]:
    """Return the grid of configurations for one family and size.

    Parameters
    ----------
    N : int
        Cells per side (``n = (N+1)^2``).
    files : dict
        ``{"eig-ref": path, "nlss-family": path, "corrected-learned": path, "nlss": path}``
        for the coarse spaces that need a file; a coarse space without one is left out.
    coarse, smoothers, ranks, peers : sequences
        Restrict the grid.

    Returns
    -------
    list of Config
    """
    out = []
    for kind in coarse:
        if kind in ("eig-ref", "nlss-family", "corrected-learned", "nlss") and not files.get(kind):
            continue
        base = {"nlss_coarse": {"eig-ref": "fixed", "nlss-family": "fixed",
                                "corrected-learned": "corrected"}.get(kind, kind)}
        if kind in ("eig-ref", "nlss-family"):
            base["nlss_basis"] = str(files[kind])
        if kind in ("corrected-learned", "nlss"):
            base["nlss_model"] = str(files[kind])
        for sm in smoothers:
            for r in ranks:
                if r > (N - 1) ** 2:
                    continue
                opts = {**_TWOGRID, **base, "nlss_smoother": sm, "nlss_nu": str(SMOOTHER_NU[sm]),
                        "nlss_rank": str(r)}
                out.append(Config(f"{kind}/{sm}/r{r}", "two-level", kind, opts))
    peer_options = {"icc-cg": {**_CG, "pc_type": "icc"},
                    "gamg-cg": {**_CG, "pc_type": "gamg"},
                    "cholesky": {"ksp_type": "preonly", "pc_type": "cholesky"}}
    for peer in peers:
        if peer == "sa-twogrid":
            out += [Config(f"sa-twogrid/{sm}", "peer", peer,
                           {**_TWOGRID, "nlss_coarse": "sa", "nlss_smoother": sm,
                            "nlss_nu": str(SMOOTHER_NU[sm])}) for sm in smoothers]
        else:
            out.append(Config(peer, "peer", peer, peer_options[peer]))
    return out


def offline_bases(pde: str, N: int, folder: Path, *, r_max: int, coarse=COARSE,
                  family_instances: int = 24, preset: str = "default", corrector=None,
                  nlss=None, log=print) -> tuple[dict, dict]:
    """Build what is computed once per family and size; return ``(files, seconds)``.

    ``eig-ref``: the family's mean-coefficient operator on the benchmark's mesh, its
    ``r_max`` lowest eigenvectors (:func:`nlss_fenicsx.coarse.coarse_basis`); ``nlss-family``:
    :func:`nlss_fenicsx.family.build_family_basis` on ``family_instances`` training
    instances; both written as basis files (node order = grid order on this mesh).
    ``corrector`` and ``nlss``: paths of a learned corrector and an NLSS checkpoint,
    passed through (their training time is reported by whoever trained them).
    """
    from nlss_fenicsx import coarse as coarse_mod
    from nlss_fenicsx import grid
    from nlss_fenicsx.family import build_family_basis

    files, seconds = {}, {}
    folder.mkdir(parents=True, exist_ok=True)
    if "eig-ref" in coarse:
        t0 = time.perf_counter()
        R = grid.reference_operator(pde, N, seed=MESH_SEED, preset=preset)
        P = coarse_mod.coarse_basis("eig-ref", R, r=r_max, reference=R)
        files["eig-ref"] = folder / f"eig-ref_{pde}_N{N}.npz"
        coarse_mod.save_basis(files["eig-ref"], P, meta={
            "kind": "eig-ref", "family": pde, "N": N, "preset": preset,
            "mesh": f"jittered unit square N={N} seed={MESH_SEED}"})
        seconds["eig-ref"] = time.perf_counter() - t0
    if "nlss-family" in coarse and N <= 128:
        t0 = time.perf_counter()
        P, meta = build_family_basis(pde, N, r_max, instances=family_instances, preset=preset)
        files["nlss-family"] = folder / f"nlss-family_{pde}_N{N}.npz"
        coarse_mod.save_basis(files["nlss-family"], P, meta=meta)
        seconds["nlss-family"] = time.perf_counter() - t0
    if corrector is not None and "corrected-learned" in coarse:
        from nlss_fenicsx.corrector import load_corrector

        files["corrected-learned"] = corrector
        seconds["corrected-learned (training, once per family)"] = float(
            load_corrector(corrector).meta.get("seconds", float("nan")))
    if nlss is not None and "nlss" in coarse and Path(nlss).is_file():
        files["nlss"] = nlss
    for key, s in seconds.items():
        log(f"offline {pde} N={N}: {key}: {s:.1f} s")
    return files, seconds


def _instances(pde: str, N: int, seeds, preset: str):
    from nlss_fenicsx import meshes, pdes

    mesh = meshes.jittered_square(N, seed=MESH_SEED)
    return [pdes.assemble(pdes.sample(pde, mesh, rng=s, preset=preset)) for s in seeds]


def run_config(cfg: Config, systems, *, prefix: str) -> list[dict]:
    """Solve every system with one KSP (``A`` overwritten in place); one record each.

    The first system is also solved once untimed (warm-up). A failure ends the
    configuration with one record ``{"ok": False, "error": line}``.
    """
    import gc

    from nlss_fenicsx._fenicsx import PETSc
    from nlss_fenicsx.bench.report import error_line
    from nlss_fenicsx.petsc import attach_node_order, python_errors

    A = systems[0].A.duplicate(copy=True)
    attach_node_order(A, systems[0].node_order)
    db = PETSc.Options()
    ksp = PETSc.KSP().create()
    ksp.setOptionsPrefix(prefix)
    for key, value in cfg.options.items():
        db[prefix + key] = value
    b, x, res = A.createVecRight(), A.createVecLeft(), A.createVecLeft()
    records = []
    try:
        ksp.setOperators(A)
        ksp.setFromOptions()
        for k, system in enumerate([systems[0], *systems]):
            system.A.copy(A, structure=PETSc.Mat.Structure.SAME_NONZERO_PATTERN)
            ksp.setOperators(A)  # new values: the preconditioner is set up again
            b.setArray(system.b)
            gc.disable()
            try:
                with python_errors():
                    t0 = time.perf_counter()
                    ksp.setUp()
                    t1 = time.perf_counter()
                    ksp.solve(b, x)
                    t2 = time.perf_counter()
            finally:
                gc.enable()
            A.mult(x, res)
            res.aypx(-1.0, b)
            rel = float(res.norm() / b.norm())
            ok = ksp.getConvergedReason() > 0 and rel < 1e-5
            ctx = ksp.getPC().getPythonContext() if ksp.getPC().getType() == "python" else None
            if k == 0:
                continue  # warm-up
            records.append({"ok": ok, "iterations": ksp.getIterationNumber(), "rel_res": rel,
                            "setup_ms": 1e3 * (t1 - t0), "solve_ms": 1e3 * (t2 - t1),
                            "total_ms": 1e3 * (t2 - t0),
                            "phases_ms": {} if ctx is None else
                            {p: 1e3 * v for p, v in ctx.timings.items()}})
    except Exception as err:  # recorded: the benchmark goes on
        records.append({"ok": False, "error": error_line(err)})
    finally:
        for key in cfg.options:
            db.delValue(prefix + key)
        for obj in (ksp, A, b, x, res):
            obj.destroy()
    return records


def _median(records, key):
    vals = [r[key] for r in records if r.get("ok")]
    return float(np.median(vals)) if vals and len(vals) == len(records) else None


def _choose(rows, group, split):
    """Fastest configuration of a group by median total on ``split`` (all solves ok)."""
    cands = [(t, name) for name, row in rows.items() if row["group"] == group
             for t in [_median(row[split], "total_ms")] if t is not None]
    return min(cands)[1] if cands else None


def _entry(rows, name):
    row = rows[name]
    return {"config": name, "options": row["options"],
            "total_ms": _median(row["test"], "total_ms"),
            "setup_ms": _median(row["test"], "setup_ms"),
            "solve_ms": _median(row["test"], "solve_ms"),
            "iterations": _median(row["test"], "iterations")}


def summarize_size(pde: str, N: int, rows: dict, offline: dict) -> dict:
    """Return the (pde, N) entry of summary.json: best two-level, fastest peer, ratio."""
    best, peer = _choose(rows, "two-level", "select"), _choose(rows, "peer", "select")
    out = {"pde": pde, "N": N, "n": (N + 1) ** 2, "offline_s": offline,
           "chosen_on": "validation instances", "reported_on": "test instances",
           "best": _entry(rows, best) if best else None,
           "peer": _entry(rows, peer) if peer else None}
    out["ratio"] = (out["best"]["total_ms"] / out["peer"]["total_ms"]
                    if best and peer and out["best"]["total_ms"] and out["peer"]["total_ms"]
                    else None)
    per_coarse = {}
    for kind in sorted({row["coarse"] for row in rows.values() if row["group"] == "two-level"}):
        sub = {k: v for k, v in rows.items() if v["coarse"] == kind}
        name = _choose(sub, "two-level", "select")
        if name:
            per_coarse[kind] = _entry(rows, name)
    out["best_per_coarse"] = per_coarse
    return out


def run_beyond(pdes, sizes, instances: int, out, *, select: int = 3, ranks=(16, 32, 48),
               smoothers=tuple(SMOOTHER_NU), coarse=COARSE, peers=PEERS, big: int = 256,
               family_instances: int = 24, corrector: dict | None = None,
               nlss: dict | None = None, preset: str = "default", progress: bool = True,
               log=print) -> dict:
    """Run the grid for every family and size; write DIR/summary.json, tables, figure.

    Parameters
    ----------
    pdes : sequence of str
        Families.
    sizes : sequence of int
        N values; at ``N >= big`` only the coarse spaces that need no per-size training
        (:data:`NO_PER_SIZE_TRAINING`) run.
    instances, select : int
        Test and validation instances per size.
    out : path-like
        Output folder.
    ranks, smoothers, coarse, peers : sequences
        The grid (defaults: all).
    family_instances : int
        Training instances of the nlss-family basis.
    corrector, nlss : dict, optional
        ``{pde: path}`` of a learned corrector (:mod:`nlss_fenicsx.nn.corrector`) and of an
        NLSS checkpoint per ``f"{pde}_N{N}"``; rows are left out without one.
    preset : str
        Coefficient preset.
    progress : bool
        A bar on a terminal, else a line every 10 % or 30 s.
    log : callable

    Returns
    -------
    dict
        The summary (also written to ``out/summary.json``).

    Raises
    ------
    ValueError
        On an unwritable ``out`` or bad arguments, before any work.
    """
    from nlss_fenicsx._atomic import check_destination
    from nlss_fenicsx.bench.beyond_report import write_outputs
    from nlss_fenicsx.bench.progress import Progress

    out = check_destination(out, what="--out", kind="dir")
    if instances < 1 or select < 1:
        raise ValueError(f"expected --instances >= 1 and --select >= 1, got {instances} and "
                         f"{select}")
    t_start = time.perf_counter()
    results = {}
    for pde in pdes:
        for N in sizes:
            kinds = [c for c in coarse if N < big or c in NO_PER_SIZE_TRAINING]
            files, offline = offline_bases(
                pde, N, Path(out) / "bases", r_max=max(ranks), coarse=kinds,
                family_instances=family_instances, preset=preset,
                corrector=(corrector or {}).get(pde), nlss=(nlss or {}).get(f"{pde}_N{N}"),
                log=log)
            grid = configurations(N, files, coarse=kinds, smoothers=smoothers, ranks=ranks,
                                  peers=peers)
            sel = _instances(pde, N, range(SELECT_SEED, SELECT_SEED + select), preset)
            test = _instances(pde, N, range(TEST_SEED, TEST_SEED + instances), preset)
            rows = {}
            with Progress(len(grid), f"{pde} N={N}: configurations", enabled=progress) as bar:
                for i, cfg in enumerate(grid):
                    prefix = f"beyond{i}_"
                    rows[cfg.name] = {"group": cfg.group, "coarse": cfg.coarse,
                                      "options": cfg.options,
                                      "select": run_config(cfg, sel, prefix=prefix),
                                      "test": run_config(cfg, test, prefix=prefix)}
                    bar.update(note=cfg.name)
            entry = summarize_size(pde, N, rows, offline)
            results[f"{pde}_N{N}"] = {"summary": entry, "rows": rows}
            if entry["best"] and entry["peer"]:
                log(f"{pde} N={N}: best {entry['best']['config']} "
                    f"{entry['best']['total_ms']:.2f} ms, {entry['peer']['config']} "
                    f"{entry['peer']['total_ms']:.2f} ms, ratio {entry['ratio']:.2f}")
    return write_outputs(out, results, {"instances": instances, "select": select,
                                        "ranks": list(ranks), "smoothers": list(smoothers),
                                        "smoother_nu": SMOOTHER_NU, "preset": preset,
                                        "family_instances": family_instances,
                                        "wall_s": time.perf_counter() - t_start})
