"""Which ``methods`` and ``envs`` packages Python imports: mtlx's own, or a shadow.

``methods`` and ``envs`` are also the top-level package names of other research code (the
nash-mtl and FAMO repositories, installed with ``pip install -e .`` next to mtlx to compare
against). Whichever comes first on ``sys.path`` wins, silently; ``import orchestrator`` (and
so the ``mtlx`` command) calls :func:`check_own_packages`, which fails with the shadowing file
and the fix instead. ``from mtlx import methods, envs`` (the :mod:`mtlx` package) loads mtlx's
own by file location, whatever ``sys.path`` says.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

#: the directory that holds mtlx's ``methods/``, ``envs/`` and ``orchestrator/``
REPO = Path(__file__).resolve().parents[1]
#: the packages mtlx must import from itself
OWN = ("methods", "envs")


class ShadowedPackageError(ImportError):
    """``methods`` or ``envs`` resolves to another project's package, not mtlx's."""


def origin(name: str) -> Path | None:
    """The ``__init__.py`` that ``import name`` uses (the imported module's, or the one the
    import system would find; nothing is imported), None if there is none."""
    module = sys.modules.get(name)
    if module is not None:
        file = getattr(module, "__file__", None)
        return Path(file).resolve() if file else None
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin).resolve() if spec is not None and spec.origin else None


def check_own_packages() -> None:
    """Raise :class:`ShadowedPackageError` unless ``methods`` and ``envs`` are mtlx's own."""
    for name in OWN:
        expected = (REPO / name / "__init__.py").resolve()
        found = origin(name)
        if found == expected:
            continue
        where = "was already imported from" if name in sys.modules else "resolves to"
        raise ShadowedPackageError(
            f"`import {name}` {where} {found or 'nothing'}, not mtlx's {expected}: another "
            f"package named {name!r} (e.g. the nash-mtl or FAMO repository installed next to "
            "mtlx) comes first on sys.path. Fix: run `python -m mtlx ...` or `import mtlx` "
            "first in your script (it loads mtlx's own methods and envs by file location and "
            "exposes them as mtlx.methods / mtlx.envs), or put "
            f"{REPO} before {found.parent.parent if found else 'the other package'} on "
            "sys.path (PYTHONPATH), or uninstall the other package."
        )
