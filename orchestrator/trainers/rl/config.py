"""Multi-task SAC settings: :class:`SACConfig` (mtrl's MT10 defaults) and which losses a
method is applied to; :func:`sac_config` builds it from a run's ``train`` settings and
``trainer_options`` (the package docstring gives the provenance of every default)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

LOSSES: tuple[str, ...] = ("critic", "actor", "alpha")

#: Which SAC losses a method is applied to by default (docs/metaworld.md §4). Methods
#: not listed get all three, as the CAGrad, PCGrad and Nash-MTL mtrl ports do.
APPLY_TO: Mapping[str, tuple[str, ...]] = {
    "famo": ("critic",),  # FAMO mtrl_files/famo.py: actor and α use plain means
    "uw": ("critic", "actor"),  # FAMO mtrl_files/uw.py: separate log σ for critic, actor
}

#: Losses that can be negative: actor α log π − Q and temperature α(−log π − H̄). The
#: critic's squared error never is.
SIGNED_LOSSES: tuple[str, ...] = ("actor", "alpha")

ALPHA_MODES = ("shared", "per_task")





@dataclass(frozen=True)
class SACConfig:
    """Multi-task SAC settings (defaults: mtrl's MT10 configuration, see module docstring)."""

    steps: int = 2_000_000
    """loop steps; each steps every task's environment once (mtrl num_train_steps)"""
    warmup_steps: int = 1500
    """loop steps with uniform random actions before the first update (mtrl init_steps)"""
    warmup_burst: bool = True
    """at step == warmup_steps run warmup_steps updates at once (mtrl); else 1 per step"""
    updates_per_step: int = 1
    """gradient updates per loop step after the warm-up"""
    batch_size: int = 1280
    """transitions per update, sampled uniformly (all tasks together)"""
    buffer_size: int = 1_000_000
    """replay capacity in transitions (FIFO, shared by all tasks)"""
    gamma: float = 0.99
    """discount"""
    tau: float = 0.005
    """target-network Polyak coefficient"""
    lr: float = 3e-4
    """Adam learning rate of actor, critic and temperature"""
    method_lr: float | None = None
    """learning rate of a method's own parameters (UW's log σ ...); None: lr"""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas"""
    hidden: int = 400
    """hidden width of actor and critics"""
    layers: int = 3
    """hidden layers of actor and critics"""
    log_std_min: float = -20.0
    """lower bound of the policy's log σ"""
    log_std_max: float = 2.0
    """upper bound of the policy's log σ"""
    init_temperature: float = 1.0
    """initial α"""
    target_entropy: float | None = None
    """entropy target H̄; None: −|A|"""
    alpha: str = "shared"
    """"shared" (one log α, the reference runs) or "per_task" (one per task)"""
    apply_to: tuple[str, ...] | None = None
    """losses the method is applied to; None: the method's entry in APPLY_TO (default all)"""
    eval_every: int = 30_000
    """loop steps between evaluations (also one at step 0 and one at the end)"""
    eval_at_start: bool = True
    """evaluate the untrained policy at step 0 (mtrl does)"""
    log_every: int = 5000
    """loop steps between training-diagnostics rows (losses, weights, cosines, speed)"""
    checkpoint_every: int | None = None
    """loop steps between checkpoints (at the next episode boundary); None: eval_every"""
    device: str = "cpu"
    """torch device of the learner"""

    def __post_init__(self) -> None:
        for name in ("steps", "warmup_steps", "updates_per_step", "batch_size", "buffer_size",
                     "hidden", "layers", "eval_every", "log_every"):
            check_int(name, getattr(self, name), 0 if name in ("warmup_steps",) else 1)
        if self.checkpoint_every is not None:
            check_int("checkpoint_every", self.checkpoint_every, 1)
        for name, lo, hi in (("gamma", 0.0, 1.0), ("tau", 0.0, 1.0)):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and lo <= v <= hi):
                raise ValueError(f"{name} must be in [{lo}, {hi}], got {v!r}")
        if self.method_lr is not None and not (
            isinstance(self.method_lr, (int, float)) and self.method_lr > 0
        ):
            raise ValueError(f"method_lr must be a positive number or None, got {self.method_lr!r}")
        for name in ("lr", "init_temperature"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v > 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        if not (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas)):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if not self.log_std_min < self.log_std_max:
            raise ValueError("log_std_min must be smaller than log_std_max")
        if self.alpha not in ALPHA_MODES:
            raise ValueError(f"alpha must be one of {list(ALPHA_MODES)}, got {self.alpha!r}")
        if self.apply_to is not None:
            if isinstance(self.apply_to, str):
                raise ValueError(f"apply_to must be a tuple of loss names, got {self.apply_to!r}")
            bad = [k for k in self.apply_to if k not in LOSSES]
            if bad or len(set(self.apply_to)) != len(self.apply_to):
                raise ValueError(
                    f"apply_to must list distinct losses among {list(LOSSES)}, got "
                    f"{list(self.apply_to)}"
                )
            if self.alpha == "per_task" and "alpha" in self.apply_to:
                raise ValueError(
                    "alpha='per_task' gives every task its own temperature, so the α loss has "
                    "no shared parameter for a method to act on: remove 'alpha' from apply_to"
                )
        if self.batch_size > self.buffer_size:
            raise ValueError("batch_size must not exceed buffer_size")

    def resolved_apply_to(self, method: str, signed_ok: bool = True) -> tuple[str, ...]:
        """The losses ``method`` is applied to under this config. ``signed_ok=False``: the
        method rejects negative losses (log-based weightings), so by default it only gets
        the critic loss, and asking for the actor or α loss is an error."""
        if self.apply_to is not None:
            signed = [k for k in self.apply_to if k in SIGNED_LOSSES]
            if signed and not signed_ok:
                raise ValueError(
                    f"{method} needs strictly positive task losses (it takes their log), but "
                    f"the {' and '.join(signed)} loss(es) can be negative; fix: "
                    "trainer_options.apply_to=[critic]"
                )
            return tuple(self.apply_to)
        default = APPLY_TO.get(method, LOSSES)
        return tuple(
            k for k in default
            if not (k == "alpha" and self.alpha == "per_task")
            and (signed_ok or k not in SIGNED_LOSSES)
        )


