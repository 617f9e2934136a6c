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
import difflib
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import envs
import methods
from orchestrator.config import (
    STL,
    TRACKERS,
    ConfigError,
    ExperimentConfig,
    RunConfig,
    StorageConfig,
    TrainConfig,
)
from orchestrator.results import ResultsStore
from orchestrator.results.storage import (
    check_reachable,
    is_local,
    resolve_location,
    resolve_options,
)
from orchestrator.run.registry import import_plugins, trainer_for
from orchestrator.trackers import resolve as resolve_trackers
from orchestrator.trainers.base import data_hint

#: run statuses that are not repeated (``nonfinite``, ``diverged``: a deterministic rerun
#: would fail the same way); ``rerun=True`` clears and repeats them
FINAL = ("finished", "nonfinite", "diverged")


def did_you_mean(name: str, choices: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices`` (case-insensitive first, then
    difflib's ratio ≥ 0.6), or ``""``."""
    by_case = [c for c in choices if c.lower() == name.lower()]
    close = by_case or difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def open_benchmark(name: str, data_root: str | None, options: dict[str, Any]) -> envs.Benchmark:
    """``envs.create`` with errors turned into fixes (unknown name, options, data root)."""
    try:
        envs.get_class(name)
    except ValueError as e:
        raise ConfigError(f"{e}{did_you_mean(name, envs.available())} (fix: --benchmark NAME; "
                          "`mtlx benchmarks` lists them)") from None
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


def check_storage(s: StorageConfig) -> None:
    """Range checks of the storage options, as each field declares them."""
    for f in dataclasses.fields(StorageConfig):
        v = getattr(s, f.name)
        valid = f.metadata["valid"]
        what = None if v is None or valid is None else valid.problem(v)
        if what is not None:
            raise ConfigError(f"storage.{f.name} must be {what}, got {v!r} (fix: "
                              f"--storage-option {f.name}=... or leave it unset)")


def check_resources(exp: ExperimentConfig) -> None:
    if exp.workers < 0:
        raise ConfigError(f"workers must be >= 0, got {exp.workers} (0: in-process, 1: Ray "
                          "tasks, W >= 2: Ray Train with W workers)")
    if exp.cpus_per_worker < 1:
        raise ConfigError(f"cpus_per_worker must be >= 1, got {exp.cpus_per_worker}; fix: "
                          "--cpus-per-worker 1 (the default)")
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
        raise ConfigError(f"max_concurrent must be >= 1, got {exp.max_concurrent}; fix: leave "
                          "it unset (as many as the resources allow) or pass N >= 1")
    if exp.max_failures is not None and exp.max_failures < -1:
        raise ConfigError(f"max_failures must be >= -1 (-1 = unlimited), got {exp.max_failures}"
                          "; fix: leave it unset (auto), 0 (no retry) or N >= 1")
    timeout = exp.resource_timeout
    if timeout is not None and not (math.isfinite(timeout) and timeout >= 0):
        raise ConfigError(f"resource_timeout must be a number of seconds >= 0, got {timeout}; "
                          "fix: --resource-timeout 600, or leave it unset to wait")


def _check_names(exp: ExperimentConfig) -> None:
    if not exp.methods:
        raise ConfigError("methods is empty; fix: --methods ew,pcgrad (`mtlx methods` lists them)")
    if len(set(exp.methods)) != len(exp.methods):
        raise ConfigError(f"methods lists a name twice: {exp.methods}; fix: list each once")
    for name in exp.methods:
        if name == STL:
            continue
        try:
            methods.get_class(name)
        except ValueError as e:
            raise ConfigError(f"{e} (or '{STL}' for single-task baselines)"
                              f"{did_you_mean(name, methods.available())}") from None
    stray = sorted(set(exp.hparams) - set(exp.methods))
    if stray:
        raise ConfigError(
            f"hparams given for {stray}, which are not in methods {exp.methods}; fix: add them "
            "to methods or remove their hparams"
        )
    if not exp.seeds:
        raise ConfigError("seeds is empty; fix: --seeds 0,1,2")
    if len(set(exp.seeds)) != len(exp.seeds) or any(s < 0 for s in exp.seeds):
        raise ConfigError(f"seeds must be distinct non-negative integers, got {exp.seeds}; "
                          "fix: e.g. --seeds 0,1,2")


def check_trackers(exp: ExperimentConfig, out: str) -> dict[str, dict[str, Any]]:
    """{tracker: resolved options} of ``exp.trackers``: known names (did you mean), each once,
    options in range, the package installed ("pip install 'mtlx[NAME]'") and the store usable
    — all before Ray starts (``ConfigError`` naming the fix)."""
    for name in exp.trackers:
        if name not in TRACKERS:
            raise ConfigError(f"unknown tracker {name!r}{did_you_mean(name, TRACKERS)}; valid "
                              f"trackers: {', '.join(TRACKERS)} (fix: --tracker NAME)")
    if len(set(exp.trackers)) != len(exp.trackers):
        raise ConfigError(f"trackers lists a name twice: {exp.trackers}; fix: list each once")
    options = {}
    for section in dataclasses.fields(exp.tracker_options):
        opts = getattr(exp.tracker_options, section.name)
        for f in dataclasses.fields(opts):
            v, rule = getattr(opts, f.name), f.metadata["valid"]
            what = None if v is None or rule is None else rule.problem(v)
            if what is not None:
                raise ConfigError(f"tracker_options.{section.name}.{f.name} must be {what}, "
                                  f"got {v!r} (fix: --tracker-option {section.name}.{f.name}=...)")
        options[section.name] = dataclasses.asdict(opts)
    if not exp.trackers:
        return {}
    if is_local(out):
        check_out(out)  # the trackers' default locations are under --out
    else:  # tracker stores are local files or their own servers, never object storage
        unset = [f"tracker_options.{n}.{TRACKER_LOCATIONS[n]}" for n in exp.trackers
                 if options[n].get(TRACKER_LOCATIONS[n]) is None]
        if unset:
            raise ConfigError(
                f"--out {out} is object storage, where the trackers cannot keep their files "
                f"(SQLite, event files, W&B run files); fix: set {', '.join(unset)} (e.g. "
                "--tracker-option mlflow.tracking_uri=http://host:5000, or a local directory)")
    return resolve_trackers(exp.trackers, options, out, exp.benchmark)


#: the option of each tracker that says where its records go (default: under --out)
TRACKER_LOCATIONS = {"mlflow": "tracking_uri", "tensorboard": "log_dir", "wandb": "dir"}


def expand(exp: ExperimentConfig, workdir: str | None = None) -> list[RunConfig]:
    """Validate ``exp`` completely and return its runs (one per method × seed, STL: × task)."""
    workdir = workdir or os.getcwd()
    import_plugins(exp.plugins, workdir)
    check_resources(exp)
    check_storage(exp.storage)
    _check_names(exp)
    data_root = resolve_path(exp.data_root or None)
    bench = open_benchmark(exp.benchmark, data_root, exp.bench_options)
    train = resolve_train(exp.train, bench.protocol)
    check_train(train)
    num_tasks = len(bench.tasks)
    out = resolve_location(exp.out)
    storage = resolve_options(out, exp.storage)
    trackers = check_trackers(exp, out)
    common = dict(
        benchmark=exp.benchmark, data_root=data_root, bench_options=dict(exp.bench_options),
        model_options=dict(exp.model_options), trainer_options=dict(exp.trainer_options),
        train=train, workers=exp.workers, gpus_per_worker=exp.gpus_per_worker,
        cpus_per_worker=exp.cpus_per_worker, out=out, storage=storage, plugins=list(exp.plugins),
        workdir=workdir, trackers=trackers,
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
            valid = methods.create(name, num_tasks).hparams()
            hints = "".join(did_you_mean(k, list(valid)) for k in hp if k not in valid)
            raise ConfigError(f"{e}{hints} (fix: hparams.{name}.<name>=<value>)") from None
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


def _local_resources() -> tuple[str, float, float]:
    """(where, CPUs, GPUs) that Ray would get on this machine: an already initialised Ray's
    (tests, notebooks), else the CPUs this process may use and the CUDA devices torch sees."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        have = ray.cluster_resources()
        return "the running Ray", have.get("CPU", 0.0), have.get("GPU", 0.0)
    import torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return "this machine", float(cpus or 1), float(torch.cuda.device_count())


def check_capacity(exp: ExperimentConfig) -> None:
    """One run's CPUs and GPUs against what it can get, before Ray starts (``ConfigError``).

    The one place for this check: locally against this machine; with ``ray_address`` (a
    cluster) the cluster's maximum is not known before connecting, so nothing is checked
    here yet (the launcher checks the connected cluster's resources)."""
    if exp.workers == 0 or exp.ray_address is not None:
        return  # workers=0: check_resources; cluster: see the docstring
    W = max(1, exp.workers)
    need_cpu, need_gpu = W * exp.cpus_per_worker, W * exp.gpus_per_worker
    where, have_cpu, have_gpu = _local_resources()
    if need_gpu > have_gpu:
        raise ConfigError(
            f"one run needs {need_gpu:g} GPU(s) ({W} worker(s) × gpus_per_worker="
            f"{exp.gpus_per_worker:g}) but {where} has {have_gpu:g}; fix: --gpus-per-worker 0 "
            "(CPU), fewer --workers, or --ray-address of a cluster with GPUs"
        )
    if need_cpu > have_cpu:
        raise ConfigError(
            f"one run needs {need_cpu} CPUs ({W} worker(s) × cpus_per_worker="
            f"{exp.cpus_per_worker}) but {where} has {have_cpu:g}; fix: --workers "
            f"{max(1, int(have_cpu) // exp.cpus_per_worker)} or fewer, fewer --cpus-per-worker, "
            "or --ray-address of a bigger cluster"
        )


#: the subdirectories of a results directory (``orchestrator.results`` layout) and ``ray``
RESULT_DIRS = ("runs", "metrics", "diagnostics", "checkpoints", "ray")


def check_out(out: str, storage: StorageConfig | None = None) -> None:
    """``--out`` is usable (``ConfigError`` naming the fix otherwise): not a file, not inside
    another results directory's files, its subdirectories not files, and creatable and
    writable — probed by creating it and writing (then removing) a hidden file. A URI
    (``s3://...``): the bucket is reachable and writable (a probe object is written and
    deleted; :func:`~orchestrator.results.storage.check_reachable`)."""
    if not is_local(out):
        s = check_reachable(out, storage or StorageConfig())
        for sub in RESULT_DIRS:
            if s.kind(sub) == "file":
                raise ConfigError(f"{s.show(sub)!r} is an object, but mtlx keeps a prefix "
                                  "there; fix: delete that object, or --out another prefix")
        return
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"--out {out!r} is a file, not a directory; fix: --out a directory "
                          "(new or an existing results directory)")
    for parent in p.parents:
        if parent.name in RESULT_DIRS and (parent.parent / "runs").is_dir():
            raise ConfigError(
                f"--out {out!r} is inside the {parent.name}/ of the results directory "
                f"{str(parent.parent)!r}; fix: --out {str(parent.parent)!r} or a directory "
                "outside it"
            )
    for sub in RESULT_DIRS:
        if (p / sub).exists() and not (p / sub).is_dir():
            raise ConfigError(
                f"{str(p / sub)!r} is a file, but mtlx keeps a directory there; fix: move that "
                "file away, or --out another directory"
            )
    probe = p / f".mtlx-probe-{os.getpid()}"
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"--out {out!r} cannot be used: {e.strerror or e}; fix: --out a "
                          "directory you can create and write") from None


def plan(exp: ExperimentConfig, workdir: str | None = None) -> tuple[list[RunConfig], list[RunConfig]]:
    """(runs to execute, finished runs to skip); validates everything first (including the
    resources and the ``--out`` location, which only running needs)."""
    runs = expand(exp, workdir)
    check_capacity(exp)
    check_out(runs[0].out, exp.storage)  # as given: messages name the variables used
    store = ResultsStore(runs[0].out, runs[0].storage)
    todo, done, problems = [], [], []
    for r in runs:
        row = store.read_run(r.run_id, problems)
        if row is not None and row["status"] in FINAL and not exp.rerun:
            done.append(r)
        else:
            todo.append(r)
    for p in problems:  # such a run is run (resumed if it has a checkpoint); its row rewritten
        print(f"mtlx: {p.path} does not read ({p.reason}); running that run again "
              "(--rerun starts it from scratch)", file=sys.stderr)
    return todo, done
