"""FairGrad — "Fair Resource Allocation in Multi-Task Learning".

Ban & Ji, ICML 2024, https://openreview.net/forum?id=KLmWRMg6nL. Official code: OptMN-Lab/fairgrad;
followed here: LibMTL ``FairGrad.py`` (a port of it).

The update d = Gᵀw maximises the α-fair utility Σ_t (g_tᵀd)^{1−α}/(1−α) of the tasks'
improvements ("loss decrease rates") over a ball; its optimality condition is

    (K w)_t = w_t^{−1/α}   for every task,   w > 0,   K = G Gᵀ,

so α = 1 is proportional fairness — K w = 1/w, exactly Nash-MTL's bargaining condition
(methods/nash_mtl.py) — α → 0 approaches the utilitarian sum and α → ∞ max-min fairness.
The reference solves it with ``scipy.optimize.least_squares(Kx − x^{−1/α}, x0 = 1/T,
bounds=(0, ∞))`` on float32 K and does not check the result. Here (:func:`fair_weights`)
it is solved in float64 on K/‖K‖_F (the answer scales back by ‖K‖_F^{−α/(1+α)}) as the
stationary point of the strictly convex φ(w) = ½wᵀKw − Σ_t h(w_t), h'(w) = w^{−1/α} (h = log
for α = 1), by damped Newton in the scaled variables w ⊙ (1 + u), started from the
orthogonal-gradient solution w_t = K_tt^{−α/(1+α)}; near the solution (where Kw > 0) the
steps switch to Newton on the scale-free log form z/α + log(K e^z) = 0 (z = log w), which
converges quadratically where φ's decrease falls below float64 resolution. Stopping rule:
max_t |w_t^{1/α}(Kw)_t − 1| < 1e-6, or, for a task where that is beyond float64 (extreme α on
norms 10⁷ apart make w_t^{1/α} ~ 1e60), (Kw)_t = w_t^{−1/α} to the rounding error of (Kw)_t
— accepted only if a solution exists (the gradients' min-norm point is not 0), so that a
diverging iterate is never taken for one. Where no solution exists (a task with a zero
gradient, or 0 in the convex hull of the gradients, e.g. g_1 = −g_2) or the solve does not
converge, the weights are 1/T (the mean gradient, the reference's start),
``info["solver_failed"]`` is 1 and a warning is issued once.

Defaults: ``alpha = 1.0`` (LibMTL's ``FairGrad_alpha`` default); α is the knob the paper
varies per benchmark, so it is searched, over [0.5, 2]. On every ill-scaled input of
tests/test_methods_solver_fidelity.py (task norms 10⁻⁴…10³ apart, cond(K) up to 1e12) the
solver converges for α in [0.2, 2]; at α = 0.1, 3, 5 and 10 some of them stall (counted and
warned, never silent). ``max_iter`` (100) caps the Newton iterations.

Heads: the reference back-propagates Σ_t w_t L_t, so heads are w-weighted
(``default_head_update = "weighted"``). The reference refuses representation gradients; the
weights depend on G only through K, so mtlx offers ``level="rep"`` as an option (parameter
level is the default) and runs exactly across workers. Not clipped (the reference does not
clip).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from methods.base import GramianMethod, check_int, check_range
from methods.mgda import min_norm_point
from methods.registry import register
from methods.space import LogUniform

TOL = 1e-6


def fair_weights(K: np.ndarray, alpha: float, max_iter: int = 100) -> tuple[np.ndarray, int, bool]:
    """Solve (Kw)_t = w_t^{−1/α}, w > 0 (see the module docstring). Returns (w, iterations,
    converged); on failure w is 1/T."""
    T = K.shape[0]
    fallback = np.full(T, 1.0 / T)
    scale = float(np.linalg.norm(K))
    diag = np.diag(K) / scale if scale > 0 else np.zeros(T)
    if not (np.isfinite(scale) and scale > 0 and (diag > 0).all()):
        return fallback, 0, False  # a zero gradient: its w_t would be infinite
    Kn = K / scale
    p = 1.0 / alpha
    w = diag ** (-alpha / (1 + alpha))  # exact when the gradients are orthogonal
    curv = float(w @ Kn @ w)
    if curv > 0:  # the best point on the ray t·w
        w *= (np.sum(w ** (1 - p)) / curv) ** (1 / (1 + p))
    for it in range(max_iter + 1):
        F = _log_residual(Kn, np.log(w), p)
        if _converged(Kn, w, F, p, lambda: _has_solution(Kn)):
            return w * scale ** (-alpha / (1 + alpha)), it, True
        if it == max_iter:
            break
        finite = bool(np.isfinite(F).all())
        step = _log_newton(Kn, w, F, p) if finite and np.abs(F).max() < 1e-4 else None
        if step is None:
            step = _convex_newton(Kn, w, p)
        if step is None and finite:  # the convex step stalled at rounding level
            step = _log_newton(Kn, w, F, p)
        if step is None or not np.isfinite(step).all():
            break
        w = step
    return fallback, max_iter, False


def _converged(Kn: np.ndarray, w: np.ndarray, F: np.ndarray, p: float, solvable) -> bool:
    """Every task meets |w_t^p (Kw)_t − 1| < TOL, or (Kw)_t = w_t^{−p} holds to the rounding
    error of the product (Kw)_t (1e-12·Σ_j |K_tj| w_j) and a solution exists (``solvable()``):
    for extreme α on gradients 10⁷ apart w_t^p reaches 1e60 and no float64 w meets the first
    test, but the condition is then as exact as K itself. Without the existence check a
    diverging iterate (g₂ = −g₁, where Kw → 0) would pass the second test."""
    relative = np.isfinite(F) & (np.abs(np.expm1(np.where(np.isfinite(F), F, 0.0))) < TOL)
    if relative.all():
        return True
    rounding = np.abs(w**-p - Kn @ w) <= 1e-12 * (np.abs(Kn) @ w)
    return bool(np.all(relative | rounding)) and solvable()


def _has_solution(Kn: np.ndarray) -> bool:
    """(Kw)_t = w_t^{−p} has a solution iff no w ≥ 0, w ≠ 0 has Gᵀw = 0 (φ is then coercive on
    the open orthant), i.e. iff the min-norm point of the gradients' convex hull is not 0
    (they are not Pareto-stationary), measured against the smallest task's ‖g_t‖²."""
    w, _ = min_norm_point(Kn)
    return float(w @ Kn @ w) > 1e-12 * float(np.diag(Kn).min())


