"""Training losses and diagnostics for learned coarse bases (paper Sec. 4.1 and Eq. 8).

All functions take the basis ``P`` (``(batch, n, k)`` or unbatched ``(n, k)``) and the
smoothed vectors ``S`` (``(batch, n, K)`` or ``(n, K)``) as torch tensors, are
differentiable with respect to ``P``, and reduce over the batch with a mean, except
:func:`captured_energy`, which is a per-sample diagnostic.

``nlss_loss`` and ``subspace_loss`` assume that ``P`` has orthonormal columns (the model's
QR head guarantees it); they are then the paper's Eq. (4) and one minus Eq. (3)
normalised by ``||S||_F^2``. ``twogrid_loss`` is the GNN baseline's objective
(Luz et al. 2020): the Frobenius norm of the two-grid error-propagation matrix.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["captured_energy", "nlss_loss", "subspace_loss", "twogrid_loss"]


def _batched(P: torch.Tensor, S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Return ``P`` and ``S`` with a leading batch dimension, and whether one was added."""
    if P.ndim not in (2, 3) or S.ndim not in (2, 3):
        raise ValueError(
            f"expected P of shape (n, k) or (batch, n, k) and S of shape (n, K) or "
            f"(batch, n, K); got P {tuple(P.shape)}, S {tuple(S.shape)}"
        )
    unbatched = P.ndim == 2 and S.ndim == 2
    if P.ndim == 2:
        P = P.unsqueeze(0)
    if S.ndim == 2:
        S = S.unsqueeze(0)
    if P.shape[-2] != S.shape[-2]:
        raise ValueError(
            f"P and S must have the same number of rows n; got P {tuple(P.shape)}, "
            f"S {tuple(S.shape)}"
        )
    return P, S, unbatched


