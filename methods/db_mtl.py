"""DB-MTL — "Dual-Balancing for Multi-Task Learning".

Lin, Jiang, Ye, Zhang, Chen, Chen, Liu, Tsang, Kwok, arXiv 2308.12029 (journal version in
Neural Networks; an earlier version was "Scale-Invariant MTL", SI-MTL).
Reference code: LibMTL ``LibMTL/weighting/DB_MTL.py`` by the first author (followed here;
the paper's method section was not available, docs/methods.md §DB-MTL).

Two balancing steps, at step k = 1, 2, ...:

1. loss balancing: L̃_t = log(L_t + 1e-8), so g_t = ∇L̃_t = ∇L_t / (L_t + 1e-8);
2. gradient balancing on an EMA of the gradient *vectors* (not of their norms):

       ĝ_t ← b_k ĝ_t + (1 − b_k) g_t,   b_k = β / k^β_sigma   (ĝ = 0 at start, no bias correction)
       a_t = γ / (‖ĝ_t‖ + 1e-8),        d = Σ_t a_t ĝ_t,

   so every task contributes a vector of norm γ in the direction of its EMA gradient.
   LibMTL uses γ = max_t ‖ĝ_t‖; the paper's ablation also tries min, mean, median and a
   constant, exposed as ``gamma`` (median of an even count is the mean of the two middle
   values) and ``gamma_value`` (only with ``gamma="constant"``).

Defaults from LibMTL: β = 0.9 (``DB_beta``), β_sigma = 0 (``DB_beta_sigma``, constant β),
γ = max. With the zero start and σ = 0 the first step has ĝ = (1 − β) g, so γ ramps up over
~1/(1 − β) steps: an implicit warm-up under SGD, reproduced exactly.

Weights: LibMTL returns ones; mtlx returns the effective scales a_t (note they multiply the
EMA vectors ĝ_t, not this step's g_t, so ``direction`` is not Σ a_t g_t). Heads get their
own gradient of log(L_t + 1e-8) from this batch (no EMA, no scaling), as in LibMTL.

Ablation switches (the paper's Table 5): ``log_transform=False`` skips step 1 (the raw
losses are balanced), ``balance_gradients=False`` skips step 2 (d = Σ_t g_t of the log
losses: identical to ``ew`` with ``loss_transform="log"``); both off is ``ew``. The
method-independent ``loss_transform="log"`` is refused here: step 1 already is that
transform.

The log needs L_t > −1e-8: any loss ≤ −1e-8 raises ``ValueError`` (LibMTL would produce
NaN). Representation-level gradients are not supported (LibMTL raises). The T×P buffer is
persistent state (a buffer of this module, sized on the first step, saved in
``state_dict``); under torch.distributed the engine all-reduces the Jacobian before the
method sees it, so every rank keeps the same buffer (LibMTL's buffer is per rank).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from methods.base import (
    LOG_EPS,
    Aggregation,
    Method,
    StepContext,
    check_bool,
    check_choice,
    check_range,
)
from methods.registry import register
from methods.space import Choice, Uniform

GAMMAS = ("max", "min", "mean", "median", "constant")


@dataclass(frozen=True)
class DBMTLConfig:
    """``beta``: EMA weight on the old buffer; ``beta_sigma``: b_k = β/k^σ decay;
    ``gamma``: the common norm of the task contributions (max/min/mean/median of the EMA
    gradient norms, or ``constant`` = ``gamma_value``). ``log_transform`` and
    ``balance_gradients``: the paper's two components, switchable for its ablation (Table 5);
    both on is DB-MTL."""

    beta: float = 0.9
    beta_sigma: float = 0.0
    gamma: str = "max"
    gamma_value: float | None = None
    log_transform: bool = True
    balance_gradients: bool = True

    def __post_init__(self) -> None:
        check_bool("log_transform", self.log_transform)
        check_bool("balance_gradients", self.balance_gradients)
        check_range("beta", self.beta, 0.0, 1.0, high_inclusive=False)
        check_range("beta_sigma", self.beta_sigma, 0.0)
        check_choice("gamma", self.gamma, GAMMAS)
        if self.gamma == "constant":
            if self.gamma_value is None:
                raise ValueError("gamma='constant' needs gamma_value > 0 (the common norm)")
            check_range("gamma_value", self.gamma_value, 0.0, low_inclusive=False)
        elif self.gamma_value is not None:
            raise ValueError(
                f"gamma_value is only used with gamma='constant' (got gamma={self.gamma!r}); "
                "drop gamma_value or set gamma='constant'"
            )


def common_norm(norms: Tensor, gamma: str, gamma_value: float | None) -> Tensor:
    """γ from the EMA gradient norms under the chosen strategy."""
    if gamma == "max":
        return norms.max()
    if gamma == "min":
        return norms.min()
    if gamma == "mean":
        return norms.mean()
    if gamma == "median":
        return norms.quantile(0.5)
    assert gamma_value is not None
    return torch.tensor(gamma_value, dtype=norms.dtype, device=norms.device)


@register("db_mtl")
class DBMTL(Method):
    """DB-MTL: log losses, then every task's EMA gradient rescaled to a common norm γ."""

    positive_losses = True

    Config = DBMTLConfig
    requires_grads = True
    supports_rep_grads = False
    stateful = True
    search_space = {
        "beta": Uniform(0.5, 0.999),
        "beta_sigma": Uniform(0.0, 1.0),
        "gamma": Choice(("max", "min", "mean", "median")),
    }

    def __init__(self, num_tasks: int, config: Any = None, seed: int = 0) -> None:
        super().__init__(num_tasks, config, seed)
        # T×P EMA of the gradients; sized lazily on the first step (P is unknown before).
        self.register_buffer("grad_buffer", torch.zeros(0))

    def _needs_positive_losses(self) -> bool:
        return self.config.log_transform

    def log_transform_conflict(self) -> str | None:
        return ("db_mtl applies log(L + 1e-8) itself (its log_transform switch, on by "
                "default); use loss_transform='none'")

    def transform_losses(self, losses: Tensor) -> Tensor:
        if not self.config.log_transform:
            return losses
        bad = losses.detach() <= -LOG_EPS
        if bool(bad.any()):
            raise ValueError(
                f"db_mtl takes log(L + 1e-8) of every loss and needs positive losses; task(s) "
                f"{bad.nonzero().flatten().tolist()} have losses {losses.detach()[bad].tolist()}. "
                "Use a method without the log transform or shift the losses to be positive."
            )
        return torch.log(losses + LOG_EPS)

    def _aggregate(
        self, grads: Tensor | None, losses: Tensor, context: StepContext | None
    ) -> Aggregation:
        assert grads is not None
        if not self.config.balance_gradients:  # the ablation: the plain sum of gradients
            ones = torch.ones_like(losses)
            return Aggregation(direction=ones.to(grads.dtype) @ grads, weights=ones)
        g = grads.detach()
        if self.grad_buffer.numel() == 0:
            self.grad_buffer = torch.zeros_like(g)
        elif self.grad_buffer.shape != g.shape:
            raise ValueError(
                f"db_mtl: gradients have shape {tuple(g.shape)} but the EMA buffer was built for "
                f"{tuple(self.grad_buffer.shape)}; the shared parameters changed between steps "
                "(call reset() to start a new EMA)"
            )
        # One read pass instead of a T×P boolean mask: a NaN/inf anywhere makes its row's norm
        # non-finite. Checked before the EMA so a bad step never pollutes the buffer.
        if not torch.isfinite(g.norm(dim=1)).all():
            raise ValueError("db_mtl: non-finite per-task gradients (NaN or inf)")
        k = self.step_count + 1
        b = self.config.beta / k**self.config.beta_sigma
        if self.grad_buffer.dtype != g.dtype or self.grad_buffer.device != g.device:
            self.grad_buffer = self.grad_buffer.to(g)
        # ĝ ← b·ĝ + (1 − b)·g in place (LibMTL writes g + b·(ĝ − g): equal up to rounding);
        # the buffer is T×P, so temporaries of that size would dominate the step's cost.
        buf = self.grad_buffer.lerp_(g, 1.0 - b)
        norms = buf.norm(dim=1)
        gamma = common_norm(norms, self.config.gamma, self.config.gamma_value)
        a = gamma / (norms + LOG_EPS)
        info = {"gamma": float(gamma), "b_k": b}
        info.update({f"ema_norm_{t}": float(v) for t, v in enumerate(norms)})
        return Aggregation(direction=a @ buf, weights=a.to(losses.dtype), info=info)

    def reset(self) -> None:
        super().reset()
        self.grad_buffer = torch.zeros(0)

    def _load_from_state_dict(self, state_dict, prefix, *args: Any, **kwargs: Any) -> None:
        # The buffer's shape is only known after the first step: adopt the saved one.
        key = prefix + "grad_buffer"
        if key in state_dict:
            self.grad_buffer = torch.empty_like(state_dict[key], device=self.grad_buffer.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


_ = math  # noqa: F841