def _convex_newton(Kn: np.ndarray, w: np.ndarray, p: float) -> np.ndarray | None:
    """One damped Newton step on the strictly convex φ(w) = ½wᵀKw − Σ h(w_t), h' = w^{−p},
    in the scaled variables w ⊙ (1 + u): (D K D + p·diag(w^{1−p})) u = −D∇φ. Globally
    convergent from any w > 0; None when φ cannot decrease."""

    def phi(x: np.ndarray) -> float:
        h = np.log(x) if p == 1 else x ** (1 - p) / (1 - p)
        return 0.5 * float(x @ Kn @ x) - float(h.sum())

    grad = Kn @ w - w ** (-p)
    M = w[:, None] * Kn * w[None, :] + np.diag(p * w ** (1 - p))
    try:
        u = -np.linalg.solve(M, w * grad)
    except np.linalg.LinAlgError:
        return None
    t = 1.0 if u.min() > -0.99 else 0.99 / float(-u.min())  # keep w > 0
    f0, slope = phi(w), float((w * grad) @ u)
    while t > 1e-12 and phi(w * (1 + t * u)) > f0 + 1e-4 * t * slope:
        t *= 0.5
    return w * (1 + t * u) if t > 1e-12 and slope < 0 else None


def _log_newton(Kn: np.ndarray, w: np.ndarray, F: np.ndarray, p: float) -> np.ndarray | None:
    """One Newton step on F(z) = p·z + log(K e^z) = 0 (z = log w) with backtracking on ‖F‖²:
    scale-free and quadratically convergent near the solution (where K w > 0), where the
    convex step stalls at rounding level because φ's decrease is below float64 resolution."""
    J = p * np.eye(len(w)) + (Kn * w[None, :]) / (Kn @ w)[:, None]
    try:
        dz = -np.linalg.solve(J, F)
    except np.linalg.LinAlgError:
        return None
    z, t, merit = np.log(w), 1.0, float(F @ F)
    while t > 1e-6:
        F_new = _log_residual(Kn, z + t * dz, p)
        if np.isfinite(F_new).all() and float(F_new @ F_new) < (1 - 1e-4 * t) * merit:
            return np.exp(z + t * dz)
        t *= 0.5
    return None


def _log_residual(Kn: np.ndarray, z: np.ndarray, p: float) -> np.ndarray:
    """F(z) = p·z + log(K e^z): zero exactly at the solution, scale-free (log of w^p (Kw));
    NaN where (K e^z)_t ≤ 0."""
    Kw = Kn @ np.exp(z)
    with np.errstate(invalid="ignore", divide="ignore"):
        return p * z + np.log(np.where(Kw > 0, Kw, np.nan))


@dataclass(frozen=True)
class FairGradConfig:
    """``alpha``: the fairness of the allocation (1 proportional, → ∞ max-min);
    ``max_iter``: Newton iteration cap (a converging solve needs far fewer)."""

    alpha: float = 1.0
    max_iter: int = 100

    def __post_init__(self) -> None:
        check_range("alpha", self.alpha, 0.0, low_inclusive=False)
        check_int("max_iter", self.max_iter, 1)


@register("fairgrad")
class FairGrad(GramianMethod):
    """FairGrad: weights with (Kw)_t = w_t^{−1/α}, the α-fair allocation of improvements."""

    Config = FairGradConfig
    default_head_update = "weighted"
    search_space = {"alpha": LogUniform(0.5, 2.0)}

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> tuple[Tensor, dict[str, float]]:
        w, iters, ok = fair_weights(gramian.cpu().numpy(), self.config.alpha, self.config.max_iter)
        if not ok:
            self.warn_once(
                "solver_failed",
                f"fairgrad: no solution of (Kw)_t = w_t^(-1/alpha) at step {self.step_count} (a "
                "zero or opposing task gradient?); the mean gradient (w = 1/T) is used and the "
                "failure is counted in diagnostics as solver_failed",
            )
        info = {"solver_failed": float(not ok), "iterations": float(iters)}
        return torch.from_numpy(w).to(gramian), info