def _column_energy(P: torch.Tensor, S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column captured energy ``||p_j^T S||^2`` (batch, k) and ``||S||_F^2`` (batch,)."""
    proj = P.transpose(-1, -2) @ S  # P^T S, (batch, k, K): the only O(n k K) step
    energy = proj.square().sum(dim=-1)
    # The clamp keeps an all-zero sample finite (its energy is 0, so the ratio is 0).
    total = S.square().sum(dim=(-2, -1)).clamp_min(torch.finfo(S.dtype).tiny)
    return energy, total


def nlss_loss(P: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    r"""Nested left-singular-subspace (NLSS) loss, Eq. (4) of the paper.

    .. math::
        \mathcal{L}^{(k)} = \frac1k \sum_{\ell=1}^{k}
        \Bigl(1 - \frac{\|P_\ell^T S\|_F^2}{\|S\|_F^2}\Bigr),

    where :math:`P_\ell` holds the first :math:`\ell` columns of :math:`P`. Because the
    columns of ``P`` are orthonormal, :math:`\|P_\ell^T S\|_F^2 = \sum_{j\le\ell}
    \|p_j^T S\|^2`, so all ``k`` nested terms come from one cumulative sum over per-column
    energies: cost :math:`O(nkK)` instead of :math:`O(nk^2K)`.

    Parameters
    ----------
    P : torch.Tensor
        Orthonormal basis, shape ``(batch, n, k)`` or ``(n, k)``.
    S : torch.Tensor
        Smoothed vectors, shape ``(batch, n, K)`` or ``(n, K)``.

    Returns
    -------
    torch.Tensor
        Scalar, the mean of the per-sample losses over the batch. Its minimum over
        orthonormal ``P`` is :math:`\frac1k\sum_{\ell}(1 - \sum_{j\le\ell}\sigma_j^2 /
        \sum_j \sigma_j^2)`, attained by the leading left singular vectors of ``S``
        in order (Corollary 4.2).

    Examples
    --------
    >>> import torch
    >>> P = torch.eye(3)[:, :2]
    >>> S = torch.diag(torch.tensor([2.0, 1.0, 1.0]))
    >>> round(float(nlss_loss(P, S)), 6)  # ((1 - 4/6) + (1 - 5/6)) / 2
    0.25
    """
    P, S, _ = _batched(P, S)
    energy, total = _column_energy(P, S)
    nested = energy.cumsum(dim=-1) / total.unsqueeze(-1)  # (batch, k)
    return (1.0 - nested).mean(dim=-1).mean()


def subspace_loss(P: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    r"""Subspace reconstruction loss, Eq. (3) turned into a quantity to minimise.

    .. math::
        1 - \frac{\|P^T S\|_F^2}{\|S\|_F^2}.

    Invariant under any rotation of the columns of ``P`` within their span, so it fixes
    the subspace but not the order of the basis vectors.

    Parameters
    ----------
    P, S : torch.Tensor
        As in :func:`nlss_loss`: orthonormal basis ``(batch, n, k)`` or ``(n, k)`` and
        smoothed vectors ``(batch, n, K)`` or ``(n, K)``.

    Returns
    -------
    torch.Tensor
        Scalar, the mean over the batch.

    Examples
    --------
    >>> import torch
    >>> P = torch.eye(3)[:, :2]
    >>> S = torch.diag(torch.tensor([2.0, 1.0, 1.0]))
    >>> round(float(subspace_loss(P, S)), 6)  # 1 - 5/6
    0.166667
    """
    P, S, _ = _batched(P, S)
    energy, total = _column_energy(P, S)
    return (1.0 - energy.sum(dim=-1) / total).mean()


def captured_energy(P, S):
    r"""Fraction of the energy of ``S`` captured by ``span(P)``, Eq. (8) of the paper.

    .. math::
        \frac{\|P^T S\|_F^2}{\|S\|_F^2} \in [0, 1] \quad\text{for orthonormal } P.

    Parameters
    ----------
    P : torch.Tensor or numpy.ndarray
        Orthonormal basis, shape ``(batch, n, k)`` or ``(n, k)``.
    S : torch.Tensor or numpy.ndarray
        Smoothed vectors, shape ``(batch, n, K)`` or ``(n, K)``.

    Returns
    -------
    torch.Tensor or numpy.ndarray or float
        One value per sample, shape ``(batch,)``, or a 0-d value for unbatched input.
        When both inputs are NumPy arrays the result is NumPy (a ``float`` for unbatched
        input), computed in float64; otherwise it is a torch tensor.

    Examples
    --------
    >>> import numpy as np
    >>> captured_energy(np.eye(3)[:, :2], np.diag([2.0, 1.0, 1.0]))  # 5/6
    0.8333333333333334
    """
    as_numpy = isinstance(P, np.ndarray) and isinstance(S, np.ndarray)
    if as_numpy:
        P = torch.from_numpy(np.asarray(P, dtype=np.float64))
        S = torch.from_numpy(np.asarray(S, dtype=np.float64))
    else:
        P = torch.as_tensor(P)
        S = torch.as_tensor(S, dtype=P.dtype, device=P.device)
    P, S, unbatched = _batched(P, S)
    energy, total = _column_energy(P, S)
    ratio = energy.sum(dim=-1) / total
    if unbatched:
        ratio = ratio[0]
    if as_numpy:
        out = ratio.detach().numpy()
        return float(out) if unbatched else out
    return ratio


# --------------------------------------------------------------------------------------
# Two-grid error-propagation loss (GNN baseline, Luz et al. 2020)
# --------------------------------------------------------------------------------------


def _matmul(A: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """Compute ``A @ X`` for X (batch, n, m); A dense (n, n)/(batch, n, n) or sparse (n, n)."""
    if A.is_sparse or A.layout in (torch.sparse_csr, torch.sparse_csc):
        if A.ndim != 2:
            raise ValueError("a sparse A must be a single (n, n) matrix shared by the batch")
        b, n, m = X.shape
        flat = X.transpose(0, 1).reshape(n, b * m)  # (n, batch*m): one sparse product
        return torch.sparse.mm(A, flat).reshape(n, b, m).transpose(0, 1)
    return A @ X


def _diagonal(A: torch.Tensor) -> torch.Tensor:
    """Diagonal of A: shape (n,) for a 2-D (dense or sparse) A, (batch, n) for 3-D dense."""
    if A.is_sparse or A.layout in (torch.sparse_csr, torch.sparse_csc):
        coo = A.to_sparse_coo().coalesce() if not A.is_sparse else A.coalesce()
        rows, cols = coo.indices()
        on_diag = rows == cols
        d = torch.zeros(A.shape[0], dtype=coo.dtype, device=coo.device)
        return d.index_add(0, rows[on_diag], coo.values()[on_diag])
    return torch.diagonal(A, dim1=-2, dim2=-1)


def twogrid_loss(
    A: torch.Tensor,
    P: torch.Tensor,
    *,
    nu: int = 1,
    omega: float = 0.66,
    probes: int | None = None,
    generator: torch.Generator | None = None,
    normalize: bool = True,
) -> torch.Tensor:
    r"""Two-grid error-propagation loss :math:`\|G^\nu C G^\nu\|_F^2` (Luz et al. 2020).

    With the weighted-Jacobi iteration matrix :math:`G = I - \omega D^{-1}A` (``nu`` pre-
    and post-sweeps) and the Galerkin coarse-grid correction
    :math:`C = I - P (P^T A P)^{-1} P^T A`, the two-grid error-propagation matrix is
    :math:`E = G^\nu C G^\nu`. This is the objective of the GNN baseline; unlike Eq. (4)
    it does not need ``P`` orthonormal, and it is not rank-nested.

    Two evaluation modes:

    * exact (``probes=None``): forms ``E`` densely, for small ``n`` (a sparse ``A`` is
      converted with ``to_dense()``).
    * Hutchinson (``probes=m``): :math:`\|E\|_F^2 = \mathbb{E}\|Ez\|^2` for any random
      ``z`` with :math:`\mathbb{E}[zz^T] = I`; the estimate is the mean of
      :math:`\|Ez_i\|^2` over ``m`` Rademacher probes, unbiased, using only products with
      ``A`` (dense, or a 2-D torch sparse tensor applied with :func:`torch.sparse.mm`).

    Parameters
    ----------
    A : torch.Tensor
        SPD matrix: dense ``(n, n)`` or ``(batch, n, n)``, or a sparse ``(n, n)`` tensor
        (COO or CSR) shared by the whole batch.
    P : torch.Tensor
        Coarse basis ``(n, r)`` or ``(batch, n, r)``, full column rank.
    nu : int, default 1
        Number of Jacobi sweeps on each side.
    omega : float, default 0.66
        Jacobi relaxation weight.
    probes : int, optional
        Number of Hutchinson probe vectors; ``None`` means the exact dense value.
    generator : torch.Generator, optional
        Random generator for the probes (on the device of ``P``), for reproducibility.
    normalize : bool, default True
        Divide by ``n``, so the value is the mean squared singular value of ``E`` (the
        identity scores 1) and comparable across mesh sizes.

    Returns
    -------
    torch.Tensor
        Scalar: the mean over the batch of :math:`\|E\|_F^2 / n` (or of the estimate).
        Differentiable with respect to ``P`` (and ``A`` if it requires grad).

    Raises
    ------
    ValueError
        If ``P`` is not 2-D or 3-D, ``A`` does not match it, ``nu < 0`` or ``probes < 1``.

    Examples
    --------
    >>> import torch
    >>> A = torch.tensor([[2.0, -1.0], [-1.0, 2.0]], dtype=torch.float64)
    >>> loss = twogrid_loss(A, torch.eye(2, dtype=torch.float64))  # full rank: C = 0
    >>> bool(loss < 1e-12)
    True
    """
    if P.ndim not in (2, 3):
        raise ValueError(f"expected P of shape (n, r) or (batch, n, r); got {tuple(P.shape)}")
    if nu < 0:
        raise ValueError(f"nu must be >= 0; got {nu}")
    if probes is not None and probes < 1:
        raise ValueError(f"probes must be a positive integer or None; got {probes}")
    Pb = P.unsqueeze(0) if P.ndim == 2 else P
    n = Pb.shape[-2]
    if A.shape[-1] != n or A.shape[-2] != n:
        raise ValueError(f"A of shape {tuple(A.shape)} does not match P with n={n} rows")
    sparse = A.is_sparse or A.layout in (torch.sparse_csr, torch.sparse_csc)
    if probes is None and sparse:
        A = A.to_dense()

    AP = _matmul(A, Pb)  # (batch, n, r)
    Ac = Pb.transpose(-1, -2) @ AP  # Galerkin coarse operator (batch, r, r)
    Dinv = (1.0 / _diagonal(A)).unsqueeze(-1)  # broadcasts over the columns of X

    def smooth(X: torch.Tensor) -> torch.Tensor:
        for _ in range(nu):
            X = X - omega * Dinv * _matmul(A, X)
        return X

    def coarse_correct(X: torch.Tensor) -> torch.Tensor:
        # C X = X - P Ac^{-1} P^T A X, with P^T A X = (A P)^T X since A is symmetric.
        return X - Pb @ torch.linalg.solve(Ac, AP.transpose(-1, -2) @ X)

    batch = max(Pb.shape[0], A.shape[0] if A.ndim == 3 else 1)
    if probes is None:
        Z = torch.eye(n, dtype=Pb.dtype, device=Pb.device).expand(batch, n, n)
    else:
        bits = torch.randint(0, 2, (batch, n, probes), generator=generator, device=Pb.device)
        Z = bits.to(Pb.dtype) * 2.0 - 1.0  # Rademacher: E[z z^T] = I

    EZ = smooth(coarse_correct(smooth(Z)))
    value = EZ.square().sum(dim=(-2, -1))  # (batch,): ||E||_F^2 or sum_i ||E z_i||^2
    if probes is not None:
        value = value / probes
    if normalize:
        value = value / n
    return value.mean()
