"""Aligned-MTL — "Independent Component Alignment for Multi-Task Learning".

Senushkin, Patakin, Kuznetsov, Konushin, CVPR 2023, https://arxiv.org/abs/2305.19000
Official code: SamsungLabs/MTL. Followed here: LibMTL ``Aligned_MTL.py`` (a port of it).

The gradient system G (rows g_t) is replaced by an aligned one whose singular values are
all equal to G's smallest (kept) singular value σ_min, with the same singular vectors:
with the eigendecomposition K = G Gᵀ = V Λ Vᵀ,

    B = sqrt(λ_min) · V Λ^{-1/2} Vᵀ,    B G = σ_min · U Wᵀ  (G = U S Wᵀ),
    α = B 1 (column sums),               d = Σ_t α_t g_t = Σ_t (B G)_t,

keeping only eigenvalues above tol = λ_max · T · eps(float32) (LibMTL uses
``torch.finfo().eps`` of the default dtype) and taking λ_min as the smallest kept one. The
update is the sum of the aligned gradients: every principal direction of the task
gradients gets the same magnitude, so no component dominates (the paper's condition
number 1). Weights depend on G only through K: a :class:`GramianMethod`, so the paper's
UB variant is this method at ``level="rep"``.

No hyperparameters (the paper's task preferences are all 1, as in LibMTL). Heads get their
own unweighted gradient (LibMTL). Deliberate differences: ``torch.linalg.eigh`` in float64
instead of the removed ``torch.symeig``; if every gradient is zero (no eigenvalue above the
tolerance) the weights are all 1, the limit of the method for K = εI (d = 0 either way).
"""

from __future__ import annotations

import torch
from torch import Tensor

from methods.base import GramianMethod
from methods.registry import register


def alignment_matrix(K: Tensor) -> tuple[Tensor | None, int]:
    """B = sqrt(λ_min) V Λ^{-1/2} Vᵀ over the kept eigenpairs of K (None if K ≈ 0), and
    the number of kept eigenpairs (the numerical rank of G)."""
    lam, V = torch.linalg.eigh(K)
    tol = lam.max() * K.shape[0] * torch.finfo(torch.float32).eps
    keep = lam > tol
    rank = int(keep.sum())
    if rank == 0:
        return None, 0
    lam, V = lam[keep], V[:, keep]
    return lam.min().sqrt() * (V * lam.rsqrt()) @ V.T, rank


@register("aligned_mtl")
class AlignedMTL(GramianMethod):
    """Aligned-MTL: weights α = B·1 that make the gradient system's singular values equal."""

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> tuple[Tensor, dict[str, float]]:
        B, rank = alignment_matrix(gramian)
        if B is None:
            return torch.ones_like(losses, dtype=gramian.dtype), {"rank": 0.0}
        return B.sum(0), {"rank": float(rank)}
