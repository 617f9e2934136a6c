"""MoCo — multi-objective gradient correction by tracking the Jacobian.

Fernando, Shen, Liu, Chaudhury, Murugesan, Chen; "Mitigating Gradient Bias in Multi-objective
Learning: A Provably Convergent Approach", ICLR 2023, https://openreview.net/forum?id=dLAYGdKTi2

Update at step k = 1, 2, ... (LibMTL form):

    g_t ← g_t / (‖g_t‖ + 1e-8) · L_t                      (normalise, then loss-scale)
    Y   ← Y − β_k (Y − G),            β_k = β / k^{β_sigma}  (track the Jacobian)
    λ   ← softmax(λ − γ_k (Y Yᵀ + ρ I) λ),  γ_k = γ / k^{γ_sigma}
    d   = Yᵀ λ

with Y = 0 (T×P) and λ = 1/T at the start. Y, λ and k are the method's state; Y is sized
lazily from the first gradients and round-trips through ``state_dict`` into a fresh object.

Reference code: LibMTL ``MoCo.py`` ("based on the authors' shared code"; docs/methods.md §MoCo).
Defaults from LibMTL: β 0.5, β_sigma 0.5, γ 0.1, γ_sigma 0.5, ρ 0. The paper projects λ
onto the simplex (unverified, the text was not readable); LibMTL's softmax is used here. L_t
are the (transformed) losses the engine passes. λ is kept in float64; Y in the gradients' dtype.

Not Gramian-only (Y is a persistent T×P buffer) and parameter level only: representation
gradients change size with the batch, so a tracked Y over them is meaningless (LibMTL refuses
``rep_grad`` too). The returned weights are λ; heads get their own gradient (LibMTL
back-propagates each task's loss into its head).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from methods.base import Aggregation, Method, StepContext, check_range
from methods.registry import register
from methods.space import LogUniform, Uniform


@dataclass(frozen=True)
class MoCoConfig:
    """Step sizes β_k = beta/k^beta_sigma (Y) and γ_k = gamma/k^gamma_sigma (λ); ``rho``:
    ℓ2 regularisation of the λ update."""

    beta: float = 0.5
    beta_sigma: float = 0.5
    gamma: float = 0.1
    gamma_sigma: float = 0.5
    rho: float = 0.0

    def __post_init__(self) -> None:
        check_range("beta", self.beta, 0.0, 1.0, low_inclusive=False)
        check_range("beta_sigma", self.beta_sigma, 0.0)
        check_range("gamma", self.gamma, 0.0, low_inclusive=False)
        check_range("gamma_sigma", self.gamma_sigma, 0.0)
        check_range("rho", self.rho, 0.0)


@register("moco")
class MoCo(Method):
    """MoCo: softmax-weighted combination of a tracked, normalised, loss-scaled Jacobian."""

    Config = MoCoConfig
    requires_grads = True
    stateful = True
    search_space = {
        "beta": Uniform(0.05, 1.0),
        "gamma": LogUniform(1e-3, 1.0),
        "rho": Uniform(0.0, 1.0),
    }

    def __init__(self, num_tasks: int, config: MoCoConfig | None = None, seed: int = 0) -> None:
        super().__init__(num_tasks, config, seed)
        self.register_buffer("tracked", torch.zeros(num_tasks, 0))
        uniform = torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64)
        self.register_buffer("lambd", uniform)

    def reset(self) -> None:
        super().reset()
        self.tracked = self.tracked.new_zeros(self.num_tasks, 0)
        self.lambd = torch.full_like(self.lambd, 1.0 / self.num_tasks)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Y is sized lazily: take the saved shape and dtype
        saved = state_dict.get(prefix + "tracked")
        if isinstance(saved, Tensor) and (
            saved.shape != self.tracked.shape or saved.dtype != self.tracked.dtype
        ):
            self.tracked = torch.zeros_like(saved, device=self.tracked.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _aggregate(
        self, grads: Tensor | None, losses: Tensor, context: StepContext | None
    ) -> Aggregation:
        assert grads is not None
        # One read pass instead of a T×P boolean mask (a NaN/inf anywhere makes its norm non-finite)
        norms = grads.norm(dim=1)
        if not torch.isfinite(norms).all():
            raise ValueError("moco: non-finite per-task gradients (NaN or inf)")
        T, P = grads.shape
        if self.tracked.shape[1] == 0:
            self.tracked = grads.new_zeros(T, P)
        elif self.tracked.shape[1] != P:
            raise ValueError(
                f"moco tracks gradients of size {self.tracked.shape[1]}, got {P}: the shared "
                "parameters changed; call reset() (or use a fresh method)"
            )
        cfg = self.config
        k = self.step_count + 1  # this step's number, from 1
        if self.tracked.dtype != grads.dtype or self.tracked.device != grads.device:
            self.tracked = self.tracked.to(grads)
        # Y ← Y − β_k (Y − ĝ) with ĝ_t = g_t/(‖g_t‖ + 1e-8)·L_t, in place: Y is T×P, so
        # temporaries of that size would dominate the step (equal to LibMTL up to rounding)
        beta_k = cfg.beta / k**cfg.beta_sigma
        coef = (losses.to(grads.dtype) / (norms + 1e-8)).unsqueeze(1)
        Y = self.tracked.mul_(1.0 - beta_k).addcmul_(coef, grads, value=beta_k)
        YY = (Y @ Y.T).to(torch.float64)
        lam = self.lambd.to(device=YY.device)
        reg = YY + cfg.rho * torch.eye(T, dtype=torch.float64, device=YY.device)
        lam = torch.softmax(lam - cfg.gamma / k**cfg.gamma_sigma * (reg @ lam), dim=0)
        self.lambd = lam
        direction = lam.to(Y.dtype) @ Y
        return Aggregation(direction, lam.to(losses.dtype))
