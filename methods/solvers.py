"""Small solvers on the T×T Gramian, shared by several methods (float64 numpy; T is tiny).

- :func:`min_norm_weights` — Sener & Koltun's min-norm solver (MGDA, IMGrad's κ), as in the
  reference copies: best pair first, then projected gradient with exact line search.
- :func:`simplex_slsqp` — scipy SLSQP over the simplex from uniform weights, as CAGrad and
  IMGrad's reference code do (with the analytic gradient, which the reference lacks).
- :func:`nash_weights` — the Nash bargaining fixed point K α = 1/α by damped Newton.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.optimize import minimize

# ---------------------------------------------------------------------------------------
# Sener min-norm solver
# ---------------------------------------------------------------------------------------


def _min_norm_pair(v1v1: float, v1v2: float, v2v2: float) -> tuple[float, float]:
    """Min-norm point of the segment [v1, v2]: weight on v1 and the squared norm.

    The reference clips to 0.999/0.001 when one end dominates (never exactly 1/0)."""
    if v1v2 >= v1v1:
        return 0.999, v1v1
    if v1v2 >= v2v2:
        return 0.001, v2v2
    gamma = -(v1v2 - v2v2) / (v1v1 + v2v2 - 2 * v1v2)
    return gamma, v2v2 + gamma * (v1v2 - v2v2)


def _project_simplex_sener(y: np.ndarray) -> np.ndarray:
    m = len(y)
    sorted_y = np.sort(y)[::-1]
    tmpsum = 0.0
    tmax_f = (np.sum(y) - 1.0) / m
    for i in range(m - 1):
        tmpsum += sorted_y[i]
        tmax = (tmpsum - 1) / (i + 1.0)
        if tmax > sorted_y[i + 1]:
            tmax_f = tmax
            break
    return np.maximum(y - tmax_f, 0.0)


def _next_point(cur: np.ndarray, grad: np.ndarray) -> np.ndarray:
    n = len(cur)
    proj_grad = grad - np.sum(grad) / n
    neg, pos = proj_grad < 0, proj_grad > 0
    tm1 = -cur[neg] / proj_grad[neg]
    tm2 = (1.0 - cur[pos]) / proj_grad[pos]
    t = 1.0
    if (tm1 > 1e-7).any():
        t = float(np.min(tm1[tm1 > 1e-7]))
    if (tm2 > 1e-7).any():
        t = min(t, float(np.min(tm2[tm2 > 1e-7])))
    return _project_simplex_sener(proj_grad * t + cur)


def min_norm_weights(
    K: np.ndarray, max_iter: int = 250, stop_crit: float = 1e-5
) -> tuple[np.ndarray, int]:
    """argmin_{w ∈ Δ} wᵀKw by Sener's solver. Returns (w, iterations).

    Follows the reference loop exactly (stop when the L1 change is below ``stop_crit`` and
    return the *previous* iterate) except that the iteration cap is real: the numpy copies
    in CAGrad/IMGrad/nash-mtl never increment their counter (methods.md §0.3.4)."""
    n = K.shape[0]
    if n == 1:
        return np.ones(1), 0
    dmin, best = np.inf, None
    for i in range(n):
        for j in range(i + 1, n):
            c, d = _min_norm_pair(K[i, i], K[i, j], K[j, j])
            if d < dmin:
                dmin, best = d, (i, j, c)
    assert best is not None
    i, j, c = best
    sol = np.zeros(n)
    sol[i], sol[j] = c, 1 - c
    if n < 3:
        return sol, 0
    for it in range(max_iter):
        new_point = _next_point(sol, -K @ sol)
        v1v1 = sol @ K @ sol
        v1v2 = sol @ K @ new_point
        v2v2 = new_point @ K @ new_point
        nc, _ = _min_norm_pair(v1v1, v1v2, v2v2)
        new_sol = nc * sol + (1 - nc) * new_point
        if np.sum(np.abs(new_sol - sol)) < stop_crit:
            return sol, it + 1
        sol = new_sol
    return sol, max_iter


# ---------------------------------------------------------------------------------------
# SLSQP over the simplex (CAGrad, IMGrad)
# ---------------------------------------------------------------------------------------


def simplex_slsqp(
    fun: Callable[[np.ndarray], float], jac: Callable[[np.ndarray], np.ndarray], n: int
) -> np.ndarray:
    """Minimise ``fun`` over the probability simplex with SLSQP from uniform weights."""
    x0 = np.ones(n) / n
    res = minimize(
        fun,
        x0,
        jac=jac,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * n,
        constraints=({"type": "eq", "fun": lambda x: 1.0 - x.sum(), "jac": lambda x: -np.ones_like(x)},),
    )
    w = np.clip(res.x, 0.0, 1.0)
    return w if np.isfinite(w).all() else x0


# ---------------------------------------------------------------------------------------
# Nash bargaining weights
# ---------------------------------------------------------------------------------------


def nash_weights(
    K: np.ndarray,
    alpha0: np.ndarray | None = None,
    max_iter: int = 20,
    tol: float = 1e-3,
) -> tuple[np.ndarray, int, bool]:
    """Solve K α = 1/α with α > 0 (the Nash-MTL bargaining solution).

    This is the stationary point of the strictly convex φ(α) = ½αᵀKα − Σ log α_t, so damped
    Newton with a fraction-to-boundary rule converges quadratically; each iteration is one
    T×T solve. As the reference does, K is first normalised by its Frobenius norm and the
    answer scaled back, and convergence means ‖Kα − 1/α‖ < ``tol`` (reference: 1e-3).
    Returns (α, iterations, converged). When K has a null direction inside the positive
    orthant (e.g. a zero gradient) there is no solution; the caller keeps its previous α,
    as the reference does when its solver fails.
    """
    n = K.shape[0]
    scale = float(np.linalg.norm(K))
    if not np.isfinite(scale) or scale <= 0:
        return np.ones(n) if alpha0 is None else alpha0, 0, False
    Kn = K / scale
    root = np.sqrt(scale)
    b = np.ones(n) if alpha0 is None else np.maximum(alpha0 * root, 1e-8)

    def phi(x: np.ndarray) -> float:
        return 0.5 * x @ Kn @ x - np.sum(np.log(x))

    for it in range(max_iter * 5):
        grad = Kn @ b - 1.0 / b
        # residual on the original scale: ‖K α − 1/α‖ with α = b/√s equals √s·‖grad‖
        if root * np.linalg.norm(grad) < tol:
            return b / root, it, True
        H = Kn + np.diag(1.0 / b**2)
        try:
            step = np.linalg.solve(H, grad)
        except np.linalg.LinAlgError:
            break
        t = 1.0
        neg = step > 0
        if neg.any():  # stay strictly inside α > 0
            t = min(1.0, 0.99 * float(np.min(b[neg] / step[neg])))
        f0, slope = phi(b), grad @ step
        while t > 1e-12 and phi(b - t * step) > f0 - 1e-4 * t * slope:
            t *= 0.5
        b = b - t * step
        if not np.isfinite(b).all() or b.max() > 1e12:
            break
    return b / root, max_iter, False
