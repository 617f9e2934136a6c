"""Writing and reading one results location (``--out``: a directory or an object-store URI,
:mod:`orchestrator.results.storage`); layout and schemas: the package docstring and
:mod:`orchestrator.results.schemas`.

Writes are atomic (:meth:`~orchestrator.results.storage.Storage.write_bytes`): locally a file
is written under a hidden temporary name (``.<name>.<pid>.<random>.tmp``, which readers skip)
and renamed into place; on an object store it is one PUT, visible whole or not at all. So a
killed run never leaves a file that fails to read, and each writer only ever touches files of
its own run id — at most one process at a time, which holds the run's *lease*
(``<out>/leases/<run_id>.json``: owner, host, pid, heartbeat; :meth:`ResultsStore.leases`,
held by the driver that executes the run; written through the same storage, so it works on
object storage too).
A second writer of the same run id is refused with the holder's name; a lease whose heartbeat
is older than :data:`LEASE_STALE_S` (or whose process on this host is gone) is taken over,
and a ``running`` run without a live lease is ``lost`` (killed). A killed local writer may
leave its temporary files; :meth:`ResultsStore.clean_temporaries` removes those whose process
is gone when the run starts again.

Reading degrades gracefully: a file that does not read (truncated, zero bytes, not Parquet,
a directory where a file belongs) is skipped and reported as an :class:`Unreadable` (file,
reason, fix) instead of failing the whole read, so one damaged file never hides the rest.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.config import ConfigError, StorageConfig
from orchestrator.results.schemas import DIAG_SCHEMA, METRIC_SCHEMA, RUN_SCHEMA, TABLES
from orchestrator.results.storage import Storage, open_storage


def parquet_bytes(table: pa.Table) -> bytes:
    """``table`` as the bytes of one Parquet file (written in memory: one PUT on a store)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def write_atomic(table: pa.Table, path: str | Path, options: StorageConfig | None = None
                 ) -> None:
    """Write ``table`` to ``path`` (a local path or a URI) atomically (module docstring)."""
    text = os.fspath(path)
    parent, _, name = text.rstrip("/").rpartition("/")
    open_storage(parent or ".", options).write_bytes(name, parquet_bytes(table))


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


def unreadable_reason(e: BaseException) -> str:
    """Why a file did not read, in one line: the error type and its first line."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


#: ``.<name>.<pid>.<random>.tmp`` (write_atomic) and ``.<name>.<pid>.tmp`` (checkpoints)
_TMP = re.compile(r"^\..+\.(\d+)(\.[0-9a-f]{8})?\.tmp$")
#: ``.<name>.<random>.tmp``: written by mtlx versions before the pid was in the name
_TMP_NO_PID = re.compile(r"^\..+\.parquet\.[0-9a-f]{8}\.tmp$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


#: seconds between a lease holder's heartbeats, and after which a silent lease is stale
HEARTBEAT_S, LEASE_STALE_S = 15.0, 120.0


class LeaseHeld(ConfigError):
    """Another live process holds the run's lease (the message names it and the fix)."""


def _me() -> dict[str, Any]:
    try:
        owner = getpass.getuser()
    except Exception:  # no user name in some containers
        owner = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return {"owner": owner, "host": socket.gethostname(), "pid": os.getpid()}


def lease_alive(holder: Mapping[str, Any], now: float | None = None) -> bool:
    """Whether a lease's holder is alive: a recent heartbeat, and on this host a live pid."""
    if (now or time.time()) - float(holder.get("heartbeat", 0)) > LEASE_STALE_S:
        return False
    if holder.get("host") == socket.gethostname():
        return _pid_alive(int(holder.get("pid", -1)))
    return True


def describe_holder(h: Mapping[str, Any]) -> str:
    age = time.time() - float(h.get("heartbeat", 0))
    return (f"{h.get('owner')}@{h.get('host')} pid {h.get('pid')} (heartbeat {age:.0f} s ago, "
            f"since {h.get('since')})")


