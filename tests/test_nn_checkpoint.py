"""nn/checkpoint.py and nn/base.py: one format for both architectures, plain types only,
bit-exact round trips, settings read without the weights, and one line for every file
that cannot be used (missing, a directory, corrupt, unsafe, another format, non-finite)."""

import contextlib
import errno
import os
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nlss_fenicsx.nn import checkpoint as ckpt  # noqa: E402
from nlss_fenicsx.nn.checkpoint import (  # noqa: E402
    FORMAT,
    FORMAT_VERSION,
    CheckpointError,
    ModelSettings,
    check_fits,
    read_checkpoint,
    read_settings,
)
from nlss_fenicsx.nn.gnn import GNNConfig, GNNModel  # noqa: E402
from nlss_fenicsx.nn.losses import nlss_loss  # noqa: E402
from nlss_fenicsx.nn.model import MLPConfig, NLSSModel  # noqa: E402

CFG = MLPConfig(n=81, K=8, r_max=8, hidden=(32, 32))
PLAIN = (type(None), bool, int, float, str)


def _trained_model():
    torch.manual_seed(0)
    model = NLSSModel(CFG, N=8, pde="diffusion", preset="code", sweeps=10, omega=0.66)
    opt = torch.optim.Adam(model.net.parameters(), lr=1e-3)
    S = torch.randn(2, CFG.n, CFG.K, generator=torch.Generator().manual_seed(0))
    nlss_loss(model.net(S), S).backward()
    opt.step()
    model.train_state = {"config": {"seed": 0}, "history": [{"step": 1, "loss": 0.5}]}
    return model, opt


def _one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


def _leaves_are_plain(obj, where="payload"):
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert isinstance(k, str | int), (where, k)
            _leaves_are_plain(v, f"{where}[{k!r}]")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            _leaves_are_plain(v, f"{where}[{i}]")
    else:
        assert isinstance(obj, PLAIN) or isinstance(obj, torch.Tensor), (where, type(obj))


def test_round_trip_is_bit_exact_and_stores_plain_types_only(tmp_path):
    model, opt = _trained_model()
    model.train_state["where"] = pathlib.Path("runs") / "a"  # converted, not pickled
    model.train_state["count"] = np.int64(3)
    model.int8_calibration = {"lean": True, "head_mean": torch.arange(4.0), "ranks": [2, 4]}
    path = model.save(tmp_path / "model.pt", optimizer=opt, step=7)
    assert os.listdir(tmp_path) == ["model.pt"]  # atomic: no temporary file left behind
    payload = torch.load(path, weights_only=True)  # the safe loader reads all of it
    assert payload["format"] == FORMAT and payload["format_version"] == FORMAT_VERSION
    _leaves_are_plain({k: v for k, v in payload.items() if k != "optimizer"})
    assert payload["train"]["where"] == os.path.join("runs", "a")
    loaded = NLSSModel.load(path)
    state, state2 = model.net.state_dict(), loaded.net.state_dict()
    assert state.keys() == state2.keys()
    assert all(torch.equal(state[k], state2[k]) for k in state)
    assert loaded.settings == model.settings and loaded.config == model.config
    assert loaded.step == 7 and loaded.path == path
    assert loaded.train_state["history"] == [{"step": 1, "loss": 0.5}]
    assert loaded.train_state["count"] == 3 and type(loaded.train_state["count"]) is int
    assert torch.equal(loaded.int8_calibration["head_mean"], torch.arange(4.0))
    opt2 = torch.optim.Adam(loaded.net.parameters(), lr=1e-3)
    opt2.load_state_dict(loaded.optimizer_state)  # the optimizer state resumes
    S = np.random.default_rng(1).standard_normal((CFG.n, CFG.K))
    np.testing.assert_array_equal(loaded.basis(S, 8), model.basis(S, 8))
    loaded.save(path, step=None)  # overwriting is atomic as well
    assert os.listdir(tmp_path) == ["model.pt"] and NLSSModel.load(path).optimizer_state is None


