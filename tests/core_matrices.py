"""Test matrices and dense gold references for the NumPy/SciPy core (no dolfinx).

Shared by tests/test_smoothing.py, test_relaxation.py, test_twogrid.py, test_krylov.py and
test_coarse.py. Every reference here is a textbook formula evaluated with dense NumPy
linear algebra, independent of the package's code.
"""

import numpy as np
import scipy.sparse as sp
from numpy.polynomial import chebyshev as npcheb


def laplacian(m: int, *, seed: int | None = None, sigma: float = 1.5) -> sp.csr_matrix:
    """5-point operator on an m x m interior grid with Dirichlet boundary, A = G^T W G.

    ``seed=None`` gives the constant-coefficient Laplacian; otherwise each edge gets the
    log-normal conductivity ``exp(sigma N(0, 1))``.
    """
    D1 = sp.diags([np.ones(m), -np.ones(m)], [0, -1], shape=(m + 1, m))
    I = sp.identity(m)
    G = sp.vstack([sp.kron(I, D1), sp.kron(D1, I)]).tocsr()
    if seed is None:
        w = np.ones(G.shape[0])
    else:
        w = np.exp(sigma * np.random.default_rng(seed).standard_normal(G.shape[0]))
    return (G.T @ sp.diags(w) @ G).tocsr()


def random_dd_spd(n: int, rng: np.random.Generator) -> sp.csr_matrix:
    """Random symmetric, strictly diagonally dominant matrix with positive diagonal.

    Then eigenvalues of D^{-1} A lie in (0, 2), so Jacobi with omega = 0.66 is A-norm
    convergent and the two-grid operator is SPD.
    """
    density = rng.uniform(0.2, 1.0)
    off = rng.standard_normal((n, n)) * (rng.random((n, n)) < density)
    off = np.triu(off, 1)
    off = off + off.T
    diag = np.abs(off).sum(axis=1) + rng.uniform(0.5, 2.0, n)
    return sp.csr_matrix(off + np.diag(diag))


def random_spd(n: int, rng: np.random.Generator, decades: float) -> np.ndarray:
    """Q diag(lambda) Q^T with eigenvalues spread over ``decades``: SPD, not diagonally
    dominant in general (its diagonal is positive, as for any SPD matrix)."""
    Q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    lam = np.logspace(0, -decades, n) * rng.uniform(0.5, 2.0)
    A = (Q * lam) @ Q.T
    return 0.5 * (A + A.T)


def vector_laplacian(m: int, a: float = 0.25, *, seed: int | None = None) -> sp.csr_matrix:
    """A 3-component "elasticity-like" operator kron(T, J) with lambda_max(D^-1 A) just
    below 2 (1 + 2a): T a 1-D Laplacian (m nodes), J the 3 x 3 coupling with unit diagonal
    and off-diagonal ``a``. a = 0.3 puts lambda_max(D^-1 A) near 3.15, as for hexahedral
    linear elasticity, where the paper's omega = 0.66 diverges. ``seed`` scales the rows and
    columns by a random positive diagonal (the spectrum of D^-1 A does not change)."""
    T = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(m, m))
    J = np.full((3, 3), a) + (1.0 - a) * np.eye(3)
    A = sp.kron(T, sp.csr_matrix(J)).tocsr()
    if seed is not None:
        s = sp.diags(np.exp(np.random.default_rng(seed).uniform(-1, 1, A.shape[0])))
        A = (s @ A @ s).tocsr()
    return A


def lambda_max_dinv_a(A) -> float:
    """Exact lambda_max(D^-1 A) from the dense symmetric D^-1/2 A D^-1/2."""
    A = A.toarray() if sp.issparse(A) else np.asarray(A)
    s = 1.0 / np.sqrt(np.diag(A))
    return float(np.linalg.eigvalsh(s[:, None] * A * s[None, :]).max())


def dense_ic0(A, shift: float = 0.0) -> np.ndarray:
    """Gold ICC(0) factor of A + shift diag(A): right-looking (k, i, j) elimination on dense
    arrays, every update outside the pattern of A dropped (Saad, Algorithm 10.1, symmetric)."""
    A = A.toarray() if sp.issparse(A) else np.array(A, dtype=float)
    pattern = A != 0
    W = np.tril(A + shift * np.diag(np.diag(A)))
    n = A.shape[0]
    for k in range(n):
        W[k, k] = np.sqrt(W[k, k])
        below = np.flatnonzero(pattern[k + 1:, k]) + k + 1
        W[below, k] /= W[k, k]
        for j in below:
            rows = below[below >= j]
            keep = rows[pattern[rows, j]]
            W[keep, j] -= W[keep, k] * W[j, k]
    return W


