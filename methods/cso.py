"""CSO — connection-strength-based optimisation ("Quantifying Task Priority for Multi-Task
Optimization").

Jeong & Yoon, CVPR 2024, https://arxiv.org/abs/2406.02996

The shared backbone must use task-specific BatchNorm: every eligible shared weight W (a conv or
linear weight, C_out output channels) is followed by one BN per task (γ_t, running variance
σ²_t). The connection strength of task t on output channel c (the paper's Eq. 4 and 6) is

    s_t[c] = ‖W[c]‖² · γ_t[c]² / (σ²_t[c] + 1e-5)          (W, γ, σ² detached)

Training mixes two phases. At epoch e of E (0-based) each iteration draws P ~ U(0, 1) and runs
Phase 1 if P ≥ e/E, else Phase 2 (:meth:`CSO.plan_step`); epoch 0 is always Phase 1 and Phase 2
dominates late in training.

Phase 1 ("learn task priority", ``plan_step`` returns ``"sequential"``) — the trainer's
contract: for each task t in the fixed task-list order: zero all gradients with
``set_to_none=True``; run the forward pass for task t alone (``model(x, task=t)``, so that only
task t's BatchNorm is used and only its running statistics are updated); back-propagate L_t
(its plain loss) into every parameter; call ``optimizer.step()``. That is T optimiser steps on
the same batch (Adam's step counter advances T times); parameters task t does not reach (other
tasks' BN and heads) have ``grad=None`` and are skipped by the optimiser. The method's
``aggregate`` is not called in Phase 1.

Phase 2 ("conserve task priority", ``plan_step`` returns ``"joint"``): one engine step
(``methods.backward`` at parameter level) on per-task losses, each from its own task-specific
forward pass. The trainer passes a :class:`~methods.base.StepContext` whose ``param_slices``
name every shared parameter (name, offset, shape in the flat gradient vector) and whose
``model_stats["connection_strength"]`` maps the name of every eligible weight to its strengths,
a Tensor[T, C_out] (the model computes them with :func:`connection_strength`). For each such
weight, with G_t its task gradients viewed as C_out rows:

    p_t[c] = s_t[c] / Σ_c' s_t[c']                          (normalise per task, Eq. 7)
    top[c] = argmax_t p_t[c]                                (ties: the first task)
    if one task is top on every channel: the plain sum Σ_t G_t
    else, for each task i with channel set S_i = {c : top[c] = i} and every other task j:
        if ⟨G_i|S_i, G_j|S_i⟩ < 0:  G_j|S_i ← G_j|S_i − ⟨G_i|S_i, G_j|S_i⟩ / ‖G_i|S_i‖² · G_i|S_i
    direction = Σ_t G_t

The inner product runs over all of S_i's rows jointly (flattened), not channel by channel; the
top task's gradient on its own channels is never changed; no epsilon is added to ‖G_i|S_i‖²
(a zero G_i|S_i has no conflicts). Every other shared parameter gets the plain sum, and heads
their own gradient (``"own"``).

Reference: the first author's method-only release wooseong97/MT-ST-core (``conn_str.py``,
``example.py``; CC BY-NC, reimplemented from docs/methods.md §CSO, not copied). Follows it in
the fixed Phase-1 order, the sum (not mean) in Phase 2, the BN epsilon 1e-5 and the schedule.
Deliberate differences: the phase draw uses the method's seeded generator (reproducible,
checkpointed); a task whose strengths are all zero gets p_t = 0 instead of 0/0. No continuous
hyperparameters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from methods.base import Aggregation, Method, StepContext, check_int
from methods.registry import register

BN_EPS = 1e-5  # PyTorch BatchNorm's default epsilon, used by the reference


def connection_strength(
    weight: Tensor,
    bn_weights: Tensor | Sequence[Tensor],
    bn_running_vars: Tensor | Sequence[Tensor],
    eps: float = BN_EPS,
) -> Tensor:
    """Per-task connection strengths s_t[c] = ‖W[c]‖² γ_t[c]² / (σ²_t[c] + eps), Tensor[T, C_out].

    ``weight``: the shared weight (C_out, ...); ``bn_weights`` / ``bn_running_vars``: the T
    task-specific BatchNorms' γ and running variances, stacked (T, C_out) or a sequence of T
    (C_out,) tensors. Everything is detached; ``eps`` should be the BatchNorms' epsilon."""
    gamma = torch.stack(list(bn_weights)) if not isinstance(bn_weights, Tensor) else bn_weights
    var = (
        torch.stack(list(bn_running_vars))
        if not isinstance(bn_running_vars, Tensor)
        else bn_running_vars
    )
    C_out = weight.shape[0]
    if gamma.dim() != 2 or gamma.shape[1] != C_out or var.shape != gamma.shape:
        raise ValueError(
            f"connection_strength: BN weights {tuple(gamma.shape)} and running variances "
            f"{tuple(var.shape)} must both be (num_tasks, {C_out}) for a weight of shape "
            f"{tuple(weight.shape)}"
        )
    row_sq = weight.detach().reshape(C_out, -1).pow(2).sum(1)
    return row_sq[None, :] * gamma.detach().pow(2) / (var.detach() + eps)