def test_gnn_uses_the_same_format_and_each_class_refuses_the_other(tmp_path):
    torch.manual_seed(0)
    gnn = GNNModel(GNNConfig(n=81, K=8, r_max=4, width=16, layers=2), N=8, pde="diffusion")
    path = gnn.save(tmp_path / "gnn.pt", step=3)
    loaded = GNNModel.load(path)
    for k, v in gnn.net.state_dict().items():
        assert torch.equal(v, loaded.net.state_dict()[k]), k
    assert read_settings(path) == gnn.settings
    assert (gnn.settings.arch, gnn.settings.loss) == ("gnn", "twogrid")
    mlp_path = NLSSModel(MLPConfig(n=81, K=8, r_max=8, hidden=(8,))).save(tmp_path / "mlp.pt")
    with pytest.raises(CheckpointError, match="holds a GNN model; expected a MLP one"):
        NLSSModel.load(path)
    with pytest.raises(CheckpointError, match="holds a MLP model; expected a GNN one"):
        GNNModel.load(mlp_path)


def test_read_settings_reads_no_weights(tmp_path, monkeypatch):
    model, _ = _trained_model()
    path = model.save(tmp_path / "m.pt")
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "load", spy)
    s = read_settings(path)
    assert calls and all(c.get("mmap") is True and c.get("weights_only") is True for c in calls)
    assert s == ModelSettings(arch="mlp", loss="nlss", n=81, K=8, r_max=8, N=8,
                              pde="diffusion", preset="code", sweeps=10, omega=0.66,
                              node_order="grid", mesh_id=None)


def test_fits_names_every_mismatch_and_refuses_another_family(tmp_path):
    model, _ = _trained_model()
    path = model.save(tmp_path / "m.pt")
    loaded = NLSSModel.load(path)
    loaded.check_compatible(n=81, K=8, pde="diffusion")
    with pytest.raises(CheckpointError, match=r"m\.pt was trained for n=81; the problem has "
                                              r"n=4225"):
        loaded.check_compatible(n=4225, K=8)
    with pytest.raises(CheckpointError, match=r"K=8, pde='diffusion'.*K=72, pde='anisotropic'"):
        loaded.check_compatible(K=72, pde="anisotropic")
    s = read_settings(path)
    with pytest.raises(CheckpointError, match=r"coarse rank 9 is outside 1..r_max=8"):
        check_fits(s, r=9)
    mesh_model = ModelSettings(arch="mlp", loss="nlss", n=81, K=8, r_max=8,
                               node_order="mesh", mesh_id="abc")
    with pytest.raises(CheckpointError, match="mesh_id='abc'.*mesh_id='xyz'"):
        check_fits(mesh_model, mesh_id="xyz")
    check_fits(mesh_model, n=81, K=8, r=8, pde="anything")  # no family recorded: not checked


def _write_payload(path, **changes):
    model, _ = _trained_model()
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION,
               "settings": model.settings.to_dict(), "config": model.config.to_dict(),
               "state_dict": model.net.state_dict(), "int8": None, "train": None,
               "optimizer": None, "versions": {}}
    payload.update(changes)
    torch.save(payload, path)
    return path


def test_unreadable_files_are_one_line_each(tmp_path):
    model, _ = _trained_model()
    data = model.save(tmp_path / "m.pt").read_bytes()
    cases = {"nope.pt": "nope.pt does not exist", "folder.pt": "folder.pt is a directory",
             "truncated.pt": "truncated.pt is truncated or corrupt",
             "garbage.pt": "garbage.pt is truncated or corrupt",
             "other.pt": "not an nlss_fenicsx checkpoint of this version",
             "v1.pt": "expected format 'nlss_fenicsx.checkpoint', got 'nlss_fenicsx.NLSSModel'",
             "v3.pt": "has format version 3; this nlss_fenicsx reads version 2",
             "partial.pt": r"lacks required entries \['state_dict'\]",
             "settings.pt": "has invalid settings",
             "text.pt": r"text.pt is truncated or corrupt, or not a checkpoint \(no zip archive"}
    (tmp_path / "folder.pt").mkdir()
    (tmp_path / "text.pt").write_text("not a checkpoint\n")  # torch's message names mmap
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    torch.save({"format": "nlss_fenicsx.NLSSModel", "format_version": 1}, tmp_path / "v1.pt")
    _write_payload(tmp_path / "v3.pt", format_version=3)
    _write_payload(tmp_path / "partial.pt", state_dict=None)
    _write_payload(tmp_path / "settings.pt", settings={"arch": "transformer"})
    for name, match in cases.items():
        for reader in (read_checkpoint, read_settings, NLSSModel.load):
            with pytest.raises(CheckpointError, match=match) as info:
                reader(tmp_path / name)
            _one_line(info)


