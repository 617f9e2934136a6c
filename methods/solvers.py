"""Small solvers on the T×T Gramian, shared by several methods (float64 numpy; T is tiny).

- :func:`min_norm_weights` — Sener & Koltun's min-norm solver (MGDA, IMGrad's κ), as in the
  reference copies: best pair first, then projected gradient with exact line search.
- :func:`conflict_averse_dual` — CAGrad's / IMGrad's dual over the simplex, by a
  scale-free barrier Newton method with a checked (Frank–Wolfe gap) stopping rule.
- :func:`nash_weights` — the Nash bargaining fixed point K α = 1/α by damped Newton.
- :class:`InternalAdam` — torch's Adam update for a method's own variables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
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
    in CAGrad/IMGrad/nash-mtl never increment their counter (docs/methods.md §Sener's solver)."""
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
# The conflict-averse dual over the simplex (CAGrad, IMGrad)
# ---------------------------------------------------------------------------------------


# Barrier path: a step is centred when the Newton decrement² < CENTRED·μ; μ then shrinks by
# SHRINK. Below T·μ = POLISH_AT·size the face of weights > POLISH_SUPPORT·max(w) is polished.
CENTRED, SHRINK, POLISH_AT, POLISH_SUPPORT, POLISH_STEPS = 4.0, 0.01, 1e-3, 1e-3, 8
# The active-set method is tried first; the barrier path is the fallback it never needs on
# the tested inputs (tests/test_methods_solver_fidelity.py counts both).
ACTIVE_SET_STEPS = 60


@dataclass(frozen=True)
class DualSolution:
    """Result of :func:`conflict_averse_dual`: the minimiser ``w``, its objective, the
    Frank–Wolfe gap (an upper bound on ``objective − min``), Newton iterations, and
    ``converged`` (the gap met the tolerance)."""

    w: np.ndarray
    objective: float
    gap: float
    iterations: int
    converged: bool


def conflict_averse_dual(
    K: np.ndarray,
    a: np.ndarray,
    rho: float,
    *,
    eps: float = 1e-8,
    rtol: float = 1e-9,
    max_iter: int = 200,
) -> DualSolution:
    """argmin over the probability simplex of  f(w) = aᵀw + ρ·sqrt(wᵀKw + ε).

    CAGrad's and IMGrad's dual (``a`` = the linear term's coefficients on the Gramian).
    f is convex, so the Frank–Wolfe gap  ∇f(w)ᵀw − min_t ∇f(w)_t  bounds f(w) − f* from
    above; the solver stops when that gap is below ``rtol`` times the size of the terms
    (|aᵀw| + ρ·sqrt(wᵀKw + ε)): a checked stopping rule, not an assumed one.

    Method: first a primal active-set method (Newton on the face of the current support in
    the task-scaled variables v = ‖g‖ ⊙ w, a ratio test that drops a task at the boundary,
    the Frank–Wolfe vertex added when the face is optimal), which certifies most inputs in
    a few steps with exact zeros. Where it cannot (rounding stalls it on a face, or it
    cycles), a primal log-barrier path  min f(w) − μ Σ log w_t  s.t. 1ᵀw = 1 follows with
    damped Newton steps, μ shrunk ×0.01 once a step is centred, and once μ is small the
    face of the likely support is polished by Newton without barrier. Every barrier Newton
    system is solved in the variables scaled by D = diag(w),

        [D∇²f D + μI   w] [Δu]   [−D∇F]
        [wᵀ            0] [ ν] = [  0 ],     Δw = w ⊙ Δu,

    equal in exact arithmetic to the unscaled system but well conditioned when task
    gradient norms differ by orders of magnitude (D∇²f D involves w_s w_t K_st: unit
    gradients weighted by how much each task is used). Newton is affine invariant, so this
    formulation is scale-free per task. A quasi-Newton method on the raw objective (SLSQP,
    as the reference uses) stops far from the minimiser when one K_tt dwarfs the others.
    """
    T = K.shape[0]
    dual = _Dual(K, a, rho, eps)
    w = np.full(T, 1.0 / T)
    state = dual.at(w)
    if T == 1 or not state.size > 0 or not np.isfinite(state.grad).all():
        return DualSolution(w, state.f, 0.0, 0, T == 1 or bool(np.isfinite(state.f)))
    mu = state.size / T
    # the tolerance is relative to the objective's terms, with a floor at rounding level of
    # the problem's scale for minima where every term vanishes (e.g. a zero gradient's vertex)
    floor = 1e-15 * (float(np.abs(a).max()) + rho * math.sqrt(max(float(K.diagonal().max()), 0.0) + eps))

    def tolerance(p: _DualPoint) -> float:
        return rtol * p.size + floor

    fast = dual.active_set(tolerance, ACTIVE_SET_STEPS)
    if fast is not None:
        return DualSolution(fast[0], fast[1].f, max(fast[1].gap, 0.0), fast[2], True)
    for it in range(max_iter):
        if state.gap <= tolerance(state) and T * mu <= tolerance(state):
            return DualSolution(w, state.f, max(state.gap, 0.0), it, True)
        step = dual.newton(w, state, mu)
        if step is None:
            break
        (w, state), centred = step
        if centred:
            mu *= SHRINK
            if T * mu <= POLISH_AT * state.size:  # try the face of the likely support
                face = dual.polish(w, state, tolerance)
                if face is not None:
                    return DualSolution(face[0], face[1].f, max(face[1].gap, 0.0), it + 1, True)
    return DualSolution(w, state.f, max(state.gap, 0.0), max_iter, state.gap <= tolerance(state))


