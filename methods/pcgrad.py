"""PCGrad — project conflicting gradients ("Gradient Surgery for Multi-Task Learning").

Yu, Kumar, Gupta, Levine, Hausman, Finn; NeurIPS 2020, https://arxiv.org/abs/2001.06782

Update. For every task i, start from g_i^PC = g_i and visit the tasks j in a random order:

    if g_i^PCᵀ g_j < 0:   g_i^PC ← g_i^PC − (g_i^PCᵀ g_j / ‖g_j‖²) · g_j

always projecting against the *original* g_j. The shared update is d = Σ_i g_i^PC.

Written on the Gramian. Every g_i^PC is a linear combination of the original gradients,
g^PC = C G with C ∈ R^{T×T} (C = I at the start), and everything the loop reads comes from
K = G Gᵀ: g_i^PCᵀ g_j = (C K)_ij and ‖g_j‖² = K_jj; a projection is C_ij ← C_ij − α. So
d = Gᵀ w with w the column sums of C (the effective task weights, which is also what older
LibMTL returns as ``batch_weight``). This is exact, and it makes PCGrad a
:class:`~methods.base.GramianMethod`: it runs on representation gradients and under
torch.distributed with only the T×T Gramian reduced. At representation level it is PCGrad
applied to the ∇_z L_t (the paper and the references project parameter gradients; LibMTL
refuses ``rep_grad``), so it is only used there when the user asks for ``level="rep"``.
:func:`pcgrad_coefficients` is reused by MSI/POMSI.

Reference code followed: the official TF code (tianheyu927/PCGrad), its PyTorch port used by
nash-mtl, and LibMTL ``PCGrad.py`` (docs/methods.md §PCGrad). Details:

- The visit order runs over *all* T tasks, j = i included, as in all three references;
  visiting i itself only acts if g_i^PC has been turned against g_i.
- ``order="random"`` (default): one permutation of the T tasks per task i and step, drawn from
  the method's seeded generator (the references use Python's global ``random``), so runs are
  reproducible and the order state is checkpointed. ``order="fixed"``: j = 1..T, for pinned
  numbers (docs/methods.md §Pinned input) and tests.
- ``eps`` is added to ‖g_j‖². Default 0, as in the official code and nash-mtl: the method is
  then exactly equivariant to a common rescaling of the gradients. Some LibMTL revisions add
  1e-8 (the pinned number was computed that way; it differs by about 1e-8). A zero g_j never
  conflicts (all its inner products are 0), so eps = 0 never divides by zero.
- Heads: ``"own"`` — LibMTL and CAGrad back-propagate every task's loss into its own head;
  nash-mtl's PCGrad gives the heads ∇(Σ_t L_t), which is the same gradient for task-specific
  parameters (the other tasks' losses do not depend on them). The CAGrad repository's port
  takes a mean and multiplies by T, which is this sum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from methods.base import GramianMethod, check_choice, check_range
from methods.registry import register

ORDERS = ("random", "fixed")


def visit_orders(num_tasks: int, order: str, generator: torch.Generator) -> list[list[int]]:
    """For each task i, the order in which the tasks j (i included) are visited.

    ``"random"`` draws one permutation per task from ``generator``; ``"fixed"`` is 0..T-1."""
    check_choice("order", order, ORDERS)
    if order == "fixed":
        return [list(range(num_tasks)) for _ in range(num_tasks)]
    return [torch.randperm(num_tasks, generator=generator).tolist() for _ in range(num_tasks)]


def pcgrad_coefficients(
    gramian: Tensor, orders: Sequence[Sequence[int]], eps: float = 0.0
) -> tuple[Tensor, int]:
    """PCGrad's projections on the Gramian: C with g^PC = C G, and the number of projections.

    ``gramian``: the T×T Gramian K of the original gradients (any float dtype; computed in
    float64 on the CPU, T is tiny). ``orders[i]``: the tasks j visited for task i, in order.
    """
    K = gramian.detach().to(device="cpu", dtype=torch.float64).numpy()
    T = K.shape[0]
    C = np.eye(T)
    projections = 0
    for i in range(T):
        dots = K[i].copy()  # (g_i^PC)ᵀ g_k for every k, kept current as C[i] changes
        for j in orders[i]:
            if dots[j] < 0.0:
                alpha = dots[j] / (K[j, j] + eps)
                C[i, j] -= alpha
                dots -= alpha * K[j]
                projections += 1
    return torch.from_numpy(C).to(gramian.device), projections


@dataclass(frozen=True)
class PCGradConfig:
    """``order``: "random" (the paper) or "fixed" (j = 1..T, for pinned numbers).
    ``eps``: added to ‖g_j‖² (0: official code; 1e-8: some LibMTL revisions)."""

    order: str = "random"
    eps: float = 0.0

    def __post_init__(self) -> None:
        check_choice("order", self.order, ORDERS)
        check_range("eps", self.eps, 0.0)


@register("pcgrad")
class PCGrad(GramianMethod):
    """PCGrad: remove each task gradient's component that conflicts with another task's."""

    Config = PCGradConfig
    stateful = True  # the generator's state advances every step (random visit order)

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> tuple[Tensor, dict[str, float]]:
        orders = visit_orders(self.num_tasks, self.config.order, self.generator)
        C, n = pcgrad_coefficients(gramian, orders, self.config.eps)
        return C.sum(0), {"projections": float(n)}
