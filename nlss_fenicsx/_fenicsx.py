"""Single place where the FEniCSx stack is imported, in the order the wheel requires.

The ``dolfinx-solver-real`` wheel bundles its own PETSc; ``dolfinx_solver`` must be
imported before ``dolfinx`` and ``petsc4py`` so that the bundled libraries are the ones
loaded. Every module of this package that needs dolfinx or petsc4py imports them from
here, so users never have to think about it. On the conda route ``dolfinx_solver`` is
absent and this is a no-op.
"""

try:  # pip route: the wheel's loader must run first.
    import dolfinx_solver  # noqa: F401
except ImportError:  # conda-forge route: nothing to do.
    pass

import dolfinx  # noqa: E402
import dolfinx.fem  # noqa: E402
import dolfinx.fem.petsc  # noqa: E402
import dolfinx.mesh  # noqa: E402
import ufl  # noqa: E402
from mpi4py import MPI  # noqa: E402
from petsc4py import PETSc  # noqa: E402

__all__ = ["MPI", "PETSc", "dolfinx", "ufl"]