def test_a_type_the_safe_loader_refuses_is_named_in_one_line(tmp_path):
    path = _write_payload(tmp_path / "unsafe.pt", train={"out": pathlib.PosixPath("/x")})
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    line = _one_line(info)
    assert "pathlib.PosixPath" in line and "safe loader does not allow" in line
    assert "weights_only" not in line and "trust" not in line  # no advice to load unsafely


def test_non_finite_weights_are_refused_at_write_and_at_read(tmp_path):
    model, _ = _trained_model()
    with torch.no_grad():
        model.net.head.bias[3] = float("nan")
    with pytest.raises(CheckpointError, match=r"refusing to write .*non-finite weights in "
                                              r"state_dict\['head.bias'\]"):
        model.save(tmp_path / "nan.pt")
    assert os.listdir(tmp_path) == []
    path = _write_payload(tmp_path / "nan.pt", state_dict=model.net.state_dict())
    with pytest.raises(CheckpointError, match=r"non-finite weights \(NaN or Inf in "
                                              r"state_dict\['head.bias'\]\)") as info:
        NLSSModel.load(path)
    _one_line(info)
    inf_cal = _write_payload(tmp_path / "inf.pt", int8={"head_mean": torch.tensor([np.inf])})
    with pytest.raises(CheckpointError, match=r"int8\['head_mean'\]"):
        read_checkpoint(inf_cal)


def test_unsaveable_values_are_refused_before_writing(tmp_path):
    model, _ = _trained_model()
    model.train_state["bad"] = object()
    with pytest.raises(TypeError, match=r"train\['bad'\] has unsupported type object"):
        model.save(tmp_path / "m.pt")
    assert os.listdir(tmp_path) == []


def test_full_disk_is_one_line_naming_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    @contextlib.contextmanager
    def to_dev_full(path, **_):
        yield pathlib.Path("/dev/full")  # every write there fails with ENOSPC

    monkeypatch.setattr(ckpt, "atomic_path", to_dev_full)
    model, _ = _trained_model()
    with pytest.raises(OSError) as info:
        model.save(tmp_path / "m.pt")
    assert info.value.errno == errno.ENOSPC
    assert _one_line(info) == (f"could not write checkpoint {tmp_path / 'm.pt'}: no space "
                               "left on device")
    assert os.listdir(tmp_path) == []


TORCH_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 8384 vs 8278"


@pytest.mark.parametrize("free", [0, 1 << 40])
def test_torchs_own_full_disk_error_is_named_as_one(tmp_path, monkeypatch, free):
    """torch's zip writer reports a full disk as a RuntimeError; the file system's free
    space (os.statvfs) decides whether it is one, and the last good file stays."""
    model, _ = _trained_model()
    path = model.save(tmp_path / "m.pt")
    good = path.read_bytes()

    def torch_full(obj, fh, *a, **k):
        fh.write(b"PK" * 100)
        raise RuntimeError(TORCH_FULL)

    st = os.statvfs(tmp_path)
    monkeypatch.setattr(ckpt.torch, "save", torch_full)
    monkeypatch.setattr(ckpt.os, "statvfs", lambda _: os.statvfs_result(
        (st.f_bsize, 1, 1 << 41, free, free, 100, 100, 100, 0, 255)))
    with pytest.raises((OSError, RuntimeError)) as info:
        model.save(path)
    if free:  # room enough: another failure, reported as it is
        assert type(info.value) is RuntimeError and str(info.value) == TORCH_FULL
    else:
        assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
        assert _one_line(info) == f"could not write checkpoint {path}: no space left on device"
    assert os.listdir(tmp_path) == ["m.pt"] and path.read_bytes() == good


def _unshare():
    import shutil
    import subprocess

    exe = shutil.which("unshare")
    if exe is None or subprocess.run([exe, "-rm", "true"], capture_output=True).returncode:
        pytest.skip("needs `unshare -rm` (user and mount namespaces) to mount a tmpfs")
    return exe


