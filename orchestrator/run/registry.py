"""The trainers by benchmark kind, and user plugins.

``envs.Benchmark.kind`` names the trainer a benchmark needs; this is the one table that maps
kinds to :class:`~orchestrator.trainers.base.Trainer` objects. Plugins (the ``plugins``
config key: modules imported before anything is validated) may register methods, benchmarks
and, for a new kind of benchmark, its trainer with :func:`register_trainer`.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

import envs
from orchestrator.config import ConfigError
from orchestrator.trainers import rl, supervised
from orchestrator.trainers.base import Trainer

_TRAINERS: dict[str, Trainer] = {t.kind: t for t in (supervised.TRAINER, rl.TRAINER)}


def register_trainer(trainer: Trainer) -> Trainer:
    """Make ``trainer`` the trainer of benchmarks whose ``kind`` is ``trainer.kind``."""
    current = _TRAINERS.get(trainer.kind)
    if current is not None and current is not trainer:
        raise RuntimeError(f"a trainer for benchmark kind {trainer.kind!r} is already registered")
    _TRAINERS[trainer.kind] = trainer
    return trainer


def trainer_for(bench: envs.Benchmark | type[envs.Benchmark]) -> Trainer:
    """The trainer of a benchmark (instance or class), by its declared ``kind``."""
    kind = bench.kind
    if kind not in _TRAINERS:
        raise ConfigError(f"benchmark {bench.name!r} is of kind {kind!r}, which no trainer "
                          f"handles (known kinds: {sorted(_TRAINERS)}); fix: a plugin that "
                          "calls orchestrator.run.registry.register_trainer")
    return _TRAINERS[kind]


def import_plugins(plugins: Sequence[str], workdir: str | None = None) -> None:
    """Import user modules that register methods or benchmarks (``plugins`` key)."""
    if workdir and workdir not in sys.path:
        sys.path.insert(0, workdir)
    for name in plugins:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(
                f"plugin module {name!r} could not be imported ({e}); fix: make it importable "
                "from the current directory or PYTHONPATH, or remove it from plugins"
            ) from None
