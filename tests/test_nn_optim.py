"""nn/optim.py: BackwardAdam is torch's fused Adam bit for bit, frees each gradient inside
backward, and exchanges state dicts with torch.optim.Adam both ways."""

import pytest

torch = pytest.importorskip("torch")

from nlss_fenicsx.nn.optim import BackwardAdam  # noqa: E402


def _small_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(30, 20), torch.nn.LayerNorm(20),
                               torch.nn.GELU(), torch.nn.Linear(20, 50))


def test_backward_adam_equals_torch_fused_adam_bit_for_bit():
    a, b = _small_net(), _small_net()
    ref = torch.optim.Adam(a.parameters(), lr=1e-2, fused=True)
    opt = BackwardAdam(b.parameters(), lr=1e-2)
    X = torch.randn(7, 30, generator=torch.Generator().manual_seed(1))
    for t in range(6):
        ref.zero_grad()
        (a(X + t) ** 2).mean().backward()
        ref.step()
        (b(X + t) ** 2).mean().backward()
        assert all(p.grad is None for p in b.parameters())  # freed inside backward
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    # State dicts are interchangeable with torch.optim.Adam's, both ways.
    for key, st in ref.state_dict()["state"].items():
        mine = opt.state_dict()["state"][key]
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(st[name], mine[name])
    other = BackwardAdam(_small_net().parameters())
    other.load_state_dict(ref.state_dict())
    torch.optim.Adam(_small_net().parameters(), fused=True).load_state_dict(opt.state_dict())
    with pytest.raises(ValueError, match="optimizer state has 6 parameters; the model has 2"):
        BackwardAdam(torch.nn.Linear(3, 3).parameters()).load_state_dict(ref.state_dict())
    opt.remove()  # hooks gone: backward leaves parameters and gradients alone
    before = [p.detach().clone() for p in b.parameters()]
    (b(X) ** 2).mean().backward()
    assert all(torch.equal(p, q) for p, q in zip(b.parameters(), before, strict=True))
    assert all(p.grad is not None for p in b.parameters())


def test_bad_settings_and_no_parameters_are_refused():
    with pytest.raises(ValueError, match="at least one parameter"):
        BackwardAdam([])
    with pytest.raises(ValueError, match="invalid Adam settings lr=0"):
        BackwardAdam(torch.nn.Linear(2, 2).parameters(), lr=0)
    net = torch.nn.Linear(3, 3)
    ref = torch.optim.Adam(net.parameters())
    (net(torch.ones(1, 3)) ** 2).sum().backward()
    ref.step()
    state = ref.state_dict()
    state["state"][0]["exp_avg"] = torch.zeros(2, 2)
    with pytest.raises(ValueError, match=r"exp_avg of parameter 0 has shape \(2, 2\)"):
        BackwardAdam(torch.nn.Linear(3, 3).parameters()).load_state_dict(state)
