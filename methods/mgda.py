"""MGDA — "Multi-Task Learning as Multi-Objective Optimization".

Sener & Koltun, NeurIPS 2018, https://arxiv.org/abs/1810.04650
Official code: isl-org/MultiObjectiveOptimization. Followed here: LibMTL ``MGDA.py`` (a port
of it); nash-mtl ``MGDA`` and CAGrad's ``mgd`` differ as noted below.

The multiple-gradient descent direction is the min-norm point of the convex hull of the
(optionally normalised) task gradients ĝ_t = g_t / n_t:

    w = argmin_{w ∈ Δ} ‖Σ_t w_t ĝ_t‖²,     d = Σ_t w_t ĝ_t = Σ_t (w_t / n_t) g_t,

solved on the Gramian K̂ = D K D (D = diag(1/n_t)) by Sener's solver (best pair, then
projected gradient with exact line search; methods/solvers.py). At the solution
g_mᵀĝ_t = ‖g_m‖² for every task with w_t > 0 (and ≥ for the others), so d is a common
descent direction unless the tasks are Pareto-stationary (d = 0).

``normalization`` (n_t): ``none`` 1, ``l2`` ‖g_t‖, ``loss`` L_t, ``loss+`` L_t‖g_t‖.
Default ``none``, as LibMTL (``mgda_gn``) and nash-mtl; the official repo's default is
reportedly ``loss+`` (unverified, docs/methods.md §MGDA). As in LibMTL, the *normalised*
gradients are what gets applied, so the returned (effective) weights are w_t / n_t.
(nash-mtl instead back-propagates Σ w_t L_t, i.e. applies w to the raw gradients; with the
default ``none`` the two agree. LibMTL's rep-grad path also applies w to the raw gradients;
mtlx applies the same effective weights at both levels.)

``scale_by_tasks``: multiply the weights by T (nash-mtl: "make sure it sums to n_tasks";
CAGrad's ``mgd`` ×T). Default False, as LibMTL.

Heads: each head gets its own unweighted gradient, as in LibMTL and CAGrad's ``mgd``.
nash-mtl and the official code back-propagate Σ w_t L_t, i.e. α-weighted heads: use
``head_update="weighted"`` with ``scale_by_tasks=True`` to reproduce nash-mtl.

Deliberate differences: the solve runs in float64 on K̂ / max_t K̂_tt (same minimiser; the
solver's step thresholds are absolute, so this keeps it well behaved at any gradient scale);
the solver's iteration cap (250) is real, as in LibMTL (the numpy copies never increment it,
docs/methods.md §Sener's solver); its iterate is then polished by an exact KKT solve on the
support it found (kept only if feasible, optimal and no worse), which moves w by ~1e-5 and
makes the paper's equal-projection property hold to rounding error. A consequence: where the
reference's pair rule returns 0.999/0.001 (one gradient dominates), the polished answer is
the exact 1/0. For ``l2``/``loss+`` a zero gradient keeps n_t = 1 (the reference divides 0
by 0): it is then the min-norm point itself and d = 0, the correct MGDA answer.
``loss``/``loss+`` need positive losses; a loss ≤ 0 raises ``ValueError``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from methods.base import GramianMethod, check_choice
from methods.registry import register
from methods.solvers import min_norm_weights

NORMALIZATIONS = ("none", "l2", "loss", "loss+")


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def gradient_normalizers(K: Tensor, losses: Tensor, normalization: str) -> Tensor:
    """n_t of each task (float64): 1, ‖g_t‖, L_t or L_t‖g_t‖."""
    norms = K.diagonal().clamp_min(0).sqrt()
    norms = torch.where(norms > 0, norms, torch.ones_like(norms))  # zero gradient stays zero
    if normalization in ("loss", "loss+") and not bool((losses > 0).all()):
        raise ValueError(
            f"MGDA normalization={normalization!r} divides by the losses, which must be "
            f"positive; got {losses.tolist()}. Use normalization='none' or 'l2'."
        )
    if normalization == "l2":
        return norms
    if normalization == "loss":
        return losses.clone()
    if normalization == "loss+":
        return losses * norms
    return torch.ones_like(losses)


def _polish(K: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Exact min-norm weights by an active-set KKT solve started from the support of Sener's
    iterate: K_SS w_S = μ1, 1ᵀw_S = 1, w ≥ 0, (Kw)_t ≥ μ off the support. Returned only if
    it is feasible, optimal and no worse than ``w``; otherwise ``w`` itself.

    The linear system is solved on the cosine matrix (C = K/(n nᵀ), n_t = ‖g_t‖:
    K_SS w_S = μ1 ⇔ C_SS (n ⊙ w)_S = μ/n_S), whose conditioning depends on the angles
    between the gradients only, so the solve stays exact when their norms are orders of
    magnitude apart; optimality off the support is tested per task in units of
    ‖g_t‖·‖d‖, so a small task's condition is not hidden by a large one's."""
    T = len(w)
    norms = np.sqrt(np.maximum(np.diag(K), 0.0))
    if not (norms > 0).all():
        return w
    C = K / np.outer(norms, norms)
    support = w > 1e-6 * w.max()
    for _ in range(3 * T):
        idx = np.flatnonzero(support)
        v = np.linalg.pinv(C[np.ix_(idx, idx)], hermitian=True) @ (1.0 / norms[idx])
        v = v / norms[idx]  # w_S ∝ N⁻¹ C_SS⁻¹ N⁻¹ 1
        if not (np.isfinite(v).all() and v.sum() > 0):
            return w
        v = v / v.sum()
        if v.min() < -1e-12:  # drop the most negative task from the support
            support[idx[np.argmin(v)]] = False
            continue
        full = np.zeros(T)
        full[idx] = np.maximum(v, 0.0)
        full /= full.sum()
        grad = K @ full
        mu = float(full @ grad)
        slack = (grad - mu) / (norms * np.sqrt(max(mu, 0.0)) + 1e-300)
        off = np.where(support, np.inf, slack)
        if off.min() < -1e-12:  # a task outside the support is still improving
            support[np.argmin(off)] = True
            continue
        return full if mu <= (w @ K @ w) * (1 + 1e-12) else w
    return w


