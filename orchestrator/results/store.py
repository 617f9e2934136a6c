"""Writing and reading one results directory (``--out``); layout and schemas: the package
docstring and :mod:`orchestrator.results.schemas`.

Writes are atomic: a file is written under a hidden temporary name
(``.<name>.<pid>.<random>.tmp``, which readers skip) and renamed into place, so a killed run
never leaves a file that fails to read, and each writer only ever touches files of its own
run id. A killed writer may leave its temporary files; :meth:`ResultsStore.clean_temporaries`
removes those whose process is gone when the run starts again.

Reading degrades gracefully: a file that does not read (truncated, zero bytes, not Parquet,
a directory where a file belongs) is skipped and reported as an :class:`Unreadable` (file,
reason, fix) instead of failing the whole read, so one damaged file never hides the rest.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.results.schemas import DIAG_SCHEMA, METRIC_SCHEMA, RUN_SCHEMA, TABLES


def write_atomic(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` via a hidden temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@dataclass(frozen=True)
class Unreadable:
    """A results file that could not be read: skipped by the readers, listed with the fix."""

    path: str
    reason: str

    @property
    def run_id(self) -> str | None:
        """The run the file belongs to (``runs/<id>.parquet`` or ``<table>/<id>/...``)."""
        p = Path(self.path)
        if p.parent.name == "runs":
            return p.name.removesuffix(".parquet")
        return p.parent.name if p.parent.parent.name in ("metrics", "diagnostics") else None

    def __str__(self) -> str:
        fix = (f"rerun that run with --rerun (its id: {self.run_id})" if self.run_id
               else "move the file away")
        return f"skipped unreadable {self.path}: {self.reason}; fix: {fix}"


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


#: ``.<name>.<pid>.<random>.tmp`` (write_atomic) and ``.<name>.<pid>.tmp`` (checkpoints)
_TMP = re.compile(r"^\..+\.(\d+)(\.[0-9a-f]{8})?\.tmp$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


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

    def read_run(self, run_id: str, problems: list[Unreadable] | None = None
                 ) -> dict[str, Any] | None:
        """The run's row, or None if it has none — or an unreadable one, which is then
        appended to ``problems`` (the run is treated as not started; its next write replaces
        the file)."""
        path = self.root / "runs" / f"{run_id}.parquet"
        if not path.exists():
            return None
        try:
            return pq.read_table(path).to_pylist()[0]
        except (OSError, pa.ArrowException, IndexError) as e:
            if problems is not None:
                problems.append(Unreadable(str(path), _reason(e)))
            return None

    def checkpoint_dir(self, run_id: str) -> Path:
        return self.root / "checkpoints" / run_id

    def run_paths(self, run_id: str) -> list[Path]:
        """Every path that belongs to ``run_id`` (its row, metrics, diagnostics, checkpoints,
        Ray Train storage)."""
        return [self.root / "runs" / f"{run_id}.parquet",
                *(self.root / sub / run_id for sub in ("metrics", "diagnostics", "checkpoints",
                                                       "ray"))]

    def clear_run(self, run_id: str) -> None:
        """Delete every file of ``run_id``, whatever state it is in (a file where a
        directory belongs and vice versa, half-written files): what ``--rerun`` needs."""
        for p in self.run_paths(run_id):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
        for tmp in (self.root / "runs").glob(f".{run_id}.parquet.*.tmp"):
            tmp.unlink(missing_ok=True)

    def clean_temporaries(self, run_id: str) -> list[Path]:
        """Remove the temporary files of ``run_id`` left by writers on this host whose
        process is gone (a killed run); returns the removed paths."""
        removed = []
        dirs = [p for p in self.run_paths(run_id)[1:4] if p.is_dir()]
        candidates = [f for d in dirs for f in d.iterdir()]
        if (self.root / "runs").is_dir():
            candidates += list((self.root / "runs").glob(f".{run_id}.parquet.*.tmp"))
        for f in candidates:
            m = _TMP.match(f.name)
            if m and f.is_file() and not _pid_alive(int(m.group(1))):
                f.unlink(missing_ok=True)
                removed.append(f)
        return removed


def read_table(root: str | Path, name: str, problems: list[Unreadable] | None = None):
    """One table of a results directory as a pandas DataFrame (empty with the schema if none).

    Equivalent to ``pandas.read_parquet(f"{root}/{name}")`` on an intact directory. Files
    that do not read are skipped and appended to ``problems`` (see the module docstring);
    the rest is read file by file only then, so the intact case stays one dataset read."""
    schema = TABLES[name]
    path = Path(root) / name
    files = sorted(p for p in path.rglob("*.parquet") if not p.name.startswith(".")) if path.is_dir() else []
    if not files:
        return schema.empty_table().to_pandas()
    import pyarrow.dataset as ds

    try:
        return ds.dataset([str(f) for f in files], schema=schema, format="parquet").to_table().to_pandas()
    except (OSError, pa.ArrowException):
        pass
    tables = []
    for f in files:
        try:
            tables.append(ds.dataset(str(f), schema=schema, format="parquet").to_table())
        except (OSError, pa.ArrowException) as e:
            if problems is not None:
                problems.append(Unreadable(str(f), _reason(e)))
    return pa.concat_tables(tables).to_pandas() if tables else schema.empty_table().to_pandas()
