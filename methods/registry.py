"""Name → class table for methods. Each method file registers itself with ``@register``."""

from __future__ import annotations

import dataclasses
from typing import Any

from methods.base import Method

_REGISTRY: dict[str, type[Method]] = {}


def register(name: str):
    """Class decorator: make a method available as ``methods.create(name, ...)``."""

    def deco(cls: type[Method]) -> type[Method]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise RuntimeError(f"method name {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available() -> list[str]:
    """Every registered method name, sorted."""
    return sorted(_REGISTRY)


def get_class(name: str) -> type[Method]:
    """The class registered under ``name``; ``ValueError`` listing valid names otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(available())}")
    return _REGISTRY[name]


#: hyperparameters every method takes, beside its own Config's
COMMON_HPARAMS: dict[str, Any] = {"loss_transform": "none"}


def hparam_fields(name: str) -> dict[str, Any]:
    """{hyperparameter: default} of a method: its ``Config`` dataclass's fields and the
    common ``loss_transform`` (``"none"`` | ``"log"``, see ``Method.prepare_losses``)."""
    cls = get_class(name)
    own = {
        f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())  # type: ignore[misc]
        for f in dataclasses.fields(cls.Config)
    }
    return {**own, **COMMON_HPARAMS}


def make_config(name: str, **hparams: Any):
    """Build and validate a method's Config, rejecting unknown hyperparameter names."""
    cls = get_class(name)
    valid = hparam_fields(name)
    unknown = sorted(set(hparams) - set(valid))
    if unknown:
        listed = ", ".join(valid) if valid else "(none)"
        raise ValueError(
            f"unknown hyperparameter(s) {unknown} for method {name!r}; valid: {listed}"
        )
    return cls.Config(**{k: v for k, v in hparams.items() if k not in COMMON_HPARAMS})


def create(name: str, num_tasks: int, *, seed: int = 0, **hparams: Any) -> Method:
    """Build method ``name`` for ``num_tasks`` tasks; hyperparameters are validated here."""
    cls = get_class(name)
    method = cls(num_tasks, make_config(name, **hparams), seed=seed)
    method.set_loss_transform(hparams.get("loss_transform", COMMON_HPARAMS["loss_transform"]))
    return method
