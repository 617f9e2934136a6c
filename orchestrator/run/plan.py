"""Planning a run: an :class:`ExperimentConfig` → checked :class:`RunConfig` s → what to run.

Everything that can be known before training is checked here, in the driver, before any Ray
process starts: names (benchmark, methods, config keys), hyperparameters (through
``methods.create``, which validates each method's ``Config``; a benchmark's
``method_hparams`` — its reference runs' settings — apply unless the user sets them, and are
resolved before run ids are hashed), ranges of the training settings, the data root (the
benchmark is built and its train loader opened), and the method × benchmark capability
matrix, which the trainer of the benchmark's ``kind`` checks (``Trainer.validate``; for
supervised benchmarks: required model features, gradient level vs. the model's shared
representation and multi-input data, head-update rule, distributed exactness). Each error
is a :class:`ConfigError` that says how to fix it. :func:`plan` then splits the runs into
those to execute and finished ones to skip.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import envs
import methods
from orchestrator.config import (
    STL,
    ConfigError,
    ExperimentConfig,
    RunConfig,
    TrainConfig,
)
from orchestrator.results import ResultsStore
from orchestrator.run.registry import import_plugins, trainer_for
from orchestrator.trainers.base import data_hint

#: run statuses that are not repeated (``nonfinite``, ``diverged``: a deterministic rerun
#: would fail the same way); ``rerun=True`` clears and repeats them
FINAL = ("finished", "nonfinite", "diverged")


def open_benchmark(name: str, data_root: str | None, options: dict[str, Any]) -> envs.Benchmark:
    """``envs.create`` with errors turned into fixes (unknown name, options, data root)."""
    try:
        envs.get_class(name)
    except ValueError as e:
        raise ConfigError(f"{e} (fix: --benchmark NAME; `mtlx benchmarks` lists them)") from None
    try:
        return envs.create(name, root=data_root, **options)
    except (ValueError, TypeError, OSError) as e:
        raise ConfigError(data_hint(name, data_root, e)) from None


def resolve_path(path: str | None) -> str | None:
    """An absolute path (``~`` expanded; relative to the current directory), None for None:
    Ray workers change directory, so every path a run carries is absolute."""
    return None if path is None else str(Path(path).expanduser().resolve())


def resolve_train(train: TrainConfig, protocol: Any) -> TrainConfig:
    """Fill ``None`` fields from the benchmark protocol: every :class:`TrainConfig` field that
    the protocol dataclass also has (fields it lacks stay ``None``)."""
    values = dataclasses.asdict(train)
    given = {f.name for f in dataclasses.fields(protocol)} if dataclasses.is_dataclass(protocol) \
        else set(vars(protocol))
    for name, value in values.items():
        if value is None and name in given:
            values[name] = getattr(protocol, name)
    return TrainConfig(**values)


def check_train(t: TrainConfig) -> None:
    """Range checks of every set field of a resolved :class:`TrainConfig`, as each field
    declares them (``valid`` in its metadata)."""
    for f in dataclasses.fields(TrainConfig):
        v = getattr(t, f.name)
        what = None if v is None else f.metadata["valid"].problem(v)
        if what is not None:
            raise ConfigError(
                f"train.{f.name} must be {what}, got {v!r} "
                f"(fix: pass train.{f.name}=... or leave it unset for the protocol's value)"
            )


def check_resources(exp: ExperimentConfig) -> None:
    if exp.workers < 0:
        raise ConfigError(f"workers must be >= 0, got {exp.workers} (0: in-process, 1: Ray "
                          "tasks, W >= 2: Ray Train with W workers)")
    if exp.cpus_per_worker < 1:
        raise ConfigError(f"cpus_per_worker must be >= 1, got {exp.cpus_per_worker}")
    if not (exp.gpus_per_worker >= 0 and math.isfinite(exp.gpus_per_worker)):
        raise ConfigError(f"gpus_per_worker must be >= 0, got {exp.gpus_per_worker}")
    if exp.workers >= 2 and 0 < exp.gpus_per_worker < 1:
        raise ConfigError(
            f"gpus_per_worker={exp.gpus_per_worker} with workers={exp.workers}: distributed "
            "(NCCL) workers need whole GPUs; fix: gpus_per_worker=1, or workers=1 to pack "
            "several single-process runs on one GPU"
        )
    if exp.workers == 0 and exp.gpus_per_worker > 0:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("gpus_per_worker > 0 with workers=0 needs a CUDA device in this "
                              "process; none is visible (fix: gpus_per_worker=0, or run on a "
                              "GPU machine / with workers >= 1 on a GPU cluster)")
    if exp.max_concurrent is not None and exp.max_concurrent < 1:
        raise ConfigError(f"max_concurrent must be >= 1, got {exp.max_concurrent}")
    if exp.max_failures < -1:
        raise ConfigError(f"max_failures must be >= -1 (-1 = unlimited), got {exp.max_failures}")


def _check_names(exp: ExperimentConfig) -> None:
    if not exp.methods:
        raise ConfigError("methods is empty; fix: --methods ew,pcgrad (`mtlx methods` lists them)")
    if len(set(exp.methods)) != len(exp.methods):
        raise ConfigError(f"methods lists a name twice: {exp.methods}")
    for name in exp.methods:
        if name == STL:
            continue
        try:
            methods.get_class(name)
        except ValueError as e:
            raise ConfigError(f"{e} (or '{STL}' for single-task baselines)") from None
    stray = sorted(set(exp.hparams) - set(exp.methods))
    if stray:
        raise ConfigError(
            f"hparams given for {stray}, which are not in methods {exp.methods}; fix: add them "
            "to methods or remove their hparams"
        )
    if not exp.seeds:
        raise ConfigError("seeds is empty; fix: --seeds 0,1,2")
    if len(set(exp.seeds)) != len(exp.seeds) or any(s < 0 for s in exp.seeds):
        raise ConfigError(f"seeds must be distinct non-negative integers, got {exp.seeds}")


def expand(exp: ExperimentConfig, workdir: str | None = None) -> list[RunConfig]:
    """Validate ``exp`` completely and return its runs (one per method × seed, STL: × task)."""
    workdir = workdir or os.getcwd()
    import_plugins(exp.plugins, workdir)
    check_resources(exp)
    _check_names(exp)
    data_root = resolve_path(exp.data_root or None)
    bench = open_benchmark(exp.benchmark, data_root, exp.bench_options)
    train = resolve_train(exp.train, bench.protocol)
    check_train(train)
    num_tasks = len(bench.tasks)
    out = resolve_path(exp.out)
    common = dict(
        benchmark=exp.benchmark, data_root=data_root, bench_options=dict(exp.bench_options),
        model_options=dict(exp.model_options), trainer_options=dict(exp.trainer_options),
        train=train, workers=exp.workers, gpus_per_worker=exp.gpus_per_worker,
        cpus_per_worker=exp.cpus_per_worker, out=out, plugins=list(exp.plugins),
        workdir=workdir,
    )  # fmt: skip
    runs = []
    for name in exp.methods:
        if name == STL:
            runs += [RunConfig(method=STL, seed=s, stl_task=t, **common)
                     for t in bench.tasks for s in exp.seeds]
            continue
        # the benchmark's reference-run hyperparameters (``method_hparams``, e.g. CAGrad's c on
        # MT10), then the user's: resolved before the run id is hashed
        hp = {**bench.method_hparams.get(name, {}), **exp.hparams.get(name, {})}
        try:
            m = methods.create(name, num_tasks, **hp)
        except ValueError as e:
            raise ConfigError(f"{e} (fix: hparams.{name}.<name>=<value>)") from None
        runs += [RunConfig(method=name, seed=s, hparams=m.hparams(), **common) for s in exp.seeds]
    try:
        trainer_for(bench).validate(runs, bench)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if len({r.run_id for r in runs}) != len(runs):
        raise ConfigError(f"two runs of this experiment have the same id: {[r.run_id for r in runs]}")
    return runs


def plan(exp: ExperimentConfig, workdir: str | None = None) -> tuple[list[RunConfig], list[RunConfig]]:
    """(runs to execute, finished runs to skip); validates everything first."""
    runs = expand(exp, workdir)
    store = ResultsStore(runs[0].out)
    todo, done = [], []
    for r in runs:
        row = store.read_run(r.run_id)
        if row is not None and row["status"] in FINAL and not exp.rerun:
            done.append(r)
        else:
            todo.append(r)
    return todo, done
