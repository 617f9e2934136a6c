"""IMTL-L — the loss half of "Towards Impartial Multi-Task Learning".

Liu et al., ICLR 2021, https://openreview.net/forum?id=IMPnRXEWpvr

Each loss is replaced by L̃_t = e^{s_t} L_t − s_t with a learnable scalar s_t trained by the
model's optimiser. ∂L̃_t/∂s_t = e^{s_t} L_t − 1, so at the minimiser over s the scaled losses
are all equal, e^{s_t} L_t = 1, and the θ-gradient of L̃_t is e^{s_t}∇L_t = ∇log L_t: every
task's loss is balanced to the same scale (DB-MTL's log transform is this exact-minimiser
limit). Weights are 1; one backward of Σ_t L̃_t updates the model and s.

Defaults and references: no hyperparameters (the paper's point); s_t is initialised at 0
as in LibMTL ``IMTL.py`` (the only reference code; the authors released none). s is an
``nn.Parameter``: the trainer adds ``method.parameters()`` to its optimiser, so it is trained
at the model's learning rate, as in LibMTL. LibMTL always runs the hybrid with IMTL-G
(``imtl`` here); this is the loss-only variant of the paper's ablation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from methods.base import Aggregation, LossWeighting, StepContext
from methods.registry import register


def imtl_l_transform(losses: Tensor, s: Tensor) -> Tensor:
    """L̃_t = e^{s_t} L_t − s_t (differentiable in both)."""
    s = s.to(losses.device)
    return torch.exp(s) * losses - s


@register("imtl_l")
class IMTLL(LossWeighting):
    """IMTL-L: L̃_t = e^{s_t} L_t − s_t, s learnable (init 0), weights 1."""

    stateful = True

    def __init__(self, num_tasks: int, config: Any = None, seed: int = 0) -> None:
        super().__init__(num_tasks, config, seed)
        self.loss_scale = nn.Parameter(torch.zeros(num_tasks))

    def transform_losses(self, losses: Tensor) -> Tensor:
        return imtl_l_transform(losses, self.loss_scale)

    def _aggregate(
        self, grads: Tensor | None, losses: Tensor, context: StepContext | None
    ) -> Aggregation:
        agg = super()._aggregate(grads, losses, context)
        scales = torch.exp(self.loss_scale.detach())  # multiplier e^{s_t} of each raw loss
        agg.info.update({f"loss_scale_{t}": float(v) for t, v in enumerate(scales)})
        return agg

    def reset(self) -> None:
        super().reset()
        with torch.no_grad():
            self.loss_scale.zero_()
