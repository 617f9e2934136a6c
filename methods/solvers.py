"""Small solvers on the T×T Gramian, shared by several methods (float64 numpy; T is tiny).

- :func:`min_norm_weights` — Sener & Koltun's min-norm solver (MGDA, IMGrad's κ), as in the
  reference copies: best pair first, then projected gradient with exact line search.
- :func:`simplex_slsqp` — scipy SLSQP over the simplex from uniform weights, as CAGrad and
  IMGrad's reference code do (with the analytic gradient, which the reference lacks).
- :func:`nash_weights` — the Nash bargaining fixed point K α = 1/α by damped Newton.
- :class:`InternalAdam` — torch's Adam update for a method's own variables.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor, nn

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
    fun: Callable[[np.ndarray], float],
    jac: Callable[[np.ndarray], np.ndarray],
    n: int,
    *,
    ftol: float = 1e-6,
) -> np.ndarray:
    """Minimise ``fun`` over the probability simplex with SLSQP from uniform weights.

    ``ftol`` is SLSQP's (absolute) accuracy goal on ``fun``; the default is scipy's, which
    the references use. CAGrad's dual is flat near its minimum (a 1e-4 change of w moves the
    objective by ~1e-9), so callers that want w* itself pass a tighter value."""
    x0 = np.ones(n) / n
    res = minimize(
        fun,
        x0,
        jac=jac,
        method="SLSQP",
        options={"ftol": ftol},
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
    tol: float = 1e-6,
) -> tuple[np.ndarray, int, bool]:
    """Solve K α = 1/α with α > 0 (the Nash-MTL bargaining solution).

    This is the stationary point of the strictly convex, self-concordant
    φ(α) = ½αᵀKα − Σ log α_t, found by damped Newton (Armijo backtracking and a
    fraction-to-boundary rule); each iteration is one T×T solve. As the reference does, K is
    first normalised by its Frobenius norm s and the answer scaled back (α = β/√s with
    K̂β = 1/β, K̂ = K/s). The Newton system is solved in the variables-scaled form
    (D K̂ D + I) u = r with D = diag(β), r = β ⊙ K̂β − 1, which stays well conditioned when
    the entries of β differ by orders of magnitude.

    Convergence: the scale-free residual max_t |α_t (Kα)_t − 1| < ``tol`` (the reference
    tests ‖K̂α − 1/α‖ < 1e-3, which mixes scales; the fixed point is the same). The start is
    ``alpha0`` (the previous solution, as the reference warm-starts) or ones, rescaled by the
    optimal factor along its ray. Returns (α, iterations, converged). Without convergence in
    ``max_iter`` iterations, on non-finite values, or when no solution exists (K has a null
    direction inside the positive orthant, e.g. a zero gradient, so α diverges), it returns
    ``alpha0`` (or ones) with ``converged=False``; the caller keeps its previous α, as the
    reference does when its solver fails.
    """
    n = K.shape[0]
    fallback = np.ones(n) if alpha0 is None else np.asarray(alpha0, dtype=np.float64).copy()
    scale = float(np.linalg.norm(K))
    if not np.isfinite(scale) or scale <= 0:
        return fallback, 0, False
    Kn = K / scale
    root = np.sqrt(scale)
    b = np.ones(n) if alpha0 is None else np.asarray(alpha0, dtype=np.float64) * root
    if not (np.isfinite(b).all() and (b > 0).all()):
        b = np.ones(n)
    curv = float(b @ Kn @ b)
    if curv > 0:  # argmin over t of φ(t·b): t² bᵀK̂b = n
        b = b * np.sqrt(n / curv)
    eye = np.eye(n)

    def phi(x: np.ndarray) -> float:
        return 0.5 * float(x @ Kn @ x) - float(np.sum(np.log(x)))

    for it in range(max_iter + 1):
        Kb = Kn @ b
        r = b * Kb - 1.0
        if np.max(np.abs(r)) < tol:
            return b / root, it, True
        if it == max_iter:
            break
        try:
            u = np.linalg.solve(b[:, None] * Kn * b[None, :] + eye, r)
        except np.linalg.LinAlgError:
            break
        step = b * u  # Newton step in β: H⁻¹∇φ with H = K̂ + diag(1/β²)
        t = 1.0
        if u.max() > 0:  # keep β > 0: β − t·β⊙u > 0  ⇔  t·u < 1
            t = min(1.0, 0.99 / float(u.max()))
        f0, slope = phi(b), float(r @ u)  # slope = ∇φᵀ step = rᵀ(DK̂D + I)⁻¹r ≥ 0
        while t > 1e-12 and phi(b - t * step) > f0 - 1e-4 * t * slope:
            t *= 0.5
        b = b - t * step
        if not np.isfinite(b).all() or b.max() > 1e12:
            break
    return fallback, max_iter, False


# ---------------------------------------------------------------------------------------
# Adam for a method's own variables (FAMO logits, GradNorm loss scales)
# ---------------------------------------------------------------------------------------


class InternalAdam(nn.Module):
    """``torch.optim.Adam``'s update (L2 weight decay, no amsgrad) on one tensor whose state
    lives in buffers, so it travels with the owning method's ``state_dict`` and ``.to()``.

    Used by methods that update their own variables (FAMO logits, GradNorm loss scales)
    without touching the trainer's optimiser. Transcribed from ``_single_tensor_adam``."""

    def __init__(self, size: int, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__()
        self.betas = betas
        self.eps = eps
        self.register_buffer("exp_avg", torch.zeros(size, dtype=torch.float64))
        self.register_buffer("exp_avg_sq", torch.zeros(size, dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def step_(self, param: Tensor, grad: Tensor, lr: float, weight_decay: float = 0.0) -> None:
        """Update ``param`` in place from ``grad``."""
        beta1, beta2 = self.betas
        self.steps += 1
        step = float(self.steps)
        if weight_decay != 0:
            grad = grad.add(param, alpha=weight_decay)
        self.exp_avg.lerp_(grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = lr / (1 - beta1**step)
        denom = (self.exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(self.eps)
        param.addcdiv_(self.exp_avg, denom, value=-step_size)

    def reset(self) -> None:
        self.exp_avg.zero_()
        self.exp_avg_sq.zero_()
        self.steps.zero_()
