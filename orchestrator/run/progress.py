"""Terminal progress for ``mtlx run``: one live line for the active runs, one line per
finished run.

Trainers emit events through ``RunContext.progress`` (``kind``: ``start``, ``progress``,
``epoch``, ``end``); in-process they arrive here directly, from Ray tasks and Ray Train
workers through a small actor (:class:`ProgressSink`) the driver drains. On a terminal the
active runs share one line redrawn in place (epoch, step, loss per task, ETA); elsewhere
(CI logs, pipes) a line is printed per finished epoch instead.

A long evaluation reports ``evaluating`` events (split, batch, batches; the trainer sends them
only once an evaluation has run :data:`orchestrator.trainers.eval_progress.EVAL_PROGRESS_AFTER_S`):
on a terminal they replace the run's part of the live line, elsewhere a line is printed at
most every :data:`EVAL_LINE_EVERY_S` seconds per run.

Commands that run several experiments (``mtlx reproduce``) wrap them in :func:`overall`: every
board made inside counts against the whole grid (``[k/n]`` over all runs, and the grid's ETA
from the finished runs' pace). ``mtlx tune`` draws :class:`SearchBoard` (trials done /
running / pending, the best objective so far, ETA) from its Tune callback.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

#: seconds between the non-terminal lines of one run's long evaluation
EVAL_LINE_EVERY_S = 10.0


def _fmt_time(s: float | None) -> str:
    if s is None or s != s:
        return "?"
    if s < 60:
        return f"{s:.1f}s"
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _short(name: str, n: int = 8) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


class Overall:
    """Runs of several experiments counted as one grid (see :func:`overall`); a run that
    two experiments share counts once."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label, self.trained = total, label, 0
        self.ids: set[str] = set()
        self.t0 = time.perf_counter()

    @property
    def done(self) -> int:
        return len(self.ids)

    def eta(self) -> float | None:
        """Seconds left at the pace of the runs trained so far (skipped ones cost nothing)."""
        left = self.total - self.done
        if self.trained == 0:
            return None if left else 0.0
        return (time.perf_counter() - self.t0) / self.trained * left


_OVERALL: list[Overall] = []


@contextlib.contextmanager
def overall(total: int, label: str) -> Iterator[Overall]:
    """Count every :class:`ProgressBoard` made inside against one grid of ``total`` runs."""
    o = Overall(total, label)
    _OVERALL.append(o)
    try:
        yield o
    finally:
        _OVERALL.remove(o)


