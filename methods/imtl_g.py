"""IMTL-G — the gradient half of "Towards Impartial Multi-Task Learning".

Liu et al., ICLR 2021, https://openreview.net/forum?id=IMPnRXEWpvr

Find weights α (Σ α = 1) such that g = Σ_t α_t g_t has *equal projections* on every unit
task gradient u_t = g_t/‖g_t‖. The paper's closed form (rows of D: g_1 − g_t, rows of U:
u_1 − u_t) has the Gram-only equivalent (as TorchJD writes it)

    α ∝ K⁻¹ n,   n_t = ‖g_t‖,   K = G Gᵀ,   normalised to Σ α = 1,

after which gᵀu_t = 1/(1ᵀK⁻¹n) for all t. It is computed on the *cosine* matrix
C = K / (n nᵀ) (unit diagonal): with N = diag(n), K⁻¹n = N⁻¹C⁻¹N⁻¹n = N⁻¹ C⁻¹ 1, so

    α ∝ C⁺1 / n.

C's conditioning depends only on the angles between gradients, not on their norms, so the
result is exact however different the norms are; a pseudo-inverse of K itself drops a
genuine eigenvalue once the norms are ~10⁴ apart (K's eigenvalues then span more than
machine precision) and returns the wrong weights — G = [[1000, 0], [0.01, 1e-5]] gives
[0.99999, 1e-5] instead of [1e-5, 0.99999]. Invariant to positive rescaling of any loss.
The common projection can be negative (docs/methods.md §IMTL-G); it is not forced positive.

Degenerate inputs: a task whose gradient is zero gets weight 0 and the others are solved
among themselves (no direction to project on); exactly dependent unit gradients are handled
by the pseudo-inverse of C (TorchJD's choice); if 1ᵀC⁺1/n vanishes (every gradient zero)
the weights are uniform and ``info["degenerate"]`` is 1.

Defaults and references: no hyperparameters. Parameter- or representation-level (the paper
uses ∇_z L_t for efficiency). Heads get their own unweighted gradient, following LibMTL
(``IMTL.py``); nash-mtl's ``IMTLG`` back-propagates Σ α L so its heads are α-weighted
(``head_update="weighted"`` reproduces it).
"""

from __future__ import annotations

import torch
from torch import Tensor

from methods.base import GramianMethod
from methods.registry import register


def imtl_g_weights(K: Tensor) -> tuple[Tensor, dict[str, float]]:
    """IMTL-G weights (Σ = 1) from a float64 Gramian, and whether the input was degenerate."""
    T = K.shape[0]
    norms = K.diagonal().clamp_min(0).sqrt()
    live = norms > 0
    w = torch.zeros(T, dtype=K.dtype, device=K.device)
    if live.any():
        n = norms[live]
        C = K[live][:, live] / torch.outer(n, n)
        v = torch.linalg.pinv(C, hermitian=True).sum(dim=1) / n  # C⁺1 / n
        s = v.sum()
        if torch.isfinite(v).all() and s.abs() > 1e-12 * v.abs().sum():
            w[live] = v / s
            return w, {"degenerate": 0.0}
    return torch.full((T,), 1.0 / T, dtype=K.dtype, device=K.device), {"degenerate": 1.0}


@register("imtl_g")
class IMTLG(GramianMethod):
    """IMTL-G: α ∝ K⁺‖g‖ so that the update projects equally on every task direction."""

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> tuple[Tensor, dict[str, float]]:
        return imtl_g_weights(gramian)
