"""nlss_fenicsx: the NeuraLSP learned coarse space as a FEniCSx/PETSc preconditioner.

The top-level namespace is deliberately light: it exposes the NumPy/SciPy numerical
core (smoothing, coarse bases, the two-grid preconditioner and PCG) and never imports
dolfinx, petsc4py or torch. Import :mod:`nlss_fenicsx.meshes`, :mod:`nlss_fenicsx.pdes`,
:mod:`nlss_fenicsx.petsc` or :mod:`nlss_fenicsx.nn` explicitly for those layers.
"""

from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "smoothed_vectors": "nlss_fenicsx.smoothing",
    "svd_basis": "nlss_fenicsx.coarse",
    "sa_amg_basis": "nlss_fenicsx.coarse",
    "TwoGrid": "nlss_fenicsx.twogrid",
    "pcg": "nlss_fenicsx.twogrid",
    "PCGInfo": "nlss_fenicsx.twogrid",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    # Lazy so that `import nlss_fenicsx` stays cheap and side-effect free.
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nlss_fenicsx' has no attribute {name!r}")
