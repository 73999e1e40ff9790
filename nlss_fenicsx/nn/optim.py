"""Adam that steps inside ``backward``, one parameter at a time.

At the paper's size (78M parameters, two 39M-entry weight matrices) training memory is
weights + two Adam moments + gradients. :class:`BackwardAdam` applies the update to each
parameter as soon as its gradient is complete (a post-accumulate-grad hook) and frees
that gradient at once, so at most one large gradient (one 39M-entry matrix) exists at a
time instead of all of them. It calls PyTorch's fused Adam kernel directly, the same
kernel ``torch.optim.Adam(fused=True)`` runs, so the arithmetic is the same bit for bit
(tested); going around ``torch.optim.Optimizer`` also avoids importing TorchDynamo,
which that class does on construction (resident memory).

Its ``state_dict`` has ``torch.optim.Adam``'s layout, so checkpoints written by either
load into either.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["BackwardAdam"]


class BackwardAdam:
    """Adam (no weight decay, no AMSGrad) applied during ``loss.backward()``.

    Parameters
    ----------
    params : iterable of torch.nn.Parameter
        Parameters to optimise, in a fixed order (the order of the state dict).
    lr : float
        Learning rate.
    betas : (float, float)
        Moment decay rates.
    eps : float
        Denominator guard.

    Notes
    -----
    Usage differs from ``torch.optim`` in one way: there is no ``step()`` to call, and no
    ``zero_grad()``; ``loss.backward()`` updates the parameters and leaves ``p.grad`` as
    ``None``. Call :meth:`remove` to detach the hooks (e.g. before using the module
    with another optimiser). A parameter that receives no gradient in a backward pass is
    not updated and its step count does not advance, as in ``torch.optim.Adam``.

    Examples
    --------
    >>> import torch
    >>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    >>> opt = BackwardAdam([w], lr=0.1)
    >>> (w ** 2).sum().backward()
    >>> [round(v, 4) for v in w.detach().tolist()], w.grad is None
    ([0.9, -1.9], True)
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], *, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("BackwardAdam needs at least one parameter")
        if not (lr > 0 and 0 <= betas[0] < 1 and 0 <= betas[1] < 1 and eps > 0):
            raise ValueError(f"invalid Adam settings lr={lr}, betas={betas}, eps={eps}")
        self.lr, self.betas, self.eps = float(lr), (float(betas[0]), float(betas[1])), float(eps)
        self.state: dict[int, dict[str, torch.Tensor]] = {}
        self._hooks = [p.register_post_accumulate_grad_hook(self._make_hook(i))
                       for i, p in enumerate(self.params)]

    def _make_hook(self, index: int):
        def hook(p: torch.Tensor) -> None:
            self._update(index, p)
            p.grad = None
        return hook

    def _state(self, index: int, p: torch.Tensor) -> dict[str, torch.Tensor]:
        st = self.state.get(index)
        if st is None:  # lazily, as torch.optim.Adam: moments appear at the first step
            st = self.state[index] = {
                "step": torch.zeros((), dtype=torch.float32, device=p.device),
                "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
            }
        return st

    @torch.no_grad()
    def _update(self, index: int, p: torch.Tensor) -> None:
        st = self._state(index, p)
        st["step"] += 1
        torch._fused_adam_(
            [p], [p.grad], [st["exp_avg"]], [st["exp_avg_sq"]], [], [st["step"]],
            lr=self.lr, beta1=self.betas[0], beta2=self.betas[1], weight_decay=0.0,
            eps=self.eps, amsgrad=False, maximize=False)

    def remove(self) -> None:
        """Detach the hooks: later backward passes leave the parameters alone."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    # ------------------------------------------------------------- state dict
    def state_dict(self) -> dict[str, Any]:
        """``torch.optim.Adam``'s layout (tensors by reference, not copied)."""
        group = {"lr": self.lr, "betas": self.betas, "eps": self.eps, "weight_decay": 0.0,
                 "amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
                 "differentiable": False, "fused": True,
                 "params": list(range(len(self.params)))}
        return {"state": {i: dict(st) for i, st in self.state.items()},
                "param_groups": [group]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load moments and step counts from a ``torch.optim.Adam`` (or own) state dict.

        Raises
        ------
        ValueError
            If the state dict has another number of parameters or moments of other shapes.
        """
        groups = state_dict.get("param_groups") or []
        ids = [i for g in groups for i in g.get("params", [])]
        if len(ids) != len(self.params):
            raise ValueError(f"optimizer state has {len(ids)} parameters; the model has "
                             f"{len(self.params)}")
        new: dict[int, dict[str, torch.Tensor]] = {}
        for pos, key in enumerate(ids):
            saved = state_dict["state"].get(key)
            if saved is None:
                continue
            p = self.params[pos]
            for name in ("exp_avg", "exp_avg_sq"):
                if tuple(saved[name].shape) != tuple(p.shape):
                    raise ValueError(f"optimizer state {name} of parameter {pos} has shape "
                                     f"{tuple(saved[name].shape)}; the parameter has "
                                     f"{tuple(p.shape)}")
            new[pos] = {
                "step": torch.as_tensor(saved["step"], dtype=torch.float32).to(p.device)
                .reshape(()).clone(),
                "exp_avg": saved["exp_avg"].to(device=p.device, dtype=p.dtype),
                "exp_avg_sq": saved["exp_avg_sq"].to(device=p.device, dtype=p.dtype),
            }
        self.state = new
