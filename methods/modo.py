"""MoDo — multi-objective gradient with double sampling ("Three-Way Trade-Off in
Multi-Objective Learning: Optimization, Generalization and Conflict-Avoidance").

Chen et al., NeurIPS 2023, https://openreview.net/forum?id=yPkbdJxQ0o.
Official code: heshandevaka/Trade-Off-MOL; followed here: LibMTL ``MoDo.py`` (a port of it).

MoDo tracks MGDA's simplex weights λ by one projected gradient step per training step on
½‖Gᵀλ‖² (ℓ2-regularised), then moves along the λ-weighted gradient:

    λ ← Π_Δ(λ − γ (G₁ G₂ᵀ λ + ρ λ)),        d = G₃ᵀ λ = Σ_t λ_t g_{3,t},

with λ initialised at 1/T and kept across steps. Defaults: γ (``gamma``) = 1e-3 and
ρ (``rho``) = 0.1, LibMTL's defaults (``MoDo_gamma``, ``MoDo_rho``); γ is searched. The
projection is the Euclidean one onto the simplex (the reference's sort-based rule).

**Single-batch variant (deliberate difference), and why.** G₁, G₂, G₃ are the task
gradients on three *independent* mini-batches of the same step ("double sampling" for λ
plus one more for the update). Independence is the point of the method: E[G₁G₂ᵀ] = K̄ =
E[G]E[G]ᵀ, so the λ-step is an unbiased stochastic gradient of ½‖Ḡᵀλ‖², whereas one batch's
G Gᵀ has expectation K̄ + Σ (Σ_st = Cov(g_s, g_t), summed over parameters): biased towards
down-weighting tasks with noisy gradients, and the bias does not vanish as γ → 0. Drawing G₃
independently of the batches that set λ makes E[d | λ] = Ḡᵀλ, which the paper's
optimisation/generalisation bounds use. mtlx's trainers give a method one batch per step,
so here G₁ = G₂ = G₃ = the step's G: λ ← Π_Δ(λ − γ(Kλ + ρλ)), d = Gᵀλ — the reference
with three identical batches (pinned against LibMTL in tests/test_methods_new.py). That makes
it a :class:`GramianMethod` (exact at representation level and across workers); it is
MoDo's deterministic recursion, not its stochastic estimator.

What a trainer would need to provide for the paper's version (not available yet): a
declared capability, e.g. ``batches_per_step = 3``, that the trainer honours by drawing
that many independent mini-batches per optimiser step (LibMTL's trainer loops
``for sample_num in range(3)`` over its loader), and an engine call taking the stacked
[3, T] losses and returning the three T×P Jacobians (or, for rep-level/distributed use, the
cross-Gramian G₁G₂ᵀ — a sum over samples, so all-reducible like K — plus G₃); the heads
then get the mean of their three own gradients (LibMTL divides the heads' accumulated
gradient by 3). An epoch then consumes three times as many batches per step.

Heads get their own unweighted gradient (the reference accumulates every task's loss into
its head). Positive losses are not needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from methods.base import GramianMethod, check_range
from methods.registry import register
from methods.sdmgrad import project_simplex
from methods.space import LogUniform


@dataclass(frozen=True)
class MoDoConfig:
    """``gamma``: step size of λ; ``rho``: ℓ2 regularisation of λ's update."""

    gamma: float = 1e-3
    rho: float = 0.1

    def __post_init__(self) -> None:
        check_range("gamma", self.gamma, 0.0, low_inclusive=False)
        check_range("rho", self.rho, 0.0)


@register("modo")
class MoDo(GramianMethod):
    """MoDo (single-batch): λ ← Π_Δ(λ − γ(Kλ + ρλ)), d = Gᵀλ."""

    Config = MoDoConfig
    stateful = True
    search_space = {"gamma": LogUniform(1e-4, 1e-1), "rho": LogUniform(1e-3, 1.0)}

    def __init__(self, num_tasks: int, config: Any = None, seed: int = 0) -> None:
        super().__init__(num_tasks, config, seed)
        self.register_buffer("lambd", torch.full((num_tasks,), 1.0 / num_tasks,
                                                 dtype=torch.float64))

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> tuple[Tensor, dict[str, float]]:
        cfg = self.config
        lam = self.lambd.to(gramian)
        step = lam - cfg.gamma * (gramian @ lam + cfg.rho * lam)
        self.lambd.copy_(torch.from_numpy(project_simplex(step.cpu().numpy())))
        return self.lambd.clone().to(gramian), {}

    def reset(self) -> None:
        super().reset()
        self.lambd.fill_(1.0 / self.num_tasks)
