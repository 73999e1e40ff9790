"""Training: one loop for the NLSS MLP and the GNN baseline, resumable, atomic checkpoints.

Read :func:`train` top to bottom: build the model and the optimiser (or resume both from
the checkpoint at ``out``), draw instances (the paper's families, or the user's
``sampler``), take one Adam step per batch (the MLP on the NLSS or subspace loss with the
columns of ``S`` permuted at random, the GNN on the two-grid loss), evaluate on held-out
instances now and then, and checkpoint atomically now and then and when interrupted
(Ctrl-C or SIGTERM). At the end the MLP's int8 copy is calibrated
(:func:`nlss_fenicsx.nn.calibration.calibrate`) and the final checkpoint written. A resumed run
continues at the saved step with the saved optimiser state and sees the data it would have
seen without the interruption, so it ends bit-identical to an uninterrupted one.

A non-finite loss stops training at once (:class:`DivergedError`); the last checkpoint
written stays as it was.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from nlss_fenicsx.nn.calibration import CALIBRATION_FIT, CALIBRATION_HELD, calibrate
from nlss_fenicsx.nn.checkpoint import CheckpointError
from nlss_fenicsx.nn.data import DataConfig, Instances, instance_seed
from nlss_fenicsx.nn.gnn import GNNConfig, GNNModel, graph_from_csr
from nlss_fenicsx.nn.losses import captured_energy, nlss_loss, subspace_loss, twogrid_loss
from nlss_fenicsx.nn.model import MLPConfig, NLSSModel
from nlss_fenicsx.nn.optim import BackwardAdam

__all__ = ["ARCH_DEFAULTS", "DivergedError", "TrainConfig", "evaluate", "peak_rss_mib", "train"]

ARCH_DEFAULTS = {
    "mlp": {"loss": "nlss", "lr": 1e-3, "hidden": (128, 256, 256, 128), "n_eval": 8},
    # The authors' GNN: width 488, 5 layers, Adam 1e-4.
    "gnn": {"loss": "twogrid", "lr": 1e-4, "hidden": (488,) * 5, "n_eval": 2},
}
_LOSSES = {"mlp": {"nlss": nlss_loss, "subspace": subspace_loss}, "gnn": {"twogrid": None}}
EXACT_LOSS_MAX_N = 1024  # above this the GNN's loss is a Hutchinson estimate
DEFAULT_PROBES = 8


class DivergedError(RuntimeError):
    """Training stopped at the first non-finite loss (or weights); one line.

    Attributes
    ----------
    step : int
        The step whose loss was not finite.
    checkpoint : pathlib.Path or None
        The last good checkpoint, left as it was (``None`` if none was written).
    """

    def __init__(self, message: str, *, step: int, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (stored in the checkpoint).

    Defaults follow the authors' code: N=64, K=72, r_max=72, 1000 steps of one fresh
    instance each. Fields left ``None`` take their architecture's default
    (:data:`ARCH_DEFAULTS`) at construction, so the stored config is explicit.

    Parameters
    ----------
    arch : {'mlp', 'gnn'}
        The paper's MLP with QR head, or the GNN baseline.
    pde, N, K, preset, sweeps, omega : optional
        The paper's family and mesh (:class:`~nlss_fenicsx.nn.data.DataConfig`); with a
        user's ``sampler``, ``pde`` is only a label and ``N`` and ``preset`` are unused.
    r_max : int
        Largest coarse rank, ``<= K``.
    loss : {'nlss', 'subspace'} (mlp) or 'twogrid' (gnn)
    steps, lr, batch, seed : int, float, int, int
        Adam steps, learning rate, instances per step, seed of everything random.
    protocol : {'code', 'dataset'}
        A fresh instance per step, or the paper's fixed ``n_train``/``n_test`` set (MLP).
    hidden : tuple of int
        MLP hidden widths; for the GNN ``(width,) * layers``.
    layernorm : bool
        LayerNorm in the MLP's hidden layers.
    nu, probes : int, int or None
        GNN loss: Jacobi sweeps on each side, Hutchinson probes (``None``: exact for
        ``n <= 1024``, else 8).
    n_eval, eval_every, ckpt_every : int
        Held-out instances, evaluation and checkpoint cadence (they do not change the
        trained weights).

    Raises
    ------
    ValueError
        Naming the field, what is expected and what was given.
    """

    arch: str = "mlp"
    pde: str = "diffusion"
    N: int = 64
    K: int = 72
    r_max: int = 72
    loss: str | None = None
    steps: int = 1000
    lr: float | None = None
    batch: int = 1
    seed: int = 0
    protocol: str = "code"
    preset: str = "default"
    hidden: tuple[int, ...] | None = None
    layernorm: bool = True
    sweeps: int = 10
    omega: float = 0.66
    nu: int = 1
    probes: int | None = None
    n_train: int = 1000
    n_test: int = 100
    n_eval: int | None = None
    eval_every: int = 100
    ckpt_every: int = 250

    def __post_init__(self) -> None:
        if self.arch not in ARCH_DEFAULTS:
            raise ValueError(f"Unrecognized arch {self.arch!r}; expected one of "
                             f"{tuple(ARCH_DEFAULTS)}")
        for name, value in ARCH_DEFAULTS[self.arch].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if self.loss not in _LOSSES[self.arch]:
            raise ValueError(f"Unrecognized loss {self.loss!r} for arch {self.arch!r}; "
                             f"expected one of {tuple(_LOSSES[self.arch])}")
        if self.protocol not in ("code", "dataset") or (self.arch == "gnn"
                                                        and self.protocol != "code"):
            raise ValueError(f"Unrecognized protocol {self.protocol!r} for arch {self.arch!r}; "
                             "expected 'code' (or 'dataset' for the mlp)")
        for name in ("steps", "batch", "eval_every", "ckpt_every", "r_max", "n_eval"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.r_max > self.K:
            raise ValueError(f"r_max must be <= K, got r_max={self.r_max} > K={self.K}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive finite number, got {self.lr}")
        if self.nu < 0 or (self.probes is not None and self.probes < 1):
            raise ValueError(f"expected nu >= 0 and probes >= 1 or None; got nu={self.nu}, "
                             f"probes={self.probes}")
        if any(h < 1 for h in self.hidden) or (self.arch == "gnn" and (
                not self.hidden or len(set(self.hidden)) != 1)):
            raise ValueError(f"hidden must hold positive widths (for the gnn: one width "
                             f"repeated per layer, e.g. (488,) * 5); got {self.hidden}")
        from nlss_fenicsx.grid import FAMILIES

        if self.pde in FAMILIES:
            self.data  # noqa: B018 - validates preset, N and K (a label needs a sampler)

    @property
    def data(self) -> DataConfig:
        """Return the paper's instance family of this run."""
        return DataConfig(pde=self.pde, N=self.N, K=self.K, sweeps=self.sweeps,
                          omega=self.omega, preset=self.preset)

    def net_config(self, n: int) -> MLPConfig | GNNConfig:
        """Return the architecture for ``n`` unknowns."""
        if self.arch == "gnn":
            return GNNConfig(n=n, K=self.K, r_max=self.r_max, width=self.hidden[0],
                             layers=len(self.hidden))
        return MLPConfig(n=n, K=self.K, r_max=self.r_max, hidden=self.hidden,
                         layernorm=self.layernorm)

    def loss_probes(self, n: int) -> int | None:
        """Return the probes of the GNN's loss for ``n`` unknowns: ``None`` (exact) or a count."""
        if self.probes is not None:
            return self.probes
        return None if n <= EXACT_LOSS_MAX_N else DEFAULT_PROBES

    def as_dict(self) -> dict:
        """Plain-python form (``hidden`` as a list), as stored in checkpoints."""
        return {**asdict(self), "hidden": list(self.hidden)}

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Inverse of :meth:`as_dict` (unknown keys ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if k == "hidden" else v) for k, v in d.items() if k in known})


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@torch.no_grad()
def evaluate(net, S_test: torch.Tensor, ranks, svd_energy: np.ndarray) -> dict:
    """Measure the mean captured energy (paper Eq. 8) at ``ranks`` on a test set.

    Also its gap to the exact SVD's (``svd_energy``, one value per rank).
    """
    P = net(S_test)
    out = {}
    for i, r in enumerate(ranks):
        e = float(captured_energy(P[:, :, :r], S_test).mean())
        out[f"energy@{r}"] = e
        out[f"gap@{r}"] = float(svd_energy[i]) - e
    return out


