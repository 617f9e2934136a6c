"""POMSI — PCGrad projection, then magnitude-similarity-informed rescaling (MSI).

Jiang, Gou, Zhang, Wang, Zhang, Yang; "Mitigating Scale Imbalance and Conflicting Gradients in
Deep Multi-Task Learning", Frontiers of Computer Science 2024,
https://doi.org/10.1007/s11704-024-40632-2

**This is a documented reconstruction, not a transcription**: the paper's method section and
code are not available (docs/methods.md §MSI and POMSI). The poster says POMSI "projects
[the gradients] onto the respective normal vector of each other and then rescales the norms".
mtlx implements exactly:

    g^PC = PCGrad projection of the g_t       (pcgrad.py: random order per task, seeded,
                                               against the original gradients, j = i included)
    g_t' = MSI rescaling of the g_t^PC        (msi.py: g ← g·(n_ref/‖g‖)^(1 − Φ̄), with the
                                               norms, similarities and n_ref of the *projected*
                                               gradients)
    d    = Σ_t g_t'

Both steps are linear combinations of the original gradients computed from K = G Gᵀ alone:
g^PC = C G, the projected Gramian is C K Cᵀ, the rescaled gradients are diag(s) C G, so POMSI is
a :class:`~methods.base.GramianMethod` with effective weights = column sums of diag(s) C (valid
on representation gradients and under torch.distributed). Hyperparameters: ``reference``
(MSI's n_ref: mean, default, max or geometric) and ``order`` (``random``, default, or
``fixed``, as in PCGrad).

Numerically zero projections: PCGrad can cancel a gradient exactly (e.g. g_2 = −g_1). Computed
from the Gramian such a g_t^PC comes out at rounding level instead of 0, and rescaling it would
amplify noise. A projected gradient whose norm is below 1e-6 of Σ_k |C_tk| ‖g_k‖ (the largest
norm its pieces could add up to) is treated as zero: it keeps scale 1 and takes no part in n_ref
or the similarities, as zero gradients do in MSI. Heads: ``"own"``, as for PCGrad.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from methods.base import GramianMethod, check_choice
from methods.msi import REFERENCES, msi_scales
from methods.pcgrad import ORDERS, pcgrad_coefficients, visit_orders
from methods.registry import register
from methods.space import Choice

#: a projected gradient below this fraction of Σ_k |C_tk| ‖g_k‖ is numerically zero
ZERO_RTOL = 1e-6


def projected_gramian(gramian: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """The Gramian C K Cᵀ of the projected gradients g^PC = C G, and which of them are not
    numerically zero (see ``ZERO_RTOL``)."""
    K = gramian.to(torch.float64)
    C = C.to(K)
    Kp = C @ K @ C.T
    Kp = (Kp + Kp.T) / 2
    bound = C.abs() @ K.diagonal().clamp_min(0).sqrt()
    active = Kp.diagonal().clamp_min(0).sqrt() > ZERO_RTOL * bound
    return Kp, active


def pomsi_coefficients(
    gramian: Tensor, orders: Sequence[Sequence[int]], reference: str, static: bool
) -> tuple[Tensor, dict[str, float]]:
    """POMSI (``static=False``) or POMSI-static (``static=True``) as a T×T matrix M: the
    rescaled projected gradients are M G, and the effective weights are M's column sums."""
    C, n = pcgrad_coefficients(gramian, orders)
    C = C.to(torch.float64)
    Kp, active = projected_gramian(gramian, C)
    scales, info = msi_scales(Kp, reference, static=static, active=active)
    info["projections"] = float(n)
    return scales[:, None] * C, info


@dataclass(frozen=True)
class POMSIConfig:
    """``reference``: MSI's n_ref (mean, max or geometric mean of the projected norms).
    ``order``: PCGrad's visit order, "random" (seeded) or "fixed" (j = 1..T)."""

    reference: str = "mean"
    order: str = "random"

    def __post_init__(self) -> None:
        check_choice("reference", self.reference, REFERENCES)
        check_choice("order", self.order, ORDERS)


@register("pomsi")
class POMSI(GramianMethod):
    """POMSI (reconstruction): PCGrad projection, then MSI rescaling of the projected gradients."""

    Config = POMSIConfig
    stateful = True  # the generator's state advances every step (random visit order)
    search_space = {"reference": Choice(REFERENCES)}
    #: rescale every projected gradient fully to n_ref (POMSI-static) instead of by similarity
    static = False

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> tuple[Tensor, dict[str, float]]:
        orders = visit_orders(self.num_tasks, self.config.order, self.generator)
        M, info = pomsi_coefficients(gramian, orders, self.config.reference, self.static)
        return M.sum(0), info