def dense_smoother(A, kind: str, nu: int, *, omega: float | None = None,
                   interval: tuple[float, float] | None = None,
                   shift: float = 0.0) -> np.ndarray:
    """Gold iteration matrix G of ``nu`` sweeps (error e -> G e), from the textbook formulas:
    Jacobi (I - omega D^-1 A)^nu; symmetric SOR ((I - (D/w + U)^-1 A)(I - (D/w + L)^-1 A))^nu;
    Chebyshev p(D^-1 A) with p(t) = T_nu((theta - t) / delta) / T_nu(theta / delta);
    icc: the same p of M^-1 A, M = L L^T from dense_ic0 (of A + shift diag(A))."""
    A = A.toarray() if sp.issparse(A) else np.asarray(A, dtype=float)
    n = A.shape[0]
    I = np.eye(n)
    d = np.diag(A)
    if kind == "icc":
        L = dense_ic0(A, shift)
        Li = np.linalg.inv(L)
        lam, V = np.linalg.eigh(Li @ A @ Li.T)
        # M^-1 A = L^-T (L^-1 A L^-T) L^T, so p(M^-1 A) = L^-T V p(lam) V^T L^T.
        return (Li.T @ V * _cheb(lam, nu, interval)) @ (V.T @ L.T)
    if kind == "jacobi":
        return np.linalg.matrix_power(I - omega * A / d[:, None], nu)
    if kind == "sor":
        D = np.diag(d)
        fwd = I - np.linalg.solve(D / omega + np.tril(A, -1), A)
        bwd = I - np.linalg.solve(D / omega + np.triu(A, 1), A)
        return np.linalg.matrix_power(bwd @ fwd, nu)
    s = 1.0 / np.sqrt(d)
    lam, V = np.linalg.eigh(s[:, None] * A * s[None, :])
    p = _cheb(lam, nu, interval)
    # D^-1 A = D^-1/2 V lam V^T D^1/2, so p(D^-1 A) = D^-1/2 V p(lam) V^T D^1/2.
    return (s[:, None] * V * p) @ (V.T / s[None, :])


def _cheb(lam, nu: int, interval) -> np.ndarray:
    """p(lam) = T_nu((theta - lam) / delta) / T_nu(theta / delta) on interval (lo, hi)."""
    lo, hi = interval
    theta, delta = 0.5 * (hi + lo), 0.5 * (hi - lo)
    coef = np.zeros(nu + 1)
    coef[nu] = 1.0
    return npcheb.chebval((theta - lam) / delta, coef) / npcheb.chebval(theta / delta, coef)


def dense_twogrid(A, P, G_pre: np.ndarray, G_post: np.ndarray) -> np.ndarray:
    """Gold two-grid operator B = (I - E) A^-1, E = G_post (I - P Ac^-1 P^T A) G_pre."""
    A = A.toarray() if sp.issparse(A) else np.asarray(A)
    P = P.toarray() if sp.issparse(P) else np.asarray(P)
    n = A.shape[0]
    I = np.eye(n)
    C = I - P @ np.linalg.solve(P.T @ A @ P, P.T @ A)
    E = G_post @ C @ G_pre
    return np.linalg.solve(A, (I - E).T).T  # (I - E) A^{-1}, A symmetric


def dense_jacobi_twogrid(A, P, nu_pre=5, nu_post=5, omega=0.66) -> np.ndarray:
    """The paper's two-grid operator (damped Jacobi), dense."""
    return dense_twogrid(A, P, dense_smoother(A, "jacobi", nu_pre, omega=omega),
                         dense_smoother(A, "jacobi", nu_post, omega=omega))


def a_norm(G: np.ndarray, A) -> float:
    """||G||_A = ||A^1/2 G A^-1/2||_2."""
    A = A.toarray() if sp.issparse(A) else np.asarray(A)
    lam, V = np.linalg.eigh(A)
    half = (V * np.sqrt(lam)) @ V.T
    ihalf = (V / np.sqrt(lam)) @ V.T
    return float(np.linalg.norm(half @ G @ ihalf, 2))


def rel(X, Y) -> float:
    return float(np.linalg.norm(X - Y) / np.linalg.norm(Y))
