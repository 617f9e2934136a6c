"""The optimiser and learning-rate schedule of a supervised run, from its :class:`TrainConfig`
(the benchmark protocol's values once resolved)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from orchestrator.config import TrainConfig


def make_optimizer(t: TrainConfig, model_params: list[Tensor], method_params: list[Tensor]):
    """The protocol's optimiser; the method's own parameters (UW ...) get ``method_lr`` and
    no weight decay, as nash-mtl's separate parameter group."""
    groups: list[dict[str, Any]] = [{"params": model_params}]
    if method_params:
        groups.append({"params": method_params, "lr": t.method_lr or t.lr, "weight_decay": 0.0})
    wd = t.weight_decay or 0.0
    if t.optimizer == "adam":
        return torch.optim.Adam(groups, lr=t.lr, weight_decay=wd)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=t.lr, weight_decay=wd)
    return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum or 0.0, weight_decay=wd)


def make_scheduler(t: TrainConfig, optimizer: torch.optim.Optimizer):
    sched = t.lr_schedule or "none"
    if sched == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, t.step_size or 100, t.gamma or 0.5)
    if sched == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t.epochs)
    if sched == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=t.gamma or 0.5,
            patience=10 if t.patience is None else t.patience, min_lr=t.min_lr or 0.0,
        )  # fmt: skip
    return None
