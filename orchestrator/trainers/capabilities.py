"""What a supervised run's method × benchmark capabilities decide, checked in the driver
before Ray starts (``Trainer.validate`` of the supervised trainer): the protocol's required
settings, batch sharding over workers, model selection on validation, the data root, model
options, required model features, the gradient level against the model's shared
representation and multi-input data, the head-update rule, and distributed exactness."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import envs
import methods
from methods.engine import effective_level, resolve_level, validate_head_update
from orchestrator.config import STL, ConfigError, RunConfig
from orchestrator.trainers.base import data_hint


def validate(runs: Sequence[RunConfig], bench: envs.Benchmark) -> None:
    """Raise ``ConfigError`` for the first run of ``runs`` that ``bench`` cannot train as asked
    (see the module docstring; called by ``orchestrator.run.plan.expand``)."""
    r0 = runs[0]
    t = r0.train
    name = r0.benchmark
    for key in ("epochs", "batch_size", "optimizer", "lr"):
        if getattr(t, key) is None:
            raise ConfigError(f"train.{key} is not set and benchmark {name!r}'s protocol has no "
                              f"value for it; fix: pass train.{key}=...")
    W = r0.world_size
    if t.batch_size % W:
        raise ConfigError(
            f"batch_size={t.batch_size} is not divisible by workers={W}: each worker takes "
            f"batch_size/workers samples of every global batch; fix: a batch size that is a "
            f"multiple of {W}, or another number of workers"
        )
    selection = t.selection or "last"
    if selection == "best_val" and "val" not in bench.splits:
        raise ConfigError(
            f"selection=best_val needs a validation split, but {name!r} has splits "
            f"{list(bench.splits)}; fix: train.selection=last (or a benchmark option that holds "
            "out a validation split); model selection never uses test"
        )
    try:  # opens the data: a missing or malformed root is reported here
        steps = {len(bench.make_loader("train", t.batch_size // W, shuffle=True, seed=0, rank=r,
                                       world_size=W)) for r in range(W)}
    except (ValueError, OSError) as e:
        raise ConfigError(data_hint(name, r0.data_root, e)) from None
    if len(steps) > 1:
        raise ConfigError(
            f"{name!r}'s training loader gives the {W} ranks different numbers of batches "
            f"{sorted(steps)}; every rank must take the same steps (fix the benchmark's "
            "make_loader: envs._sampling.ShardedBatchSampler pads), or use workers=1"
        )
    try:
        model = bench.build_model(**r0.model_options)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model_options {r0.model_options} rejected by {name!r}: {e}") from None
    features = frozenset(getattr(model, "features", ()))
    task_forward = "task_batchnorm" in features
    if task_forward and "task" not in inspect.signature(bench.forward_losses).parameters:
        raise ConfigError(
            f"{name!r}'s model offers 'task_batchnorm' but its forward_losses(model, batch) takes "
            "no task= argument, so per-task forward passes are impossible; fix the benchmark "
            "(forward_losses(model, batch, task=None))"
        )
    has_rep, why = _representation(bench, features)
    seen = set()
    for r in runs:
        if r.method != STL and r.method not in seen:
            seen.add(r.method)
            _check_method(r, bench, features, has_rep, why)


def _check_method(r: RunConfig, bench: envs.Benchmark, features: frozenset[str], has_rep: bool,
                  why: str) -> None:
    """A method's capabilities against the model (features, representation) and the workers."""
    t, name, W = r.train, r.benchmark, r.world_size
    m = methods.create(r.method, len(bench.tasks), seed=0, **r.hparams)
    missing = [f for f in m.requires_model if f not in features]
    if missing:
        raise ConfigError(
            f"method {r.method!r} needs a model with {missing} (e.g. 'task_batchnorm' = "
            f"per-task BatchNorm in the shared trunk), but {name!r}'s model offers "
            f"{sorted(features) or 'nothing'}; fix: choose a benchmark/model option that "
            "provides it, or another method"
        )
    level = effective_level(m, t.level)
    if level == "rep" and m.requires_grads and m.supports_rep_grads and not has_rep:
        raise ConfigError(
            f"method {r.method!r} at level 'rep' needs a single shared representation, but "
            f"{name!r} {why}; fix: train.level=param"
            + (" (or a method without a rep-level default)" if t.level == "auto" else "")
        )
    try:
        resolve_level(m, level, True)
        validate_head_update(m, t.head_update)
    except ValueError as e:
        raise ConfigError(f"method {r.method!r}: {e} (train.level / train.head_update)") from None
    if W > 1 and level == "rep" and m.requires_grads and not m.gramian_only:
        raise ConfigError(
            f"method {r.method!r} at level 'rep' is not exact across {W} workers (its "
            "weights need more than the Gramian of representation gradients); fix: "
            "train.level=param, or workers=1"
        )


def _representation(bench: envs.Benchmark, features: frozenset[str]) -> tuple[bool, str]:
    if bench.multi_input:
        return False, "is multi-input (each task has its own batch, so no shared representation)"
    if "task_batchnorm" in features:
        return False, "has a model with per-task BatchNorm (a different representation per task)"
    if "representation" not in features:
        return False, "has a model without a single shared representation tensor"
    return True, ""
