"""The fixed schemas of the three tables, and the runs row derived from the config dataclasses.

``metrics`` and ``diagnostics`` are long-format tables written by the trainers (see the
package docstring). ``runs`` holds one row per run; its configuration columns are not listed
here by hand: they are the fields of :class:`~orchestrator.config.RunConfig` (without
``train``, ``out`` and ``workdir``: where a run lives is not part of what it is) and of
:class:`~orchestrator.config.TrainConfig`, typed from their annotations, so a new config field
reaches Parquet by itself. Mappings and lists are stored as key-sorted JSON text.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any

import pyarrow as pa

from orchestrator.config import RunConfig, TrainConfig

_S, _I, _F, _B = pa.string(), pa.int64(), pa.float64(), pa.bool_()

METRIC_SCHEMA = pa.schema([
    ("run_id", _S), ("benchmark", _S), ("method", _S), ("seed", _I), ("split", _S),
    ("epoch", _I), ("step", _I), ("task", _S), ("metric", _S), ("value", _F),
    ("higher_is_better", _B),
])  # fmt: skip

DIAG_SCHEMA = pa.schema([
    ("run_id", _S), ("benchmark", _S), ("method", _S), ("seed", _I), ("epoch", _I),
    ("step", _I), ("quantity", _S), ("task", _S), ("other_task", _S), ("value", _F),
])  # fmt: skip

#: RunConfig fields that are not runs-table columns (location and how to reach it, where it
#: is also logged, not identity; ``train`` is spread into its own fields)
RUN_FIELDS_EXCLUDED = ("train", "out", "storage", "workdir", "trackers")

#: columns a run writes while and after it trains (trainers set them via ``ctx.update_run``)
PROGRESS_COLUMNS = (
    ("epochs_done", _I), ("steps_done", _I), ("reported_epochs", _S), ("tasks", _S),
    ("metrics_spec", _S), ("stl_reference", _S), ("stl_reference_source", _S),
    ("protocol", _S),  # JSON: a trainer's full environment/algorithm protocol (RL)
    ("started_at", _S), ("finished_at", _S), ("wall_time_s", _F),
    ("solver_failures", _I),  # steps whose method solve failed (warned once per run)
    ("attempts", _I),  # starts since the run's files were last cleared (retries, resumes)
)  # fmt: skip

#: where and with what a run was computed (:func:`orchestrator.results.provenance.provenance`)
PROVENANCE_COLUMNS = (
    ("mtlx_version", _S), ("git_commit", _S), ("torch_version", _S), ("ray_version", _S),
    ("python_version", _S), ("hostname", _S), ("device", _S),
)  # fmt: skip


def arrow_type(annotation: Any) -> pa.DataType:
    """The column type of a config field: ``int``/``float``/``str``/``bool`` (optional or
    not) as such, mappings and lists as JSON text."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if annotation is bool:
        return _B
    if annotation is int:
        return _I
    if annotation is float:
        return _F
    if annotation is str:
        return _S
    if typing.get_origin(annotation) in (list, dict, tuple):
        return _S
    raise TypeError(f"no runs-table column type for config annotation {annotation!r}")


def _fields(cls: type, excluded: tuple[str, ...] = ()) -> list[tuple[str, pa.DataType]]:
    hints = typing.get_type_hints(cls)
    return [(f.name, arrow_type(hints[f.name])) for f in dataclasses.fields(cls)
            if f.name not in excluded]


RUN_CONFIG_COLUMNS = tuple(_fields(RunConfig, RUN_FIELDS_EXCLUDED))
TRAIN_CONFIG_COLUMNS = tuple(_fields(TrainConfig))

RUN_SCHEMA = pa.schema([
    ("run_id", _S), ("status", _S), ("error", _S), ("config_hash", _S),
    *RUN_CONFIG_COLUMNS, *TRAIN_CONFIG_COLUMNS, ("config_json", _S),
    *PROGRESS_COLUMNS, *PROVENANCE_COLUMNS,
])  # fmt: skip

TABLES = {"metrics": METRIC_SCHEMA, "diagnostics": DIAG_SCHEMA, "runs": RUN_SCHEMA}


def dumps(x: Any) -> str:
    """Compact, key-sorted JSON for JSON columns."""
    return json.dumps(x, sort_keys=True, default=str)


def config_columns(cfg: RunConfig) -> dict[str, Any]:
    """The runs-table configuration columns of ``cfg`` (one per config field, see above)."""
    row: dict[str, Any] = {"run_id": cfg.run_id, "config_hash": cfg.config_hash(),
                           "config_json": dumps(cfg.to_dict())}
    for obj, columns in ((cfg, RUN_CONFIG_COLUMNS), (cfg.train, TRAIN_CONFIG_COLUMNS)):
        for name, typ in columns:
            value = getattr(obj, name)
            row[name] = dumps(value) if typ == _S and isinstance(value, (dict, list, tuple)) \
                else value
    return row
