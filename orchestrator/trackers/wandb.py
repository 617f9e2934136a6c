"""Weights & Biases: one W&B run per mtlx run, whose W&B id *is* the run id (``resume="allow"``:
every attempt of a run logs into the same W&B run).

Config: the resolved run configuration (nested: ``train.lr``, ``hparams.c`` ...); history: the
points of :mod:`orchestrator.trackers.base` against the custom x-axis ``mtlx/step`` (the global
step; W&B's own ``_step`` only counts log calls, so points may arrive in any step order);
summary: the reported numbers (``reported/<task>/<metric>``) and ``mtlx/status``. Offline
(``mode=offline``) runs live under ``<dir>/wandb/offline-run-*`` until ``wandb sync``.

Resume without repeats: W&B keeps every attempt's records in the run's transaction log
(``<dir>/wandb/*-<id>/run-<id>.wandb``, written locally online too); :func:`read_records`
reads them back (docs/trackers.md §4 has the format) and the (key, step) pairs already there
are skipped.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestrator.config import RunConfig
from orchestrator.trackers.base import Point, PointTracker, run_config

STEP = "mtlx/step"
#: the transaction log: a 7-byte file header, then 32 KiB blocks of records, each a 7-byte
#: header (CRC, length, type: 1 full, 2 first, 3 middle, 4 last) and a protobuf ``Record``
_MAGIC, _BLOCK, _HEADER = b":W&B", 32768, 7


def resolve(opts: dict[str, Any], out: str, benchmark: str) -> dict[str, Any]:
    d = opts.get("dir") or str(Path(out) / "trackers" / "wandb")
    return {"project": opts.get("project") or "mtlx", "entity": opts.get("entity"),
            "mode": opts.get("mode"), "dir": str(Path(d).expanduser().resolve())}


def prepare(opts: Mapping[str, Any]) -> None:
    Path(opts["dir"]).mkdir(parents=True, exist_ok=True)


def wandb_id(run_id: str) -> str:
    """The W&B run id of an mtlx run: the run id, characters W&B refuses replaced by ``-``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", run_id)


def read_records(path: str | Path) -> Iterator[Any]:
    """The protobuf records (``wandb.proto.wandb_internal_pb2.Record``) of one ``.wandb``
    transaction log; a torn last record (a killed writer) ends the iteration."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != _MAGIC:
        raise ValueError(f"{path} is not a W&B transaction log (no {_MAGIC!r} header)")
    pos, buf = _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # a block's tail too short for a record header is padding
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        chunk, pos = data[pos + _HEADER:pos + _HEADER + n], pos + _HEADER + n
        if len(chunk) < n or kind not in (1, 2, 3, 4):
            return
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            yield record


def run_logs(wandb_dir: str | Path, run_id: str) -> list[Path]:
    """Every attempt's transaction log of one run, oldest first."""
    wid = wandb_id(run_id)
    return sorted(Path(wandb_dir).glob(f"wandb/*run-*-{wid}/run-{wid}.wandb"))


def history(wandb_dir: str | Path, run_id: str) -> list[dict[str, Any]]:
    """The history rows (``{key: value}``, values decoded from JSON) of every attempt."""
    rows = []
    for path in run_logs(wandb_dir, run_id):
        for r in read_records(path):
            if r.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                             for i in r.history.item})
    return rows


def open_run(cfg: RunConfig, opts: Mapping[str, Any], run_info: Mapping[str, Any],
             resumed: bool) -> WandbTracker:
    import wandb

    logged: set[tuple[str, int]] = set()
    if resumed:
        logged = {(k, int(row[STEP])) for row in history(opts["dir"], cfg.run_id)
                  if STEP in row for k in row if not k.startswith("_") and k != STEP}
    else:  # a fresh start: earlier attempts' local files would be synced into the same run
        for log in run_logs(opts["dir"], cfg.run_id):
            shutil.rmtree(log.parent, ignore_errors=True)
    tags = [cfg.benchmark, cfg.method, f"seed{cfg.seed}"]
    run = wandb.init(
        project=opts["project"], entity=opts.get("entity"), mode=opts.get("mode"),
        dir=opts["dir"], id=wandb_id(cfg.run_id), name=cfg.run_id, resume="allow",
        config=run_config(cfg), tags=tags, group=cfg.search_id or cfg.benchmark,
        job_type="trial" if cfg.trial_id else "run",
        settings=wandb.Settings(console="off", silent=True),
    )  # fmt: skip
    run.define_metric(STEP)
    run.define_metric("*", step_metric=STEP)
    return WandbTracker(run, logged)


class WandbTracker(PointTracker):
    name = "wandb"

    def __init__(self, run: Any, logged: Any = ()) -> None:
        super().__init__(logged)
        self.run = run

    def write(self, pts: Sequence[Point], reported: bool) -> None:
        by_step: dict[int, dict[str, float]] = {}
        for key, step, value in pts:
            by_step.setdefault(step, {})[key] = value
        for step in sorted(by_step):
            self.run.log({STEP: step, **by_step[step]})
        if reported:
            for key, _, value in pts:
                self.run.summary[key] = value

    def close(self, status: str, run_info: Mapping[str, Any]) -> None:
        self.run.summary["mtlx/status"] = status
        self.run.finish(exit_code=0 if status == "finished" else 1)
