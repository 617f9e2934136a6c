"""EW — equal weighting: the plain sum of task losses, the baseline of every MTL paper.

Update: θ ← θ − η ∇_θ Σ_t L_t. One backward pass. Every reference code base uses the sum
(LibMTL ``EW``, nash-mtl ``LinearScalarization`` with weights 1).
"""

from methods.base import LossWeighting
from methods.registry import register


@register("ew")
class EW(LossWeighting):
    """Equal weighting: ``L = Σ_t L_t`` (weights all 1)."""

