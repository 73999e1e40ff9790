"""Training the learned corrector weights of the ``corrected`` coarse space (NLSS loss).

:mod:`nlss_fenicsx.corrector` builds ``P = P0 + diag(w chi_x) dP0/dx + diag(w chi_y) dP0/dy``
from the sine basis ``P0`` and the instance's homogenisation correctors ``chi``. Here a small
per-node MLP learns ``w = 1 + MLP(features)`` (the last layer starts at zero: the untrained
model IS the classical corrector) with the paper's nested NLSS loss (section 3.2, as
:func:`nlss_fenicsx.nn.losses.nlss_loss`), in the ``D`` metric: ``Q = qr(D^1/2 P)`` against
``S = D^1/2 V``, ``V`` the instance's lowest eigenvectors of ``(A, D)`` scaled as the
``nlss-family`` targets (:func:`nlss_fenicsx.family.instance_targets`). So the network sees
something cheap (local features of ``A`` and ``chi``), aims at the two-grid oracle of a
Jacobi-type smoother, and outputs a correction of the family basis; it is nested and
rank-agnostic (trained at one ``N`` and ``r``, applied at any: its inputs are local and
scale-free). The result is a :class:`~nlss_fenicsx.corrector.CorrectorModel` (``.npz``,
NumPy inference; ``nlss_coarse corrected`` with ``nlss_model PATH``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["CorrectorConfig", "train_corrector"]


@dataclass(frozen=True)
class CorrectorConfig:
    """Settings of :func:`train_corrector`.

    Attributes
    ----------
    pde, preset : str
        The family (:data:`nlss_fenicsx.grid.FAMILIES`) and coefficient preset.
    N, r : int
        Training grid (cells per side) and coarse rank.
    instances : int
        Training instances (seeds ``seed, seed + 1, ...``; the benchmarks test on 7000+).
    steps, batch : int
        Adam steps and instances per step.
    lr : float
        Adam's learning rate.
    hidden : int
        Width of the two hidden layers.
    seed : int
        First training seed (also torch's).
    """

    pde: str = "diffusion"
    N: int = 32
    r: int = 32
    instances: int = 30
    steps: int = 300
    batch: int = 4
    lr: float = 3e-3
    hidden: int = 16
    seed: int = 1000
    preset: str = "default"

    def __post_init__(self):
        from nlss_fenicsx._checks import check_int
        from nlss_fenicsx.grid import FAMILIES

        if self.pde not in FAMILIES:
            raise ValueError(f"Unrecognized pde {self.pde!r}; expected one of {FAMILIES}")
        for name, low in (("N", 4), ("r", 1), ("instances", 1), ("steps", 0), ("batch", 1),
                          ("hidden", 1), ("seed", 0)):
            check_int(name, getattr(self, name), low)
        if not (np.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"expected a learning rate lr > 0, got {self.lr!r}")


def _instance_data(cfg: CorrectorConfig, seed: int):
    from nlss_fenicsx import grid
    from nlss_fenicsx.corrector import corrector, features, grid_geometry
    from nlss_fenicsx.family import instance_targets

    pts = grid.jittered_points(cfg.N, seed=seed)
    tri = grid.delaunay_triangles(pts)
    coef = grid.coefficient_draws(cfg.pde, cfg.preset, len(tri), np.random.default_rng(seed))
    A = grid.assemble_p1(cfg.pde, pts, tri, coef, boundary=grid.boundary_mask(cfg.N)).A
    chi = corrector(A, *grid_geometry(cfg.N))
    V = instance_targets(A, "eig", r_max=cfg.r)
    return features(A, chi, cfg.N), chi, V, np.sqrt(A.diagonal())


def train_corrector(cfg: CorrectorConfig, out=None, *, progress: bool = True, log=print):
    """Train the corrector weights with the NLSS loss; return (and write) the model.

    Parameters
    ----------
    cfg : CorrectorConfig
    out : path-like, optional
        Where to write the :class:`~nlss_fenicsx.corrector.CorrectorModel` (atomic ``.npz``).
    progress : bool
        Log a line at 0, 50 % and 100 % of the steps.
    log : callable
        Receives the progress lines.

    Returns
    -------
    nlss_fenicsx.corrector.CorrectorModel
        ``meta`` holds the config, the training loss of the classical corrector (``w = 1``)
        and of the learned one, and the seconds spent.

    Raises
    ------
    ValueError
        On a bad config.
    RuntimeError
        If the loss becomes non-finite.
    """
    import torch

    from nlss_fenicsx.corrector import CorrectorModel, sine_gradients
    from nlss_fenicsx.nn.losses import nlss_loss

    t0 = time.perf_counter()
    data = [_instance_data(cfg, cfg.seed + i) for i in range(cfg.instances)]
    F_all = np.concatenate([d[0] for d in data])
    mu, sd = F_all.mean(axis=0), F_all.std(axis=0) + 1e-8
    P0, Px, Py = (torch.from_numpy(np.array(X)) for X in sine_gradients(cfg.N, cfg.r))
    batches = [(torch.from_numpy((F - mu) / sd), torch.from_numpy(chi),
                torch.from_numpy(dh[:, None] * V), torch.from_numpy(dh))
               for F, chi, V, dh in data]
    torch.manual_seed(cfg.seed)
    act = torch.nn.ReLU()  # as the NumPy inference
    net = torch.nn.Sequential(torch.nn.Linear(F_all.shape[1], cfg.hidden), act,
                              torch.nn.Linear(cfg.hidden, cfg.hidden), act,
                              torch.nn.Linear(cfg.hidden, 2)).double()
    torch.nn.init.zeros_(net[-1].weight)
    torch.nn.init.zeros_(net[-1].bias)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)

    def loss_of(F, chi, S, dh):
        c = (1.0 + net(F)) * chi
        P = P0 + c[:, :1] * Px + c[:, 1:] * Py
        return nlss_loss(torch.linalg.qr(dh[:, None] * P)[0], S)

    def mean_loss():
        with torch.no_grad():
            return float(np.mean([float(loss_of(*b)) for b in batches]))

    classical = mean_loss()
    gen = torch.Generator().manual_seed(cfg.seed)
    for step in range(cfg.steps):
        idx = torch.randint(len(batches), (cfg.batch,), generator=gen)
        loss = sum(loss_of(*batches[int(i)]) for i in idx) / cfg.batch
        if not torch.isfinite(loss):
            raise RuntimeError(f"corrector training diverged: non-finite loss at step {step}")
        opt.zero_grad()
        loss.backward()
        opt.step()
        if progress and step in (0, cfg.steps // 2, cfg.steps - 1):
            log(f"corrector {cfg.pde} N={cfg.N}: step {step + 1}/{cfg.steps}, loss "
                f"{float(loss.detach()):.5f}")
    learned = mean_loss()
    layers = [net[0], net[2], net[4]]
    weights = {"mu": mu, "sd": sd}
    for k, layer in enumerate(layers, start=1):
        weights[f"W{k}"] = layer.weight.detach().numpy().T.copy()
        weights[f"b{k}"] = layer.bias.detach().numpy().copy()
    model = CorrectorModel(weights, {"config": asdict(cfg), "loss_classical": classical,
                                     "loss_learned": learned,
                                     "seconds": time.perf_counter() - t0})
    if out is not None:
        model.save(out)
    if progress:
        log(f"corrector {cfg.pde}: NLSS loss {classical:.5f} (classical) -> {learned:.5f} "
            f"(learned) on the training instances")
    return model
