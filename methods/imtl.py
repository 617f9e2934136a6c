"""IMTL — the hybrid of "Towards Impartial Multi-Task Learning" (IMTL-L + IMTL-G).

Liu et al., ICLR 2021, https://openreview.net/forum?id=IMPnRXEWpvr

1. IMTL-L on the losses: L̃_t = e^{s_t} L_t − s_t with learnable s_t (init 0), see
   :mod:`methods.imtl_l`.
2. IMTL-G on the gradients g̃_t of the *scaled* losses w.r.t. the shared parameters (or the
   shared representation): α ∝ K̃⁺‖g̃‖, Σα = 1, see :mod:`methods.imtl_g`; the shared
   parameters get Σ_t α_t g̃_t, which has equal projections on every unit g̃_t/‖g̃_t‖.
3. Heads and s_t get the gradient of their own L̃_t with weight 1 (head rule ``"own"``):
   s_t receives e^{s_t} L_t − 1 and moves toward e^{s_t} L_t = 1.

At the s-minimiser g̃_t = ∇log L_t, so the update is invariant to rescaling any raw loss.

References: LibMTL ``IMTL.py`` (always this hybrid; the authors released no code), which
initialises s at 0 and trains it with the model optimiser: s is an ``nn.Parameter`` that the
trainer adds to its optimiser (model lr). LibMTL solves the paper's closed form with a plain
``torch.inverse``; the form used here (:func:`methods.imtl_g.imtl_g_weights`, on the cosine
matrix) gives the same weights for independent gradients whatever their norms, and is also
defined for dependent ones. Keep the default ``"own"`` head rule:
``"weighted"`` would also α-weight the gradient of s, and α may be negative.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from methods.base import GramianMethod
from methods.imtl_g import imtl_g_weights
from methods.imtl_l import imtl_l_transform
from methods.registry import register


@register("imtl")
class IMTL(GramianMethod):
    """Hybrid IMTL: IMTL-G weights on the gradients of the IMTL-L scaled losses."""

    stateful = True

    def __init__(self, num_tasks: int, config: Any = None, seed: int = 0) -> None:
        super().__init__(num_tasks, config, seed)
        self.loss_scale = nn.Parameter(torch.zeros(num_tasks))

    def transform_losses(self, losses: Tensor) -> Tensor:
        return imtl_l_transform(losses, self.loss_scale)

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> tuple[Tensor, dict[str, float]]:
        scales = torch.exp(self.loss_scale.detach())
        w, info = imtl_g_weights(gramian)
        return w, {**info, **{f"loss_scale_{t}": float(v) for t, v in enumerate(scales)}}

    def reset(self) -> None:
        super().reset()
        with torch.no_grad():
            self.loss_scale.zero_()
