"""Multi-task architectures as their own axis: LibMTL's eight, on any benchmark whose
encoder allows them (docs/architectures.md).

A benchmark that supports them describes its model as an :class:`ArchSpec`
(``bench.architecture_spec(**model_options)``) and accepts ``arch=<name>`` (plus that
architecture's options) in ``build_model``; ``arch`` unset or ``"hps"`` is the benchmark's
own hard-parameter-sharing model, unchanged. ::

    bench = envs.create("multi_digits")
    model = bench.build_model(arch="mmoe", num_experts=4)
    envs.architectures.describe(bench)      # which architectures apply, parameter counts

Only HPS has a single shared representation; every other architecture declares no
``"representation"`` feature, so representation-level methods are refused for it before
training (docs/architectures.md §Representation).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from envs.architectures.base import ArchModel, ArchSpec, outputs_and_rep
from envs.architectures.columns import LTB, CrossStitch
from envs.architectures.hps import HPS
from envs.architectures.mixture import CGC, DSelectK, MMoE
from envs.architectures.mtan import MTAN
from envs.architectures.ple import PLE

#: LibMTL's order (its README table)
_CLASSES: dict[str, type[ArchModel]] = {
    c.name: c for c in (HPS, CrossStitch, MMoE, MTAN, CGC, PLE, DSelectK, LTB)
}
#: model options that belong to architectures (a benchmark passes them on)
OPTION_NAMES = frozenset(k for c in _CLASSES.values() for k in c.options)

_WHY = {
    "stages": "its encoder is not split into stages (a stem and blocks)",
    "resnet": "its encoder is not a ResNet (LibMTL's MTAN supports ResNet encoders only)",
    "input_shape": "its input is not one fixed-shape tensor per sample (the gates read the "
                   "flattened input)",
    "single_input": "it is multi-input (LibMTL supports this architecture for single-input "
                    "problems only)",
}


def available() -> list[str]:
    """Every architecture name, in LibMTL's order."""
    return list(_CLASSES)


def get_class(name: str) -> type[ArchModel]:
    if name not in _CLASSES:
        raise ValueError(f"unknown architecture {name!r}; choose one of: {', '.join(_CLASSES)}")
    return _CLASSES[name]


def unmet(name: str, spec: ArchSpec) -> str | None:
    """Why architecture ``name`` does not apply to ``spec`` (None if it does)."""
    have = {
        "stages": spec.stages is not None,
        "resnet": spec.resnet is not None,
        "input_shape": spec.input_shape is not None,
        "single_input": not spec.multi_input,
    }
    missing = [_WHY[n] for n in sorted(get_class(name).needs) if not have[n]]
    return "; ".join(missing) or None


def accepted(spec: ArchSpec) -> list[str]:
    """The architectures that apply to ``spec``."""
    return [n for n in _CLASSES if unmet(n, spec) is None]


def split_options(model_options: Mapping[str, Any]) -> tuple[str | None, dict, dict]:
    """``(arch, architecture options, the benchmark's own options)``."""
    opts = dict(model_options)
    arch = opts.pop("arch", None)
    if arch is not None and not isinstance(arch, str):
        raise ValueError(f"arch must be a string, one of {available()}; got {arch!r}")
    arch_opts = {k: opts.pop(k) for k in sorted(OPTION_NAMES & set(opts))}
    return arch, arch_opts, opts


def check_option_names(benchmark: str, options: Mapping[str, Any], own: list[str]) -> None:
    """``ValueError`` for model options that are neither the benchmark's (``own``) nor an
    architecture's, naming every valid one."""
    unknown = sorted(set(options) - OPTION_NAMES - set(own) - {"arch"})
    if unknown:
        raise ValueError(
            f"unknown model option(s) {unknown} for {benchmark}; valid: {', '.join(own)}, "
            f"arch (one of {', '.join(_CLASSES)}) and its options "
            f"({', '.join(sorted(OPTION_NAMES))})"
        )


