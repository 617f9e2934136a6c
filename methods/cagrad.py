"""CAGrad — Conflict-Averse Gradient Descent.

Liu, Liu, Jin, Stone, Liu, NeurIPS 2021, https://arxiv.org/abs/2110.14048
Official code: Cranial-XIX/CAGrad, ``nyuv2/utils.py::cagrad`` (followed here).

The update maximises the worst task improvement within a ball around the mean gradient
g0 = (1/T) Σ_t g_t:  max_d min_t g_tᵀd  s.t.  ‖d − g0‖ ≤ c‖g0‖. Its dual over the simplex,

    w* = argmin_{w ∈ Δ}  g_wᵀg0 + r·sqrt(‖g_w‖² + 1e-8),   g_w = Σ_t w_t g_t,

with the reference's constants ‖g0‖ = sqrt(mean(K) + 1e-8) and r = c‖g0‖ + 1e-8, gives

    λ = r / (‖g_w*‖ + 1e-8),   d = g0 + λ g_w* = Σ_t (1/T + λ w*_t) g_t,

then ``rescale`` divides d by 1 (0), 1 + c² (1) or 1 + c (2), and ``scale_by_tasks``
multiplies by T "to match the sum loss" (``overwrite_grad``). Everything depends on the
gradients only through K = G Gᵀ, so the method returns the *effective* weights
``s (1/T + λ w*_t)`` with ``s = (T if scale_by_tasks else 1) / divisor`` and is a
:class:`GramianMethod` (rep-level and distributed training are exact). When g_w* = 0 (e.g.
a task with a zero gradient takes all of w*), λ = r/1e-8 is huge and so is that task's
weight, multiplying a zero vector: d is right, the logged weight is not meaningful.

Defaults and where they come from:
- ``c = 0.4``: the NYUv2 ``run.sh`` of the official code (also nash-mtl's ``--c``). The
  official argparse default is 0.5 (LibMTL ``calpha`` 0.5); MT10 uses 0.9, MT50 0.5;
  Cityscapes runs 0.4 and 0.6.
- ``rescale = 1``: what the official NYUv2/Cityscapes training calls (and LibMTL).
- ``scale_by_tasks = True``: official code (×T). LibMTL does *not* multiply by T
  (``scale_by_tasks=False`` reproduces it). Under Adam the overall scale barely matters.
- Heads get their own unweighted gradient (official: every loss is back-propagated into
  everything, then the shared grads are overwritten; LibMTL does the same).

Deliberate differences from the reference: the dual is solved in float64 by a barrier
Newton method that is scale-free per task, to a certified Frank–Wolfe gap of 1e-9 relative
(:func:`methods.solvers.conflict_averse_dual`). The reference runs SLSQP on float32 K with
finite differences and scipy's default ``ftol`` 1e-6; because the dual is flat near its
minimum its w* is only accurate to ~1e-4 (docs/methods.md §CAGrad, c = 0.8: reference
w*₂ = 0.81273, true minimiser 0.812609; d differs by <1e-4), and when one task's gradient
dwarfs the others SLSQP stops after a few iterations far from the minimiser (e.g. w* =
[0.5, 0.5, 0] where the minimiser is [1, 0, 0]).
The reference's ε constants are kept, so for tiny gradients (‖g0‖ ≲ 1e-4) the update
is not scale-equivariant, exactly as in the reference.
The MT10 variants (softmax-SGD solve on a normalised K; ``cagrad_exact``'s ÷(1+λ)) are not
implemented.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from methods.base import GramianMethod, check_bool, check_choice, check_int, check_range
from methods.registry import register
from methods.solvers import DualSolution, conflict_averse_dual
from methods.space import Uniform

RESCALES = (0, 1, 2)



def rescale_factor(rescale: int, c: float) -> float:
    """The official code's final division: 1, 1 + c² or 1 + c."""
    return (1.0, 1.0 + c * c, 1.0 + c)[rescale]


def cagrad_dual_weights(
    K: np.ndarray, radius: float, lin_coef: float = 1.0, norm_coef: float = 1.0
) -> DualSolution:
    """argmin over the simplex of ``lin_coef·g_wᵀg0 + norm_coef·radius·sqrt(‖g_w‖² + 1e-8)``.

    Written on the Gramian: g_wᵀg0 = wᵀK1/T and ‖g_w‖² = wᵀKw. CAGrad uses both
    coefficients 1; IMGrad uses (1.5 − κ, κ). Solved by
    :func:`methods.solvers.conflict_averse_dual` to a Frank–Wolfe gap of 1e-9 relative."""
    return conflict_averse_dual(K, lin_coef * K.mean(axis=1), norm_coef * radius)


def dual_info(method: GramianMethod, dual: DualSolution) -> dict[str, float]:
    """Diagnostics of the dual solve. One that did not certify its gap is counted
    (``solver_failed``) and warned about once; its best feasible w is still used."""
    if not dual.converged:
        method.warn_once(
            "solver_failed",
            f"{method.name}: the dual solve stopped at a Frank–Wolfe gap of {dual.gap:.3g} "
            f"(objective {dual.objective:.6g}) without reaching its tolerance; counted in "
            "diagnostics as solver_failed",
        )
    return {"solver_failed": float(not dual.converged), "dual_gap": dual.gap,
            "iterations": float(dual.iterations)}


def conflict_averse_weights(
    K: np.ndarray,
    c: float,
    w_star: np.ndarray,
    rescale: int,
    scale_by_tasks: bool,
) -> tuple[np.ndarray, float]:
    """Effective weights of d = (g0 + λ g_w*)·s and λ, with the reference's constants."""
    T = K.shape[0]
    g0_norm = math.sqrt(max(float(K.mean()), 0.0) + 1e-8)
    radius = c * g0_norm + 1e-8
    gw_norm = math.sqrt(max(float(w_star @ K @ w_star), 0.0))
    lam = radius / (gw_norm + 1e-8)
    scale = (T if scale_by_tasks else 1.0) / rescale_factor(rescale, c)
    return scale * (1.0 / T + lam * w_star), lam


@dataclass(frozen=True)
class CAGradConfig:
    """``c``: radius of the ball around g0 in units of ‖g0‖ (c = 0 is the mean gradient).
    ``rescale``: 0 none, 1 ÷(1 + c²), 2 ÷(1 + c). ``scale_by_tasks``: multiply d by T."""

    c: float = 0.4
    rescale: int = 1
    scale_by_tasks: bool = True

    def __post_init__(self) -> None:
        check_range("c", self.c, 0.0)
        check_int("rescale", self.rescale)
        check_choice("rescale", self.rescale, RESCALES)
        check_bool("scale_by_tasks", self.scale_by_tasks)


@register("cagrad")
class CAGrad(GramianMethod):
    """CAGrad: d = g0 + (c‖g0‖/‖g_w*‖) g_w*, w* the minimiser of the dual over the simplex."""

    Config = CAGradConfig
    search_space = {"c": Uniform(0.1, 0.9)}

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> tuple[Tensor, dict[str, float]]:
        cfg = self.config
        K = gramian.cpu().numpy()
        radius = cfg.c * math.sqrt(max(float(K.mean()), 0.0) + 1e-8) + 1e-8
        dual = cagrad_dual_weights(K, radius)
        w_star = dual.w
        w, lam = conflict_averse_weights(K, cfg.c, w_star, cfg.rescale, cfg.scale_by_tasks)
        info = {"lambda": lam, **dual_info(self, dual),
                **{f"w_star_{t}": float(v) for t, v in enumerate(w_star)}}
        return torch.from_numpy(w).to(gramian.dtype), info
