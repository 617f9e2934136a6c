"""Search-space dimensions as plain data (no Ray/Optuna import): each method declares
``search_space = {hparam: Dimension}`` beside its ``Config``; ``mtlx tune`` translates them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Uniform:
    low: float
    high: float

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"empty range: Uniform({self.low}, {self.high}) needs low < high")


@dataclass(frozen=True)
class LogUniform:
    low: float
    high: float

    def __post_init__(self) -> None:
        if not 0 < self.low < self.high:
            raise ValueError(
                f"invalid range: LogUniform({self.low}, {self.high}) needs 0 < low < high"
            )


@dataclass(frozen=True)
class IntUniform:
    low: int
    high: int

    def __post_init__(self) -> None:
        if not self.low <= self.high:
            raise ValueError(f"empty range: IntUniform({self.low}, {self.high}) needs low <= high")


@dataclass(frozen=True)
class Choice:
    values: tuple[Any, ...]

    def __post_init__(self) -> None:
        if len(self.values) == 0:
            raise ValueError("empty range: Choice() needs at least one value")


Dimension = Uniform | LogUniform | IntUniform | Choice
