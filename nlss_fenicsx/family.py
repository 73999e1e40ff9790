"""``nlss-family``: the NLSS optimum over ONE orthonormal basis for a whole PDE family.

The paper's network predicts ``P`` per instance from ``S``; issue 16 found that what it
learned barely depends on its input: a family basis. Built directly, that basis is the
minimiser of the paper's nested loss (section 3.2) over one orthonormal ``P`` (``n x r_max``)
on the family's training distribution,

    L(P) = (1 / m) sum_i (1 / r_max) sum_{k <= r_max} (1 - ||P_k^T S_i||_F^2 / ||S_i||_F^2),

with ``P_k`` the first ``k`` columns. Each term is ``1 - tr(P_k^T C P_k)``, with
``C = (1 / m) sum_i S_i S_i^T / ||S_i||_F^2``, and by Ky Fan's maximum principle every
``tr(P_k^T C P_k)`` is maximal, all at once, at the top ``k`` eigenvectors of ``C`` (the
paper's Theorem 4.1 on the concatenation of the normalised ``S_i``). So the optimum is a PCA,
computed here in closed form (:func:`family_basis`: Lanczos on ``C`` applied as
``sum_i S_i (S_i^T v)``), and it is **nested**: any ``r <= r_max`` leading columns are the
optimum of rank ``r`` (tests check this against a dense eigensolve, and that gradient descent
on ``P = qr(Theta)`` with the same loss reaches the same value).

The targets ``S_i`` (:func:`instance_targets`) are what the NLSS loss should capture:

``eig``     the instance's ``r_max`` lowest eigenvectors ``v_j`` of ``(A, diag A)`` (the
            two-grid oracle for a Jacobi-type smoother; off the Dirichlet rows), each
            scaled by ``(lambda_1 / lambda_j)^(1/2)``: then ``S_i S_i^T`` is the truncated
            ``(D^-1 A)^-1``, the instance's Green's function in the oracle space, and the
            PCA orders the family's directions by their weight in it (with unscaled
            eigenvectors every direction shared by all oracle spaces weighs the same, the
            order is noise, and truncations to ``r < r_max`` lose 2-4 iterations, measured
            at N = 32); the default;
``smooth``  ``K`` random vectors after many (default 300) Jacobi sweeps, the paper's ``S``
            converged (a training-time cost only).

Both are offline costs, paid once per family and size; the basis is then written with
:func:`nlss_fenicsx.basisfile.save_basis` and used through ``nlss_coarse fixed``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from nlss_fenicsx import spectral
from nlss_fenicsx._checks import check_int
from nlss_fenicsx.lanczos import start_vector

__all__ = ["TARGETS", "build_family_basis", "family_basis", "instance_targets"]

TARGETS = ("eig", "smooth")


def instance_targets(A, target: str = "eig", *, r_max: int = 64, K: int = 72,
                     sweeps: int = 300, seed: int = 0) -> np.ndarray:
    """Return the columns one instance contributes to the family's NLSS loss.

    Parameters
    ----------
    A : scipy.sparse matrix, shape (n, n)
        The instance (SPD; Dirichlet rows as identity rows), in node order.
    target : {"eig", "smooth"}
        See the module docstring.
    r_max : int
        Eigenvectors for ``eig``.
    K, sweeps : int
        Vectors and Jacobi sweeps (weight 0.66, columns renormalised, as
        :func:`nlss_fenicsx.smoothing.smoothed_vectors`) for ``smooth``.
    seed : int
        Random start of ``smooth``.

    Returns
    -------
    numpy.ndarray, shape (n, r_max) or (n, K), float64
        ``eig``: eigenvectors of unit Euclidean norm scaled by ``(lambda_1 / lambda_j)^(1/2)``
        (the first column has norm 1); ``smooth``: columns of unit norm.

    Raises
    ------
    ValueError
        On an unknown target or a bad size.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> A = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(20, 20), format="csr")
    >>> instance_targets(A, "eig", r_max=3).shape
    (20, 3)
    """
    if target not in TARGETS:
        raise ValueError(f"Unrecognized target {target!r}; expected one of {TARGETS}")
    A = sp.csr_matrix(A, dtype=np.float64)
    if target == "smooth":
        from nlss_fenicsx.smoothing import smoothed_vectors

        S = smoothed_vectors(A, check_int("K", K, 1), sweeps=check_int("sweeps", sweeps, 0),
                             rng=seed)
        return S / np.linalg.norm(S, axis=0)
    r_max = check_int("r_max", r_max, 1)
    free = np.flatnonzero(~spectral.identity_rows(A))
    if not r_max < free.size - 1:
        raise ValueError(f"expected r_max < {free.size - 1} (free unknowns - 1), got {r_max}")
    s = 1.0 / np.sqrt(A.diagonal()[free])
    C = sp.diags(s) @ A[free][:, free] @ sp.diags(s)  # similar to D^-1 A on the free rows
    W = spectral.lowest_eigenvectors(C, r_max)
    lam = np.einsum("ij,ij->j", W, C @ W)  # Rayleigh quotients = eigenvalues of (A, D)
    V = np.zeros((A.shape[0], r_max))
    V[free] = s[:, None] * W  # eigenvectors of (A, D)
    return V * (np.sqrt(lam[0] / lam) / np.linalg.norm(V, axis=0))


def family_basis(targets: Iterable[np.ndarray], r_max: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the NLSS optimum over one orthonormal basis: the top eigenvectors of ``C``.

    Parameters
    ----------
    targets : iterable of numpy.ndarray, each shape (n, k_i)
        The ``S_i`` of the family's training instances (node order); each is normalised
        by its Frobenius norm inside.
    r_max : int
        Columns of the basis, ``r_max < n``.

    Returns
    -------
    P : numpy.ndarray, shape (n, r_max)
        Orthonormal columns, ordered by decreasing eigenvalue of ``C`` (so nested), each
        signed so that its largest-magnitude entry is positive.
    energy : numpy.ndarray, shape (r_max,)
        The eigenvalues of ``C = mean_i S_i S_i^T / ||S_i||_F^2``: the mean captured
        energy gained by each column; ``1 - mean(cumsum(energy))`` is the loss.

    Raises
    ------
    ValueError
        On no targets, targets of different row counts, NaN/Inf, or ``r_max >= n``.

    Examples
    --------
    >>> import numpy as np
    >>> S = [np.eye(6)[:, :2], np.eye(6)[:, 1:3]]
    >>> P, energy = family_basis(S, 2)
    >>> float(abs(P[1, 0])), energy.round(3).tolist()  # e_1 is in both: first
    (1.0, [0.5, 0.25])
    """
    blocks = []
    for S in targets:
        S = np.asarray(S, dtype=np.float64)
        if S.ndim != 2 or not np.all(np.isfinite(S)):
            raise ValueError(f"expected finite 2-D targets S_i (n, k), got shape {S.shape}")
        if blocks and S.shape[0] != blocks[0].shape[0]:
            raise ValueError(f"expected targets with n = {blocks[0].shape[0]} rows, got "
                             f"{S.shape[0]}")
        blocks.append(S / np.linalg.norm(S))
    if not blocks:
        raise ValueError("expected at least one target S_i")
    Z = np.concatenate(blocks, axis=1) / np.sqrt(len(blocks))  # C = Z Z^T
    n = Z.shape[0]
    r_max = check_int("r_max", r_max, 1)
    if not r_max < min(n, Z.shape[1]):
        raise ValueError(f"expected r_max < min(n, total columns) = {min(n, Z.shape[1])}, "
                         f"got {r_max}")
    if min(n, Z.shape[1]) <= 2000:
        U, sv, _ = np.linalg.svd(Z, full_matrices=False)
        U, lam = U[:, :r_max], sv[:r_max] ** 2
    else:
        C = spla.LinearOperator((n, n), matvec=lambda v: Z @ (Z.T @ v), dtype=np.float64)
        lam, U = spla.eigsh(C, k=r_max, which="LA", v0=start_vector(n), tol=1e-10,
                            ncv=min(n, 2 * r_max + 20))
        order = np.argsort(-lam)
        U, lam = U[:, order], lam[order]
    U = U * np.where(U[np.abs(U).argmax(axis=0), np.arange(r_max)] < 0, -1.0, 1.0)
    return np.ascontiguousarray(U), lam