def _table(rows: Iterable[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    rows = list(rows)
    extra = set().union(*(r.keys() for r in rows)) - set(schema.names) if rows else set()
    if extra:
        raise ValueError(f"rows have columns not in the schema: {sorted(extra)}")
    cols = {name: [r.get(name) for r in rows] for name in schema.names}
    return pa.table(cols, schema=schema)


class ResultsStore:
    """Writes one run's files under ``root`` (the ``--out`` location: a path, a URI, or a
    :class:`~orchestrator.results.storage.Storage`)."""

    def __init__(self, root: str | Path | Storage | tuple[Any, str],
                 options: StorageConfig | None = None) -> None:
        self.storage = open_storage(root, options)

    @property
    def root(self) -> Path | str:
        """The location: a :class:`~pathlib.Path` for local storage, else its URI."""
        return Path(self.storage.base) if self.storage.local else self.storage.uri

    def _at(self, rel: str) -> Path | str:
        """``rel`` under the root, as :attr:`root` is (a Path locally, else a URI)."""
        return Path(self.storage.path(rel)) if self.storage.local else self.storage.show(rel)

    def _write(self, rel: str, table: pa.Table) -> None:
        self.storage.write_bytes(rel, parquet_bytes(table))

    def write_metrics(self, run_id: str, part: str, rows: list[Mapping[str, Any]]) -> None:
        if rows:
            self._write(f"metrics/{run_id}/{part}.parquet", _table(rows, METRIC_SCHEMA))

    def write_diagnostics(self, run_id: str, part: str, rows: list[Mapping[str, Any]]) -> None:
        if rows:
            self._write(f"diagnostics/{run_id}/{part}.parquet", _table(rows, DIAG_SCHEMA))

    def write_run(self, row: Mapping[str, Any]) -> None:
        self._write(f"runs/{row['run_id']}.parquet", _table([row], RUN_SCHEMA))

    def read_run(self, run_id: str, problems: list[Unreadable] | None = None
                 ) -> dict[str, Any] | None:
        """The run's row, or None if it has none — or an unreadable one, which is then
        appended to ``problems`` (the run is treated as not started; its next write replaces
        the file)."""
        rel = f"runs/{run_id}.parquet"
        try:
            return pq.read_table(pa.BufferReader(self.storage.read_bytes(rel))).to_pylist()[0]
        except FileNotFoundError:
            return None
        except (OSError, pa.ArrowException, IndexError) as e:  # also: a directory there
            if problems is not None:
                problems.append(Unreadable(self.storage.show(rel), unreadable_reason(e)))
            return None

    # -- checkpoints: state.pt and the one before, state.prev.pt ----------------------------
    def checkpoint_dir(self, run_id: str) -> Path | str:
        return self._at(f"checkpoints/{run_id}")

    def write_checkpoint(self, run_id: str, data: bytes) -> None:
        """``data`` (a ``torch.save`` blob) as ``state.pt``, the previous one kept as
        ``state.prev.pt`` (locally by rename, on a store by a server-side copy)."""
        d = f"checkpoints/{run_id}"
        self.storage.write_bytes(f"{d}/state.pt", data, backup=f"{d}/state.prev.pt")

    def read_checkpoint(self, run_id: str, name: str = "state.pt") -> bytes | None:
        """The bytes of checkpoint ``name``, None if there is none."""
        try:
            return self.storage.read_bytes(f"checkpoints/{run_id}/{name}")
        except FileNotFoundError:
            return None

    def has_checkpoint(self, run_id: str) -> bool:
        return self.storage.kind(f"checkpoints/{run_id}/state.pt") == "file"

    # -- leases: one writer per run ----------------------------------------------------------
    def lease_path(self, run_id: str) -> Path | str:
        return self._at(f"leases/{run_id}.json")

    def read_lease(self, run_id: str) -> dict[str, Any] | None:
        """The lease's holder record, None if there is none (or it does not parse)."""
        try:
            return json.loads(self.storage.read_bytes(f"leases/{run_id}.json"))
        except (OSError, ValueError):
            return None

    def live_holder(self, run_id: str) -> dict[str, Any] | None:
        """The holder of a live lease on ``run_id`` other than this process, else None."""
        h = self.read_lease(run_id)
        me = _me()
        if h is None or not lease_alive(h) or (h.get("host"), h.get("pid")) == (me["host"], me["pid"]):
            return None
        return h

    def _write_lease(self, run_id: str, since: str) -> None:
        record = {**_me(), "since": since, "heartbeat": time.time()}
        self.storage.write_bytes(f"leases/{run_id}.json", json.dumps(record).encode())

    @contextlib.contextmanager
    def leases(self, run_ids: Iterable[str]) -> Iterator[None]:
        """Hold the leases of ``run_ids`` while the block runs (the driver holds them for
        every run it executes; one daemon thread beats every :data:`HEARTBEAT_S`).
        :class:`LeaseHeld` before anything is written if another live process holds one;
        stale leases are taken over (said on stderr)."""
        run_ids = list(run_ids)
        for run_id in run_ids:
            holder = self.live_holder(run_id)
            if holder is not None:
                raise LeaseHeld(
                    f"run {run_id} is being written by {describe_holder(holder)}; fix: wait "
                    f"for it or stop that process (a lease silent for {LEASE_STALE_S:.0f} s "
                    "is taken over)"
                )
        me = (_me()["host"], os.getpid())
        for run_id in run_ids:
            old = self.read_lease(run_id)
            if old is not None and (old.get("host"), old.get("pid")) != me:
                print(f"mtlx: run {run_id}: taking over the stale lease of "
                      f"{describe_holder(old)}", file=sys.stderr)
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for run_id in run_ids:
            self._write_lease(run_id, since)
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(HEARTBEAT_S):
                for run_id in run_ids:
                    with contextlib.suppress(OSError):
                        self._write_lease(run_id, since)

        thread = threading.Thread(target=beat, name="mtlx-leases", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            for run_id in run_ids:
                h = self.read_lease(run_id)
                if h is not None and (h.get("host"), h.get("pid")) == me:
                    self.storage.delete(f"leases/{run_id}.json")

    def is_lost(self, row: Mapping[str, Any]) -> bool:
        """A ``running`` row whose writer is gone (no live lease): killed, never finished."""
        if row.get("status") != "running":
            return False
        h = self.read_lease(str(row.get("run_id")))
        return h is None or not lease_alive(h)

    def run_paths(self, run_id: str) -> list[str]:
        """Every path (relative to the root) that belongs to ``run_id``: its row, metrics,
        diagnostics, checkpoints, Ray Train storage."""
        return [f"runs/{run_id}.parquet",
                *(f"{sub}/{run_id}" for sub in ("metrics", "diagnostics", "checkpoints", "ray"))]

    def clear_run(self, run_id: str) -> None:
        """Delete every file of ``run_id``, whatever state it is in (a file where a
        directory belongs and vice versa, half-written files): what ``--rerun`` needs."""
        holder = self.live_holder(run_id)
        if holder is not None:
            raise LeaseHeld(f"--rerun would delete run {run_id}, which is being written by "
                            f"{describe_holder(holder)}; fix: wait for it or stop that process")
        for rel in self.run_paths(run_id):
            self.storage.delete(rel)
        if self.storage.local:
            for tmp in Path(self.storage.path("runs")).glob(f".{run_id}.parquet.*.tmp"):
                tmp.unlink(missing_ok=True)

    def clean_temporaries(self, run_id: str) -> list[Path]:
        """Remove the temporary files of ``run_id`` left by writers on this host whose
        process is gone (a killed run), and those without a pid (older mtlx versions; the
        caller holds the run's lease, so their writer is gone); returns the removed paths.
        Object stores have no temporaries (one PUT per file): nothing to do there."""
        if not self.storage.local:
            return []
        removed = []
        dirs = [Path(self.storage.path(rel)) for rel in self.run_paths(run_id)[1:4]]
        candidates = [f for d in dirs if d.is_dir() for f in d.iterdir()]
        runs = Path(self.storage.path("runs"))
        if runs.is_dir():
            candidates += list(runs.glob(f".{run_id}.parquet.*.tmp"))
        for f in candidates:
            m = _TMP.match(f.name)
            dead = not _pid_alive(int(m.group(1))) if m else bool(_TMP_NO_PID.match(f.name))
            if dead and f.is_file():
                f.unlink(missing_ok=True)
                removed.append(f)
        return removed


def read_table(root: str | Path | Storage, name: str, problems: list[Unreadable] | None = None,
               options: StorageConfig | None = None):
    """One table of a results location as a pandas DataFrame (empty with the schema if none).

    Equivalent to ``pandas.read_parquet(f"{root}/{name}")`` on an intact directory. Files
    that do not read are skipped and appended to ``problems`` (see the module docstring);
    the rest is read file by file only then, so the intact case stays one dataset read."""
    import pyarrow.dataset as ds

    schema = TABLES[name]
    storage = open_storage(root, options)
    files = [f for f in storage.files(name) if not f.rpartition("/")[2].startswith(".")
             and f.endswith(".parquet")]
    if not files:
        return schema.empty_table().to_pandas()
    paths, fs = storage.dataset_source(files)
    try:
        return ds.dataset(paths, schema=schema, format="parquet", filesystem=fs
                          ).to_table().to_pandas()
    except (OSError, pa.ArrowException):
        pass
    tables = []
    for f, path in zip(files, paths, strict=True):
        try:
            tables.append(ds.dataset(path, schema=schema, format="parquet", filesystem=fs
                                     ).to_table())
        except (OSError, pa.ArrowException) as e:
            if problems is not None:
                problems.append(Unreadable(storage.show(f), unreadable_reason(e)))
    return pa.concat_tables(tables).to_pandas() if tables else schema.empty_table().to_pandas()