def min_norm_point(K: np.ndarray) -> tuple[np.ndarray, int]:
    """argmin_{w ∈ Δ} wᵀKw: Sener's solver on K / max_t K_tt, then an exact KKT polish.

    Sener's projected gradient stops at an L1 change of 1e-5 and converges only linearly
    (on random T = 5..10 Gramians it often needs thousands of iterations for 1e-9), so its
    g_m misses equal projections by ~1e-5·‖g_t‖; solving the KKT system on the support it
    found makes g_mᵀg_t equal on the support to rounding error. Returns (w, Sener iterations)."""
    s = float(np.max(np.diag(K)))
    if not s > 0:
        return min_norm_weights(K)
    Kn = K / s
    w, iters = min_norm_weights(Kn)
    return _polish(Kn, w), iters


@dataclass(frozen=True)
class MGDAConfig:
    """``normalization``: divide g_t by 1 (none), ‖g_t‖ (l2), L_t (loss) or L_t‖g_t‖
    (loss+) before the min-norm solve; ``scale_by_tasks``: weights sum to T instead of 1."""

    normalization: str = "none"
    scale_by_tasks: bool = False

    def __post_init__(self) -> None:
        check_choice("normalization", self.normalization, NORMALIZATIONS)
        _check_bool("scale_by_tasks", self.scale_by_tasks)


@register("mgda")
class MGDA(GramianMethod):
    """MGDA: the min-norm point of the convex hull of the (normalised) task gradients."""

    Config = MGDAConfig

    def _needs_positive_losses(self) -> bool:
        return self.config.normalization in ("loss", "loss+")

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> tuple[Tensor, dict[str, float]]:
        n = gradient_normalizers(gramian, losses, self.config.normalization)
        K_hat = gramian / torch.outer(n, n)
        w, iters = min_norm_point(K_hat.cpu().numpy())
        eff = torch.from_numpy(w).to(gramian) / n
        if self.config.scale_by_tasks:
            eff = eff * self.num_tasks
        min_norm = float(np.sqrt(max(float(w @ K_hat.cpu().numpy() @ w), 0.0)))
        return eff, {"iterations": float(iters), "min_norm": min_norm}
