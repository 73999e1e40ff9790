"""Incomplete Cholesky without fill, ICC(0), in SciPy: the preconditioner of the ``icc`` smoother.

``ICC(0)`` of an SPD matrix ``A`` is the lower triangular ``L`` with the pattern of
``tril(A)`` such that ``(L L^T)_ij = A_ij`` on every position ``(i, j)`` of that pattern
(fill outside it is dropped); for a given ordering it is unique when it exists (Saad,
*Iterative Methods for Sparse Linear Systems*, 2nd ed., section 10.3; Meijerink and van der
Vorst, Math. Comp. 31, 1977). It exists for M-matrices and H-matrices with a positive
diagonal; on the paper's families it breaks down only rarely (a piecewise-constant
coefficient across an obtuse angle gives a positive off-diagonal entry), e.g. one diffusion
instance in three at ``N = 128``. Then, as the Manteuffel shift does, the factor of
``A + alpha diag(A)`` is taken with the smallest ``alpha`` of ``2^-10, 2^-9, ..., 1`` that
works, so ``M = L L^T`` is always symmetric positive definite.

PETSc's ``PCICC`` (natural ordering, the ``icc`` level smoother of
:class:`nlss_fenicsx.petsc.TwoGridPC`) computes the same factor when no shift is needed;
on a breakdown PETSc's positive-definite shift (its default for ICC) chooses its own
shift, so the two preconditioners differ there (both stay SPD).

The factorisation here is a row-by-row loop in Python (tens of milliseconds at
``n = 4225``): a reference for tests and the SciPy path, not a fast kernel. The triangular
solves run in SuperLU.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from nlss_fenicsx._checks import matrix_entries

__all__ = ["IncompleteCholesky", "ic0"]

# Shifts alpha tried, in order, after a breakdown of the unshifted factor.
_SHIFTS = tuple(2.0 ** -k for k in range(10, -1, -1))


def _ic0_rows(A: sp.csr_matrix) -> tuple[sp.csr_matrix, int, float]:
    """Row-oriented IC(0); returns (L, failing row or -1, failing pivot)."""
    n = A.shape[0]
    indptr, indices, data = A.indptr, A.indices, A.data
    rows: list[dict] = []
    diag = np.empty(n)
    Lp, Li, Lx = [0], [], []
    for i in range(n):
        lo, hi = indptr[i], indptr[i + 1]
        row: dict[int, float] = {}
        a_ii = 0.0
        for k, a in zip(indices[lo:hi].tolist(), data[lo:hi].tolist(), strict=True):
            if k < i:
                # L[i, k] = (A[i, k] - sum_{j < k} L[i, j] L[k, j]) / L[k, k], on the pattern.
                row_k = rows[k]
                acc = a
                for j, l_ij in row.items():
                    l_kj = row_k.get(j)
                    if l_kj is not None:
                        acc -= l_ij * l_kj
                row[k] = acc / diag[k]
            elif k == i:
                a_ii = a
        pivot = a_ii - sum(v * v for v in row.values())
        if not pivot > 0.0:
            return None, i, pivot
        diag[i] = np.sqrt(pivot)
        rows.append(row)
        Li.extend(row)
        Lx.extend(row.values())
        Li.append(i)
        Lx.append(diag[i])
        Lp.append(len(Li))
    L = sp.csr_matrix((np.array(Lx), np.array(Li, dtype=np.int64), np.array(Lp)),
                      shape=(n, n))
    L.sort_indices()
    return L, -1, 0.0


def ic0(A, *, shift: bool = True) -> tuple[sp.csr_matrix, float]:
    """Incomplete Cholesky factor with the pattern of ``tril(A)`` (natural ordering).

    Parameters
    ----------
    A : scipy.sparse matrix or numpy.ndarray, shape (n, n)
        Real symmetric positive definite (only the lower triangle and the diagonal are read).
    shift : bool, optional
        On a breakdown (a pivot <= 0), factor ``A + alpha diag(A)`` with the smallest
        ``alpha`` in ``2^-10, ..., 2^-1, 1`` that succeeds (default). If False, refuse.

    Returns
    -------
    L : scipy.sparse.csr_matrix, shape (n, n)
        Lower triangular with a positive diagonal, ``L L^T`` equal to the (shifted) ``A``
        on the pattern of ``A``.
    alpha : float
        The shift used (0.0 when the factor of ``A`` itself exists).

    Raises
    ------
    ValueError
        If ``A`` is not square, real and finite with a positive diagonal, or if the factor
        breaks down (``shift=False``, or even with ``alpha = 1``), naming the row and pivot.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> A = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(4, 4), format="csr")
    >>> L, alpha = ic0(A)  # tridiagonal: ICC(0) is the exact Cholesky factor
    >>> bool(np.allclose((L @ L.T).toarray(), A.toarray())), alpha
    (True, 0.0)
    """
    A = matrix_entries(A, csr=True)
    d = A.diagonal()
    if not np.all(d > 0.0):
        i = int(np.flatnonzero(~(d > 0.0))[0])
        raise ValueError(f"expected a positive diagonal for ICC(0), got A[{i}, {i}] = "
                         f"{float(d[i])!r}")
    A = sp.csr_matrix(sp.tril(A, format="csr"))
    A.sort_indices()
    L, row, pivot = _ic0_rows(A)
    if L is not None:
        return L, 0.0
    if not shift:
        raise ValueError(f"ICC(0) broke down at row {row} (pivot {pivot:.3e} <= 0): A is not "
                         "an H-matrix; use shift=True (A + alpha diag(A))")
    D = sp.diags(d, format="csr")
    for alpha in _SHIFTS:
        L, row, pivot = _ic0_rows(sp.csr_matrix(A + alpha * D))
        if L is not None:
            return L, alpha
    raise ValueError(f"ICC(0) broke down at row {row} (pivot {pivot:.3e} <= 0) even for "
                     "A + diag(A): A is not symmetric positive definite")


class IncompleteCholesky:
    """``M = L L^T`` from :func:`ic0`, applied as ``M^-1`` (set up once, applied many).

    Parameters
    ----------
    A : scipy.sparse matrix or numpy.ndarray, shape (n, n)
        Real SPD matrix.

    Attributes
    ----------
    L : scipy.sparse.csr_matrix, shape (n, n)
        The factor.
    shift : float
        The ``alpha`` of ``A + alpha diag(A)`` that was factored (0.0: ``A`` itself).

    Raises
    ------
    ValueError
        As :func:`ic0`.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> A = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(5, 5), format="csr")
    >>> M = IncompleteCholesky(A)
    >>> bool(np.allclose(A @ M.solve(np.ones(5)), 1.0))
    True
    """

    def __init__(self, A):
        self.L, self.shift = ic0(A)
        # SuperLU on a triangular matrix, natural order, no pivoting: its L is ours scaled
        # to a unit diagonal and its U the diagonal (no fill); solves run in C.
        self._lu = spla.splu(self.L.tocsc(), permc_spec="NATURAL", diag_pivot_thresh=0.0,
                             options={"SymmetricMode": True})

    @property
    def shape(self) -> tuple[int, int]:
        """``(n, n)``."""
        return self.L.shape

    def solve(self, b) -> np.ndarray:
        """Return ``M^-1 b = L^-T L^-1 b``.

        Parameters
        ----------
        b : array_like, shape (n,) or (n, m)

        Returns
        -------
        numpy.ndarray, same shape, float64
        """
        b = np.asarray(b, dtype=np.float64)
        return self._lu.solve(self._lu.solve(b), trans="T")
