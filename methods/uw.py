"""UW — uncertainty weighting ("Multi-Task Learning Using Uncertainty to Weigh Losses for
Scene Geometry and Semantics").

Kendall, Gal, Cipolla, CVPR 2018, https://arxiv.org/abs/1705.07115

Each task gets a learnable log-variance s_t = log σ_t² and the training loss is

    L = Σ_t ½ (e^{−s_t} L_t + s_t).

∂L/∂s_t = ½(1 − e^{−s_t} L_t), so at the minimiser over s, e^{s_t} = L_t and the task's
effective weight ½e^{−s_t} is ½/L_t. This is the paper's regression form; every reference
code (MTAN/CAGrad ``--weight uncert``, LibMTL ``UW``, nash-mtl ``Uncertainty``) uses it for
all tasks, and so does mtlx (the classification form e^{−s}L + s/2 is not offered).

Implemented as a loss transform with weights 1: the engine back-propagates Σ_t L̃_t, so the
shared parameters, the heads and s all get their gradient of L̃ from one backward pass.

Defaults and references: ``init`` = −0.5, the initial s of MTAN/CAGrad/IMGrad and LibMTL;
nash-mtl initialises at 0 (``init=0``). s is an ``nn.Parameter``: the trainer adds
``method.parameters()`` to its optimiser, so by default s is trained at the model's learning
rate, as in MTAN and LibMTL (nash-mtl uses a separate lr of 0.025 for it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from methods.base import Aggregation, LossWeighting, StepContext, check_range
from methods.registry import register


@register("uw")
class UW(LossWeighting):
    """Uncertainty weighting: L̃_t = ½(e^{−s_t} L_t + s_t), s learnable."""

    @dataclass(frozen=True)
    class Config:
        init: float = -0.5  # initial log-variance s_t (MTAN, LibMTL; nash-mtl uses 0)

        def __post_init__(self) -> None:
            check_range("init", self.init, -20.0, 20.0)

    stateful = True

    def __init__(self, num_tasks: int, config: Any = None, seed: int = 0) -> None:
        super().__init__(num_tasks, config, seed)
        self.log_vars = nn.Parameter(torch.full((num_tasks,), float(self.config.init)))

    def transform_losses(self, losses: Tensor) -> Tensor:
        s = self.log_vars.to(losses.device)
        return 0.5 * (torch.exp(-s) * losses + s)

    def _aggregate(
        self, grads: Tensor | None, losses: Tensor, context: StepContext | None
    ) -> Aggregation:
        agg = super()._aggregate(grads, losses, context)
        # The effective multiplier of each raw loss, ½e^{−s_t}: what UW plots show.
        scales = 0.5 * torch.exp(-self.log_vars.detach())
        agg.info.update({f"loss_scale_{t}": float(v) for t, v in enumerate(scales)})
        return agg

    def reset(self) -> None:
        super().reset()
        with torch.no_grad():
            self.log_vars.fill_(float(self.config.init))
