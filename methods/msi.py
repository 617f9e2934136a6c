"""MSI — magnitude-similarity-informed rescaling of task gradients.

Jiang, Gou, Zhang, Wang, Zhang, Yang; "Mitigating Scale Imbalance and Conflicting Gradients in
Deep Multi-Task Learning", Frontiers of Computer Science 2024,
https://doi.org/10.1007/s11704-024-40632-2

**This is a documented reconstruction, not a transcription.** Neither the paper's method section
nor code is available (docs/methods.md §MSI and POMSI: not found); the poster only says that
MSI "adaptively rescales the gradients of each individual task according to magnitude
similarities between them". mtlx implements exactly this rule:

    n_t    = ‖g_t‖
    Φ_ij   = 2 n_i n_j / (n_i² + n_j²)                  (PCGrad's gradient magnitude similarity)
    Φ̄_t    = mean_{j ≠ t} Φ_tj
    n_ref  = mean | max | geometric mean of the n_t      (hyperparameter ``reference``)
    g_t    ← g_t · (n_ref / n_t)^(1 − Φ̄_t)
    d      = Σ_t g_t

A task whose norm matches the others' (Φ̄_t = 1) is left alone; a task badly out of scale
(Φ̄_t → 0) is rescaled all the way to n_ref. The rescaled norm n_t^Φ̄_t · n_ref^(1−Φ̄_t) lies
between n_t and n_ref. Scaling every gradient by c > 0 scales d by c and leaves the weights
unchanged. Default ``reference="mean"`` (a choice, not from the paper).

Zero gradients: a task with g_t = 0 has nothing to rescale; it takes no part in n_ref or in
the similarity means and keeps weight 1 (so nothing becomes NaN). With one active task MSI is
the identity.

Everything is a function of the norms, i.e. of K = G Gᵀ: MSI is a
:class:`~methods.base.GramianMethod` (effective weights = the scale factors), valid on
representation gradients and under torch.distributed. POMSI (``pomsi.py``) and POMSI-static
(``pomsi_static.py``) reuse :func:`msi_scales` after a PCGrad projection. Heads: ``"own"``
(each head its own loss gradient, as for the gradient-surgery baselines the paper compares to).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from methods.base import GramianMethod, check_choice
from methods.registry import register
from methods.space import Choice

REFERENCES = ("mean", "max", "geometric")


def reference_norm(norms: Tensor, reference: str) -> Tensor:
    """The norm every gradient is pulled towards: mean, max or geometric mean of ``norms`` (> 0)."""
    check_choice("reference", reference, REFERENCES)
    if reference == "mean":
        return norms.mean()
    if reference == "max":
        return norms.max()
    return norms.log().mean().exp()


def magnitude_similarity(norms: Tensor) -> Tensor:
    """Φ_ij = 2 n_i n_j / (n_i² + n_j²) for positive ``norms`` (T×T, ones on the diagonal)."""
    # written with the ratio r = min/max ∈ (0, 1] so that no square under- or overflows
    lo = torch.minimum(norms[:, None], norms[None, :])
    hi = torch.maximum(norms[:, None], norms[None, :])
    r = lo / hi
    return 2 * r / (1 + r * r)


def msi_scales(
    gramian: Tensor, reference: str, *, static: bool = False, active: Tensor | None = None
) -> tuple[Tensor, dict[str, float]]:
    """Scale factors s_t (g_t ← s_t g_t) from the Gramian of the gradients to rescale.

    ``static=False``: s_t = (n_ref/n_t)^(1 − Φ̄_t) (MSI); ``static=True``: s_t = n_ref/n_t
    (every gradient to norm n_ref, POMSI-static). Only tasks with n_t > 0 (and ``active``,
    if given) are rescaled and enter n_ref and Φ̄; the others keep s_t = 1."""
    K = gramian.to(torch.float64)
    norms = K.diagonal().clamp_min(0).sqrt()
    act = norms > 0 if active is None else active & (norms > 0)
    scales = torch.ones_like(norms)
    m = int(act.sum())
    if m == 0:
        return scales, {"reference_norm": 0.0}
    n = norms[act]
    n_ref = reference_norm(n, reference)
    if static:
        exponent = torch.ones_like(n)
    elif m == 1:
        exponent = torch.zeros_like(n)  # nothing to be imbalanced against
    else:
        mean_sim = (magnitude_similarity(n).sum(1) - 1) / (m - 1)  # drop Φ_tt = 1
        exponent = (1 - mean_sim).clamp(0, 1)
    scales[act] = (n_ref / n) ** exponent
    return scales, {"reference_norm": float(n_ref)}


@dataclass(frozen=True)
class MSIConfig:
    """``reference``: the norm n_ref gradients are pulled towards (mean, max or geometric mean
    of the task gradient norms)."""

    reference: str = "mean"

    def __post_init__(self) -> None:
        check_choice("reference", self.reference, REFERENCES)


@register("msi")
class MSI(GramianMethod):
    """MSI (reconstruction): rescale g_t by (n_ref/‖g_t‖)^(1 − mean magnitude similarity)."""

    Config = MSIConfig
    search_space = {"reference": Choice(REFERENCES)}

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> tuple[Tensor, dict[str, float]]:
        return msi_scales(gramian, self.config.reference)
