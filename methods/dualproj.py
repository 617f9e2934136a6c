"""DualProj — the mean gradient projected onto the dual cone of the task gradients.

The projection of Gradient Episodic Memory (Lopez-Paz & Ranzato, NeurIPS 2017,
https://arxiv.org/abs/1706.08840, its Equation 11) applied to the average of the task
gradients, as TorchJD's ``DualProj`` aggregator (github.com/TorchJD/torchjd,
``src/torchjd/aggregation/_dualproj.py``, v0.8.1; "Jacobian Descent for Multi-Objective
Optimization", https://arxiv.org/abs/2406.16232, compares it with UPGrad):

    d = π_C(ḡ),  ḡ = (1/T) Σ_t g_t,   C = {x : Gx ≥ 0},
    d = Gᵀw,     w = argmin_{v ≥ 1/T} vᵀKv      (K = G Gᵀ).

d is the point of C nearest to ḡ, so g_tᵀd = (Kw)_t ≥ 0 for every task (non-conflicting), and
d = ḡ when ḡ conflicts with no task. Unlike UPGrad (methods/upgrad.py), which projects each
g_t and averages, DualProj projects once; the two agree when no g_t conflicts with another.

One QP on the T×T Gramian, solved as UPGrad's (:func:`methods.upgrad.dual_cone_weights`:
Jacobi-scaled Lawson–Hanson active set, KKT conditions checked, L-BFGS-B then a counted and
warned failure if they are not met). ``norm_eps`` and ``reg_eps`` as in UPGrad: TorchJD uses
1e-4 and 1e-4 (for quadprog); mtlx's defaults 0 and 0 give the exact projection, and
``dualproj(norm_eps=1e-4, reg_eps=1e-4)`` reproduces TorchJD (pinned in
tests/test_methods_new.py). Heads get their own unweighted gradient. A
:class:`GramianMethod`: exact at representation level and under torch.distributed.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from methods.base import GramianMethod
from methods.registry import register
from methods.upgrad import DualConeConfig, dual_cone_weights, regularised_gramian, solve_info


@register("dualproj")
class DualProj(GramianMethod):
    """DualProj: the mean gradient projected onto the dual cone of the task gradients."""

    Config = DualConeConfig

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> tuple[Tensor, dict[str, float]]:
        T = self.num_tasks
        A = regularised_gramian(gramian.cpu().numpy(), self.config.norm_eps, self.config.reg_eps)
        sol = dual_cone_weights(A, np.full((1, T), 1.0 / T))
        return torch.from_numpy(sol.V[0]).to(gramian), solve_info(self, sol)
