"""When a trainer checkpoints between its natural points (epoch ends, evaluations), and how a
supervised epoch resumes from a mid-epoch checkpoint.

``train.checkpoint_every_steps`` (k optimiser steps) and ``train.checkpoint_every_s`` (wall
seconds since the last checkpoint, default 600) bound the work a preemption costs: without
them a run killed late in a long epoch redoes that whole epoch. Saving reads state and
draws no random numbers, so the cadence never changes the numbers (it is not part of the
run id).

Resuming mid-epoch (:func:`resume_batches`) must give the batches and random numbers the
uninterrupted epoch would have seen: the train loader is iterated under the RNG state of
the epoch's start (a ``DataLoader`` draws its workers' base seed from the global torch RNG
when an iteration starts, and augmentations in the main process draw from it too), the
batches already trained on are skipped (loaded and dropped: the sampler's order is a
function of (seed, epoch), whatever the loader's workers), and then the RNG state of the
checkpoint is restored.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

from orchestrator.config import TrainConfig
from orchestrator.trainers.base import set_rng_state


class CheckpointCadence:
    """Whether a checkpoint is due now: every ``checkpoint_every_steps`` steps, or once
    ``checkpoint_every_s`` seconds passed since the last one (0 turns either off)."""

    def __init__(self, t: TrainConfig, clock: Any = time.monotonic) -> None:
        self.every_steps = int(t.checkpoint_every_steps or 0)
        self.every_s = float(t.checkpoint_every_s or 0.0)
        self.clock = clock
        self.last = clock()

    def due(self, step: int) -> bool:
        """``step``: steps done so far (the counter after the step)."""
        if self.every_steps and step % self.every_steps == 0:
            return True
        return bool(self.every_s) and self.clock() - self.last >= self.every_s

    def saved(self) -> None:
        """A checkpoint was just written (at any point): the time bound starts again."""
        self.last = self.clock()


def resume_batches(loader: Any, skip: int, epoch_rng: Mapping[str, Any],
                   rng: Mapping[str, Any]) -> Iterator[Any]:
    """An iterator over ``loader`` positioned after its first ``skip`` batches, as the
    epoch that was checkpointed saw it (see the module docstring); the RNG is ``rng``
    afterwards."""
    set_rng_state(epoch_rng)
    batches = iter(loader)
    for _ in range(skip):
        next(batches)
    set_rng_state(rng)
    return batches