def check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")



#: SACConfig fields that come from the run's ``train`` settings, not ``trainer_options``
FROM_TRAIN = {"steps": "steps", "batch_size": "batch_size", "lr": "lr",
              "eval_every": "eval_every", "method_lr": "method_lr"}
TRAINER_OPTIONS = tuple(
    f.name for f in dataclasses.fields(SACConfig) if f.name not in FROM_TRAIN and f.name != "device"
)


def sac_config(cfg: Any, device: torch.device | str = "cpu") -> SACConfig:
    """The :class:`SACConfig` of a ``RunConfig``: ``train.steps/batch_size/lr/eval_every/
    method_lr`` (the benchmark protocol fills the ones left None) plus ``trainer_options``."""
    opts = dict(cfg.trainer_options)
    unknown = sorted(set(opts) - set(TRAINER_OPTIONS))
    if unknown:
        moved = [k for k in unknown if k in FROM_TRAIN]
        hint = f"; set {', '.join('train.' + k for k in moved)} instead" if moved else ""
        raise ValueError(
            f"unknown SAC trainer option(s) {unknown}{hint}; valid trainer_options: "
            f"{', '.join(TRAINER_OPTIONS)}"
        )
    for k in ("apply_to", "betas"):
        if isinstance(opts.get(k), list):
            opts[k] = tuple(opts[k])
    for k, tk in FROM_TRAIN.items():
        v = getattr(cfg.train, tk)
        if v is not None:
            opts[k] = v
    return SACConfig(**opts, device=str(device))