def build(name: str, spec: ArchSpec, **options: Any) -> ArchModel:
    """Architecture ``name`` built from ``spec``; ``ValueError`` if it does not apply or an
    option is unknown (naming the valid choices), before any module is built."""
    cls = get_class(name)
    why = unmet(name, spec)
    if why is not None:
        raise ValueError(
            f"architecture {name!r} does not apply to benchmark {spec.benchmark!r}: {why}; "
            f"it accepts: {', '.join(accepted(spec))}"
        )
    unknown = sorted(set(options) - set(cls.options))
    if unknown:
        valid = ", ".join(cls.options) or "(none)"
        raise ValueError(f"unknown option(s) {unknown} for architecture {name!r}; valid: {valid}")
    return cls(spec, **options)


def _count(params) -> int:
    return sum(p.numel() for p in params)


def describe(bench: Any, arch_options: Mapping[str, Mapping[str, Any]] | None = None,
             **model_options: Any) -> list[dict[str, Any]]:
    """One row per architecture for benchmark ``bench``: whether it applies (and why not),
    its options, and its total / shared / task-specific parameter counts. Models are built
    on the meta device (even ResNet-50 mixtures cost no memory) with the benchmark's own
    ``model_options`` (``width`` ...) and, per architecture, ``arch_options[name]``
    (defaults otherwise), e.g. ``arch_options={"mmoe": {"num_experts": 2}}``."""
    arch_options = dict(arch_options or {})
    stray = sorted(set(arch_options) - set(_CLASSES))
    if stray:
        raise ValueError(f"arch_options for unknown architecture(s) {stray}; choose from "
                         f"{', '.join(_CLASSES)}")
    spec_of = getattr(bench, "architecture_spec", None)
    spec, none_apply = None, "the benchmark does not describe its model as parts"
    if spec_of is not None:
        try:
            spec = spec_of(**model_options)
        except ValueError as e:  # e.g. a model choice the architectures do not apply to
            none_apply = str(e)
    rows = []
    for name, cls in _CLASSES.items():
        opts = dict(arch_options.get(name, {}))
        row: dict[str, Any] = {"arch": name, "title": cls.title, "paper": cls.paper,
                               "options": {**cls.options, **opts}}
        why = none_apply if spec is None else unmet(name, spec)
        row["accepted"] = why is None
        row["reason"] = why or ""
        if why is None:
            previous = logging.root.manager.disable
            logging.disable(logging.WARNING)  # random-init warnings of every expert copy
            try:
                with torch.device("meta"):
                    model = bench.build_model(arch=name, **model_options, **opts)
            finally:
                logging.disable(previous)
            shared = _count(model.shared_parameters())
            total = _count(model.parameters())
            row.update(parameters=total, shared=shared, task_specific=total - shared,
                       representation="shared" if "representation" in model.features
                       else "per task")
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """``describe()`` rows as a fixed-width text table (for a CLI listing)."""
    lines = [f"{'arch':<13} {'parameters':>12} {'shared':>12} {'task-specific':>13}  "
             "representation"]
    for r in rows:
        if r["accepted"]:
            lines.append(f"{r['arch']:<13} {r['parameters']:>12,} {r['shared']:>12,} "
                         f"{r['task_specific']:>13,}  {r['representation']}")
        else:
            lines.append(f"{r['arch']:<13} {'-':>12} {'-':>12} {'-':>13}  "
                         f"not applicable: {r['reason']}")
    return "\n".join(lines)


__all__ = [
    "CGC", "HPS", "LTB", "MMoE", "MTAN", "OPTION_NAMES", "PLE", "ArchModel", "ArchSpec",
    "CrossStitch", "DSelectK", "accepted", "available", "build", "check_option_names",
    "describe", "format_table",
    "get_class", "outputs_and_rep", "split_options", "unmet",
]
