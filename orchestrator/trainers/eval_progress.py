"""Progress of a long evaluation: ``evaluating`` events (split, batch, batches, elapsed_s)
through ``RunContext.progress`` once an evaluation has run :data:`EVAL_PROGRESS_AFTER_S`, so
a long evaluation shows progress on the driver's line (``orchestrator.run.progress``)
instead of silence, and a short one adds no events."""

from __future__ import annotations

import time
from typing import Any

from orchestrator.trainers.base import RunContext

#: an evaluation that has run this long reports ``evaluating`` progress events (split,
#: batch, batches), at most one per :data:`EVAL_PROGRESS_EVERY_S`: long evaluations show
#: progress, short ones add no events
EVAL_PROGRESS_AFTER_S = 2.0
EVAL_PROGRESS_EVERY_S = 0.5


class EvalProgress:
    """``evaluating`` events of one evaluation, once it has run ``EVAL_PROGRESS_AFTER_S``."""

    def __init__(self, ctx: RunContext, label: str, split: str, loader: Any,
                 cap: int | None) -> None:
        self.ctx, self.label, self.split = ctx, label, split
        try:
            n: int | None = len(loader)
        except TypeError:  # an iterable without a length
            n = None
        self.batches = min(n, cap) if n is not None and cap is not None else (n or cap)
        self.t0 = self.last = time.perf_counter()

    def batch(self, i: int) -> None:
        now = time.perf_counter()
        if now - self.t0 < EVAL_PROGRESS_AFTER_S or now - self.last < EVAL_PROGRESS_EVERY_S:
            return
        self.last = now
        self.ctx.progress({"kind": "evaluating", "label": self.label, "split": self.split,
                           "batch": i, "batches": self.batches, "elapsed_s": now - self.t0})
