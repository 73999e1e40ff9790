"""The captured-energy experiment (paper section 5, Figs. 3-5).

Setting (paper): N = 9 (n = 100), K = 32 smoothed vectors, a single hidden layer of 128
with GELU, 1000 training and 100 test instances. Two models are trained to the full rank
32, one with the NLSS loss (Eq. 4) and one with the subspace loss (Eq. 3); each basis is
then truncated to r = 1..32 and its captured energy (Eq. 8) compared with that of the
exact SVD of the same S, over the 100 test instances. NLSS should stay close to SVD at
every truncated rank; the subspace loss only at full rank.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from nlss_fenicsx.bench.report import savefig_atomic, write_json

__all__ = ["EnergyConfig", "truncation_energy", "plot_energy", "run_energy"]


@dataclass(frozen=True)
class EnergyConfig:
    """Settings of the captured-energy experiment.

    The paper's (section 5): N=9, K=32, one hidden layer of 128, 1000 training and 100
    test instances; ``steps`` Adam steps of ``batch`` instances.
    """

    pde: str = "diffusion"
    N: int = 9
    K: int = 32
    steps: int = 4000
    batch: int = 50
    lr: float = 1e-3
    n_train: int = 1000
    n_test: int = 100
    seed: int = 0
    preset: str = "default"

    def train_config(self, loss: str):
        """Build the training settings of the model with ``loss`` (nlss or subspace)."""
        from nlss_fenicsx.nn.train import TrainConfig

        return TrainConfig(pde=self.pde, N=self.N, K=self.K, r_max=self.K, loss=loss,
                           steps=self.steps, lr=self.lr, batch=self.batch, seed=self.seed,
                           protocol="dataset", preset=self.preset, hidden=(128,),
                           layernorm=False, n_train=self.n_train, n_test=self.n_test,
                           n_eval=min(16, self.n_test), eval_every=max(1, self.steps // 8),
                           ckpt_every=max(1, self.steps // 4))


def truncation_energy(model, S_test: np.ndarray) -> dict:
    """Compute the captured energy of the rank-K basis truncated to r = 1..K, and the SVD's.

    Parameters
    ----------
    model : nlss_fenicsx.nn.NLSSModel
        A model trained to the full rank K (its basis is nested: truncating its columns
        gives the rank-r basis).
    S_test : numpy.ndarray, shape (samples, n, K)
        Smoothed vectors of the test instances, in grid order.

    Returns
    -------
    dict
        ``{"model": (samples, K), "svd": (samples, K)}`` arrays: captured energy (Eq. 8)
        at r = 1..K per sample, of the model's truncated basis and of the exact SVD's.
    """
    import torch

    from nlss_fenicsx.nn.losses import captured_energy

    K = S_test.shape[2]
    S = torch.as_tensor(S_test, dtype=torch.float64)
    with torch.no_grad():
        P = model.net(S.float()).double()
    model_e = np.stack([captured_energy(P[:, :, :r], S).numpy() for r in range(1, K + 1)],
                       axis=1)
    sig2 = np.linalg.svd(S_test.astype(np.float64), compute_uv=False) ** 2
    svd_e = np.cumsum(sig2, axis=1) / sig2.sum(axis=1, keepdims=True)
    return {"model": model_e, "svd": svd_e}


def plot_energy(result: dict, path: Path) -> Path:
    """PNG: mean (and inter-quartile band) of SVD minus model captured energy vs rank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ranks = np.array(result["ranks"])
    for loss, color in (("nlss", "C0"), ("subspace", "C3")):
        d = result["losses"][loss]
        ax.plot(ranks, d["gap_mean"], color=color, marker="o", ms=3,
                label={"nlss": "NLSS (Eq. 4)", "subspace": "subspace (Eq. 3)"}[loss])
        ax.fill_between(ranks, d["gap_q1"], d["gap_q3"], color=color, alpha=0.2)
    ax.set_xlabel("rank r (truncation of the rank-32 basis)")
    ax.set_ylabel("captured energy: SVD minus model")
    ax.set_title(f"{result['pde']}: N={result['N']}, K={result['K']}, "
                 f"{result['n_test']} test samples")
    ax.axhline(0.0, color="k", lw=0.5)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    savefig_atomic(fig, path)
    plt.close(fig)
    return path


def run_energy(cfg: EnergyConfig, out: str | Path, *, progress: bool = True,
               log=print) -> dict:
    """Train both models (or take them from the model cache), evaluate, write JSON and PNG.

    The models are :func:`nlss_fenicsx.nn.cache.cached_model` entries, keyed by their
    training settings: the same ``cfg`` reuses (or resumes) them, other settings train
    new ones, whatever ``out`` is.

    Parameters
    ----------
    cfg : EnergyConfig
        The experiment's settings.
    out : str or pathlib.Path
        Folder for ``energy_<pde>.json`` and ``energy_<pde>.png``.
    progress : bool
        Progress of the dataset generation and the training.
    log : callable
        Where training and cache messages go.

    Returns
    -------
    dict
        Per loss the mean captured energy and the gap to the SVD (mean, quartiles) at
        r = 1..K, and the SVD's mean captured energy.

    Raises
    ------
    ValueError
        More than one MPI rank, or an ``out`` that cannot be written (before any work).
    OSError
        The model cache cannot be written and lacks the models, or the disk is full.
    """
    from nlss_fenicsx._atomic import check_destination
    from nlss_fenicsx.bench.results import require_one_rank
    from nlss_fenicsx.nn.cache import cached_model
    from nlss_fenicsx.nn.data import load_dataset

    require_one_rank("nlss-fenicsx energy")
    out = check_destination(out, what="out", kind="dir")  # before any training
    result = {"pde": cfg.pde, "N": cfg.N, "K": cfg.K, "n_test": cfg.n_test,
              "steps": cfg.steps, "batch": cfg.batch, "seed": cfg.seed,
              "ranks": list(range(1, cfg.K + 1)), "losses": {}}
    tc = cfg.train_config("nlss")
    _, S_test = load_dataset(tc.data, n_train=cfg.n_train, n_test=cfg.n_test, seed=cfg.seed,
                             progress=progress)
    for loss in ("nlss", "subspace"):
        # In the model cache (not beside the committed results), keyed by the settings.
        model, _, _ = cached_model(replace(tc, loss=loss), progress=progress, log=log)
        curves = truncation_energy(model, S_test)
        gap = curves["svd"] - curves["model"]
        result["losses"][loss] = {
            "energy_mean": curves["model"].mean(axis=0).tolist(),
            "gap_mean": gap.mean(axis=0).tolist(),
            "gap_q1": np.percentile(gap, 25, axis=0).tolist(),
            "gap_q3": np.percentile(gap, 75, axis=0).tolist(),
            "train_seconds": model.train_state.get("seconds"),
        }
        result["svd_energy_mean"] = curves["svd"].mean(axis=0).tolist()
    from nlss_fenicsx.bench.machine import machine_info

    result["machine"] = machine_info()
    write_json(out / f"energy_{cfg.pde}.json", result)
    plot_energy(result, out / f"energy_{cfg.pde}.png")
    return result
