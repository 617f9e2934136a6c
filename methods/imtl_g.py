"""IMTL-G — the gradient half of "Towards Impartial Multi-Task Learning".

Liu et al., ICLR 2021, https://openreview.net/forum?id=IMPnRXEWpvr

Find weights α (Σ α = 1) such that g = Σ_t α_t g_t has *equal projections* on every unit
task gradient u_t = g_t/‖g_t‖. The paper's closed form (rows of D: g_1 − g_t, rows of U:
u_1 − u_t) is equivalent to the Gram-only form used here (as TorchJD does):

    α ∝ K⁺ n,   n_t = ‖g_t‖,   K = G Gᵀ,   normalised to Σ α = 1,

after which gᵀu_t = 1/(1ᵀK⁺n) for all t. Invariant to positive rescaling of any loss.
The common projection can be negative (methods.md §4(d)); it is not forced positive.

Defaults and references: no hyperparameters. Parameter- or representation-level (the paper
uses ∇_z L_t for efficiency). Heads get their own unweighted gradient, following LibMTL
(``IMTL.py``); nash-mtl's ``IMTLG`` back-propagates Σ α L so its heads are α-weighted
(``head_update="weighted"`` reproduces it). The pseudo-inverse handles linearly dependent
gradients (TorchJD); if |1ᵀK⁺n| < 1e-12 (e.g. all gradients zero) the weights are uniform.
"""

from __future__ import annotations

import torch
from torch import Tensor

from methods.base import GramianMethod
from methods.registry import register


def imtl_g_weights(K: Tensor) -> Tensor:
    """IMTL-G weights (Σ = 1) from a float64 Gramian."""
    T = K.shape[0]
    norms = K.diagonal().clamp_min(0).sqrt()
    v = torch.linalg.pinv(K, hermitian=True) @ norms
    s = v.sum()
    if not torch.isfinite(v).all() or s.abs() < 1e-12:
        return torch.full((T,), 1.0 / T, dtype=K.dtype, device=K.device)
    return v / s


@register("imtl_g")
class IMTLG(GramianMethod):
    """IMTL-G: α ∝ K⁺‖g‖ so that the update projects equally on every task direction."""

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> tuple[Tensor, dict[str, float]]:
        return imtl_g_weights(gramian), {}
