"""Dynamic loss scaling for fp16 training through the gradient engine.

Under fp16 autocast, small gradients underflow. The standard remedy (Micikevicius et al.,
"Mixed Precision Training", ICLR 2018, https://arxiv.org/abs/1710.03740) multiplies the loss
by a scale S before back-propagating, divides the gradients by S afterwards, skips the step
when any gradient is inf/NaN (then S ← S·backoff) and grows S after ``growth_interval``
finite steps (S ← S·growth). ``torch.amp.GradScaler`` implements it around one backward of
one loss and unscales the optimiser's ``.grad``; gradient methods need more: T backward
passes (or one per task through the heads at representation level), and the method must
see *unscaled* per-task gradients (its weights depend on their norms and angles), so
:func:`methods.backward` scales every backward pass itself and unscales the Jacobian (or
the representation gradients) before the method sees it. Under torch.distributed the
overflow flag is all-reduced, so every rank skips the same steps and keeps the same scale.

Defaults are ``torch.amp.GradScaler``'s: init 2¹⁶, growth 2, backoff 0.5, interval 2000.
bf16 has fp32's exponent range and needs no scaler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class LossScaler:
    """The loss scale S and its update rule; ``state_dict`` travels with checkpoints."""

    scale: float = 2.0**16
    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    growth_interval: int = 2000
    good_steps: int = 0
    skipped_steps: int = 0

    def __post_init__(self) -> None:
        if not (self.scale > 0 and self.growth_factor > 1 and 0 < self.backoff_factor < 1
                and self.growth_interval >= 1):
            raise ValueError(
                "LossScaler needs scale > 0, growth_factor > 1, 0 < backoff_factor < 1 and "
                f"growth_interval >= 1; got {self}"
            )

    def update(self, found_inf: bool) -> None:
        """After a step: back off on overflow (the step was skipped), else count towards
        the next growth."""
        if found_inf:
            self.scale *= self.backoff_factor
            self.good_steps = 0
            self.skipped_steps += 1
            return
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            self.scale *= self.growth_factor
            self.good_steps = 0

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "good_steps": self.good_steps,
                "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale = float(state["scale"])
        self.good_steps = int(state["good_steps"])
        self.skipped_steps = int(state["skipped_steps"])