def _svd_energies(S_test: np.ndarray, ranks) -> np.ndarray:
    sig2 = np.linalg.svd(S_test.astype(np.float64), compute_uv=False) ** 2
    total = sig2.sum(axis=1)
    return np.array([np.mean(sig2[:, :r].sum(axis=1) / total) for r in ranks])


def _gnn_item(A, S):
    """One GNN instance as tensors: S, the graph of A, and A as float64 sparse COO."""
    edge_index, edge_attr = graph_from_csr(A)
    coo = A.tocoo()
    A_t = torch.sparse_coo_tensor(np.stack([coo.row, coo.col]).astype(np.int64),
                                  coo.data.astype(np.float64), coo.shape,
                                  check_invariants=False).coalesce()
    return torch.from_numpy(S), edge_index, edge_attr, A_t


@contextlib.contextmanager
def _deferred_stop():
    """SIGINT/SIGTERM become a flag checked between steps (never half a step saved)."""
    flag = {"stop": False}

    def handler(signum, frame):
        flag["stop"] = True

    installed = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            installed[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave signals alone
            pass
    try:
        yield flag
    finally:
        for sig, previous in installed.items():
            signal.signal(sig, previous)


class _Progress:
    """A bar on a terminal; off a terminal one line every 10 % or 30 s (issue 15.11)."""

    def __init__(self, total: int, start: int, desc: str, enabled: bool, log) -> None:
        self.total, self.desc, self._log = total, desc, log
        self.bar = None
        self.lines = enabled and not sys.stderr.isatty()
        if enabled and not self.lines:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start, desc=desc, dynamic_ncols=True)
        self.t0 = self.last = time.monotonic()
        self.next_pct = (start * 10 // total + 1) * 10

    def update(self, step: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}")
        elif self.lines:
            now, pct = time.monotonic(), 100 * step // self.total
            if pct >= self.next_pct or now - self.last >= 30 or step == self.total:
                self.log(f"{self.desc}: step {step}/{self.total} ({pct} %), loss {loss:.4f}, "
                         f"{now - self.t0:.0f} s")
                self.last, self.next_pct = now, (pct // 10 + 1) * 10

    def log(self, line: str) -> None:
        """Pass ``line`` on, flushed: redirected to a file, stdout is block-buffered."""
        self._log(line)
        sys.stdout.flush()

    def note(self, line: str) -> None:
        """Print an evaluation line unless a bar shows the run."""
        if self.bar is None:
            self.log(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _resume(out: Path, cfg: TrainConfig, stream: Instances, device):
    cls = GNNModel if cfg.arch == "gnn" else NLSSModel
    try:
        model = cls.load(out, map_location=device)
    except CheckpointError as err:
        raise CheckpointError(f"cannot resume from {out}: {err}; delete it or choose another "
                              "--out") from None
    saved = model.train_state.get("config") or {}
    want = cfg.as_dict()
    diff = sorted(k for k in want if saved.get(k) != want[k])
    mesh = stream.settings().get("mesh_id")
    if mesh != model.settings.mesh_id:
        diff.append("mesh")
    if diff:
        raise CheckpointError(f"checkpoint {out} was trained with different settings "
                              f"({', '.join(diff)}); use another --out or the same settings "
                              "to resume")
    return model


def train(cfg: TrainConfig, out: str | Path, *, sampler=None, device: str = "cpu",
          resume: bool = True, progress: bool = True, log=print) -> NLSSModel | GNNModel:
    """Train (or resume) a model and write its checkpoint to ``out``.

    Parameters
    ----------
    cfg : TrainConfig
    out : str or pathlib.Path
        Checkpoint file; written atomically every ``cfg.ckpt_every`` steps, on interruption
        (then ``KeyboardInterrupt`` is re-raised) and at the end (if that final write
        fails, the model is kept in the recovery folder: ``RecoveredError``). An existing
        file with the same settings is resumed; other settings raise ``CheckpointError``.
    sampler : callable, optional
        ``sampler(t) -> S`` (``(n, K)`` float32 in the node order of the user's mesh), or
        ``-> (A_csr, S)`` (required for ``arch='gnn'``), deterministic in ``t``: called with
        ``t = 0 .. steps*batch - 1`` for training and with the indices after those for the
        held-out evaluation and int8 calibration instances. Optional attributes recorded
        in the checkpoint: ``mesh_id``, ``node_order`` (default ``'mesh'``), ``sweeps``,
        ``omega`` (e.g. ``nlss_fenicsx.pdes.smoothed_sampler``). Default: the paper's
        fresh instance per step of ``cfg``'s family (grid order).
    device : str or torch.device
        ``'cpu'`` or ``'cuda'``.
    resume : bool
        Continue from ``out`` if it exists (else start over and overwrite it).
    progress : bool
        A progress bar on a terminal; off a terminal a line every 10 % or 30 s through
        ``log``.
    log : callable
        Receives the progress lines, the evaluation lines (every ``cfg.eval_every`` steps,
        unless a bar shows the run) and the interruption note.

    Returns
    -------
    NLSSModel or GNNModel
        In evaluation mode; ``train_state`` holds the config, history and timings, and an
        MLP's ``int8_calibration`` the calibration of its int8 copy.

    Raises
    ------
    DivergedError
        At the first non-finite loss (or non-finite weights at a checkpoint), one line;
        the last checkpoint written is kept.
    ValueError
        Bad settings, a sampler returning the wrong shape, no CUDA device.
    CheckpointError
        ``out`` exists but cannot be resumed (other settings, corrupt).
    """
    # Transparent huge pages for PyTorch's CPU buffers of 2 MiB and more: a paper-size step
    # frees and reallocates its gradients, and in 4 KiB pages the kernel faults and zeroes
    # each one anew. torch reads the variable at its first large allocation, so this works
    # when training is the first large work in the process (the CLI); 0 opts out.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    out, device = Path(out), torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA device")
    stream = Instances(cfg, sampler)
    torch.manual_seed(cfg.seed)
    model = _resume(out, cfg, stream, device) if resume and out.exists() else None
    if model is None:
        cls = GNNModel if cfg.arch == "gnn" else NLSSModel
        model = cls(cfg.net_config(stream.n), loss=cfg.loss, **stream.settings())
        model.train_state = {"config": cfg.as_dict(), "history": [], "seconds": 0.0}
    start = int(model.step or 0)
    last_saved = start if model.path is not None else None  # resumed from that step
    net = model.net.to(device).train()
    opt = BackwardAdam(net.parameters(), lr=cfg.lr)  # steps inside backward, frees gradients
    if model.optimizer_state is not None:
        opt.load_state_dict(model.optimizer_state)
    state = model.train_state
    history, elapsed0 = state.setdefault("history", []), float(state.get("seconds", 0.0))

    n_extra = CALIBRATION_FIT + CALIBRATION_HELD if cfg.arch == "mlp" else 0
    held = [stream.get(i, held=True) for i in range(cfg.n_eval + n_extra)]
    if cfg.arch == "mlp":
        S_eval = np.stack([S for _, S in held[:cfg.n_eval]])
        ranks = sorted({max(1, cfg.r_max // d) for d in (8, 4, 2, 1)})
        svd_energy, S_eval_t = _svd_energies(S_eval, ranks), torch.as_tensor(S_eval,
                                                                              device=device)
        loss_fn = _LOSSES["mlp"][cfg.loss]
    else:
        held_items = [_gnn_item(A, S) for A, S in held]
        probes = cfg.loss_probes(stream.n)

    def batch_at(t: int):
        ids = range(t * cfg.batch, (t + 1) * cfg.batch)
        if stream.train_set is not None:  # the paper's fixed set, reshuffled every epoch
            per_epoch = max(1, len(stream.train_set) // cfg.batch)
            epoch, k = divmod(t, per_epoch)
            order = np.random.default_rng(instance_seed(cfg.seed + 2_000_003, epoch)
                                          ).permutation(len(stream.train_set))
            return stream.train_set[order[k * cfg.batch:(k + 1) * cfg.batch]]
        items = [stream.get(i) for i in ids]
        return np.stack([S for _, S in items]) if cfg.arch == "mlp" else \
            [_gnn_item(A, S) for A, S in items]

    def gnn_loss(items, generator) -> torch.Tensor:
        S = torch.stack([it[0] for it in items]).to(device)
        P = net(S, [it[1].to(device) for it in items], [it[2].to(device) for it in items])
        return torch.stack([twogrid_loss(it[3].to(device), P[b].double(), nu=cfg.nu,
                                         omega=cfg.omega, probes=probes, generator=generator)
                            for b, it in enumerate(items)]).mean()

    def step_fn(batch, step: int) -> float:
        g_seed = instance_seed(cfg.seed + 7, step)
        if cfg.arch == "mlp":
            S = torch.as_tensor(batch, device=device)
            g = torch.Generator().manual_seed(g_seed)  # column order: S's span ignores it
            perm = torch.stack([torch.randperm(cfg.K, generator=g) for _ in range(len(S))])
            S = torch.take_along_dim(S, perm.to(device)[:, None, :], dim=2)
            loss = loss_fn(net(S), S)
        else:
            loss = gnn_loss(batch, torch.Generator(device=device).manual_seed(g_seed))
        value = float(loss.item())
        if not math.isfinite(value):
            diverged(step + 1, f"the loss became non-finite ({value})")
        loss.backward()  # BackwardAdam updates each parameter here
        return value

    def eval_fn(step: int, loss: float) -> str:
        net.eval()
        if cfg.arch == "mlp":
            ev = evaluate(net, S_eval_t, ranks, svd_energy)
        else:
            with torch.no_grad():
                ev = {"eval_loss": float(gnn_loss(held_items, torch.Generator(
                    device=device).manual_seed(cfg.seed + 11)))}
        net.train()
        history.append({"step": step, "loss": loss, **ev})
        return f"step {step}: loss {loss:.4f}, " + ", ".join(
            f"{k} {v:.4f}" for k, v in ev.items() if not k.startswith("energy"))

    def diverged(step: int, what: str):
        kept = (f"kept the checkpoint of step {last_saved} at {out}" if last_saved is not None
                else f"left {out} as it was" if out.exists() else f"nothing was written to {out}")
        raise DivergedError(f"training diverged: {what} at step {step} (lr={cfg.lr:g}); {kept}",
                            step=step, checkpoint=out if last_saved is not None else None)

    def save(step: int, seconds: float, *, final: bool = False) -> None:
        nonlocal last_saved
        if not all(bool(torch.isfinite(p).all()) for p in net.parameters()):
            diverged(step, "the weights became non-finite")
        state.update(seconds=elapsed0 + seconds, peak_rss_mib=peak_rss_mib(), device=str(device))
        model.save(out, optimizer=opt, step=step, recover=final)
        last_saved = step

    desc = f"train {cfg.pde} {cfg.arch} {cfg.loss}"
    bar = _Progress(cfg.steps, start, desc, progress, log)
    pool = ThreadPoolExecutor(max_workers=1) if sampler is None else None  # prefetch
    step, elapsed = start, 0.0
    try:
        with _deferred_stop() as flag:
            pending = pool.submit(batch_at, start) if pool and start < cfg.steps else None
            while step < cfg.steps:
                if flag["stop"]:
                    raise KeyboardInterrupt
                t0 = time.perf_counter()
                batch = pending.result() if pending else batch_at(step)
                if pool and step + 1 < cfg.steps:
                    pending = pool.submit(batch_at, step + 1)
                loss = step_fn(batch, step)
                step += 1
                elapsed += time.perf_counter() - t0
                bar.update(step, loss)
                if step % cfg.eval_every == 0 or step == cfg.steps:
                    bar.note(eval_fn(step, loss))
                if step % cfg.ckpt_every == 0 and step < cfg.steps:
                    save(step, elapsed)
    except KeyboardInterrupt:
        save(step, elapsed)
        bar.log(f"interrupted at step {step}; checkpoint saved to {out} (run again to resume)")
        raise KeyboardInterrupt from None
    finally:
        bar.close()
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)
        opt.remove()  # the module is left as a plain module, whatever happened
    net.eval()
    calibrated = cfg.arch == "mlp" and model.int8_calibration is None
    if calibrated:  # decided once, here, and stored: loading never generates data
        calib = [S for _, S in held[cfg.n_eval:]]
        model.int8_calibration = calibrate(net, calib[:CALIBRATION_FIT], calib[CALIBRATION_FIT:])
    if calibrated or last_saved != step:
        save(step, elapsed, final=True)
    model.step = step
    return model
