"""Terminal progress for ``mtlx run``: one live line for the active runs, one line per
finished run.

Trainers emit events through ``RunContext.progress`` (``kind``: ``start``, ``progress``,
``epoch``, ``end``); in-process they arrive here directly, from Ray tasks and Ray Train
workers through a small actor (:class:`ProgressSink`) the driver drains. On a terminal the
active runs share one line redrawn in place (epoch, step, loss per task, ETA); elsewhere
(CI logs, pipes) a line is printed per finished epoch instead.
"""

from __future__ import annotations

import shutil
import sys
from typing import Any, TextIO


def _fmt_time(s: float | None) -> str:
    if s is None or s != s:
        return "?"
    if s < 60:
        return f"{s:.1f}s"
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _short(name: str, n: int = 8) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


class ProgressBoard:
    """Renders progress events and run outcomes to ``stream``."""

    def __init__(self, total: int, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.total = total
        self.done = 0
        self.active: dict[str, dict[str, Any]] = {}
        self._drawn = False

    # -- events from trainers -------------------------------------------------------------
    def handle(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        rid = event.get("run_id", "?")
        if kind in ("start", "progress"):
            self.active[rid] = {**self.active.get(rid, {}), **event}
            self._draw()
        elif kind == "epoch" and not self.tty:
            metrics = event.get("metrics") or {}
            shown = "  ".join(f"{k.split('/', 1)[-1]}={v:.4g}" for k, v in list(metrics.items())[:6])
            self._print(f"  {event.get('label', rid)}  epoch {event['epoch']}/{event['epochs']}"
                        + (f"  {shown}" if shown else ""))

    # -- outcomes from the launcher -------------------------------------------------------
    def skipped(self, label: str, run_id: str) -> None:
        self.done += 1
        self._print(f"[{self.done}/{self.total}] {label}: already finished ({run_id}), skipped")

    def finished(self, label: str, run_id: str, status: str, wall: float | None,
                 error: str | None = None) -> None:
        self.done += 1
        self.active.pop(run_id, None)
        mark = {"finished": "done", "nonfinite": "STOPPED (non-finite loss)",
                "failed": "FAILED", "interrupted": "interrupted"}.get(status, status)
        line = f"[{self.done}/{self.total}] {label}: {mark}"
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
            if ev.get("kind") != "progress":
                parts.append(f"{ev.get('label', '?')} starting")
                continue
            losses = " ".join(f"{_short(k)} {v:.3g}" for k, v in (ev.get("losses") or {}).items())
            if len(ev.get("losses") or {}) > 4:
                vals = list((ev.get("losses") or {}).values())
                losses = f"mean loss {sum(vals) / len(vals):.3g}"
            parts.append(f"{ev.get('label')} e{ev.get('epoch')}/{ev.get('epochs')} "
                         f"{ev.get('step')}/{ev.get('steps')} {losses} eta {_fmt_time(ev.get('eta_s'))}")
        return f"[{self.done}/{self.total}] " + " | ".join(parts)

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


class ProgressSink:
    """A Ray actor buffering events from remote runs (``push``) for the driver (``drain``)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def push(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def drain(self) -> list[dict[str, Any]]:
        out, self.events = self.events, []
        return out
