"""ExcessMTL — excess-risk weighting ("Robust Multi-Task Learning with Excess Risks").

He et al., ICML 2024,
https://openreview.net/forum?id=JzWFmMySpn. Official code: yifei-he/ExcessMTL (a LibMTL
fork); followed here: LibMTL ``ExcessMTL.py`` (the same code).

Task weights are raised for the tasks whose *excess* risk (distance to their own optimum)
is large, not whose loss is large, so label noise in one task does not capture the
training. Each task's excess risk is estimated by a diagonally preconditioned squared
gradient norm, with an AdaGrad-style accumulator of the task's squared gradients:

    H_t ← H_t + g_t ⊙ g_t,      e_t = g_tᵀ (g_t / sqrt(H_t + 1e-7)),

and the weights follow exponentiated-gradient (mirror ascent) steps on the simplex scaled
to sum T, each task's estimate normalised by its value at the first step:

    a ← a ⊙ exp(η · e / e⁽¹⁾),   a ← T · a / Σ a,      update d = Σ_t a_t g_t ,

with a = 1 on the first step (which only records e⁽¹⁾). Needs the per-task gradients
themselves (element-wise squares), not only their Gramian: parameter level only.

Defaults: η (``robust_step_size``) = 1e-2, LibMTL's default (``--robust_step_size``); η is
searched. Heads: the reference back-propagates Σ_t a_t L_t, so heads are a-weighted.
Deliberate differences: LibMTL's rep-grad branch sums the per-sample representation
gradients over the batch before accumulating; mtlx's representation gradients are
per-sample and flattened (their positions change meaning from batch to batch), so the method
declares ``supports_rep_grads = False``. A task whose first-step estimate is 0 (a zero
gradient) would divide by 0 in the reference; here e⁽¹⁾ is floored at 1e-30 of the largest
one (such a task's weight then grows fastest once its gradient appears), and a non-finite
estimate raises ``ValueError``. Under torch.distributed the engine all-reduces the Jacobian
first, so H and a evolve identically on every rank (the state is P-sized per task).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from methods.base import Aggregation, Method, StepContext, check_range
from methods.registry import register
from methods.space import LogUniform

EPS = 1e-7


@register("excess_mtl")
class ExcessMTL(Method):
    """ExcessMTL: a ← T·normalise(a ⊙ exp(η e/e⁽¹⁾)), e_t = g_tᵀ diag(H_t)^{-1/2} g_t."""

    @dataclass(frozen=True)
    class Config:
        robust_step_size: float = 1e-2  # η of the exponentiated-gradient step (LibMTL)

        def __post_init__(self) -> None:
            check_range("robust_step_size", self.robust_step_size, 0.0)

    requires_grads = True
    stateful = True
    default_head_update = "weighted"
    search_space = {"robust_step_size": LogUniform(1e-3, 1.0)}

    def __init__(self, num_tasks: int, config: Any = None, seed: int = 0) -> None:
        super().__init__(num_tasks, config, seed)
        self.register_buffer("loss_weight", torch.ones(num_tasks, dtype=torch.float64))
        self.register_buffer("initial", torch.ones(num_tasks, dtype=torch.float64))
        self.register_buffer("grad_sq_sum", torch.zeros(0, dtype=torch.float64))

    def excess_estimates(self, grads: Tensor) -> Tensor:
        """Accumulate g_t ⊙ g_t and return e_t = g_tᵀ(g_t / sqrt(H_t + 1e-7)) (float64)."""
        G = grads.detach().to(torch.float64)
        if self.grad_sq_sum.shape != G.shape:
            if self.step_count > 0:
                raise ValueError(
                    f"excess_mtl: the gradient size changed from {tuple(self.grad_sq_sum.shape)} "
                    f"to {tuple(G.shape)}; its accumulator needs the same shared parameters "
                    "every step"
                )
            self.grad_sq_sum = torch.zeros_like(G)
        self.grad_sq_sum += G * G
        e = (G * G / torch.sqrt(self.grad_sq_sum + EPS)).sum(dim=1).to(self.loss_weight)
        if not torch.isfinite(e).all():
            raise ValueError(f"excess_mtl: non-finite excess-risk estimates {e.tolist()}")
        return e

    def _aggregate(
        self, grads: Tensor | None, losses: Tensor, context: StepContext | None
    ) -> Aggregation:
        assert grads is not None
        e = self.excess_estimates(grads)
        if self.step_count == 0:
            self.initial.copy_(e.clamp_min(1e-30 * float(e.max().clamp_min(1e-300))))
        else:
            a = self.loss_weight * torch.exp(e / self.initial * self.config.robust_step_size)
            self.loss_weight.copy_(self.num_tasks * a / a.sum())
        w = self.loss_weight.to(grads)  # dtype and device of the gradients
        info = {f"excess_{t}": float(v) for t, v in enumerate(e)}
        return Aggregation(direction=w @ grads, weights=w.to(losses.dtype), info=info)

    def reset(self) -> None:
        super().reset()
        self.loss_weight.fill_(1.0)
        self.initial.fill_(1.0)
        self.grad_sq_sum = torch.zeros(0, dtype=torch.float64)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the accumulator's size is known only after the first step: adopt the saved one
        key = prefix + "grad_sq_sum"
        if key in state_dict:
            self.grad_sq_sum = torch.zeros_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
