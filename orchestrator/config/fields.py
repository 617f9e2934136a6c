"""The building blocks of the config dataclasses: :class:`ConfigError`, the :class:`Valid`
rules a field's value is checked against, and :func:`_f`, a dataclass field with its help
text, rule and whether it enters the run id."""

from __future__ import annotations

import math
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A configuration problem found before any compute; the message names the fix."""


@dataclass(frozen=True)
class Valid:
    """The valid values of a :class:`TrainConfig` field (``None`` is always valid: "the
    protocol's value"), checked by :func:`orchestrator.run.plan.check_train`."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    integer: bool = False
    #: the allowed values, or a function returning them (read from ``methods`` on use)
    choices: tuple[str, ...] | Callable[[], Sequence[str]] | None = None

    def problem(self, v: Any) -> str | None:
        """What ``v`` must be, or None if it is valid."""
        if self.choices is not None:
            choices = self.choices() if callable(self.choices) else self.choices
            return None if v in choices else f"one of {list(choices)}"
        if self.integer:
            ok = isinstance(v, int) and not isinstance(v, bool) and v >= self.low
            return None if ok else f"an integer >= {int(self.low)}"
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        ok = ok and (v > self.low if self.low_open else v >= self.low) and v <= self.high
        return None if ok else f"in {'(' if self.low_open else '['}{self.low}, {self.high}]"


def _head_updates() -> Sequence[str]:
    from methods.base import HEAD_UPDATES

    return HEAD_UPDATES


def _precisions() -> Sequence[str]:
    from methods.precision import PRECISIONS

    return PRECISIONS


def _levels() -> Sequence[str]:
    from methods.engine import Level

    return typing.get_args(Level)


_COUNT, _COUNT0 = Valid(low=1, integer=True), Valid(low=0, integer=True)
_POSITIVE, _NONNEG = Valid(low=0.0, low_open=True), Valid(low=0.0)


def _f(default: Any = None, help: str = "", factory: Any = None, valid: Valid | None = None,
       identity: bool = True) -> Any:
    """A config field; ``identity=False``: it changes how fast a run goes, never its numbers,
    so it is left out of the run id (:meth:`RunConfig.identity`)."""
    metadata = {"help": help, "valid": valid, "identity": identity}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)
