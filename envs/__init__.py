"""mtlx benchmarks: datasets in their published on-disk formats, models with an explicit
shared/task-specific split, losses, metrics, single-task references and protocols.

Each benchmark lives in one module (or subpackage) of this package and registers itself."""

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

_SKIP = {"base", "metrics", "fixtures", "models", "data"}
for _mod in _pkgutil.iter_modules(__path__):
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
