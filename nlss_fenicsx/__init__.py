"""nlss_fenicsx: the NeuraLSP learned coarse space as a FEniCSx/PETSc preconditioner.

The top-level namespace is deliberately light: it exposes the NumPy/SciPy numerical
core (smoothing, coarse bases, the two-grid preconditioner and PCG) and never imports
dolfinx, petsc4py or torch. Import :mod:`nlss_fenicsx.meshes`, :mod:`nlss_fenicsx.pdes`,
:mod:`nlss_fenicsx.petsc` or :mod:`nlss_fenicsx.nn` explicitly for those layers.

Import order. The pip route's DOLFINx wheel (``dolfinx-solver-real``) must load its MPI
(``import dolfinx_solver``) before dolfinx or petsc4py is imported. ``import nlss_fenicsx``
installs a one-shot import hook that does this when dolfinx, petsc4py or slepc4py is first
imported, so after ``import nlss_fenicsx`` any import order works, at no cost until then
(the hook imports nothing itself and removes itself on first use; on the conda route,
where there is no ``dolfinx_solver``, it does nothing). Importing dolfinx *before*
``nlss_fenicsx`` is the wheel's own business: it fails inside dolfinx
(``libmpi.so.12: cannot open shared object file``) unless ``dolfinx_solver`` (or
``nlss_fenicsx``) was imported first.
"""

import sys
from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "smoothed_vectors": "nlss_fenicsx.smoothing",
    "svd_basis": "nlss_fenicsx.coarse",
    "sa_amg_basis": "nlss_fenicsx.coarse",
    "sine_basis": "nlss_fenicsx.coarse",
    "coarse_basis": "nlss_fenicsx.coarse",
    "check_coarse_spd": "nlss_fenicsx.twogrid",
    "TwoGrid": "nlss_fenicsx.twogrid",
    "pcg": "nlss_fenicsx.twogrid",
    "PCGInfo": "nlss_fenicsx.twogrid",
    "TwoGridOptions": "nlss_fenicsx.options",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    # Lazy so that `import nlss_fenicsx` stays cheap and side-effect free.
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nlss_fenicsx' has no attribute {name!r}")


class _WheelFirst:
    """Import ``dolfinx_solver`` before the first import of the FEniCSx/PETSc stack.

    A meta-path finder (``find_spec`` is all one needs; importlib.abc would cost 30 ms).
    """

    STACK = frozenset({"dolfinx", "petsc4py", "slepc4py"})

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in self.STACK:
            _remove_hook()
            try:
                import_module("dolfinx_solver")
            except ModuleNotFoundError as err:
                if err.name != "dolfinx_solver":  # the wheel is there but broken: say so
                    raise
        return None  # the regular finders import the module itself


def _remove_hook() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _WheelFirst)]


if not ({"dolfinx_solver", "dolfinx"} & sys.modules.keys()
        or any(isinstance(f, _WheelFirst) for f in sys.meta_path)):
    sys.meta_path.insert(0, _WheelFirst())
