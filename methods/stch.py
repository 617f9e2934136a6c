"""STCH — smooth Tchebycheff scalarisation ("Smooth Tchebycheff Scalarization for
Multi-Objective Optimization").

Lin, Zhang, Yang, Liu, Wang, Zhang, ICML 2024, https://openreview.net/forum?id=m4dO5L6eCp.
Official code: Xi-L/STCH (``STCH_MTL``); followed here: LibMTL ``STCH.py`` (a port of it).

The Tchebycheff scalarisation max_t (f_t − z_t) is replaced by its smooth upper bound

    S_μ(f) = μ · log Σ_t exp(f_t / μ),      max_t f_t ≤ S_μ(f) ≤ max_t f_t + μ log T,

which tends to the max as μ → 0 (:func:`smooth_max`). For MTL the objectives are log losses
relative to a nadir point n_t: f_t = log(L_t / n_t + 1e-20), and the training loss is
T · S_μ(f). Its gradient is Σ_t w_t ∇L_t with

    w_t = T · softmax(f/μ)_t / (L_t + 1e-20·n_t),

so mtlx implements it as a loss weighting with these (detached) weights: one backward pass,
the same gradient.

Schedule (LibMTL's, by epoch as its trainer counts them from 0): during epochs
0 … ``warmup_epochs`` − 1 the loss is Σ_t log(L_t + 1e-20) (w_t = 1/(L_t + 1e-20)); during
epoch ``warmup_epochs`` too, while the mean raw loss of every task over that epoch's steps is
accumulated; from the next epoch on n is that mean and the STCH loss is used. So
``warmup_epochs = 0`` still spends epoch 0 measuring n. The epoch comes from
:meth:`start_epoch`, which the trainer calls at the start of each epoch (a method driven
without it stays in warm-up).

Defaults: μ (``mu``) = 1.0 and ``warmup_epochs`` = 4, LibMTL's (``STCH_mu``,
``STCH_warmup_epoch``); μ is searched. Heads: one backward of the scalarised loss reaches
everything, so heads are weighted. Positive losses are required (logs and ratios of losses),
so the method-independent ``loss_transform='log'`` cannot be combined with it (the method
already works on log losses). Under torch.distributed the losses the engine passes are the
global means, so n and the weights agree on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from methods.base import LossWeighting, check_int, check_positive_losses, check_range
from methods.registry import register
from methods.space import LogUniform

EPS = 1e-20


def smooth_max(f: Tensor, mu: float) -> Tensor:
    """μ · log Σ_t exp(f_t/μ), computed stably (shifted by the max); differentiable."""
    m = f.detach().max()
    return m + mu * torch.logsumexp((f - m) / mu, dim=0)


def stch_loss(losses: Tensor, nadir: Tensor, mu: float) -> Tensor:
    """The scalarised training loss T · S_μ(log(L/n + 1e-20)); its gradient is the update."""
    return losses.shape[0] * smooth_max(torch.log(losses / nadir + EPS), mu)


@register("stch")
class STCH(LossWeighting):
    """Smooth Tchebycheff: weights T·softmax(log(L/n)/μ)_t / L_t after a log-loss warm-up."""

    @dataclass(frozen=True)
    class Config:
        mu: float = 1.0  # smoothing μ (LibMTL STCH_mu)
        warmup_epochs: int = 4  # epochs of log-loss EW before n is measured (STCH_warmup_epoch)

        def __post_init__(self) -> None:
            check_range("mu", self.mu, 0.0, low_inclusive=False)
            check_int("warmup_epochs", self.warmup_epochs, 0)

    stateful = True
    positive_losses = True
    search_space = {"mu": LogUniform(0.01, 10.0)}

    def __init__(self, num_tasks: int, config: Any = None, seed: int = 0) -> None:
        super().__init__(num_tasks, config, seed)
        self.register_buffer("loss_sum", torch.zeros(num_tasks, dtype=torch.float64))
        self.register_buffer("nadir", torch.ones(num_tasks, dtype=torch.float64))
        self.loss_count = 0
        self.has_nadir = False
        self.epoch = 0

    def start_epoch(self, epoch: int, num_epochs: int) -> None:
        self.epoch = epoch

    def weights(self, losses: Tensor) -> Tensor:
        check_positive_losses(self.name, losses)
        L = losses.detach().to(self.loss_sum)  # the buffers' device and float64
        warm = self.config.warmup_epochs
        if self.epoch <= warm:
            if self.epoch == warm:
                self.loss_sum += L
                self.loss_count += 1
            return (1.0 / (L + EPS)).to(losses)
        if not self.has_nadir:
            if self.loss_count == 0:
                raise ValueError(
                    f"stch: epoch {self.epoch} is past warm-up but no step of epoch {warm} was "
                    "seen to measure the nadir point; call start_epoch() at every epoch"
                )
            self.nadir.copy_(self.loss_sum / self.loss_count)
            self.has_nadir = True
        f = torch.log(L / self.nadir + EPS)
        w = self.num_tasks * torch.softmax(f / self.config.mu, 0) / (L + EPS * self.nadir)
        return w.to(losses)

    def reset(self) -> None:
        super().reset()
        self.loss_sum.zero_()
        self.nadir.fill_(1.0)
        self.loss_count = 0
        self.has_nadir = False
        self.epoch = 0

    def get_extra_state(self) -> dict[str, Any]:
        return {**super().get_extra_state(), "loss_count": self.loss_count,
                "has_nadir": self.has_nadir, "epoch": self.epoch}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        super().set_extra_state(state)
        self.loss_count = int(state["loss_count"])
        self.has_nadir = bool(state["has_nadir"])
        self.epoch = int(state["epoch"])
