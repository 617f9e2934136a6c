"""GLS — geometric loss strategy ("MultiNet++: Multi-Stream Feature Aggregation and Geometric
Loss Strategy for Multi-Task Learning").

Chennupati, Sistu, Yogamani, Rawashdeh, CVPR Workshops 2019, https://arxiv.org/abs/1904.08492

The training loss is the geometric mean L = (Π_t L_t)^{1/T}, whose gradient is

    ∇L = (L/T) Σ_t ∇L_t / L_t.

mtlx implements it as loss weights w_t = L/(T·L_t) (detached) on the raw losses: the engine
back-propagates Σ_t w_t L_t, whose gradient is exactly ∇L for the shared parameters and for
each head (a head only sees its own loss). L is computed as exp(mean_t log L_t), which does
not under- or overflow for many tasks as the product does.

References: LibMTL ``GLS.py`` (back-propagates the product form directly; its logged
``batch_weight`` L_t/(T·Π L) is not the effective weight, the weights here are). No
hyperparameters. Losses must be positive: a non-positive loss raises ``ValueError``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from methods.base import LossWeighting, check_positive_losses
from methods.registry import register


@register("gls")
class GLS(LossWeighting):
    """Geometric loss strategy: gradient of (Π L_t)^{1/T} via weights w_t = L/(T L_t)."""

    positive_losses = True

    def weights(self, losses: Tensor) -> Tensor:
        check_positive_losses(self.name, losses)
        L = losses.detach().to(torch.float64)
        geo = torch.exp(L.log().mean())
        return (geo / (self.num_tasks * L)).to(losses.device)
