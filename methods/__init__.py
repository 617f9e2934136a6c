"""mtlx methods: pure-torch MTL methods and the per-task gradient engine.

>>> import methods
>>> m = methods.create("cagrad", num_tasks=3, c=0.4)
>>> methods.available()  # doctest: +ELLIPSIS
[...]

Every method lives in one file of this package, named after it, and registers itself.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from methods.base import (
    Aggregation,
    GramianMethod,
    LossWeighting,
    Method,
    StepContext,
)
from methods.engine import StepResult, after_step, backward
from methods.registry import available, create, get_class, hparam_fields, register

# Import every method module so that its @register runs (no hand-kept list to forget).
_SKIP = {"base", "registry", "space", "engine", "solvers"}
for _mod in _pkgutil.iter_modules(__path__):
    if _mod.name not in _SKIP and not _mod.name.startswith("_"):
        _importlib.import_module(f"methods.{_mod.name}")

__all__ = [
    "Aggregation",
    "GramianMethod",
    "LossWeighting",
    "Method",
    "StepContext",
    "StepResult",
    "after_step",
    "available",
    "backward",
    "create",
    "get_class",
    "hparam_fields",
    "register",
]
