"""Training loop for the NLSS model (and the subspace-loss ablation).

Read it top to bottom: build the model and the optimiser (or resume both from the
checkpoint at ``out``), draw data, permute the columns of S at random (the left singular
subspace does not depend on their order), take an Adam step, evaluate now and then on a
held-out set, and checkpoint atomically now and then, at the end, and when interrupted
(Ctrl-C or SIGTERM). A resumed run continues at the saved step with the saved optimiser
state and sees the same data it would have seen without the interruption.
"""

from __future__ import annotations

import contextlib
import resource
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from nlss_fenicsx.nn.data import DataConfig, FreshSampler, instance_seed, load_dataset
from nlss_fenicsx.nn.losses import captured_energy, nlss_loss, subspace_loss
from nlss_fenicsx.nn.model import CheckpointError, MLPConfig, NLSSModel
from nlss_fenicsx.nn.optim import BackwardAdam

__all__ = ["LOSSES", "TrainConfig", "evaluate", "peak_rss_mib", "train"]

LOSSES = {"nlss": nlss_loss, "subspace": subspace_loss}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (stored in the checkpoint).

    The defaults are the authors' code protocol: N=64, K=72, r_max=72, 1000 steps of
    one fresh instance each, Adam with learning rate 1e-3, the paper's MLP widths.
    """

    pde: str = "diffusion"
    N: int = 64
    K: int = 72
    r_max: int = 72
    loss: str = "nlss"
    steps: int = 1000
    lr: float = 1e-3
    batch: int = 1
    seed: int = 0
    protocol: str = "code"
    preset: str = "default"
    hidden: tuple[int, ...] = (128, 256, 256, 128)
    layernorm: bool = True
    sweeps: int = 10
    omega: float = 0.66
    n_train: int = 1000
    n_test: int = 100
    n_eval: int = 8
    eval_every: int = 100
    ckpt_every: int = 250  # a paper-size checkpoint with Adam state is ~0.9 GB

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"Unrecognized loss {self.loss!r}; expected one of {tuple(LOSSES)}")
        if self.protocol not in ("code", "dataset"):
            raise ValueError(f"Unrecognized protocol {self.protocol!r}; expected 'code' or "
                             "'dataset'")
        for name in ("steps", "batch", "eval_every", "ckpt_every", "r_max"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.r_max > self.K:
            raise ValueError(f"r_max must be <= K, got r_max={self.r_max} > K={self.K}")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        self.data  # noqa: B018 - validates pde, preset, N and K

    @property
    def data(self) -> DataConfig:
        return DataConfig(pde=self.pde, N=self.N, K=self.K, sweeps=self.sweeps,
                          omega=self.omega, preset=self.preset)

    @property
    def mlp(self) -> MLPConfig:
        return MLPConfig(n=(self.N + 1) ** 2, K=self.K, r_max=self.r_max, hidden=self.hidden,
                         layernorm=self.layernorm)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if k == "hidden" else v) for k, v in d.items() if k in known})


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@torch.no_grad()
def evaluate(net, S_test: torch.Tensor, ranks, svd_energy: np.ndarray) -> dict:
    """Mean captured energy at ``ranks`` on a test set, and its gap to the exact SVD."""
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


@contextlib.contextmanager
def _deferred_stop():
    """Catch SIGINT/SIGTERM as a flag, checked between steps, so a checkpoint is never
    taken half-way through an optimiser step."""
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


def run_steps(*, start: int, steps: int, batch_at, step_fn, eval_fn, eval_every: int,
              ckpt_every: int, save, where, desc: str, progress: bool,
              log) -> tuple[int, float]:
    """The loop both trainers share.

    A background worker builds batch ``t+1`` (mesh, assembly, smoothing) while step ``t``
    runs; ``step_fn(batch, step) -> loss`` takes one optimiser step; ``eval_fn(step, loss)``
    returns a log line (or ``None``) every ``eval_every`` steps; ``save(step, seconds)``
    checkpoints every ``ckpt_every`` steps, at the end, and on SIGINT/SIGTERM (caught as a
    flag between steps, then re-raised as ``KeyboardInterrupt``).

    Returns the final step and the seconds spent in steps.
    """
    from tqdm.auto import tqdm

    step, elapsed = start, 0.0
    bar = tqdm(total=steps, initial=start, desc=desc, disable=None if progress else True,
               dynamic_ncols=True)
    pool = ThreadPoolExecutor(max_workers=1)
    pending = pool.submit(batch_at, start) if start < steps else None
    try:
        with _deferred_stop() as flag:
            while step < steps:
                if flag["stop"]:
                    raise KeyboardInterrupt
                t0 = time.perf_counter()
                batch = pending.result()
                pending = pool.submit(batch_at, step + 1) if step + 1 < steps else None
                loss = step_fn(batch, step)
                step += 1
                elapsed += time.perf_counter() - t0
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
                if step % eval_every == 0 or step == steps:
                    line = eval_fn(step, loss)
                    if line and not progress:
                        log(line)
                if step % ckpt_every == 0 or step == steps:
                    save(step, elapsed)
    except KeyboardInterrupt:
        save(step, elapsed)
        log(f"interrupted at step {step}; checkpoint saved to {where} (run again to resume)")
        raise KeyboardInterrupt from None
    finally:
        bar.close()
        pool.shutdown(wait=True, cancel_futures=True)
    return step, elapsed


def _resume(out: Path, cfg: TrainConfig, device) -> NLSSModel | None:
    if not out.exists():
        return None
    try:
        model = NLSSModel.load(out, map_location=device)
    except CheckpointError as err:
        raise CheckpointError(f"cannot resume from {out}: {err}; delete it or choose another "
                              "--out") from err
    saved = model.metadata.get("extra", {}).get("train_config")
    if saved is None or TrainConfig.from_dict(saved) != cfg:
        diff = sorted(k for k, v in cfg.as_dict().items() if (saved or {}).get(k) != v)
        raise CheckpointError(f"checkpoint {out} was trained with different settings "
                              f"({', '.join(diff) or 'unknown'}); use another --out or the "
                              "same settings to resume")
    return model


def train(cfg: TrainConfig, out: str | Path, *, device: str = "cpu", resume: bool = True,
          progress: bool = True, log=print) -> NLSSModel:
    """Train (or resume) a model and write its checkpoint to ``out``.

    Parameters
    ----------
    cfg : TrainConfig
    out : path
        Checkpoint file; written atomically every ``cfg.ckpt_every`` steps, at the end and
        on interruption. An existing file with the same settings is resumed.
    device : {'cpu', 'cuda'} or torch.device
    resume : bool
        Continue from ``out`` if it exists (else start over and overwrite).
    progress : bool
        Show a progress bar with the loss.
    log : callable
        Where evaluation lines go.

    Returns
    -------
    NLSSModel
        The trained model; ``model.metadata['extra']`` holds the history and timings.
    """
    out = Path(out)
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA device")
    torch.manual_seed(cfg.seed)
    model = _resume(out, cfg, device) if resume else None
    start = 0
    if model is None:
        model = NLSSModel(cfg.mlp, N=cfg.N, pde=cfg.pde, preset=cfg.preset, loss=cfg.loss,
                          extra={"train_config": cfg.as_dict()})
    else:
        start = int(model.step or 0)
    net = model.net.to(device)
    # Adam's update reads and writes every parameter and both moments: at 78M parameters
    # it, not the matrix products, bounds a step. The fused kernel makes it one pass, and
    # running it inside backward, parameter by parameter, frees each gradient at once.
    opt = BackwardAdam(net.parameters(), lr=cfg.lr)
    if model.optimizer_state is not None:
        opt.load_state_dict(model.optimizer_state)
    extra = dict(model.metadata.get("extra", {}))
    history = list(extra.get("history", []))
    elapsed = float(extra.get("train_seconds", 0.0))
    loss_fn = LOSSES[cfg.loss]

    # Data: a held-out set for evaluation, and a function that returns batch t.
    if cfg.protocol == "dataset":
        train_set, test_set = load_dataset(cfg.data, n_train=cfg.n_train, n_test=cfg.n_test,
                                           seed=cfg.seed, progress=progress)
        S_eval = test_set[: cfg.n_eval]

        def batch_at(t: int) -> np.ndarray:
            per_epoch = max(1, len(train_set) // cfg.batch)
            epoch, k = divmod(t, per_epoch)
            order = np.random.default_rng(instance_seed(cfg.seed + 2_000_003, epoch)).permutation(
                len(train_set))
            return train_set[order[k * cfg.batch:(k + 1) * cfg.batch]]
    else:
        sampler = FreshSampler(cfg.data, seed=cfg.seed)
        S_eval = sampler.test_set(cfg.n_eval)

        def batch_at(t: int) -> np.ndarray:
            return sampler.batch(t * cfg.batch, cfg.batch)

    ranks = sorted({max(1, cfg.r_max // 8), max(1, cfg.r_max // 4), max(1, cfg.r_max // 2),
                    cfg.r_max})
    svd_energy = _svd_energies(S_eval, ranks)
    S_eval_t = torch.as_tensor(S_eval, device=device)

    def save(step: int, seconds: float) -> None:
        extra.update(history=history, train_seconds=elapsed + seconds,
                     peak_rss_mib=peak_rss_mib(), device=str(device))
        model.save(out, optimizer=opt, step=step, extra=extra)

    def step_fn(S_np: np.ndarray, step: int) -> float:
        S = torch.as_tensor(S_np, device=device)
        g = torch.Generator().manual_seed(instance_seed(cfg.seed + 7, step))
        perm = torch.stack([torch.randperm(cfg.K, generator=g) for _ in range(len(S))])
        S = torch.take_along_dim(S, perm.to(device)[:, None, :], dim=2)
        loss = loss_fn(net(S), S)
        loss.backward()  # BackwardAdam updates each parameter here and frees its gradient
        return float(loss.item())

    def eval_fn(step: int, loss: float) -> str:
        net.eval()
        ev = evaluate(net, S_eval_t, ranks, svd_energy)
        net.train()
        history.append({"step": step, "loss": loss, **ev})
        return f"step {step}: loss {loss:.4f}, " + ", ".join(
            f"{k} {v:.4f}" for k, v in ev.items() if k.startswith("gap"))

    try:
        step, _ = run_steps(start=start, steps=cfg.steps, batch_at=batch_at, step_fn=step_fn,
                            eval_fn=eval_fn, eval_every=cfg.eval_every,
                            ckpt_every=cfg.ckpt_every, save=save, where=out,
                            desc=f"train {cfg.pde} {cfg.loss}", progress=progress, log=log)
    finally:
        opt.remove()  # the module is left as a plain module, whatever happened
    net.eval()
    model.step = step
    model.metadata["extra"] = extra
    return model