class ProgressBoard:
    """Renders progress events and run outcomes to ``stream``."""

    def __init__(self, total: int, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.overall = _OVERALL[-1] if _OVERALL else None
        self._total = total
        self._done = 0
        self.active: dict[str, dict[str, Any]] = {}
        self._drawn = False
        self._eval_printed: dict[str, float] = {}

    # -- counts: this board's runs, or the whole grid's inside `overall` --------------------
    @property
    def total(self) -> int:
        return self.overall.total if self.overall else self._total

    @property
    def done(self) -> int:
        return self.overall.done if self.overall else self._done

    def _count(self, run_id: str, trained: bool) -> None:
        self._done += 1
        if self.overall and run_id not in self.overall.ids:
            self.overall.ids.add(run_id)
            self.overall.trained += int(trained)

    def _prefix(self) -> str:
        head = f"[{self.done}/{self.total}]"
        if self.overall:
            head = f"{self.overall.label} {head} eta {_fmt_time(self.overall.eta())}"
        return head

    # -- events from trainers -------------------------------------------------------------
    def handle(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        rid = event.get("run_id", "?")
        if kind in ("start", "progress", "evaluating"):
            self.active[rid] = {**self.active.get(rid, {}), **event}
            self._draw()
            if kind == "evaluating" and not self.tty:
                self._eval_line(rid, event)
        elif kind == "epoch" and not self.tty:
            metrics = event.get("metrics") or {}
            shown = "  ".join(f"{k.split('/', 1)[-1]}={v:.4g}" for k, v in list(metrics.items())[:6])
            self._print(f"  {event.get('label', rid)}  epoch {event['epoch']}/{event['epochs']}"
                        + (f"  {shown}" if shown else ""))

    def _eval_line(self, rid: str, event: dict[str, Any]) -> None:
        now = time.perf_counter()
        if now - self._eval_printed.get(rid, -EVAL_LINE_EVERY_S) < EVAL_LINE_EVERY_S:
            return
        self._eval_printed[rid] = now
        self._print(f"  {event.get('label', rid)}  {_evaluating(event)}")

    # -- outcomes from the launcher -------------------------------------------------------
    def skipped(self, label: str, run_id: str) -> None:
        self._count(run_id, trained=False)
        self._print(f"{self._prefix()} {label}: already finished ({run_id}), skipped")

    def finished(self, label: str, run_id: str, status: str, wall: float | None,
                 error: str | None = None) -> None:
        self._count(run_id, trained=True)
        self.active.pop(run_id, None)
        self._eval_printed.pop(run_id, None)
        mark = {"finished": "done", "nonfinite": "STOPPED (non-finite loss)",
                "failed": "FAILED", "interrupted": "interrupted"}.get(status, status)
        line = f"{self._prefix()} {label}: {mark}"
        if wall is not None:
            line += f" in {_fmt_time(wall)}"
        if error:
            line += f"\n      {error}"
        self._print(line)
        self._draw()

    def note(self, text: str) -> None:
        """A line about the whole invocation (e.g. runs waiting for the cluster to grow)."""
        self._print(text)

    def close(self) -> None:
        self._clear()

    # -- drawing --------------------------------------------------------------------------
    def _line(self) -> str:
        parts = []
        for ev in self.active.values():
            if ev.get("kind") == "evaluating":
                parts.append(f"{ev.get('label', '?')} {_evaluating(ev)}")
                continue
            if ev.get("kind") != "progress":
                parts.append(f"{ev.get('label', '?')} starting")
                continue
            losses = " ".join(f"{_short(k)} {v:.3g}" for k, v in (ev.get("losses") or {}).items())
            if len(ev.get("losses") or {}) > 4:
                vals = list((ev.get("losses") or {}).values())
                losses = f"mean loss {sum(vals) / len(vals):.3g}"
            parts.append(f"{ev.get('label')} e{ev.get('epoch')}/{ev.get('epochs')} "
                         f"{ev.get('step')}/{ev.get('steps')} {losses} eta {_fmt_time(ev.get('eta_s'))}")
        return f"{self._prefix()} " + " | ".join(parts)

    def _draw(self) -> None:
        if not self.tty or not self.active:
            return
        width = shutil.get_terminal_size((120, 20)).columns - 1
        line = self._line()
        if len(line) > width:
            line = line[: width - 1] + "…"
        self.stream.write("\r\033[K" + line)
        self.stream.flush()
        self._drawn = True

    def _clear(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._drawn = False

    def _print(self, text: str) -> None:
        self._clear()
        self.stream.write(text + "\n")
        self.stream.flush()


class SearchBoard:
    """``mtlx tune``'s line: trials done / running / pending, the best objective so far
    (over trials that trained every epoch, as the search's summary counts it) and the ETA
    (the wall time per finished trial so far × the trials left; concurrency included).
    On a terminal one line redrawn in place; elsewhere the line is printed when a trial
    ends."""

    def __init__(self, total: int, metric: str, mode: str, epochs: int,
                 stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.total, self.metric, self.mode, self.epochs = total, metric, mode, epochs
        self.running: dict[str, int] = {}  # trial → epochs done
        self.done = 0
        self.best: tuple[float, str] | None = None
        self.t0 = time.perf_counter()
        self._drawn = False

    def started(self, trial: str) -> None:
        self.running.setdefault(trial, 0)
        self._draw()

    def result(self, trial: str, epochs_done: int | None) -> None:
        self.running[trial] = int(epochs_done or 0)
        self._draw()

    def ended(self, trial: str, objective: float | None, epochs_done: int | None) -> None:
        """A trial completed (or failed: ``objective`` None)."""
        self.running.pop(trial, None)
        self.done += 1
        full = epochs_done is not None and epochs_done >= self.epochs
        if full and objective is not None and objective == objective:
            sign = 1.0 if self.mode == "min" else -1.0
            if self.best is None or sign * objective < sign * self.best[0]:
                self.best = (float(objective), trial)
        if self.tty:
            self._draw()
        else:
            self._write(self.line() + "\n")

    def eta(self) -> float | None:
        left = self.total - self.done
        if not self.done:
            return None if left else 0.0
        return (time.perf_counter() - self.t0) / self.done * left

    def line(self) -> str:
        pending = max(0, self.total - self.done - len(self.running))
        best = "-" if self.best is None else f"{self.best[0]:.4g} ({self.best[1]})"
        running = " ".join(f"{t} e{e}/{self.epochs}" for t, e in sorted(self.running.items()))
        return (f"[trials {self.done}/{self.total} done, {len(self.running)} running, "
                f"{pending} pending] best {self.metric} {best}  eta {_fmt_time(self.eta())}"
                + (f"  | {running}" if running else ""))

    def clear(self) -> None:
        if self.tty and self._drawn:
            self._write("\r\033[K")
            self._drawn = False

    def _draw(self) -> None:
        if self.tty:
            width = shutil.get_terminal_size((120, 20)).columns - 1
            line = self.line()
            self._write("\r\033[K" + (line if len(line) <= width else line[: width - 1] + "…"))
            self._drawn = True

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


def _evaluating(ev: dict[str, Any]) -> str:
    n = ev.get("batches")
    done = ev.get("batch", 0)
    text = f"evaluating {ev.get('split', '?')} {done}/{n if n else '?'} batches"
    rate = ev.get("elapsed_s", 0.0) / done if done else None
    if n and rate is not None:
        text += f" eta {_fmt_time(rate * (n - done))}"
    return text


class ProgressSink:
    """A Ray actor buffering events from remote runs (``push``) for the driver (``drain``)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def push(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def drain(self) -> list[dict[str, Any]]:
        out, self.events = self.events, []
        return out
