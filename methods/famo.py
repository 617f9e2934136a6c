"""FAMO — Fast Adaptive Multitask Optimization.

Liu, Feng, Stone, Liu, NeurIPS 2023, https://openreview.net/forum?id=zMeemcUeXL

Task logits ξ (init 0), z = softmax(ξ). The training loss of the official code is

    Σ_t z_t log(L_t + ε) / c,   c = Σ_t z_t / (L_t + ε)  (detached),  ε = 1e-8,

whose gradient is Σ_t w_t ∇L_t with w_t = z_t / (c (L_t + ε)). As a loss-weighting method
FAMO therefore returns the weights w (detached) and the engine back-propagates Σ_t w_t L_t:
the same gradient with one backward pass. After the optimiser step the trainer recomputes
the *same batch's* losses without gradients and calls :meth:`after_step`, which sets

    δ_t = log(L_t^old + ε) − log(L_t^new + ε),   ξ.grad = J_softmax(ξ)ᵀ δ = z ⊙ δ − z (zᵀδ),

and takes one Adam step on ξ (lr ``w_lr``, L2 weight decay ``gamma``, torch's Adam with
betas (0.9, 0.999), eps 1e-8). Tasks whose loss fell less get larger logits.

Defaults and references: the official ``famo.py`` (Cranial-XIX/FAMO): γ = 0.01, w_lr = 0.025.
The paper's runs use γ = 0.001 for NYUv2, CelebA and QM9 and 0.01 for Cityscapes and MT10,
always w_lr = 0.025 (LibMTL defaults: 0.025 / 0.001). L*_t (``set_min_losses``) is 0 in every
supervised run and is fixed to 0 here. Heads get the FAMO-weighted gradient (one scalar loss
in the reference). Deliberate differences: ξ and the Adam moments are float64 buffers (not
a parameter the trainer's optimiser could see), kept in ``state_dict`` so that resume is
exact; ``famo.py``'s ``max_norm`` clipping is not applied (in the experiment code it runs
before ``backward`` and does nothing; use the trainer's clipping if wanted); non-positive
losses raise ``ValueError`` instead of silently producing NaN logits (FAMO issue #9). Under
torch.distributed :meth:`after_step` must receive the rank-mean losses, as ``aggregate`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from methods.base import LossWeighting, check_positive_losses, check_range
from methods.registry import register
from methods.solvers import InternalAdam
from methods.space import LogUniform

EPS = 1e-8


@register("famo")
class FAMO(LossWeighting):
    """FAMO: w_t = z_t / (c (L_t + ε)), z = softmax(ξ), ξ updated after each step."""

    positive_losses = True

    @dataclass(frozen=True)
    class Config:
        gamma: float = 0.01  # weight decay of the logits (famo.py; experiments use 1e-3)
        w_lr: float = 0.025  # Adam learning rate of the logits

        def __post_init__(self) -> None:
            check_range("gamma", self.gamma, 0.0)
            check_range("w_lr", self.w_lr, 0.0, low_inclusive=False)

    stateful = True
    uses_after_step = True
    search_space = {"gamma": LogUniform(1e-4, 1e-1), "w_lr": LogUniform(1e-3, 1e-1)}

    def __init__(self, num_tasks: int, config: Any = None, seed: int = 0) -> None:
        super().__init__(num_tasks, config, seed)
        self.register_buffer("logits", torch.zeros(num_tasks, dtype=torch.float64))
        self.register_buffer("prev_losses", torch.zeros(num_tasks, dtype=torch.float64))
        self.adam = InternalAdam(num_tasks)
        self.has_prev = False

    def task_distribution(self) -> Tensor:
        """z = softmax(ξ), the task mixture FAMO currently favours."""
        return torch.softmax(self.logits, 0)

    def weights(self, losses: Tensor) -> Tensor:
        check_positive_losses(self.name, losses)
        L = losses.detach().to(self.logits)
        z = self.task_distribution()
        D = L + EPS
        c = (z / D).sum()
        self.prev_losses.copy_(L)
        self.has_prev = True
        return (z / (c * D)).to(losses.device)

    def after_step(self, losses: Tensor) -> None:
        if losses.shape != (self.num_tasks,):
            raise ValueError(
                f"famo.after_step: losses must have shape ({self.num_tasks},), "
                f"got {tuple(losses.shape)}"
            )
        if not self.has_prev:
            raise ValueError(
                "famo.after_step called before aggregate: it needs the losses of the same "
                "batch before the optimiser step"
            )
        check_positive_losses(self.name, losses)
        new = losses.detach().to(self.logits)
        delta = (self.prev_losses + EPS).log() - (new + EPS).log()
        z = self.task_distribution()
        grad = z * delta - z * (z @ delta)  # J_softmax(ξ)ᵀ δ; J is symmetric
        self.adam.step_(self.logits, grad, self.config.w_lr, self.config.gamma)

    def reset(self) -> None:
        super().reset()
        self.logits.zero_()
        self.prev_losses.zero_()
        self.adam.reset()
        self.has_prev = False

    def get_extra_state(self) -> dict[str, Any]:
        return {**super().get_extra_state(), "has_prev": self.has_prev}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        super().set_extra_state(state)
        self.has_prev = bool(state["has_prev"])
