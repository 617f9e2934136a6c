"""mtlx benchmarks: datasets in their published on-disk formats, models with an explicit
shared/task-specific split, losses, metrics, single-task references and protocols.

Each benchmark lives in one module (or subpackage) of this package and registers itself.

Test fixtures: tests never download anything. A benchmark that reads a root is tested on a
tiny fixture written in the *published* layout (same folders, names, dtypes and per-item
shapes; few items) by a writer in ``envs/fixtures_<family>.py`` (``fixtures_dense`` for
NYUv2/Cityscapes, ``fixtures_more`` for CelebA/Office/QM9), deterministic in (directory,
seed); tests compute expectations from the arrays written, never from hard-coded numbers.
``multi_digits`` and ``toy`` need no fixture (their data ship with the code)."""

import importlib as _importlib
import pkgutil as _pkgutil

from envs.base import (
    Benchmark,
    Evaluator,
    Forward,
    Metric,
    MTLModel,
    Protocol,
    available,
    create,
    get_class,
    register,
)

_SKIP = {"base", "metrics", "models", "data"}
for _mod in _pkgutil.iter_modules(__path__):
    # fixture writers (tests only) register nothing: keep them off every run's import path
    if _mod.name not in _SKIP and not _mod.name.startswith(("_", "fixtures")):
        _importlib.import_module(f"envs.{_mod.name}")

__all__ = [
    "Benchmark",
    "Evaluator",
    "Forward",
    "MTLModel",
    "Metric",
    "Protocol",
    "available",
    "create",
    "get_class",
    "register",
]