@dataclass(frozen=True)
class _DualPoint:
    f: float
    Kw: np.ndarray
    q: float
    size: float
    grad: np.ndarray
    gap: float


class _Dual:
    """f(w) = aᵀw + ρ·sqrt(wᵀKw + ε) and its Newton steps (see :func:`conflict_averse_dual`)."""

    def __init__(self, K: np.ndarray, a: np.ndarray, rho: float, eps: float) -> None:
        self.K, self.a, self.rho, self.eps = K, a, rho, eps

    def at(self, w: np.ndarray) -> _DualPoint:
        Kw = self.K @ w
        q = math.sqrt(max(float(w @ Kw), 0.0) + self.eps)
        lin = float(self.a @ w)
        grad = self.a + (self.rho / q) * Kw
        return _DualPoint(lin + self.rho * q, Kw, q, abs(lin) + self.rho * q, grad,
                          float(grad @ w - grad.min()))

    def _direction(self, K, w, Kw, q, rhs, mu):
        """Scaled Newton direction Δu on the face {1ᵀw = 1} (see the docstring)."""
        n = w.shape[0]
        DKw = w * Kw
        M = np.empty((n + 1, n + 1))
        M[:n, :n] = (self.rho / q) * (w[:, None] * K * w)
        M[:n, :n] -= (self.rho / q**3) * np.outer(DKw, DKw)
        M[:n, :n].flat[:: n + 1] += mu
        M[:n, n], M[n, :n], M[n, n] = w, w, 0.0
        try:
            du = np.linalg.solve(M, np.append(-rhs, 0.0))[:n]
        except np.linalg.LinAlgError:
            return None
        return du if np.isfinite(du).all() else None

    def newton(self, w: np.ndarray, p: _DualPoint, mu: float):
        """One damped Newton step on f − μ Σ log w; returns ((w, point), centred) or None."""
        Dg = w * p.grad - mu
        du = self._direction(self.K, w, p.Kw, p.q, Dg, mu)
        if du is None:
            return None
        decrement = max(float(-Dg @ du), 0.0)  # Newton decrement²
        t = 1.0 if du.min() >= -0.99 else 0.99 / float(-du.min())  # keep w > 0
        F0 = p.f - mu * float(np.log(w).sum())
        while t > 1e-12:
            w_new = w * (1.0 + t * du)
            w_new /= w_new.sum()
            p_new = self.at(w_new)
            if p_new.f - mu * float(np.log(w_new).sum()) <= F0 - 1e-4 * t * decrement:
                return (w_new, p_new), decrement < CENTRED * mu
            t *= 0.5
        return (w, p), True  # no decrease along the Newton direction: centred to rounding

    def active_set(self, tolerance, max_steps: int):
        """Primal active-set method: Newton on the face of a support S (in the task-scaled
        variables v = ‖g‖ ⊙ w, where the Hessian is that of unit gradients), a ratio test
        that drops a task when a step reaches the boundary, and the Frank–Wolfe vertex added
        once the face is optimal. (w, point, steps) when the gap certifies, else None."""
        K, T = self.K, self.K.shape[0]
        n = np.sqrt(np.maximum(K.diagonal(), 0.0))
        n = np.where(n > 0, n, 1.0)
        vertex = self.a + self.rho * np.sqrt(np.maximum(K.diagonal(), 0.0) + self.eps)
        w = np.zeros(T)
        w[int(np.argmin(vertex))] = 1.0
        support = w > 0
        p = self.at(w)
        face_done = False
        for step in range(max_steps):
            if p.gap <= tolerance(p):
                return w, p, step
            idx = np.flatnonzero(support)
            g = p.grad[idx]
            if face_done or g.max() - g.min() <= tolerance(p):
                # optimal on this face (to rounding): add the Frank–Wolfe vertex
                outside = np.where(support, np.inf, p.grad)
                if not outside.min() < g.min():
                    return None  # the gap is inside the face: leave it to the barrier path
                support[int(np.argmin(outside))] = True
                idx = np.flatnonzero(support)
                g = p.grad[idx]
            d = self._face_newton(idx, p, n[idx])
            if d is None:
                return None
            moved = self._face_step(w, p, idx, d)
            face_done = moved is None  # no descent left along the face
            if moved is not None:
                w, p = moved
                support = w > 0
        return None

    def _face_step(self, w, p: _DualPoint, idx, d):
        """Armijo step along ``d`` on the face, stopped at the simplex's boundary (where the
        blocking task leaves the support exactly). (w, point), or None if f cannot decrease."""
        slope = float(p.grad[idx] @ d)
        if not slope < 0:
            return None
        neg = d < 0
        ratios = np.where(neg, -w[idx] / np.where(neg, d, 1.0), np.inf)
        t_max = float(ratios.min())
        t = min(1.0, t_max)
        while t >= 1e-12:
            w_new = w.copy()
            w_new[idx] = np.maximum(w[idx] + t * d, 0.0)
            if t == t_max:
                w_new[idx[int(np.argmin(ratios))]] = 0.0
            w_new /= w_new.sum()
            p_new = self.at(w_new)
            if p_new.f <= p.f + 1e-4 * t * slope:
                return w_new, p_new
            t *= 0.5
        return None

    def _face_newton(self, idx, p: _DualPoint, n):
        """Newton direction Δw on the face {w_S: 1ᵀw_S = 1}, solved in v = n ⊙ w."""
        m = len(idx)
        Kw = p.Kw[idx]
        H = (self.rho / p.q) * self.K[np.ix_(idx, idx)] - (self.rho / p.q**3) * np.outer(Kw, Kw)
        Hv = H / np.outer(n, n)  # Hessian in v: unit-gradient scale
        Hv.flat[:: m + 1] += 1e-12 * (np.abs(Hv.diagonal()).max() + 1e-300)
        M = np.zeros((m + 1, m + 1))
        M[:m, :m], M[:m, m], M[m, :m] = Hv, 1.0 / n, 1.0 / n
        try:
            dv = np.linalg.solve(M, np.append(-p.grad[idx] / n, 0.0))[:m]
        except np.linalg.LinAlgError:
            return None
        d = dv / n
        return d if np.isfinite(d).all() else None

    def polish(self, w: np.ndarray, p: _DualPoint, tolerance):
        """Newton on the face of the likely support (no barrier); (w, point) if it certifies."""
        keep = w > POLISH_SUPPORT * w.max()
        if keep.all():
            return None
        idx = np.flatnonzero(keep)
        Ks = self.K[np.ix_(idx, idx)]
        ws = w[keep] / w[keep].sum()
        full = np.zeros_like(w)
        for _ in range(POLISH_STEPS):
            full[idx] = ws
            pt = self.at(full)
            if pt.gap <= tolerance(pt):
                return full.copy(), pt
            g = ws * pt.grad[idx]
            du = self._direction(Ks, ws, pt.Kw[idx], pt.q, g, 1e-14 * pt.size)
            if du is None or du.min() <= -1.0:  # the face's minimiser leaves the simplex
                return None
            ws = ws * (1.0 + du)
            ws /= ws.sum()
        return None


