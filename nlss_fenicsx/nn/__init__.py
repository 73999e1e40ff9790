"""Learned coarse spaces in torch: the NeuraLSP MLP, its losses and checkpoints.

Importing this subpackage imports torch; the top-level :mod:`nlss_fenicsx` never does.
"""

from nlss_fenicsx.nn.losses import captured_energy, nlss_loss, subspace_loss, twogrid_error_loss
from nlss_fenicsx.nn.model import NLSSMLP, CheckpointError, MLPConfig, NLSSModel

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