def build_family_basis(family: str, N: int, r_max: int, *, instances: int = 32,
                       target: str = "eig", preset: str = "default", seed: int = 1000,
                       jitter: float = 0.35,
                       progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, dict]:
    """Build the ``nlss-family`` basis of a family on the jittered unit square.

    Training instances ``seed, seed + 1, ...`` (each its own jittered mesh and coefficients,
    :mod:`nlss_fenicsx.grid`, grid order = node order) give :func:`instance_targets`; the
    basis is :func:`family_basis` of them.

    Parameters
    ----------
    family : str
        One of :data:`nlss_fenicsx.grid.FAMILIES`.
    N : int
        Cells per side.
    r_max : int
        Columns.
    instances : int
        Training instances ``m``.
    target : {"eig", "smooth"}
    preset : str
        Coefficient preset.
    seed : int
        First training seed (the benchmarks test on other seeds).
    jitter : float
        Mesh jitter.
    progress : callable, optional
        Called with the number of instances done.

    Returns
    -------
    P : numpy.ndarray, shape ((N+1)^2, r_max)
        In grid order (the node order of the jittered square).
    meta : dict
        For :func:`nlss_fenicsx.basisfile.save_basis`: kind, family, preset, N, mesh,
        target, instances, seed, loss (the NLSS loss reached on the training targets).

    Raises
    ------
    ValueError
        On a bad family, size or target.
    """
    from nlss_fenicsx import grid

    instances = check_int("instances", instances, 1)
    targets = []
    for i in range(instances):
        s = seed + i
        pts = grid.jittered_points(N, jitter=jitter, seed=s)
        tri = grid.delaunay_triangles(pts)
        coef = grid.coefficient_draws(family, preset, len(tri), np.random.default_rng(s))
        A = grid.assemble_p1(family, pts, tri, coef, boundary=grid.boundary_mask(N)).A
        targets.append(instance_targets(A, target, r_max=r_max, seed=s))
        if progress is not None:
            progress(i + 1)
    P, energy = family_basis(targets, r_max)
    loss = float(1.0 - np.mean(np.cumsum(energy)))
    return P, {"kind": "nlss-family", "family": family, "preset": preset, "N": N,
               "mesh": f"jittered unit square N={N} (any seed: grid order)",
               "target": target, "instances": instances, "seed": seed, "loss": loss,
               "built": f"PCA of the NLSS loss over {instances} instances ({target} targets)"}
