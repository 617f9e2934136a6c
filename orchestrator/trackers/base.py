"""What a tracker is and what it logs: the :class:`Tracker` protocol, the rows → points
mapping shared by every tracker, and :class:`PointTracker`, which logs each (key, step) once.

A tracker sees exactly the rows the Parquet store gets (``RunContext.write_metrics`` /
``write_diagnostics`` pass them on after writing them), so each point in a tracker is one
Parquet row:

* a ``metrics`` row → key ``<split>/<task>/<metric>`` (``<split>/<metric>`` for rows without a
  task: ``train/lr``), at the row's ``step`` — ``reported/<task>/<metric>`` are the run's
  reported numbers;
* a ``diagnostics`` row → ``diag/<quantity>/<task>`` (``diag/cosine/<task>/<other_task>``;
  ``diag/<quantity>`` without a task), at its ``step``.

Characters MLflow refuses in a key (anything but letters, digits, ``_ - . / :`` and space) become
``_``. The x-axis is the global optimisation step everywhere (the epoch is in the Parquet row).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

_BAD = re.compile(r"[^\w\-./: ]")

#: a point: (key, step, value)
Point = tuple[str, int, float]


def _clean(key: str) -> str:
    return _BAD.sub("_", key)


def metric_key(row: Mapping[str, Any]) -> str:
    """The tracker key of a ``metrics`` row (see the module docstring)."""
    parts = [row["split"], row["task"], row["metric"]]
    return _clean("/".join(p for p in parts if p))


def diag_key(row: Mapping[str, Any]) -> str:
    """The tracker key of a ``diagnostics`` row (see the module docstring)."""
    parts = ["diag", row["quantity"], row["task"], row.get("other_task") or ""]
    return _clean("/".join(p for p in parts if p))


def points(rows: Iterable[Mapping[str, Any]], key: Any) -> list[Point]:
    return [(key(r), int(r["step"]), float(r["value"])) for r in rows]


def flat(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys (``{"train": {"lr": 1}}`` → ``train.lr``)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, Mapping) and v:
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def run_config(cfg: Any) -> dict[str, Any]:
    """What a tracker records as the run's configuration: the resolved
    :class:`~orchestrator.config.RunConfig` (hyperparameters under ``hparams``), without the
    tracker settings themselves."""
    data = cfg.to_dict()
    data.pop("trackers", None)
    return data


class Tracker(Protocol):
    """One tracker's view of one run (rank 0 only; built by ``open_run`` of its module)."""

    name: str

    def log_metrics(self, rows: Sequence[Mapping[str, Any]]) -> None: ...

    def log_diagnostics(self, rows: Sequence[Mapping[str, Any]]) -> None: ...

    def close(self, status: str, run_info: Mapping[str, Any]) -> None: ...


class PointTracker:
    """A tracker that logs points; each (key, step) at most once per run.

    A resumed run rewrites the rows after its last checkpoint; ``logged`` (read back from the
    tracker's own store when the run opens) holds what an earlier attempt already logged, and
    those points are skipped, so a resumed run continues its tracker run without repeating
    steps. Subclasses implement :meth:`write`."""

    name = "tracker"

    def __init__(self, logged: Iterable[tuple[str, int]] = ()) -> None:
        self.logged: set[tuple[str, int]] = set(logged)

    def write(self, pts: Sequence[Point], reported: bool) -> None:  # pragma: no cover
        raise NotImplementedError

    def _log(self, pts: list[Point], reported: bool = False) -> None:
        new = [p for p in pts if (p[0], p[1]) not in self.logged]
        if new:
            self.write(new, reported)
            self.logged.update((k, s) for k, s, _ in new)

    def log_metrics(self, rows: Sequence[Mapping[str, Any]]) -> None:
        reported = [r for r in rows if r["split"] == "reported"]
        self._log(points([r for r in rows if r["split"] != "reported"], metric_key))
        self._log(points(reported, metric_key), reported=True)

    def log_diagnostics(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self._log(points(rows, diag_key))


def tracker_failed(run_id: str, name: str, e: BaseException) -> None:
    print(f"mtlx: run {run_id}: tracker {name} failed ({type(e).__name__}: "
          f"{str(e).strip()[:300]}); it logs nothing more for this run, the Parquet results "
          "are complete", file=sys.stderr)


class Trackers:
    """The trackers of one run, as ``RunContext`` calls them: a tracker that fails while the run
    trains is reported once on stderr and dropped (the Parquet store, the source of truth, is
    already written), so a tracker outage never stops training."""

    def __init__(self, run_id: str = "", trackers: Sequence[Tracker] = ()) -> None:
        self.run_id, self.active = run_id, list(trackers)

    def _each(self, what: str, *args: Any) -> None:
        for t in list(self.active):
            try:
                getattr(t, what)(*args)
            except Exception as e:
                self.active.remove(t)
                tracker_failed(self.run_id, t.name, e)

    def log_metrics(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self._each("log_metrics", rows)

    def log_diagnostics(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self._each("log_diagnostics", rows)

    def close(self, status: str, run_info: Mapping[str, Any]) -> None:
        self._each("close", status, dict(run_info))
        self.active = []
