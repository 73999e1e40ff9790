"""Learned coarse spaces in torch: the NeuraLSP MLP, its losses, checkpoints and training.

Importing this subpackage imports torch; the top-level :mod:`nlss_fenicsx` never does.
Modules: :mod:`~nlss_fenicsx.nn.model` (the paper's MLP, float32),
:mod:`~nlss_fenicsx.nn.int8` (quantised inference backend),
:mod:`~nlss_fenicsx.nn.inference` (``load_model``: the one place that picks a backend),
:mod:`~nlss_fenicsx.nn.checkpoint` (format, settings), :mod:`~nlss_fenicsx.nn.losses`,
:mod:`~nlss_fenicsx.nn.data`, :mod:`~nlss_fenicsx.nn.train`, :mod:`~nlss_fenicsx.nn.optim`,
:mod:`~nlss_fenicsx.nn.gnn` (the GNN baseline), :mod:`~nlss_fenicsx.nn.cache`.
"""

from nlss_fenicsx.nn.checkpoint import CheckpointError, ModelSettings, read_settings
from nlss_fenicsx.nn.losses import captured_energy, nlss_loss, subspace_loss, twogrid_loss
from nlss_fenicsx.nn.model import NLSSMLP, MLPConfig, NLSSModel

__all__ = [
    "NLSSMLP",
    "CheckpointError",
    "MLPConfig",
    "ModelSettings",
    "NLSSModel",
    "captured_energy",
    "nlss_loss",
    "read_settings",
    "subspace_loss",
    "twogrid_loss",
]