FULL_SCRIPT = """
import os, sys
from pathlib import Path
import torch
from nlss_fenicsx.nn.model import MLPConfig, NLSSModel
out = Path(sys.argv[1])
NLSSModel(MLPConfig(n=81, K=8, r_max=8, hidden=(8,))).save(out)  # fits
first = out.read_bytes()
try:
    NLSSModel(MLPConfig(n=81, K=8, r_max=8, hidden=(256, 256))).save(out)  # does not
except OSError as err:
    print(f"{type(err).__name__} {err.errno} {err}")
print("kept" if out.read_bytes() == first else "changed", sorted(os.listdir(out.parent)))
"""


def test_a_real_full_disk_is_one_line_and_keeps_the_last_checkpoint(tmp_path):
    """A 128 KiB tmpfs: the small checkpoint fits, the large one does not."""
    import subprocess
    import sys

    full = tmp_path / "full"
    full.mkdir()
    (tmp_path / "w.py").write_text(FULL_SCRIPT)
    cmd = (f"mount -t tmpfs -o size=128k tmpfs {full} && {sys.executable} {tmp_path / 'w.py'} "
           f"{full / 'm.pt'}")
    proc = subprocess.run([_unshare(), "-rm", "sh", "-c", cmd], capture_output=True,
                          text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).parents[1])))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"_NoSpaceError 28 could not write checkpoint {full / 'm.pt'}: no space left on "
        "device", "kept ['m.pt']"]


def _damage(path, member_suffix="/data/0", nbytes=4096):
    """XOR ``nbytes`` of a stored zip member's data in place; return the member's name."""
    import zipfile

    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(member_suffix))
    with open(path, "r+b") as fh:
        fh.seek(info.header_offset + 26)  # local header: name and extra lengths
        skip = int.from_bytes(fh.read(2), "little") + int.from_bytes(fh.read(2), "little")
        start = info.header_offset + 30 + skip
        fh.seek(start)
        data = bytearray(fh.read(min(nbytes, info.compress_size)))
        fh.seek(start)
        fh.write(bytes(b ^ 0x5A for b in data))
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() == info.filename  # the independent check sees the damage
    return info.filename


def test_damaged_bytes_fail_the_crc_check_naming_the_member(tmp_path):
    model, _ = _trained_model()
    path = model.save(tmp_path / "m.pt")
    read_checkpoint(path)  # intact: reads
    member = _damage(path)
    for reader in (read_checkpoint, NLSSModel.load):
        with pytest.raises(CheckpointError) as info:
            reader(path)
        assert _one_line(info) == (f"checkpoint {path} is corrupt: member {member} fails its "
                                   "CRC check (the file was damaged after it was written)")
    assert read_settings(path) == model.settings  # reads no weights, checks none


def test_complex_weights_are_refused_in_one_line(tmp_path):
    model, _ = _trained_model()
    weights = model.net.state_dict()
    weights["head.bias"] = weights["head.bias"].to(torch.complex64)
    path = _write_payload(tmp_path / "c.pt", state_dict=weights)
    for reader in (read_checkpoint, NLSSModel.load):
        with pytest.raises(CheckpointError) as info:
            reader(path)
        assert _one_line(info) == (f"checkpoint {path} has weight head.bias (torch.complex64);"
                                   " expected real floating point weights only")


def test_settings_validation():
    with pytest.raises(ValueError, match="Unrecognized arch 'cnn'"):
        ModelSettings(arch="cnn", loss="nlss", n=4, K=2, r_max=2)
    with pytest.raises(ValueError, match="Unrecognized node_order 'dof'"):
        ModelSettings(arch="mlp", loss="nlss", n=4, K=2, r_max=2, node_order="dof")
    with pytest.raises(ValueError, match="r_max <= K <= n; got r_max=3, K=2, n=4"):
        ModelSettings(arch="mlp", loss="nlss", n=4, K=2, r_max=3)
    s = ModelSettings(arch="mlp", loss="nlss", n=4, K=2, r_max=2)
    assert ModelSettings.from_dict({**s.to_dict(), "from_the_future": 1}) == s
