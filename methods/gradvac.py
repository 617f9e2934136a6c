"""GradVac — Gradient Vaccine: adaptive gradient-similarity targets.

Wang, Tsvetkov, Firat, Cao; "Gradient Vaccine: Investigating and Improving Multi-task
Optimization in Massively Multilingual Models", ICLR 2021,
https://openreview.net/forum?id=F1vEjWK-lH_

Update (per parameter group k; one group by default). For every task i, start from
g_i^PC = g_i and visit the other tasks j ≠ i in a random order:

    ρ = g_i^PCᵀ g_j / (‖g_i^PC‖ ‖g_j‖ + 1e-8)
    if ρ < ρ̂_ij:
        g_i^PC ← g_i^PC + w g_j,
        w = ‖g_i^PC‖ (ρ̂_ij √(1−ρ²) − ρ √(1−ρ̂_ij²)) / (‖g_j‖ √(1−ρ̂_ij²) + 1e-8)
    ρ̂_ij ← (1 − β) ρ̂_ij + β ρ

then d = Σ_i g_i^PC. The targets ρ̂ (T×T per group, initialised to 0) are the method's state.

Written on the Gramian (as TorchJD does): g^PC = C G, and ρ, ‖g_i^PC‖ and ‖g_j‖ all come from
K = G Gᵀ, so with one group (``group_type=0``, whole model) GradVac is a
:class:`~methods.base.GramianMethod` with effective weights = column sums of C: it runs on
representation gradients and under torch.distributed with only K reduced.

Reference code: LibMTL ``GradVac.py`` (docs/methods.md §GradVac); TorchJD ``GradVac`` agrees
except where noted. Defaults: β = 0.5 and group type 0 (LibMTL ``GradVac_beta``,
``GradVac_group_type``; TorchJD β = 0.5). Deliberate choices:

- ``target_update="always"`` (default) updates ρ̂_ij after every visit, as TorchJD does and as
  LibMTL's ``GradVac.py`` does since its fix of February 2024 (commit d2d84fa; checked at
  4336804, and mtlx matches it to 1e-15 over 5 steps). ``target_update="on_correction"``
  updates ρ̂_ij only inside the ``if ρ < ρ̂`` branch, as LibMTL did before that fix (e.g. at
  13f5fc7): its targets can then only fall from 0 and never aim at a positive similarity;
  kept to reproduce results made with those LibMTL versions.
- ``group_type``: 0 = whole model (a Gramian method); 2 = one group per shared parameter
  tensor (LibMTL "all_matrix"), which needs the full parameter-level gradient matrix and
  ``context.param_slices`` (filled by :func:`methods.backward`), so such an instance is not
  Gramian-only and has no representation-level variant. LibMTL's 1 (per leaf module) needs the
  model's module structure, which a method does not see: rejected.
- Visit order from the method's seeded generator (LibMTL uses Python's global ``random``), so
  runs are reproducible and checkpointed; one permutation per task i, shared by all groups,
  as in LibMTL's loop.
- A zero g_j is never added (the reference adds w·0 with a huge w: same direction, absurd
  effective weight); its target is still updated.
- Heads: ``"own"`` (LibMTL back-propagates each task's loss into its head).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from methods.base import Aggregation, GramianMethod, StepContext, check_choice, check_range
from methods.registry import register
from methods.space import Uniform

TARGET_UPDATES = ("always", "on_correction")
GROUP_TYPES = (0, 2)
_EPS = 1e-8  # the reference's denominators


def gradvac_coefficients(
    gramian: Tensor,
    targets: np.ndarray,
    orders: Sequence[Sequence[int]],
    beta: float,
    target_update: str = "always",
) -> tuple[Tensor, int]:
    """GradVac on the Gramian: C with g^PC = C G, and the number of corrections.

    ``targets``: the T×T float64 array ρ̂ of this group, updated in place. ``orders[i]``: the
    other tasks j visited for task i, in order."""
    K = gramian.detach().to(device="cpu", dtype=torch.float64).numpy()
    T = K.shape[0]
    C = np.eye(T)
    corrections = 0
    for i in range(T):
        dots = K[i].copy()  # (g_i^PC)ᵀ g_k for every k, kept current as C[i] changes
        for j in orders[i]:
            norm_i = math.sqrt(max(float(C[i] @ dots), 0.0))
            norm_j = math.sqrt(max(float(K[j, j]), 0.0))
            rho = float(dots[j]) / (norm_i * norm_j + _EPS)
            target = float(targets[i, j])
            if rho < target:
                if norm_j > 0.0:
                    s_rho = math.sqrt(max(1.0 - rho * rho, 0.0))
                    s_tgt = math.sqrt(max(1.0 - target * target, 0.0))
                    w = norm_i * (target * s_rho - rho * s_tgt) / (norm_j * s_tgt + _EPS)
                    C[i, j] += w
                    dots += w * K[j]
                    corrections += 1
                if target_update == "on_correction":
                    targets[i, j] = (1.0 - beta) * target + beta * rho
            if target_update == "always":
                targets[i, j] = (1.0 - beta) * target + beta * rho
    return torch.from_numpy(C).to(gramian.device), corrections


@dataclass(frozen=True)
class GradVacConfig:
    """``beta``: EMA rate of the targets ρ̂. ``group_type``: 0 whole model, 2 per parameter
    tensor. ``target_update``: "always" (TorchJD, LibMTL since 2024) or "on_correction"
    (LibMTL before its February 2024 fix)."""

    beta: float = 0.5
    group_type: int = 0
    target_update: str = "always"

    def __post_init__(self) -> None:
        check_range("beta", self.beta, 0.0, 1.0)
        if self.group_type == 1:
            raise ValueError(
                "group_type=1 (one group per layer) needs the model's module structure, which a "
                "method does not see; use group_type=0 (whole model) or 2 (per parameter tensor)"
            )
        check_choice("group_type", self.group_type, GROUP_TYPES)
        check_choice("target_update", self.target_update, TARGET_UPDATES)


@register("gradvac")
class GradVac(GramianMethod):
    """GradVac: raise each pairwise gradient cosine to its running target by adding g_j."""

    Config = GradVacConfig
    stateful = True
    search_space = {"beta": Uniform(0.01, 1.0)}

    def __init__(self, num_tasks: int, config: GradVacConfig | None = None, seed: int = 0) -> None:
        super().__init__(num_tasks, config, seed)
        if self.config.group_type == 2:
            # per-tensor groups need the full T×P matrix and its parameter layout
            self.gramian_only = False
            self.supports_rep_grads = False
        self.register_buffer("targets", self._fresh_targets())

    def _fresh_targets(self) -> Tensor:
        groups = 1 if self.config.group_type == 0 else 0  # per-tensor: sized at the first step
        return torch.zeros(self.num_tasks, self.num_tasks, groups, dtype=torch.float64)

    def reset(self) -> None:
        super().reset()
        self.targets = self._fresh_targets().to(self.targets.device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the per-tensor target array is sized lazily: take the saved shape
        saved = state_dict.get(prefix + "targets")
        if isinstance(saved, Tensor) and saved.shape != self.targets.shape:
            self.targets = torch.zeros_like(saved, device=self.targets.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _orders(self) -> list[list[int]]:
        T = self.num_tasks
        orders = []
        for i in range(T):
            others = [j for j in range(T) if j != i]
            perm = torch.randperm(T - 1, generator=self.generator).tolist()
            orders.append([others[p] for p in perm])
        return orders

    def _run_group(self, K: Tensor, k: int, orders: list[list[int]]) -> tuple[Tensor, int]:
        tgt = self.targets[:, :, k].detach().to("cpu", torch.float64).numpy().copy()
        C, n = gradvac_coefficients(K, tgt, orders, self.config.beta, self.config.target_update)
        self.targets[:, :, k] = torch.from_numpy(tgt).to(self.targets)
        return C.sum(0), n

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> tuple[Tensor, dict[str, float]]:
        w, n = self._run_group(gramian, 0, self._orders())
        return w, {"corrections": float(n)}

    def _aggregate(
        self, grads: Tensor | None, losses: Tensor, context: StepContext | None
    ) -> Aggregation:
        if self.config.group_type == 0:
            return super()._aggregate(grads, losses, context)
        assert grads is not None
        slices = self._check_slices(context, grads.shape[1])
        if self.targets.shape[2] == 0:
            self.targets = self.targets.new_zeros(self.num_tasks, self.num_tasks, len(slices))
        elif self.targets.shape[2] != len(slices):
            raise ValueError(
                f"gradvac: {len(slices)} parameter tensors this step but the targets were built "
                f"for {self.targets.shape[2]}; call reset() after changing the shared parameters"
            )
        orders = self._orders()
        direction = torch.empty_like(grads[0])
        w_sum = torch.zeros(self.num_tasks, dtype=torch.float64, device=grads.device)
        corrections = 0
        for k, (offset, n) in enumerate(slices):
            Gk = grads[:, offset : offset + n]
            Kk = (Gk @ Gk.T).to(torch.float64)
            if not torch.isfinite(Kk).all():
                raise ValueError("gradvac: non-finite per-task gradients (NaN or inf)")
            w, c = self._run_group(Kk, k, orders)
            direction[offset : offset + n] = w.to(grads.dtype) @ Gk
            w_sum += w
            corrections += c
        # per-group weights differ; their mean is what gets logged / used by "weighted" heads
        weights = (w_sum / len(slices)).to(losses.dtype)
        return Aggregation(direction, weights, info={"corrections": float(corrections)})

    @staticmethod
    def _check_slices(context: StepContext | None, P: int) -> list[tuple[int, int]]:
        if context is None or not context.param_slices:
            raise ValueError(
                "gradvac with group_type=2 needs context.param_slices (one entry per shared "
                "parameter tensor; methods.backward fills it at parameter level); "
                "use group_type=0 otherwise"
            )
        out, expected = [], 0
        for name, offset, shape in context.param_slices:
            n = math.prod(shape)
            if offset != expected:
                raise ValueError(
                    f"gradvac: param_slices must tile the gradient vector in order; {name!r} "
                    f"starts at {offset}, expected {expected}"
                )
            out.append((offset, n))
            expected += n
        if expected != P:
            raise ValueError(f"gradvac: param_slices cover {expected} entries, gradients have {P}")
        return out
