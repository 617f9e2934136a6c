"""GradDrop — gradient sign dropout.

Chen, Ngiam, Huang, Luong, Kretzschmar, Chai, Anguelov; "Just Pick a Sign: Optimizing Deep
Multitask Models with Gradient Sign Dropout", NeurIPS 2020, https://arxiv.org/abs/2010.06808

Update, per element k of the gradient matrix (rows ∇_t, t = 1..T):

    P_k = ½ (1 + Σ_t ∇_tk / Σ_t |∇_tk|)            (positive-sign purity)
    U_k ~ U(0, 1)
    M_tk = 1[P_k > U_k] · 1[∇_tk > 0] + 1[P_k < U_k] · 1[∇_tk < 0]
    d_k = Σ_t (ℓ + (1 − ℓ) M_tk) ∇_tk               (ℓ = leak)

so each element keeps only the gradients of one sign, chosen with the probability of that
sign's share. Default leak 0 (LibMTL ``leak``; the paper's default).

Levels. The paper applies GradDrop at a layer's activations; LibMTL requires representation
gradients and this method's default level is ``"rep"``. It is also valid on parameter
gradients, the variant of the CAGrad repository (``graddrop``), whose NYUv2/Cityscapes numbers
were produced that way; that port takes the mean over tasks and multiplies by T, i.e. this sum.

What the method sees at representation level is the T×N matrix of ∇_z L_t over every element of
the batch's representation z (N = batch × features), and it masks each element independently.
LibMTL instead multiplies every sample's representation gradient by sign(z), sums over the
batch and draws one mask per feature shared by all samples (the paper's "batch-separated"
sign trick). A method never sees z (nor the batch layout), so that variant is not expressible
here; the plain per-element rule on the given matrix is the paper's rule and identical to the
CAGrad port at parameter level.

Other choices: P is the exact ratio, with P = ½ where Σ_t |∇_tk| = 0 (LibMTL adds 1e-7 and
CAGrad 1e-8 to the denominator, which only matters for elements of that size, where it pulls
P towards ½); U is drawn from the method's seeded generator (reproducible, checkpointed).
The direction is not of the form Gᵀw: the returned weights are 1 (the plain sum, which is
also the head rule: heads get their own gradient as in both references), and ``info`` holds
the fraction of gradient entries kept. Not Gramian-only, so under torch.distributed it must
run at parameter level (the engine says so).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from methods.base import Aggregation, Method, StepContext, check_range
from methods.registry import register
from methods.space import Uniform


def graddrop_direction(grads: Tensor, uniform: Tensor, leak: float = 0.0) -> tuple[Tensor, Tensor]:
    """The GradDrop direction for gradients ``grads`` (T×N) and draws ``uniform`` (N,).

    Returns the direction (N,) and the keep mask M (T×N, bool)."""
    total = grads.sum(0)
    mass = grads.abs().sum(0)
    ratio = torch.where(mass > 0, total / torch.where(mass > 0, mass, 1), 0)
    purity = 0.5 * (1 + ratio)
    mask = ((purity > uniform) & (grads > 0)) | ((purity < uniform) & (grads < 0))
    keep = leak + (1 - leak) * mask.to(grads.dtype)
    return (keep * grads).sum(0), mask


@dataclass(frozen=True)
class GradDropConfig:
    """``leak``: fraction of every gradient passed through regardless of the mask."""

    leak: float = 0.0

    def __post_init__(self) -> None:
        check_range("leak", self.leak, 0.0, 1.0)


@register("graddrop")
class GradDrop(Method):
    """GradDrop: per element, keep only the gradients of a randomly chosen, purity-weighted sign."""

    Config = GradDropConfig
    requires_grads = True
    supports_rep_grads = True
    default_level = "rep"
    stateful = True  # the generator's state advances every step (the draws U)
    search_space = {"leak": Uniform(0.0, 1.0)}

    def _aggregate(
        self, grads: Tensor | None, losses: Tensor, context: StepContext | None
    ) -> Aggregation:
        assert grads is not None
        if not torch.isfinite(grads).all():
            raise ValueError("graddrop: non-finite per-task gradients (NaN or inf)")
        uniform = torch.rand(grads.shape[1], generator=self.generator, dtype=grads.dtype)
        direction, mask = graddrop_direction(grads, uniform.to(grads.device), self.config.leak)
        nonzero = (grads != 0).sum()
        kept = float((mask.sum() / nonzero) if nonzero > 0 else 1.0)
        return Aggregation(direction, torch.ones_like(losses), info={"kept_fraction": kept})
