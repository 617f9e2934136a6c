"""SI-LS — scale-invariant linear scalarisation: equal weights on log losses.

The scale-invariant baseline of Nash-MTL (Navon et al., ICML 2022,
https://arxiv.org/abs/2202.01017; nash-mtl ``methods/weight_methods.py::
ScaleInvariantLinearScalarization``): minimise Σ_t log L_t. Its gradient Σ_t ∇L_t / L_t is
unchanged when any task's loss is multiplied by a constant, hence the name.

In mtlx this is exactly ``ew`` with the method-independent ``loss_transform='log'``
(log(L + 1e-8), methods/base.py), kept as a named method because papers report it under this
name (tests/test_methods_new.py checks that the two give identical gradients). The 1e-8 is
mtlx's log transform; nash-mtl takes log L without it (the gradients differ by the factor
L/(L + 1e-8), visible only for losses near 1e-8). Losses must be positive; combining
it with ``loss_transform='log'`` would take the log twice and is refused. Heads are weighted
(one backward of the sum).
"""

from torch import Tensor

from methods.base import LOG_EPS, LossWeighting
from methods.registry import register


@register("si_ls")
class SILS(LossWeighting):
    """Scale-invariant linear scalarisation: ``L = Σ_t log(L_t + 1e-8)`` (= ew on log losses)."""

    positive_losses = True

    def transform_losses(self, losses: Tensor) -> Tensor:
        return (losses + LOG_EPS).log()

    def log_transform_conflict(self) -> str | None:
        return ("si_ls already is equal weighting on log losses; use si_ls alone, or ew with "
                "loss_transform='log'")
