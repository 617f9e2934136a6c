"""SDMGrad — stochastic direction-oriented multi-objective gradient descent
("Direction-oriented Multi-objective Learning: Simple and Provable Stochastic Algorithms").

Xiao et al., NeurIPS 2023, https://openreview.net/forum?id=4Ks8RPcXd9. Official code:
OptMN-Lab/sdmgrad; followed here: LibMTL ``SDMGrad.py`` (a port of it).

MGDA's min-norm problem regularised towards the mean gradient g0 = (1/T) Σ_t g_t:

    w* = argmin_{w ∈ Δ} ½‖Gᵀw‖² + λ·(Gᵀw)ᵀg0 ,      d = (Gᵀw* + λ g0)/(1 + λ)
       = Σ_t ((w*_t + λ/T)/(1 + λ)) g_t ,

so λ = 0 is MGDA and λ → ∞ the mean gradient. The reference takes ``niter`` projected
SGD steps on w per training step (a fresh SGD optimiser each step: lr 5, momentum 0.5,
so the first step is plain), on the Gramian rescaled by its mean task norm,
K̂ = K/(mean_t ‖g_t‖)² (1e-8 added to the square), whose gradient in w is K̂w + λ K̂1/T;
w is kept across training steps (initialised at 1/T). mtlx runs exactly these iterations
(the paper analyses this stochastic recursion, not the exact w*), with the Euclidean
projection onto the simplex. Note that with the reference's step size 5 on K̂ (whose
eigenvalues are O(1)) the iterations overshoot: on generic inputs the 20 momentum steps of
each call return to a point (often on an edge or at a vertex of the simplex) whose objective
is well above the minimum, instead of approaching w* (tests/test_methods_new.py shows both);
``inner_lr`` (default 5, the reference's) exposes the step size, and with e.g. 0.05 and
enough steps w converges to w*.

**Single-batch variant (deliberate difference).** The reference draws *three* independent
mini-batches per step (ζ, ξ₁, ξ₂): the w-iterations use the cross-Gramian G_{ξ₁} G_{ξ₂}ᵀ
(an unbiased estimate of the true K; one batch's G Gᵀ is biased by the gradients'
covariance, which enlarges the noisy tasks' diagonal entries and so lowers their weight)
and the update is built from G_ζ (independent of w). mtlx's trainers hand a method one batch
per step, so here all three are the same batch: K̂ from G Gᵀ and d from the same G. This is
the reference with ζ = ξ₁ = ξ₂ (pinned against LibMTL in tests/test_methods_new.py) and a
:class:`GramianMethod`, exact at representation level and across workers. The paper's
estimator needs the trainer capability described in methods/modo.py.

Defaults: ``lamda`` (λ) 0.3 and ``niter`` 20, LibMTL's defaults (``SDMGrad_lamda``,
``SDMGrad_niter``; its lr 5 and momentum 0.5 are hard-coded there); λ is searched. Heads get
their own unweighted gradient (the reference back-propagates every task's loss, on each of
its three batches, into its head — a sum of three — and overwrites only the shared
gradients).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from methods.base import GramianMethod, check_int, check_range
from methods.registry import register
from methods.space import LogUniform

#: the reference's inner optimiser's momentum (torch.optim.SGD(lr=5, momentum=0.5), new every step)
INNER_MOMENTUM = 0.5


def project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto {w ≥ 0, Σw = 1} (sort-based, Duchi et al. 2008)."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    k = np.arange(1, len(v) + 1)
    positive = np.nonzero(u - css / k > 0)[0]
    rho = int(positive[-1]) if positive.size else 0  # empty only by rounding: the top vertex
    return np.maximum(v - css[rho] / (rho + 1), 0.0)


def sdmgrad_iterations(
    K: np.ndarray, w: np.ndarray, lamda: float, niter: int, lr: float = 5.0
) -> np.ndarray:
    """The reference's ``niter`` projected SGD-with-momentum steps (step size ``lr``) on w."""
    scale = float(np.mean(np.sqrt(np.maximum(np.diag(K), 0.0))))
    Kh = K / (scale**2 + 1e-8)
    lin = lamda * Kh.mean(axis=1)
    buf = None
    for _ in range(niter):
        grad = Kh @ w + lin
        buf = grad if buf is None else INNER_MOMENTUM * buf + grad
        w = project_simplex(w - lr * buf)
    return w


@dataclass(frozen=True)
class SDMGradConfig:
    """``lamda``: pull towards the mean gradient (0 = MGDA); ``niter``: projected SGD steps
    on w per training step; ``inner_lr``: their step size (the reference's 5)."""

    lamda: float = 0.3
    niter: int = 20
    inner_lr: float = 5.0

    def __post_init__(self) -> None:
        check_range("lamda", self.lamda, 0.0)
        check_int("niter", self.niter, 1)
        check_range("inner_lr", self.inner_lr, 0.0, low_inclusive=False)


@register("sdmgrad")
class SDMGrad(GramianMethod):
    """SDMGrad: d = (Gᵀw + λ g0)/(1 + λ), w from projected SGD on ½‖Gᵀw‖² + λ(Gᵀw)ᵀg0."""

    Config = SDMGradConfig
    stateful = True
    search_space = {"lamda": LogUniform(0.01, 10.0)}

    def __init__(self, num_tasks: int, config: Any = None, seed: int = 0) -> None:
        super().__init__(num_tasks, config, seed)
        self.register_buffer("w", torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64))

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> tuple[Tensor, dict[str, float]]:
        cfg = self.config
        w = sdmgrad_iterations(gramian.cpu().numpy(), self.w.cpu().numpy(), cfg.lamda, cfg.niter,
                               cfg.inner_lr)
        self.w.copy_(torch.from_numpy(w))
        T = self.num_tasks
        eff = (self.w + cfg.lamda / T) / (1 + cfg.lamda)
        return eff.to(gramian), {f"w_{t}": float(v) for t, v in enumerate(w)}

    def reset(self) -> None:
        super().reset()
        self.w.fill_(1.0 / self.num_tasks)
