"""The unambiguous import path of mtlx's packages: ``from mtlx import methods, envs``.

``methods`` and ``envs`` are also top-level packages of other research code (nash-mtl,
FAMO); whichever comes first on ``sys.path`` would win ``import methods``. Importing
:mod:`mtlx` loads mtlx's own ``methods`` and ``envs`` by file location (unless they are
already imported) and registers them under their usual names, so ``mtlx.methods is
methods``, ``import mtlx.methods.engine`` is ``methods.engine``, and the rest of mtlx
(``orchestrator``) sees the same module objects. If another ``methods``/``envs`` was imported
before, :class:`orchestrator.packages.ShadowedPackageError` names it and the fix.

>>> from mtlx import methods
>>> m = methods.create("cagrad", num_tasks=3, c=0.4)
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

_REPO = Path(__file__).resolve().parent.parent
_OWN = ("methods", "envs")


def _load_own(name: str) -> ModuleType:
    """``sys.modules[name]``, or mtlx's own package of that name loaded from its file."""
    if name in sys.modules:
        return sys.modules[name]
    init = _REPO / name / "__init__.py"
    spec = importlib.util.spec_from_file_location(name, init,
                                                  submodule_search_locations=[str(init.parent)])
    if spec is None or spec.loader is None:
        raise ImportError(f"mtlx's package {name!r} is missing: no {init}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``mtlx.methods.X`` → the module ``methods.X`` itself (never a second copy)."""

    def find_spec(self, fullname, path=None, target=None):
        head, _, rest = fullname.partition(".")
        if head != "mtlx" or rest.split(".")[0] not in _OWN or "." not in rest:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return None  # a placeholder, replaced in sys.modules by the real module below

    def exec_module(self, module):
        sys.modules[module.__name__] = importlib.import_module(module.__name__[len("mtlx."):])


os.environ["MTLX_OWN_PACKAGES"] = "1"  # processes started from here (Ray workers) do the same
methods = _load_own("methods")
envs = _load_own("envs")

from orchestrator.packages import check_own_packages  # noqa: E402  (after loading our own)

check_own_packages()
sys.modules["mtlx.methods"], sys.modules["mtlx.envs"] = methods, envs
if not any(isinstance(f, _Alias) for f in sys.meta_path):
    sys.meta_path.insert(0, _Alias())



def main(argv: list[str] | None = None) -> int:
    """The ``mtlx`` command (:func:`orchestrator.cli.main`) with mtlx's own packages."""
    from orchestrator.cli import main as cli_main

    return cli_main(argv)


__all__ = ["envs", "main", "methods"]
