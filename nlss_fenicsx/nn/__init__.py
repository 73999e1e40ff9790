"""Learned coarse spaces in torch: the NeuraLSP MLP, its losses and checkpoints.

Importing this subpackage imports torch; the top-level :mod:`nlss_fenicsx` never does.

It also asks PyTorch's CPU allocator for transparent huge pages on buffers of 2 MiB and
more (``THP_MEM_ALLOC_ENABLE``; ``C10_THP_MEM_ALLOC_ENABLE`` in older releases, which read
it when torch loads), unless the variable is already set. A training step at the paper's
size allocates and frees 156 MB gradients; in 4 KiB pages the kernel faulted and zeroed
78,000 pages per step, half of a CPU step (0.19 -> 0.10 s per step, same arithmetic and
same peak memory, measured by ``benchmarks/bench_nlss.py``). Set the variable to 0 to opt
out.
"""

import os

for _name in ("THP_MEM_ALLOC_ENABLE", "C10_THP_MEM_ALLOC_ENABLE"):
    os.environ.setdefault(_name, "1")

from nlss_fenicsx.nn.losses import (  # noqa: E402
    captured_energy,
    nlss_loss,
    subspace_loss,
    twogrid_error_loss,
)
from nlss_fenicsx.nn.model import NLSSMLP, CheckpointError, MLPConfig, NLSSModel  # noqa: E402

__all__ = [
    "CheckpointError",
    "MLPConfig",
    "NLSSMLP",
    "NLSSModel",
    "captured_energy",
    "nlss_loss",
    "subspace_loss",
    "twogrid_error_loss",
]
