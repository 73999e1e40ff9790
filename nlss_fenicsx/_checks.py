"""Input checks shared by the numerical core: one clear ``ValueError`` per kind of bad input.

Every message names what was expected and what was given (issue 15, item 8): a complex
matrix is refused rather than having its imaginary part dropped, a SciPy
``LinearOperator`` is refused where the entries of the matrix are needed, and an empty
system is refused before NumPy meets a zero-size array.
"""

from __future__ import annotations

import numbers

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

__all__ = ["check_int", "check_real_array", "matrix_entries", "reject_complex"]


def check_int(name: str, value, minimum: int) -> int:
    """Return ``value`` as an ``int`` after checking it is an integer ``>= minimum``.

    Raises
    ------
    ValueError
        If ``value`` is not an integer (``bool`` and ``float`` included) or is too small.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"expected {name} to be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"expected {name} >= {minimum}, got {name} = {value}")
    return int(value)


def reject_complex(name: str, X) -> None:
    """``ValueError`` if ``X`` (array, sparse matrix or operator) has a complex dtype."""
    dtype = getattr(X, "dtype", None)
    if dtype is not None and np.dtype(dtype).kind == "c":
        raise ValueError(
            f"expected a real {name}, got dtype {np.dtype(dtype)} (the package solves real "
            "SPD systems; the imaginary part would be dropped)"
        )


def check_real_array(name: str, X, *, ndim: int | None = None) -> np.ndarray:
    """``X`` as a finite real float64 ndarray, with ``ndim`` dimensions if given.

    Raises
    ------
    ValueError
        On a complex dtype, a wrong number of dimensions, or NaN/Inf entries.
    """
    reject_complex(name, X)
    X = np.asarray(X, dtype=np.float64)
    if ndim is not None and X.ndim != ndim:
        raise ValueError(f"expected {name} to be {ndim}-D, got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError(f"expected {name} to have finite entries, got NaN or Inf")
    return X


def matrix_entries(A, *, name: str = "A", dtype=np.float64, csr: bool = False):
    """Validate a square, non-empty, real, finite matrix whose entries can be read.

    Parameters
    ----------
    A : scipy.sparse matrix or array, or array_like, shape (n, n)
        The matrix. A SciPy ``LinearOperator`` (or any object without entries) is refused.
    name : str
        How the messages call it.
    dtype : numpy floating dtype
        dtype of the result.
    csr : bool
        Return CSR also for dense input (otherwise dense stays a C-contiguous ndarray).

    Returns
    -------
    scipy.sparse.csr_matrix or numpy.ndarray, shape (n, n)
        Sparse input as canonical CSR (duplicates summed), dense input as an ndarray.

    Raises
    ------
    ValueError
        On a ``LinearOperator``, a non-square or empty shape, a complex dtype, or NaN/Inf.
    """
    if isinstance(A, spla.LinearOperator) or not (
        sp.issparse(A) or isinstance(A, np.ndarray) or hasattr(A, "__array__")
        or isinstance(A, list | tuple)
    ):
        what = type(A).__name__
        if isinstance(A, spla.LinearOperator):
            what = f"a SciPy LinearOperator ({what})"
        raise ValueError(
            f"expected {name} as a SciPy sparse matrix or a NumPy array (its entries are "
            f"needed: diagonal, Galerkin product), got {what}"
        )
    reject_complex(name, A)
    if sp.issparse(A):
        shape = A.shape
    else:
        A = np.asarray(A)
        reject_complex(name, A)
        shape = A.shape
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"expected a square 2-D matrix {name}, got shape {shape}")
    if shape[0] == 0:
        raise ValueError(f"expected a non-empty system, got {name} of shape {shape}")
    if sp.issparse(A):
        A = sp.csr_matrix(A, dtype=dtype, copy=False)
        if not A.has_canonical_format:  # never reorder the caller's arrays in place
            A = A.copy()
            A.sum_duplicates()
        finite = np.all(np.isfinite(A.data))
    else:
        A = np.ascontiguousarray(A, dtype=dtype)
        finite = np.all(np.isfinite(A))
        if csr:
            A = sp.csr_matrix(A)
    if not finite:
        raise ValueError(f"expected {name} to have finite entries, got NaN or Inf in {name}")
    return A
