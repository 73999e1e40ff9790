"""The README's plug-in section runs verbatim: each of its code blocks, extracted from
README.md, in a fresh process (serially, and the first two under mpiexec -n 2)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, mpiexec

SECTION = "## Plug it into your own model"


def _blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


def _run(code: str, cwd: Path, nprocs: int = 1) -> list[str]:
    script = cwd / "snippet.py"
    script.write_text(code)
    cmd = [sys.executable, str(script)]
    if nprocs > 1:
        cmd = [mpiexec(), "-n", str(nprocs), *cmd]
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "HOME": str(cwd)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd, env=env)
    assert proc.returncode == 0, f"{cmd}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout.strip().splitlines()


def _iterations(lines: list[str]) -> int:
    last = lines[-1].split()
    assert last[0] == "iterations", lines
    return int(last[1])


def test_the_section_has_the_three_programs():
    blocks = _blocks()
    assert len(blocks) == 3
    assert all(b.startswith("import nlss_fenicsx  #") for b in blocks)  # the import line first
    assert '"nlss_smoother"' in blocks[0] and "attach_node_order" in blocks[0]
    assert "setNearNullSpace" in blocks[1]
    assert "sampler=" in blocks[2] and '"nlss_model"' in blocks[2]


@pytest.mark.parametrize("which", [0, 1], ids=["plug-in", "near-nullspace"])
def test_plug_in_blocks_run_serially_and_on_two_ranks(which, tmp_path):
    code = _blocks()[which]
    serial = _iterations(_run(code, tmp_path))
    parallel = _iterations(_run(code, tmp_path, nprocs=2))
    assert 0 < serial < 60 and abs(parallel - serial) <= 2


def test_train_on_your_own_mesh_block_runs(tmp_path):
    its = _iterations(_run(_blocks()[2], tmp_path))
    assert (tmp_path / "my_model.pt").is_file()
    assert 0 < its < 40
