"""GradNorm — "GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep
Multitask Networks".

Chen, Badrinarayanan, Lee, Rabinovich, ICML 2018, https://arxiv.org/abs/1711.02257

Task weights w = T·softmax(ℓ) (Σw = T) with learnable logits ℓ (init ones). Each step, with
g_t the gradient of L_t w.r.t. the shared parameters (or representation) and K = G Gᵀ:

    G_t = ‖w_t g_t‖ = w_t √K_tt,   Ḡ = mean_t G_t,
    r_t = L̂_t / mean(L̂),   L̂_t = L_t / L_t(0),
    L_grad = Σ_t |G_t − sg(Ḡ r_t^α)|,

the shared update is Σ_t w_t g_t with the current w, and ℓ then takes one Adam step on
∂L_grad/∂ℓ (target detached). Because G_t = w_t √K_tt that gradient is analytic in K:
∂L_grad/∂w_t = sign(G_t − target_t) √K_tt, chained through w = T·softmax(ℓ). So GradNorm needs
only the Gramian (exact at representation level and under torch.distributed).
α is the asymmetry: α = 0 pulls every weighted gradient norm to the mean; larger α gives
tasks that trained more slowly (larger r_t) larger gradients.

Reference: LibMTL ``GradNorm.py`` (no official PyTorch code), followed in:
* epoch 0 trains on the plain sum (weights 1; no per-task gradients are computed);
* L_t(0) is the mean training loss of epoch 0 (not the loss of the first step), tracked from
  the losses this method is given and fixed when ``start_epoch`` opens epoch 1;
* G_t uses all shared parameters (or the representation), not only the last shared layer;
* weights T·softmax(ℓ), ℓ initialised to ones; α default 1.5; heads get their own
  unweighted gradient (``_backward_new_grads``).

Deliberate difference: in LibMTL ℓ is an ``nn.Parameter`` stepped by the model's optimiser.
Methods here never touch the trainer's optimiser, so ℓ (a float64 buffer) has its own Adam
(torch's update, betas (0.9, 0.999), eps 1e-8, no weight decay), its state in
``state_dict``. Its ``lr`` defaults to 1e-4, the model Adam lr of LibMTL's protocols (NYUv2,
Cityscapes, Office), which is what LibMTL's ℓ is trained with; set it to your model lr to
match LibMTL on other protocols. LibMTL's model weight decay (1e-5 on some protocols), a weak
pull of ℓ toward 0, is not applied. As in LibMTL, ℓ is not stepped during epoch 0 (there it
has no gradient, so torch's Adam skips it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from methods.base import Aggregation, GramianMethod, StepContext, check_positive_losses, check_range
from methods.registry import register
from methods.solvers import InternalAdam
from methods.space import Uniform


def gradnorm_scale_grad(
    logits: Tensor, gramian: Tensor, losses: Tensor, initial_losses: Tensor, alpha: float
) -> tuple[Tensor, Tensor, float]:
    """(∂L_grad/∂ℓ, weights w = T·softmax(ℓ), L_grad) from the Gramian of the raw task
    gradients, the current and epoch-0 mean losses. All inputs float64, detached."""
    T = logits.shape[0]
    w = T * torch.softmax(logits, 0)
    norms = gramian.diagonal().clamp_min(0).sqrt()
    G = w * norms
    L_hat = losses / initial_losses
    target = G.mean() * (L_hat / L_hat.mean()) ** alpha
    a = torch.sign(G - target) * norms  # ∂L_grad/∂w_t (|·|' = sign, 0 at 0 as autograd)
    grad = w * a - w * (w @ a) / T  # Jᵀa with ∂w_t/∂ℓ_j = w_t δ_tj − w_t w_j / T
    return grad, w, float((G - target).abs().sum())


@register("gradnorm")
class GradNorm(GramianMethod):
    """GradNorm: w = T·softmax(ℓ), ℓ stepped on Σ|‖w_t g_t‖ − Ḡ r_t^α|; epoch 0 equal."""

    positive_losses = True

    @dataclass(frozen=True)
    class Config:
        alpha: float = 1.5  # asymmetry (LibMTL default)
        lr: float = 1e-4  # Adam lr of the weight logits (LibMTL: the model lr, 1e-4)

        def __post_init__(self) -> None:
            check_range("alpha", self.alpha, 0.0)
            check_range("lr", self.lr, 0.0, low_inclusive=False)

    stateful = True
    search_space = {"alpha": Uniform(0.0, 3.0)}

    def __init__(self, num_tasks: int, config: Any = None, seed: int = 0) -> None:
        super().__init__(num_tasks, config, seed)
        T = num_tasks
        self.register_buffer("logits", torch.ones(T, dtype=torch.float64))
        self.register_buffer("epoch_loss_sum", torch.zeros(T, dtype=torch.float64))
        self.register_buffer("initial_losses", torch.zeros(T, dtype=torch.float64))
        self.adam = InternalAdam(T)
        self.epoch_steps = 0
        self.has_initial = False
        self.current_epoch = -1

    # -- epoch bookkeeping ----------------------------------------------------------------

    def start_epoch(self, epoch: int, num_epochs: int) -> None:
        if epoch == self.current_epoch:
            return  # re-entering the epoch in progress (resume)
        self.current_epoch = epoch
        if self.has_initial or self.epoch_steps == 0:
            return
        mean = self.epoch_loss_sum / self.epoch_steps
        if not all(0 < float(v) < math.inf for v in mean):
            raise ValueError(
                f"gradnorm needs positive epoch-0 mean losses for L(0), got {mean.tolist()}; "
                "use task losses that are > 0"
            )
        self.initial_losses.copy_(mean)
        self.has_initial = True

    def needs_grads(self) -> bool:
        return self.has_initial  # epoch 0 is the plain sum: no per-task gradients

    def _observe(self, losses: Tensor) -> None:
        if not self.has_initial:
            self.epoch_loss_sum += losses.detach().to(self.epoch_loss_sum)
            self.epoch_steps += 1

    # -- the step -------------------------------------------------------------------------

    def _aggregate(
        self, grads: Tensor | None, losses: Tensor, context: StepContext | None
    ) -> Aggregation:
        if self.needs_grads():
            return super()._aggregate(grads, losses, context)
        self._observe(losses)
        return Aggregation(direction=None, weights=torch.ones_like(losses))

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> tuple[Tensor, dict[str, float]]:
        self._observe(losses)
        if not self.has_initial:
            return torch.ones(self.num_tasks, dtype=gramian.dtype, device=gramian.device), {}
        check_positive_losses(self.name, losses)
        grad, w, l_grad = gradnorm_scale_grad(
            self.logits, gramian.to(self.logits), losses.to(self.logits),
            self.initial_losses, self.config.alpha,
        )
        self.adam.step_(self.logits, grad, self.config.lr)
        # This step uses the weights from before the update, as LibMTL does.
        return w.to(gramian.device), {"gradnorm_loss": l_grad}

    # -- state ----------------------------------------------------------------------------

    def reset(self) -> None:
        super().reset()
        self.logits.fill_(1.0)
        self.epoch_loss_sum.zero_()
        self.initial_losses.zero_()
        self.adam.reset()
        self.epoch_steps = 0
        self.has_initial = False
        self.current_epoch = -1

    def get_extra_state(self) -> dict[str, Any]:
        return {
            **super().get_extra_state(),
            "epoch_steps": self.epoch_steps,
            "has_initial": self.has_initial,
            "current_epoch": self.current_epoch,
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        super().set_extra_state(state)
        self.epoch_steps = int(state["epoch_steps"])
        self.has_initial = bool(state["has_initial"])
        self.current_epoch = int(state["current_epoch"])
