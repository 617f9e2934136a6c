"""IMGrad — "Injecting Imbalance Sensitivity for Multi-Task Learning".

Zhou, Liu, Zhao, Gong, IJCAI 2025, https://arxiv.org/abs/2503.08006
Reference code: zzpustc/IMGrad, ``nyuv2/utils.py::imgrad`` (a fork of the official CAGrad
code); the paper's method section was not available, so that code is the specification
(docs/methods.md §IMGrad).

IMGrad is CAGrad (methods/cagrad.py) whose dual objective is reweighted by how far the mean
gradient g0 is from the balanced MGDA direction g_m = Gᵀw_m (w_m = argmin_{w∈Δ} wᵀKw, the
Sener solver on raw gradients):

    κ  = cos(g0, g_m)                                  (imbalance coefficient, in [0, 1])
    c' = α‖g0‖ + 1e-8,   ‖g0‖ = sqrt(mean(K) + 1e-8)
    w* = argmin_{w∈Δ} (1.5 − κ)·g_wᵀg0 + κ·c'·sqrt(g_wᵀg_w + 1e-8)
    λ  = c' / (‖g_w*‖ + 1e-8),   d = g0 + λ g_w*  =  Σ_t (1/T + λ w*_t) g_t

so ‖d − g0‖ = α‖g0‖ exactly as in CAGrad; κ only changes which w* is chosen. Equivalently
w* is CAGrad's w* for c = κα/(1.5 − κ). Then ``rescale`` divides d by 1, 1 + α² (the
reference's call, ``rescale=1``) or 1 + α, and ``scale_by_tasks`` multiplies by T
(``overwrite_grad``). Weights are returned as the effective weights on G, so this is a
:class:`GramianMethod` (rep-level and distributed training are exact).

Defaults: ``alpha = 0.5`` is the argparse default; the NYUv2 and Cityscapes ``run.sh`` use
0.8 (pass ``alpha=0.8`` to reproduce the paper's runs). ``rescale = 1`` as called in
training; ``scale_by_tasks = True`` as the reference. The constant 1.5 is hard-coded in the
reference. Heads get their own unweighted gradient (the reference back-propagates every
loss into everything and overwrites only the shared grads).

Implemented: the general-T NYUv2 form (the release hard-codes T = 3; the formula is
general). Not implemented, deliberately:
- The released Cityscapes version (``cityscapes/utils.py::imgrad``) is a 2-task scalar
  solve whose (1.5 − κ) factor, by operator precedence, multiplies only the first of the
  three terms of the expanded g_wᵀg0, so its objective differs from the NYUv2 one; that file
  also uses the undefined names ``moo_alpha`` and ``delta_m`` and raises ``NameError``.
- The Nash-MTL variant described in the paper's appendix: its formula is not published and
  no code exists (docs/methods.md §IMGrad).

Deliberate differences: the dual is solved exactly as in methods/cagrad.py (float64,
certified gap); κ uses the current ``F.cosine_similarity`` formula
x·y / (max(‖x‖, 1e-8)·max(‖y‖, 1e-8)); the MGDA point is methods/mgda.py's (Sener's solver
on K / max_t K_tt, then an exact KKT polish), which moves κ by ~1e-5 from the reference's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from methods.base import GramianMethod, check_bool, check_choice, check_int, check_range
from methods.cagrad import RESCALES, cagrad_dual_weights, conflict_averse_weights, dual_info
from methods.mgda import min_norm_point
from methods.registry import register
from methods.space import Uniform

#: the reference's hard-coded offset in the (1.5 − κ) weight of the linear term
OFFSET = 1.5


def imbalance_coefficient(K: np.ndarray) -> tuple[float, np.ndarray, int]:
    """κ = cos(g0, g_m) from the Gramian, with the MGDA weights and solver iterations."""
    T = K.shape[0]
    w_m, iters = min_norm_point(K)
    g0_gm = float(K.mean(axis=0) @ w_m)  # g0ᵀg_m = (1/T) 1ᵀK w_m
    g0_norm = math.sqrt(max(float(K.mean()), 0.0))
    gm_norm = math.sqrt(max(float(w_m @ K @ w_m), 0.0))
    kappa = g0_gm / (max(g0_norm, 1e-8) * max(gm_norm, 1e-8)) if T > 1 else 1.0
    return kappa, w_m, iters


@dataclass(frozen=True)
class IMGradConfig:
    """``alpha``: CAGrad's c, the ball radius in units of ‖g0‖. ``rescale``: 0 none,
    1 ÷(1 + α²), 2 ÷(1 + α). ``scale_by_tasks``: multiply d by T (reference)."""

    alpha: float = 0.5
    rescale: int = 1
    scale_by_tasks: bool = True

    def __post_init__(self) -> None:
        check_range("alpha", self.alpha, 0.0)
        check_int("rescale", self.rescale)
        check_choice("rescale", self.rescale, RESCALES)
        check_bool("scale_by_tasks", self.scale_by_tasks)


@register("imgrad")
class IMGrad(GramianMethod):
    """IMGrad: CAGrad with its dual reweighted by κ = cos(g0, g_MGDA)."""

    Config = IMGradConfig
    search_space = {"alpha": Uniform(0.1, 0.9)}

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> tuple[Tensor, dict[str, float]]:
        cfg = self.config
        K = gramian.cpu().numpy()
        kappa, _, iters = imbalance_coefficient(K)
        radius = cfg.alpha * math.sqrt(max(float(K.mean()), 0.0) + 1e-8) + 1e-8
        dual = cagrad_dual_weights(K, radius, lin_coef=OFFSET - kappa, norm_coef=kappa)
        w_star = dual.w
        w, lam = conflict_averse_weights(K, cfg.alpha, w_star, cfg.rescale, cfg.scale_by_tasks)
        info = {
            "kappa": kappa,
            "lambda": lam,
            **dual_info(self, dual),
            "mgda_iterations": float(iters),
            **{f"w_star_{t}": float(v) for t, v in enumerate(w_star)},
        }
        return torch.from_numpy(w).to(gramian.dtype), info