# ---------------------------------------------------------------------------------------
# Nash bargaining weights
# ---------------------------------------------------------------------------------------


def nash_weights(
    K: np.ndarray,
    alpha0: np.ndarray | None = None,
    max_iter: int = 100,
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
    tests ‖K̂α − 1/α‖ < 1e-3, which mixes scales; the fixed point is the same), checked at
    every iteration; ``max_iter`` only bounds a solve that stopped making progress. Starts:
    ``alpha0`` (the previous solution, as the reference warm-starts) and, if that does not
    converge, the cold start β_t = 1/sqrt(K̂_tt) — the solution when the gradients are
    orthogonal, and within a few iterations of it when they are not, however different the
    task norms (a start at ones needs ~log(cond K) damped steps). Each start is rescaled by
    the optimal factor along its ray. Returns (α, iterations, converged); iterations are
    counted over both starts. Without convergence, on non-finite values, or when no solution
    exists (K has a null direction inside the positive orthant, e.g. a zero gradient, so α
    diverges) it returns ``alpha0`` (or ones) with ``converged=False`` and the caller decides.
    """
    n = K.shape[0]
    fallback = np.ones(n) if alpha0 is None else np.asarray(alpha0, dtype=np.float64).copy()
    scale = float(np.linalg.norm(K))
    if not np.isfinite(scale) or scale <= 0:
        return fallback, 0, False
    Kn = K / scale
    diag = np.diag(Kn)
    cold = 1.0 / np.sqrt(np.where(diag > 0, diag, 1.0))
    starts = [cold]
    if alpha0 is not None:
        warm = np.asarray(alpha0, dtype=np.float64) * math.sqrt(scale)
        if np.isfinite(warm).all() and (warm > 0).all():
            starts.insert(0, warm)
    used = 0
    for b in starts:
        beta, iters, ok = _nash_newton(Kn, b, max_iter, tol)
        used += iters
        if ok:
            return beta / math.sqrt(scale), used, True
    return fallback, used, False


def _nash_newton(Kn: np.ndarray, b: np.ndarray, max_iter: int, tol: float):
    """Damped Newton for K̂β = 1/β from ``b`` (see :func:`nash_weights`)."""
    n = Kn.shape[0]
    curv = float(b @ Kn @ b)
    if curv > 0:  # argmin over t of φ(t·b): t² bᵀK̂b = n
        b = b * np.sqrt(n / curv)
    eye = np.eye(n)

    def phi(x: np.ndarray) -> float:
        return 0.5 * float(x @ Kn @ x) - float(np.sum(np.log(x)))

    for it in range(max_iter + 1):
        r = b * (Kn @ b) - 1.0
        if np.max(np.abs(r)) < tol:
            return b, it, True
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
        if t <= 1e-12:  # no decrease left: stalled (rounding) or diverging
            break
        b = b - t * step
        if not np.isfinite(b).all() or b.max() > 1e12:
            break
    return b, it, False


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
