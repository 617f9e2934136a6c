"""RLW — random loss weighting ("Reasonable Effectiveness of Random Weighting: A Litmus Test
for Multi-Task Learning").

Lin, Ye, Xu, Shi, Zhang, Kwok, TMLR 2022, https://arxiv.org/abs/2111.10603

Every step draws ε ~ N(0, I_T) and trains on Σ_t w_t L_t with w = softmax(ε). The weights
lie on the simplex, so the loss scale is 1/T of the equal-weight sum on average.

Defaults and references: the normal + softmax form is the default of LibMTL ``RLW.py``
(``dist='Normal'``) and the only form in nash-mtl's ``RLW``; the paper's other sampling
distributions are not offered. ε comes from the method's own generator (seeded by the
``seed`` given to ``methods.create``, saved in ``state_dict``), so runs are reproducible and
resume exactly; under torch.distributed every rank builds the method with the same seed and
draws the same weights.
"""

from __future__ import annotations

import torch
from torch import Tensor

from methods.base import LossWeighting
from methods.registry import register


@register("rlw")
class RLW(LossWeighting):
    """Random loss weighting: w = softmax(ε), ε ~ N(0, I), drawn every step."""

    stateful = True  # the generator's state advances every step

    def weights(self, losses: Tensor) -> Tensor:
        eps = torch.randn(self.num_tasks, generator=self.generator, dtype=torch.float64)
        return torch.softmax(eps, 0).to(losses.device)
