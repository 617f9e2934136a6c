"""The results store: a Parquet dataset directory any Parquet reader can analyse.

Layout (``<out>`` is ``--out``, default ``results/``)::

    <out>/runs/<run_id>.parquet                 one row per run (rewritten by that run only)
    <out>/metrics/<run_id>/<part>.parquet       long-format metric rows, one file per
                                                (run, epoch/evaluation, split group)
    <out>/diagnostics/<run_id>/<part>.parquet   per-logged-step method diagnostics
    <out>/checkpoints/<run_id>/state.pt         last checkpoint (torch.save; resume)

Every file has a fixed schema (below), so ``pandas.read_parquet("<out>/metrics")``,
``polars.read_parquet("<out>/metrics/**/*.parquet")`` and DuckDB's
``read_parquet('<out>/metrics/**/*.parquet')`` read the whole table. Writes are atomic: a
file is written under a hidden temporary name (``.<name>.tmp``, which readers skip) and
renamed into place, so a killed run never leaves a file that fails to read, and each writer
only ever touches files of its own run id.

``metrics`` (:data:`METRIC_SCHEMA`): ``run_id, benchmark, method, seed, split, epoch, step,
task, metric, value, higher_is_better``. ``split`` is ``train`` (epoch means of the training
losses, ``metric="loss"``; run-level rows such as ``lr`` have ``task=""``), ``val``/``test``
(every metric of every task at each evaluation, plus the mean evaluation ``loss``) or
``reported`` — the numbers the protocol reports (selected on validation or averaged over the
last k evaluations; the runs row says which epochs) and that Δm/Δp are computed from.
``step`` is the number of optimiser steps taken when the row was written.

``diagnostics`` (:data:`DIAG_SCHEMA`): ``run_id, benchmark, method, seed, epoch, step,
quantity, task, other_task, value`` with ``quantity`` one of ``loss``, ``weight``,
``grad_norm``, ``cosine`` (``other_task`` set) or ``info.<key>`` (``task=""``), from the
engine's :class:`methods.StepResult` every ``train.diagnostics_every`` steps.

``runs`` (:data:`RUN_SCHEMA`): identity, status (``running``, ``finished``, ``failed``,
``nonfinite``), the error message, the resolved config as columns and as JSON, the method's
hyperparameters (JSON), reporting facts (``selection``, ``reported_epochs``, the single-task
reference and the metric directions as JSON, so reports need nothing but this directory), the
benchmark's protocol record (``protocol``, JSON, with its source), wall
time and provenance (mtlx version and git commit, torch/ray/python versions, hostname, device,
workers).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

METRIC_SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("benchmark", pa.string()),
    ("method", pa.string()),
    ("seed", pa.int64()),
    ("split", pa.string()),
    ("epoch", pa.int64()),
    ("step", pa.int64()),
    ("task", pa.string()),
    ("metric", pa.string()),
    ("value", pa.float64()),
    ("higher_is_better", pa.bool_()),
])  # fmt: skip

DIAG_SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("benchmark", pa.string()),
    ("method", pa.string()),
    ("seed", pa.int64()),
    ("epoch", pa.int64()),
    ("step", pa.int64()),
    ("quantity", pa.string()),
    ("task", pa.string()),
    ("other_task", pa.string()),
    ("value", pa.float64()),
])  # fmt: skip

_S, _I, _F, _B = pa.string(), pa.int64(), pa.float64(), pa.bool_()
RUN_SCHEMA = pa.schema([
    ("run_id", _S), ("benchmark", _S), ("method", _S), ("seed", _I), ("stl_task", _S),
    ("status", _S), ("error", _S), ("config_hash", _S),
    ("trial_id", _S), ("search_id", _S),
    # resolved configuration
    ("hparams", _S), ("level", _S), ("head_update", _S),
    ("epochs", _I), ("steps", _I), ("batch_size", _I), ("optimizer", _S), ("lr", _F),
    ("weight_decay", _F), ("momentum", _F), ("lr_schedule", _S), ("step_size", _I),
    ("gamma", _F), ("patience", _I), ("min_lr", _F), ("eval_every", _I), ("average_last", _I), ("selection", _S),
    ("method_lr", _F), ("max_steps_per_epoch", _I), ("max_eval_batches", _I),
    ("data_root", _S), ("bench_options", _S), ("model_options", _S), ("trainer_options", _S),
    ("workers", _I), ("gpus_per_worker", _F), ("cpus_per_worker", _I),
    ("config_json", _S),
    # progress and reporting
    ("epochs_done", _I), ("steps_done", _I), ("reported_epochs", _S), ("tasks", _S),
    ("metrics_spec", _S), ("stl_reference", _S), ("stl_reference_source", _S),
    ("protocol", _S),  # JSON: a trainer's full environment/algorithm protocol (RL: sac.py)
    ("started_at", _S), ("finished_at", _S), ("wall_time_s", _F),
    # provenance
    ("mtlx_version", _S), ("git_commit", _S), ("torch_version", _S), ("ray_version", _S),
    ("python_version", _S), ("hostname", _S), ("device", _S),
])  # fmt: skip

TABLES = {"metrics": METRIC_SCHEMA, "diagnostics": DIAG_SCHEMA, "runs": RUN_SCHEMA}


def write_atomic(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` via a hidden temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _table(rows: Iterable[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    rows = list(rows)
    extra = set().union(*(r.keys() for r in rows)) - set(schema.names) if rows else set()
    if extra:
        raise ValueError(f"rows have columns not in the schema: {sorted(extra)}")
    cols = {name: [r.get(name) for r in rows] for name in schema.names}
    return pa.table(cols, schema=schema)


class ResultsStore:
    """Writes one run's files under ``root`` (the ``--out`` directory)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def write_metrics(self, run_id: str, part: str, rows: list[Mapping[str, Any]]) -> None:
        if rows:
            write_atomic(_table(rows, METRIC_SCHEMA), self.root / "metrics" / run_id / f"{part}.parquet")

    def write_diagnostics(self, run_id: str, part: str, rows: list[Mapping[str, Any]]) -> None:
        if rows:
            write_atomic(_table(rows, DIAG_SCHEMA),
                         self.root / "diagnostics" / run_id / f"{part}.parquet")

    def write_run(self, row: Mapping[str, Any]) -> None:
        write_atomic(_table([row], RUN_SCHEMA), self.root / "runs" / f"{row['run_id']}.parquet")

    def read_run(self, run_id: str) -> dict[str, Any] | None:
        path = self.root / "runs" / f"{run_id}.parquet"
        if not path.exists():
            return None
        return pq.read_table(path).to_pylist()[0]

    def checkpoint_dir(self, run_id: str) -> Path:
        return self.root / "checkpoints" / run_id


def read_table(root: str | Path, name: str):
    """One table of a results directory as a pandas DataFrame (empty with the schema if none).

    Equivalent to ``pandas.read_parquet(f"{root}/{name}")``; provided for convenience."""
    schema = TABLES[name]
    path = Path(root) / name
    files = sorted(p for p in path.rglob("*.parquet") if not p.name.startswith(".")) if path.exists() else []
    if not files:
        return schema.empty_table().to_pandas()
    import pyarrow.dataset as ds

    return ds.dataset([str(f) for f in files], schema=schema, format="parquet").to_table().to_pandas()


def dumps(x: Any) -> str:
    """Compact, key-sorted JSON for JSON columns."""
    return json.dumps(x, sort_keys=True, default=str)