def project_on_priority(grads: Tensor, strengths: Tensor) -> tuple[Tensor, int]:
    """Phase-2 surgery on one weight: ``grads`` (T, C_out, n) per-task gradients viewed as
    rows, ``strengths`` (T, C_out). Returns the projected per-task gradients (T, C_out, n),
    whose sum is the update, and the number of projections made."""
    T = grads.shape[0]
    totals = strengths.sum(1, keepdim=True)
    priority = torch.where(totals > 0, strengths / torch.where(totals > 0, totals, 1), 0)
    top = priority.argmax(0)
    if (top == top[0]).all():
        return grads, 0  # one task tops every channel: the plain sum
    g = grads.clone()
    projections = 0
    for i in range(T):
        rows = top == i
        if not rows.any():
            continue
        gi = grads[i, rows].reshape(-1)  # never modified: only other tasks are projected on S_i
        gi_sq = gi @ gi
        for j in range(T):
            if j == i:
                continue
            gj = g[j, rows].reshape(-1)
            dot = gi @ gj
            if dot < 0:
                g[j, rows] = (gj - dot / gi_sq * gi).reshape(-1, grads.shape[2])
                projections += 1
    return g, projections


@register("cso")
class CSO(Method):
    """Connection-strength-based optimisation: Phase 1 sequential per-task steps, Phase 2
    projection that protects each channel's top-priority task."""

    requires_grads = True
    requires_model = ("task_batchnorm",)
    stateful = True  # the generator's state advances with every phase draw

    def plan_step(self, epoch: int, num_epochs: int) -> str:
        """``"sequential"`` (Phase 1) if P ≥ epoch/num_epochs with P ~ U(0, 1), else ``"joint"``."""
        check_int("num_epochs", num_epochs, 1)
        check_int("epoch", epoch, 0)
        draw = float(torch.rand((), generator=self.generator, dtype=torch.float64))
        return "sequential" if draw >= epoch / num_epochs else "joint"

    def _aggregate(
        self, grads: Tensor | None, losses: Tensor, context: StepContext | None
    ) -> Aggregation:
        assert grads is not None
        strengths, slices = self._check_context(context, grads.shape[1])
        if not torch.isfinite(grads).all():
            raise ValueError("cso: non-finite per-task gradients (NaN or inf)")
        direction = grads.sum(0)
        projections = 0
        for name, offset, shape in slices:
            if name not in strengths:
                continue
            n = math.prod(shape)
            rows = grads[:, offset : offset + n].reshape(self.num_tasks, shape[0], -1)
            s = strengths[name].to(device=grads.device, dtype=torch.float64)
            projected, k = project_on_priority(rows, s)
            direction[offset : offset + n] = projected.sum(0).reshape(-1)
            projections += k
        info = {"projections": float(projections)}
        return Aggregation(direction, torch.ones_like(losses), info=info)

    def _check_context(
        self, context: StepContext | None, P: int
    ) -> tuple[Mapping[str, Tensor], Sequence[tuple[str, int, torch.Size]]]:
        T = self.num_tasks
        strengths = None if context is None else context.model_stats.get("connection_strength")
        if not strengths:
            raise ValueError(
                "cso needs the per-task connection strengths: pass context=StepContext("
                "param_slices=..., model_stats={'connection_strength': {param_name: "
                "Tensor[num_tasks, C_out]}}) (computed with methods.cso.connection_strength from "
                "the model's task-specific BatchNorms)"
            )
        assert context is not None
        slices = list(context.param_slices)
        if not slices:
            raise ValueError("cso needs context.param_slices (name, offset, shape) of the shared "
                             "parameters to find the weights its connection strengths belong to")
        by_name = {name: (offset, tuple(shape)) for name, offset, shape in slices}
        unknown = sorted(set(strengths) - set(by_name))
        if unknown:
            raise ValueError(
                f"cso: connection strengths given for {unknown}, which are not shared parameters "
                f"in context.param_slices (names there: {sorted(by_name)[:10]}...)"
            )
        for name, s in strengths.items():
            offset, shape = by_name[name]
            if len(shape) == 0 or offset < 0 or offset + math.prod(shape) > P:
                raise ValueError(f"cso: parameter {name!r} (shape {shape} at offset {offset}) "
                                 f"does not fit a gradient vector of length {P}")
            if not isinstance(s, Tensor) or tuple(s.shape) != (T, shape[0]):
                got = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
                raise ValueError(f"cso: connection strength of {name!r} must be a tensor of "
                                 f"shape ({T}, {shape[0]}), got {got}")
            if not torch.isfinite(s).all() or (s < 0).any():
                raise ValueError(f"cso: connection strength of {name!r} must be finite and >= 0")
        return strengths, slices
