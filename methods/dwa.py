"""DWA — dynamic weight average ("End-to-End Multi-Task Learning with Attention", MTAN).

Liu, Johns, Davison, CVPR 2019, https://arxiv.org/abs/1803.10704

Weights for epoch e from the rate at which each task's epoch-mean training loss fell:

    r_t = L̄_t(e−1) / L̄_t(e−2),   w_t = T · exp(r_t/τ) / Σ_j exp(r_j/τ),

and w = 1 for the first two epochs (no two completed epochs yet). The loss is Σ_t w_t L_t
(weights sum to T), as in MTAN/CAGrad and LibMTL ``DWA.py``.

State: L̄_t(e) is the mean over the epoch's steps of the losses this method is given in
``aggregate`` (under torch.distributed those are already the rank means). The running sum is
closed and rolled into the two-epoch history by ``start_epoch``, which the trainer calls at
the start of every epoch; calling it again for the epoch in progress (resume) is a no-op.

Defaults and references: τ (``temperature``) = 2, the paper's and every reference code's
value (LibMTL ``T`` = 2.0). nash-mtl's ``DynamicWeightAverage`` differs (25-iteration
windows instead of epochs, mean instead of sum); mtlx follows MTAN/LibMTL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from methods.base import LossWeighting, check_range
from methods.registry import register
from methods.space import Uniform


@register("dwa")
class DWA(LossWeighting):
    """Dynamic weight average: w = T·softmax((L̄(e−1)/L̄(e−2))/τ), ones for two epochs."""

    @dataclass(frozen=True)
    class Config:
        temperature: float = 2.0  # τ of the softmax (paper, MTAN, LibMTL)

        def __post_init__(self) -> None:
            check_range("temperature", self.temperature, 0.0, low_inclusive=False)

    stateful = True
    search_space = {"temperature": Uniform(0.5, 5.0)}

    def __init__(self, num_tasks: int, config: Any = None, seed: int = 0) -> None:
        super().__init__(num_tasks, config, seed)
        T = num_tasks
        self.register_buffer("epoch_loss_sum", torch.zeros(T, dtype=torch.float64))
        # history[0] = L̄(e−2), history[1] = L̄(e−1), valid for the last `num_history` rows
        self.register_buffer("history", torch.zeros(2, T, dtype=torch.float64))
        self.epoch_steps = 0
        self.num_history = 0
        self.current_epoch = -1

    def start_epoch(self, epoch: int, num_epochs: int) -> None:
        if epoch == self.current_epoch:
            return
        self.current_epoch = epoch
        if self.epoch_steps == 0:
            return
        mean = self.epoch_loss_sum / self.epoch_steps
        self.history[0] = self.history[1]
        self.history[1] = mean
        self.num_history = min(self.num_history + 1, 2)
        self.epoch_loss_sum.zero_()
        self.epoch_steps = 0

    def weights(self, losses: Tensor) -> Tensor:
        L = losses.detach().to(self.epoch_loss_sum)
        if not torch.isfinite(L).all():
            raise ValueError(f"dwa: non-finite task losses {L.tolist()}")
        self.epoch_loss_sum += L
        self.epoch_steps += 1
        if self.num_history < 2:
            return torch.ones_like(losses)
        prev2, prev1 = self.history
        if not (prev2 > 0).all():
            raise ValueError(
                "dwa needs positive epoch-mean losses to form the ratios L̄(e−1)/L̄(e−2), got "
                f"{prev2.tolist()}; use task losses that are > 0"
            )
        r = prev1 / prev2
        w = self.num_tasks * torch.softmax(r / self.config.temperature, 0)
        return w.to(losses.device)

    def reset(self) -> None:
        super().reset()
        self.epoch_loss_sum.zero_()
        self.history.zero_()
        self.epoch_steps = 0
        self.num_history = 0
        self.current_epoch = -1

    def get_extra_state(self) -> dict[str, Any]:
        return {
            **super().get_extra_state(),
            "epoch_steps": self.epoch_steps,
            "num_history": self.num_history,
            "current_epoch": self.current_epoch,
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        super().set_extra_state(state)
        self.epoch_steps = int(state["epoch_steps"])
        self.num_history = int(state["num_history"])
        self.current_epoch = int(state["current_epoch"])
