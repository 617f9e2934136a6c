"""mtlx benchmarks: datasets in their published on-disk formats, models with an explicit
shared/task-specific split, losses, metrics, single-task references and protocols.

Each benchmark lives in one module (or subpackage) of this package and registers itself.

Test fixtures: tests never download anything. A benchmark that reads a root is tested on a
tiny fixture written in the *published* layout by a writer in the ``envs.fixtures``
subpackage (not imported by ``import envs``; see its docstring)."""

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

_SKIP = {"base", "metrics", "models", "fixtures"}
for _mod in _pkgutil.iter_modules(__path__):
    # fixture writers register nothing: keep them off every run's import path
    if _mod.name not in _SKIP and not _mod.name.startswith("_"):
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
