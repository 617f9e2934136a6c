"""MGDA-UB — MGDA on representation gradients (Sener & Koltun, NeurIPS 2018, §3.3).

https://arxiv.org/abs/1810.04650. The paper bounds the shared-parameter objective by one
on the gradients w.r.t. the shared representation z ("upper bound"), so the min-norm
weights are found from ∇_z L_t (T cheap passes through the heads only) and then applied
with one backward through the encoder. Same solver, options and defaults as
methods/mgda.py (LibMTL ``MGDA`` with ``rep_grad=True``, nash-mtl ``MGDA(params="rep")``);
the only difference is ``default_level = "rep"``: the engine uses representation
gradients unless told otherwise (``level="param"`` gives plain MGDA).
"""

from __future__ import annotations

from methods.mgda import MGDA
from methods.registry import register


@register("mgda_ub")
class MGDAUB(MGDA):
    """MGDA with weights from representation gradients (the engine's ``"rep"`` level)."""

    default_level = "rep"
