"""TensorBoard: one log directory per mtlx run, ``<log_dir>/<run_id>/`` (default
``<out>/trackers/tensorboard``), so ``tensorboard --logdir <out>/trackers/tensorboard`` shows
every run under its run id.

Scalars: the points of :mod:`orchestrator.trackers.base`; text: ``mtlx/config`` (the resolved
run configuration as JSON) and ``mtlx/status`` at the end. A resumed run appends a new event
file to the same directory and skips the (tag, step) pairs the earlier files hold; a fresh
start (no checkpoint, or ``--rerun``) empties the directory first.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestrator.config import RunConfig
from orchestrator.trackers.base import Point, PointTracker, run_config


def resolve(opts: dict[str, Any], out: str, benchmark: str) -> dict[str, Any]:
    log_dir = opts.get("log_dir") or str(Path(out) / "trackers" / "tensorboard")
    return {"log_dir": str(Path(log_dir).expanduser().resolve())}


def prepare(opts: Mapping[str, Any]) -> None:
    Path(opts["log_dir"]).mkdir(parents=True, exist_ok=True)


def read_scalars(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} of every event file in ``run_dir``, through TensorBoard's
    own reader (all events kept, no sampling)."""
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(str(run_dir), size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def open_run(cfg: RunConfig, opts: Mapping[str, Any], run_info: Mapping[str, Any],
             resumed: bool) -> TensorBoardTracker:
    from torch.utils.tensorboard import SummaryWriter

    run_dir = Path(opts["log_dir"]) / cfg.run_id
    logged: set[tuple[str, int]] = set()
    if resumed and run_dir.is_dir():
        logged = {(tag, step) for tag, pts in read_scalars(run_dir).items() for step, _ in pts}
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
    writer = SummaryWriter(log_dir=str(run_dir))
    if not logged:
        text = json.dumps(run_config(cfg), indent=1, sort_keys=True)
        writer.add_text("mtlx/config", f"```\n{text}\n```", 0)
    return TensorBoardTracker(writer, logged)


class TensorBoardTracker(PointTracker):
    name = "tensorboard"

    def __init__(self, writer: Any, logged: Any = ()) -> None:
        super().__init__(logged)
        self.writer = writer

    def write(self, pts: Sequence[Point], reported: bool) -> None:
        for key, step, value in pts:
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # one epoch's points at a time: visible while the run trains

    def close(self, status: str, run_info: Mapping[str, Any]) -> None:
        self.writer.add_text("mtlx/status", status, int(run_info.get("steps_done") or 0))
        self.writer.close()
