"""Writing and reading one results directory (``--out``); layout and schemas: the package
docstring and :mod:`orchestrator.results.schemas`.

Writes are atomic: a file is written under a hidden temporary name (``.<name>.tmp``, which
readers skip) and renamed into place, so a killed run never leaves a file that fails to read,
and each writer only ever touches files of its own run id.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.results.schemas import DIAG_SCHEMA, METRIC_SCHEMA, RUN_SCHEMA, TABLES


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
