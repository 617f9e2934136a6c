"""Typed configs for ``mtlx run``: dataclasses, YAML, ``key=value`` overrides, validation.

Two levels:

* :class:`ExperimentConfig` — what a user writes (YAML file, CLI flags, ``key=value``
  overrides): one benchmark, several methods and seeds, the optimisation settings
  (:class:`TrainConfig`, ``None`` = the benchmark protocol's value) and the resources.
* :class:`RunConfig` — one (method, seed[, STL task]) run, fully resolved against the benchmark
  protocol and the method's hyperparameter defaults. Its :meth:`RunConfig.run_id` is a
  deterministic id: ``<benchmark>.<method>[.<task>].s<seed>.<hash>`` where the hash covers
  every field that changes the numbers (never a timestamp), so rerunning the same command
  finds the same runs (skip if finished, resume if not).

Every field carries a ``help`` text (shown by ``mtlx run --help-config``). Loading rejects
unknown keys with the closest valid one; :func:`orchestrator.run.plan.expand` then checks
every run against the benchmark and method before any Ray process starts.

YAML layout (every key optional; see ``configs/*.yaml``)::

    benchmark: nyuv2
    methods: [ew, cagrad, nash_mtl]
    seeds: [0, 1, 2]
    data_root: /data/nyuv2
    hparams: {cagrad: {c: 0.4}}
    train: {epochs: 200, batch_size: 2, lr: 1.0e-4, lr_schedule: step, step_size: 100}

Overrides use dotted keys and YAML values: ``train.lr=3e-4``, ``hparams.cagrad.c=0.5``,
``seeds=[0,1,2]`` or ``seeds=0,1,2``, ``bench_options.loss_scale=[1,10]``; a bare
:class:`TrainConfig` field (``lr=3e-4``) means ``train.<field>``.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestrator.config.fields import (  # noqa: F401  (re-exported: the config's public names)
    _COUNT,
    _COUNT0,
    _NONNEG,
    _POSITIVE,
    ConfigError,
    Valid,
    _f,
    _head_updates,
    _levels,
    _precisions,
)
from orchestrator.config.options import (  # noqa: F401
    TRACKERS,
    WANDB_MODES,
    MlflowOptions,
    StorageConfig,
    TensorBoardOptions,
    TrackerOptions,
    WandbOptions,
)

#: The pseudo-method that trains one model per task (single-task learning baselines).
STL = "stl"
#: Methods run by ``mtlx run`` without arguments (those registered are used).
DEFAULT_METHODS = (
    "ew", "pcgrad", "mgda", "cagrad", "nash_mtl", "imtl", "db_mtl", "imgrad", "famo",
)  # fmt: skip
DEFAULT_BENCHMARK = "multi_digits"

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("none", "step", "cosine", "plateau")
SELECTIONS = ("last", "best_val")
#: retries of a run whose node died when ``max_failures`` is unset and the command is
#: connected to a cluster (spot nodes get preempted; on one machine a lost run is a bug)
CLUSTER_RETRIES = 2


@dataclass
class TrainConfig:
    """Optimisation settings of a run. ``None`` means "the benchmark protocol's value"."""

    epochs: int | None = _f(help="training epochs", valid=_COUNT)
    steps: int | None = _f(help="total training steps, for step-based (RL) trainers",
                           valid=_COUNT)
    batch_size: int | None = _f(help="global batch size (split evenly over workers)",
                                valid=_COUNT)
    optimizer: str | None = _f(help=f"one of {list(OPTIMIZERS)}", valid=Valid(choices=OPTIMIZERS))
    lr: float | None = _f(help="learning rate of the model", valid=_POSITIVE)
    weight_decay: float | None = _f(help="weight decay (L2 for adam/sgd, decoupled for adamw)",
                                    valid=_NONNEG)
    momentum: float | None = _f(help="momentum (sgd only)", valid=Valid(low=0.0, high=1.0))
    lr_schedule: str | None = _f(
        help=f"one of {list(SCHEDULES)}; step: ×gamma every step_size epochs; plateau: "
        "ReduceLROnPlateau(factor=gamma, patience, min_lr) on the validation score",
        valid=Valid(choices=SCHEDULES),
    )
    step_size: int | None = _f(help="epochs per lr decay (step schedule)", valid=_COUNT)
    gamma: float | None = _f(help="lr decay factor (step, plateau)",
                             valid=Valid(low=0.0, high=1.0, low_open=True))
    patience: int | None = _f(help="plateau: evaluations without improvement before a decay",
                              valid=_COUNT0)
    min_lr: float | None = _f(help="plateau: lower bound of the lr", valid=_NONNEG)
    eval_every: int | None = _f(help="evaluate val/test every k epochs (and always at the end)",
                                valid=_COUNT)
    average_last: int | None = _f(
        help="selection=last: report the mean test metrics of the last k evaluations",
        valid=_COUNT,
    )
    selection: str | None = _f(
        help=f"one of {list(SELECTIONS)}: which evaluation's test metrics are reported "
        "(best_val: the best validation score, never test)",
        valid=Valid(choices=SELECTIONS),
    )
    method_lr: float | None = _f(
        help="learning rate of the method's own parameters (UW's log-variances ...); None = lr",
        valid=_POSITIVE,
    )
    level: str = _f(
        "auto", help="gradient level: auto (the method's default), param or rep "
        "(methods.engine.Level)", valid=Valid(choices=_levels),
    )
    head_update: str | None = _f(
        help="task-specific parameter rule: own or weighted (methods.base.HEAD_UPDATES); None = "
        "the method's", valid=Valid(choices=_head_updates),
    )
    max_steps_per_epoch: int | None = _f(help="cap training steps per epoch (smoke tests)",
                                         valid=_COUNT)
    max_eval_batches: int | None = _f(help="cap batches per evaluation (smoke tests)",
                                      valid=_COUNT)
    eval_batch_size: int | None = _f(help="evaluation batch size; None = batch_size",
                                     valid=_COUNT)
    diagnostics_every: int = _f(
        10, help="log task weights, gradient norms and cosines every k steps (0 = never)",
        valid=_COUNT0,
    )
    precision: str = _f(
        "fp32", help="fp32, bf16 (autocast forward) or fp16 (autocast + the engine's loss "
        "scaler; methods see unscaled fp32 gradients) (methods.precision.PRECISIONS)",
        valid=Valid(choices=_precisions),
    )
    divergence_factor: float | None = _f(
        help="stop a run (status diverged) when a task's loss exceeds this × its first-step "
        "loss; None = the trainer's default (supervised: 1e4; RL: none, and setting it is refused)",
        valid=Valid(low=1.0, low_open=True),
    )
    loader_workers: int | None = _f(
        help="data-loader processes per worker (persistent; batches are the same for any "
        "count); None = cpus_per_worker - 1 (at most 8) on CUDA, 0 on CPU, where the CPUs "
        "compute", valid=_COUNT0, identity=False,
    )
    checkpoint_every_s: float = _f(
        600.0, help="also checkpoint mid-epoch once this many seconds passed since the last "
        "checkpoint, so a preempted run redoes minutes, not an epoch (0 = only at epoch ends; "
        "RL: at the next episode boundary); does not change the numbers or the run id",
        valid=_NONNEG, identity=False,
    )
    checkpoint_every_steps: int = _f(
        0, help="also checkpoint every k optimiser steps (0 = off; RL: every k loop steps, "
        "at the next episode boundary); does not change the numbers or the run id",
        valid=_COUNT0, identity=False,
    )


def speed_only_fields() -> tuple[str, ...]:
    """The :class:`TrainConfig` fields that never change a run's numbers (loader processes,
    checkpoint cadence): left out of run ids."""
    return tuple(f.name for f in dataclasses.fields(TrainConfig)
                 if not f.metadata.get("identity", True))


@dataclass
class ExperimentConfig:
    """Everything ``mtlx run`` needs: which runs, how to train them, where, with what."""

    benchmark: str = _f(DEFAULT_BENCHMARK, help="benchmark name (mtlx benchmarks lists them)")
    methods: list[str] = _f(
        factory=lambda: list(DEFAULT_METHODS),
        help=f"method names (mtlx methods lists them); '{STL}' trains one model per task",
    )
    seeds: list[int] = _f(factory=lambda: [0, 1], help="one run per method and seed")
    hparams: dict[str, dict[str, Any]] = _f(
        factory=dict, help="method hyperparameters: {method: {name: value}}"
    )
    data_root: str | None = _f(help="dataset root in the benchmark's published layout")
    bench_options: dict[str, Any] = _f(factory=dict, help="benchmark options (envs.create)")
    model_options: dict[str, Any] = _f(factory=dict, help="model options (bench.build_model)")
    trainer_options: dict[str, Any] = _f(
        factory=dict, help="options of the benchmark kind's trainer (e.g. SAC settings)"
    )
    train: TrainConfig = _f(factory=TrainConfig, help="optimisation settings")
    workers: int = _f(
        1,
        help="0: runs in this process, one after another (debugging); 1: each run in its own "
        "Ray task, as many at once as resources allow; W >= 2: each run on W Ray Train "
        "workers (exact distributed gradient methods)",
    )
    gpus_per_worker: float = _f(0.0, help="GPUs per worker (fractions pack runs on one GPU)")
    cpus_per_worker: int = _f(1, help="CPUs per worker (also torch threads)")
    max_concurrent: int | None = _f(help="at most this many runs at once (None: by resources)")
    max_failures: int | None = _f(
        help="retries of a run whose node died or whose Train workers failed, each from the "
        "run's last checkpoint (Ray task retries for workers=1, Train worker-group restarts "
        f"for W >= 2); -1 = unlimited; None = auto: {CLUSTER_RETRIES} when connected to a "
        "cluster (an address, or several nodes), 0 on one machine",
    )
    resource_timeout: float | None = _f(
        help="refuse runs still waiting for resources after this many seconds (the cluster "
        "or its autoscaler did not provide them); None = wait as long as it takes",
    )
    out: str = _f("results", help="results location: a directory, file://, s3://BUCKET/PREFIX, "
                  "gs://BUCKET/PREFIX (docs/storage.md)")
    storage: StorageConfig = _f(factory=StorageConfig,
                                help="object-storage options for --out (storage.<key>)")
    rerun: bool = _f(False, help="rerun finished runs instead of skipping them")
    ray_address: str | None = _f(help="connect to this Ray cluster ('auto'); None = start one")
    plugins: list[str] = _f(
        factory=list, help="modules to import first (they may register methods/benchmarks)"
    )
    verbose: bool = _f(False, help="show Ray's own output")
    trackers: list[str] = _f(factory=list, valid=Valid(choices=TRACKERS), help="experiment "
                             f"trackers every run also logs to, of {list(TRACKERS)}")
    tracker_options: TrackerOptions = _f(factory=TrackerOptions, help="tracker options "
                                         "(tracker_options.mlflow.tracking_uri=URI ...)")


# ---------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------


@dataclass
class RunConfig:
    """One fully resolved run: the only thing a trainer receives. It crosses the Ray hop as
    it is (Ray pickles it); :meth:`to_dict` is its JSON form for the runs table."""

    benchmark: str
    method: str
    seed: int
    hparams: dict[str, Any] = field(default_factory=dict)
    stl_task: str | None = None
    data_root: str | None = None
    bench_options: dict[str, Any] = field(default_factory=dict)
    model_options: dict[str, Any] = field(default_factory=dict)
    trainer_options: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    workers: int = 0
    gpus_per_worker: float = 0.0
    cpus_per_worker: int = 1
    out: str = "results"
    storage: StorageConfig = field(default_factory=StorageConfig)
    plugins: list[str] = field(default_factory=list)
    workdir: str = ""
    trial_id: str | None = None
    search_id: str | None = None
    #: {tracker: its resolved options} (orchestrator.trackers); where a run is also logged,
    #: not what it is: not in the run id, not a runs-table column
    trackers: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def world_size(self) -> int:
        return max(1, self.workers)

    def identity(self) -> dict[str, Any]:
        """The fields that determine the numbers: hashed into the run id.

        Not included: where data and results live, the device, CPUs/GPUs per worker, the
        plugins, the speed-only train fields (:func:`speed_only_fields`). ``workers`` enters
        only when > 1 (0 and 1 are the same single-process computation; W > 1 runs are the
        same epochs too, but their ids predate that and stay as they were)."""
        ident: dict[str, Any] = {
            "benchmark": self.benchmark,
            "method": self.method,
            "hparams": self.hparams,
            "stl_task": self.stl_task,
            "bench_options": self.bench_options,
            "model_options": self.model_options,
            "trainer_options": self.trainer_options,
            "train": dataclasses.asdict(self.train),
        }
        if self.train.divergence_factor is None:  # unset: existing run ids stay the same
            del ident["train"]["divergence_factor"]
        for name in speed_only_fields():
            del ident["train"][name]
        if self.world_size > 1:
            ident["world_size"] = self.world_size
        for key in ("trial_id", "search_id"):
            if getattr(self, key) is not None:
                ident[key] = getattr(self, key)
        return _canonical(ident)

    def config_hash(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def run_id(self) -> str:
        parts = [self.benchmark, self.method]
        if self.stl_task is not None:
            parts.append(_slug(self.stl_task))
        parts += [f"s{self.seed}", self.config_hash()]
        return ".".join(parts)

    @property
    def label(self) -> str:
        """Short human label for progress lines."""
        name = self.method if self.stl_task is None else f"{self.method}[{self.stl_task}]"
        return f"{name} s{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        """Plain, key-sorted data (the runs table's ``config_json``)."""
        return _canonical(dataclasses.asdict(self))


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", s)


def _canonical(x: Any) -> Any:
    """JSON-able, order-stable form (tuples → lists, dict keys → str); rejects the rest."""
    if isinstance(x, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(x.items(), key=lambda kv: str(kv[0]))}
    if isinstance(x, (list, tuple)):
        return [_canonical(v) for v in x]
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    raise ConfigError(
        f"config value {x!r} of type {type(x).__name__} is not plain data "
        "(use numbers, strings, booleans, lists and mappings)"
    )


# ---------------------------------------------------------------------------------------
# Building an ExperimentConfig from YAML / dicts / overrides, with type checks
# ---------------------------------------------------------------------------------------


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _suggest(key: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{hint}; valid keys: {', '.join(valid)}"


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Check/convert ``value`` to annotation ``tp``; ``ConfigError`` naming ``name``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(name, value, a)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{name}: bad value {value!r}")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if tp in (int, float):
        return _number(name, value, tp)
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{name} must be a string, got {value!r}")
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        return [_coerce(f"{name}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name} must be a mapping, got {value!r}")
        return {str(k): _coerce(f"{name}.{k}", v, args[1]) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name} must be a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, prefix=f"{name}.")
    raise ConfigError(f"{name}: unsupported type {tp}")  # pragma: no cover


def _number(name: str, value: Any, tp: type) -> Any:
    """``value`` as an ``int`` or ``float`` (numbers, numeric text; never a boolean, and an
    ``int`` only from integral values)."""
    if not isinstance(value, bool):
        if tp is int and isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int) or (tp is float and isinstance(value, float)):
            return tp(value)
        if isinstance(value, str):
            try:
                return tp(value)
            except ValueError:
                pass
    raise ConfigError(f"{name} must be {'an integer' if tp is int else 'a number'}, got {value!r}")


def _build(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in hints:
            if cls is ExperimentConfig and key in {f.name for f in dataclasses.fields(TrainConfig)}:
                raise ConfigError(f"config key {key!r} belongs under train: (fix: train: "
                                  f"{{{key}: ...}} in YAML, or train.{key}=... as an override)")
            raise ConfigError(f"unknown config key {prefix + str(key)!r}{_suggest(str(key), names)}")
        kwargs[key] = _coerce(f"{prefix}{key}", value, hints[key])
    return cls(**kwargs)


def experiment_from_dict(data: Mapping[str, Any]) -> ExperimentConfig:
    """An :class:`ExperimentConfig` from plain data (a parsed YAML file)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"a config must be a mapping of keys to values, got {type(data).__name__}")
    return _build(ExperimentConfig, data)


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping at the top level")
    return dict(data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` → (["a", "b"], parsed YAML value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. train.lr=3e-4)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key=value`` overrides to plain config data (before type checks)."""
    top = {f.name for f in dataclasses.fields(ExperimentConfig)}
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    out = json.loads(json.dumps(data, default=str))  # deep copy of plain data
    for text in overrides:
        path, value = parse_override(text)
        if path[0] not in top and path[0] in train_keys and len(path) == 1:
            path = ["train", *path]
        if path[0] not in top:
            raise ConfigError(f"unknown config key {path[0]!r} in override {text!r}"
                              f"{_suggest(path[0], sorted(top | train_keys))}")
        node = out
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
    return out


def add_common_flags(p: Any) -> None:
    """The flags ``mtlx run`` and ``mtlx tune`` share (an ``argparse`` parser); each sets the
    config key of its name (``--data-root`` → ``data_root`` ...)."""
    p.add_argument("--data-root", dest="data_root", help="dataset root (published layout)")
    p.add_argument("--out", help="results directory (default: results)")
    p.add_argument("--cpus-per-worker", type=int, dest="cpus_per_worker")
    p.add_argument("--ray-address", dest="ray_address", help="connect to a Ray cluster")
    p.add_argument("--verbose", action="store_true", default=None, help="show Ray's output")
    p.add_argument("--resource-timeout", type=float, dest="resource_timeout", metavar="SECONDS",
                   help=field_help(ExperimentConfig, "resource_timeout"))
    add_storage_flag(p)


def add_storage_flag(p: Any) -> None:
    """``--storage-option KEY=VALUE`` (repeatable): a :class:`StorageConfig` field."""
    keys = ", ".join(f.name for f in dataclasses.fields(StorageConfig))
    p.add_argument("--storage-option", action="append", dest="storage_options", default=None,
                   metavar="KEY=VALUE", help=f"object-storage option for --out ({keys})")


def storage_overrides(options: Sequence[str] | None) -> list[str]:
    """``--storage-option KEY=VALUE`` flags as the ``storage.KEY=VALUE`` overrides they mean
    (checked like every config key: unknown keys name the closest one)."""
    out = []
    for text in options or ():
        if "=" not in text or not text.split("=", 1)[0].strip():
            raise ConfigError(f"--storage-option {text!r} must look like KEY=VALUE (e.g. "
                              "endpoint_url=http://127.0.0.1:9000)")
        out.append(f"storage.{text.strip()}")
    return out


def storage_config(options: Sequence[str] | None) -> StorageConfig:
    """A :class:`StorageConfig` from ``--storage-option KEY=VALUE`` flags alone (commands
    that only read results: ``mtlx report``)."""
    return experiment_from_dict(apply_overrides({}, storage_overrides(options))).storage


#: the config keys of :func:`add_common_flags`
COMMON_FLAGS = ("data_root", "out", "cpus_per_worker", "ray_address", "verbose",
                "resource_timeout")


def field_help(cls: type, name: str) -> str:
    """The help text of a config field (what a CLI flag setting it shows)."""
    return next(f.metadata["help"] for f in dataclasses.fields(cls) if f.name == name)


def set_values(data: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` (plain config data) with dotted keys set to already typed values — the CLI's
    flags, which argparse has typed: nothing is parsed as YAML here, so ``--data-root 0123``
    stays the path ``"0123"`` and ``--out yes`` the directory ``"yes"``."""
    out = json.loads(json.dumps(dict(data), default=str))  # deep copy of plain data
    for key, value in values.items():
        node = out
        *parents, last = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[last] = value
    return out


def split_args(positional: Sequence[str], what: str = "key=value overrides"
               ) -> tuple[dict[str, Any], list[str]]:
    """(the YAML file's data or {}, the ``key=value`` overrides) of a command's positional
    arguments: an optional YAML file first, then overrides."""
    args = list(positional)
    data: dict[str, Any] = {}
    if args and "=" not in args[0]:
        data = load_yaml(args.pop(0))
    bad = [a for a in args if "=" not in a]
    if bad:
        raise ConfigError(f"unexpected argument(s) {bad}: only the first argument may be a YAML "
                          f"file, the rest must be {what}")
    return data, args


def help_config() -> str:
    """Every config key with its help text (``mtlx run --help-config``)."""
    lines = []
    sections = [(ExperimentConfig, ""), (TrainConfig, "train."), (StorageConfig, "storage.")]
    sections += [(_hints(TrackerOptions)[f.name], f"tracker_options.{f.name}.")
                 for f in dataclasses.fields(TrackerOptions)]
    for cls, prefix in sections:
        for f in dataclasses.fields(cls):
            if f.name in ("train", "storage", "tracker_options") and cls is ExperimentConfig:
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            lines.append(f"  {prefix}{f.name} = {default!r}\n      {f.metadata.get('help', '')}")
    return "\n".join(lines)
