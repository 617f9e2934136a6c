"""``mtlx tune``: hyperparameter search over a method's knobs with Ray Tune + Optuna (TPE).

::

    mtlx tune [CONFIG.yaml] [--benchmark B] [--method M] [--trials N] [--metric val_delta_m]
              [--scheduler asha|none] [--workers-per-trial W] [--gpus-per-trial G]
              [--max-concurrent K] [--seed S] [--epochs E | --steps N] [--resume | --fresh]
              [--out DIR] [space.NAME=SPEC ...] [key=value ...]

Without arguments it searches DB-MTL's EMA β, β-decay σ and γ strategy (the method's declared
space) on the embedded ``multi_digits`` benchmark: 12 trials, the first being the default
configuration, the protocol's 10 epochs with ASHA early stopping, as many trials at once as
the CPUs allow (2 on 2 cores; a few minutes).

Search space
------------
Each method declares ``search_space = {hparam: Dimension}`` beside its ``Config``
(``methods/space.py``: plain data). That is the starting point; the learning rate, weight
decay, SGD momentum and the method's own learning rate are searchable for every method. A YAML
``tune.space`` mapping or ``space.NAME=SPEC`` arguments override or narrow any dimension:

==============================  ==========================================================
``uniform(a, b)``               float in [a, b]
``loguniform(a, b)``            float in [a, b] on a log scale (0 < a < b)
``int(a, b)``                   integer in [a, b] (both included)
``choice(x, y, ...)``           one of the values (numbers, strings, true/false)
``<value>``                     fixed: not searched, every trial uses it (a YAML list =
                                ``choice``)
``default``                     not searched: the method's / protocol's default (drops a
                                declared dimension)
``search``                      the built-in range: the method's declared dimension; for
                                ``lr`` and ``method_lr`` loguniform(lr/10, 10·lr) around the
                                protocol's lr, ``weight_decay`` loguniform(1e-6, 1e-2),
                                ``momentum`` uniform(0.5, 0.99)
``SPEC if NAME=v1[,v2...]``     conditional: sampled only in trials where the ``choice``
                                ``NAME`` takes one of the values, else the method's default
                                (e.g. ``gamma_value=loguniform(0.01,10) if gamma=constant``)
==============================  ==========================================================

NAME is a method hyperparameter (``beta`` or ``hparams.beta``) or a training field (``lr`` or
``train.lr``); a bare name that is both (GradNorm's own ``lr``) must carry the prefix.
Everything is checked before Ray starts: unknown names (with the closest valid one), empty or
invalid ranges, values the method rejects (the range ends and every choice are built through
the method's ``Config``, so ``uniform(0.5, 1.0)`` for DB-MTL's β < 1 is refused), parameters a
choice needs (DB-MTL's ``gamma=constant`` needs ``gamma_value``) and the metric.

Objective (validation only, never test)
---------------------------------------
``--metric`` (RL benchmarks: see below): ``val_delta_m`` (Δm% on the validation split against the benchmark's
single-task reference; the default when there is one), ``val_loss`` (mean per-task validation
loss; the default otherwise) or ``val/<task>/<metric>`` (any validation metric; maximised if
higher is better). Trials evaluate every epoch (``train.eval_every`` other than 1 is refused)
and report the objective then, in the shape the protocol selects the reported test numbers:
``selection=last`` → the mean over the last ``average_last`` evaluations (the current one for
1), ``selection=best_val`` → the best so far. Tune never sees test numbers (they are dropped
from what trials report; the runs still write them to Parquet). ASHA (``--scheduler asha``, the
default; grace period a quarter of the epochs, reduction factor 3) compares trials on the
objective per epoch, except that it never stops the default-configuration trial, so that "best
vs default" compares fully trained runs; trials that reach the last epoch end on their own.
Optuna's TPE (seeded) gets each trial's last value; ``n_startup_trials`` is a third of the
trials, clipped to 2..10 (Optuna's default 10 would leave a 12-trial search all random). Trial
``t0000`` is the default configuration when it lies inside the space. The best configuration is
the best objective among trials that trained every epoch (ASHA-stopped trials' values come from
fewer epochs).

Benchmarks without a validation split (NYUv2, Cityscapes in the MTAN release) get one held out
of train: 10% of the training samples (at least 1) via the benchmark's ``val_size`` option —
a fixed random subset that does not depend on the run seed (``envs/_dense.py``). The best
configuration written for ``mtlx run`` trains on the full train split again (the user's own
``bench_options`` only). A benchmark with neither is refused.

RL benchmarks (``kind == "rl"``: ``mt10``, ``mt1``)
---------------------------------------------------
``mtlx tune --benchmark mt10 --method cagrad --steps N`` searches CAGrad's c (IMGrad: α; any
declared or given dimension, plus ``train.lr``/``train.method_lr``; weight decay and momentum
are refused: SAC uses plain Adam) with the same trials, tables and best.yaml. The objective is
``--metric val_success`` (the default): the mean over tasks of the success of the
deterministic evaluation episodes the trainer runs every ``train.eval_every`` **loop steps**
(the protocol's 30,000 unless set) and at the end of ``train.steps``, maximised;
``val_return`` (mean return) and ``val/<task>/success|return`` are the alternatives.
Supervised-only objectives (``val_loss``, ``val_delta_m``) and anything on test are refused.
There is no held-out split: MT10 papers evaluate on the training tasks, so the evaluation
episodes (metric rows ``split="eval"``) are the validation; the untrained step-0 evaluation is
not part of the objective. The selection rule is the same (``selection=last``: the mean of the
last ``train.average_last`` evaluations, 1 by default; ``best_val``: the best so far — the
"best over training" number CAGrad/Nash-MTL publish). ASHA's time axis (``epochs_done``) is
the number of evaluations done, ``max_t`` = ⌈steps / eval_every⌉ + 1 (with the step-0 one),
grace period a quarter of that. The benchmark's reference hyperparameters
(``envs.mt10.METHOD_HPARAMS``: CAGrad c = 0.9, ...) make the default trial t0000 — they are
the base run's values, which a trial's sampled values replace — and best.yaml carries the full
hyperparameters of the best trial, so ``mtlx run`` uses the sampled c, not the reference
one.

Execution (research/ray.md §3, §4, §8)
--------------------------------------
A Ray Tune ``Tuner`` over a function trial that calls the one training function:
with W = 1 worker per trial the trial itself runs :func:`orchestrator.train.train_run` (its
``RunContext.report`` forwards to ``ray.tune.report``) and holds ``cpus_per_worker`` CPUs,
``G`` GPUs and one ``driver_slot``; with W ≥ 2 the trial is a driver holding
``{"CPU": 0, "driver_slot": 1}`` that runs :func:`orchestrator.ray_train.fit` on W Ray Train
workers (``G/W`` GPUs each) with a ``TuneReportCallback`` that adds the objective — the
driver takes no CPU its workers need (a 0.01-CPU driver fragmented 2 CPUs and hung the
search, G2) and Train's controller failure limit is finite (G3). ``driver_slot`` is a custom
resource: a Ray started by this command declares it; a cluster must declare it on its head
(``ray start --head --resources='{"driver_slot": 8}'``). ``max_concurrent_trials`` is what the
cluster's CPUs/GPUs hold (``--max-concurrent`` caps it). Ray's own output is hidden unless
``--verbose``; one line is printed per finished trial.

Identity and resume: the search id is ``<benchmark>.<method>.<hash>`` of everything that
changes the trials (base run config, space, metric, scheduler, trials, seed); trial names are
``t0000, t0001, ...`` in creation order and each trial's run id hashes its config, its trial
name and the search id, so they are deterministic. ``--resume`` restores the Tune experiment
(``Tuner.restore``; finished trials are not re-run, interrupted ones continue from their mtlx
checkpoint, a trial whose run already finished only re-reports its objective from the
Parquet data). The same command without ``--resume`` prints the result of a complete search
and refuses to touch an incomplete one (G5: a reused Tune experiment name mixes state files);
``--fresh`` deletes the search (and its trial runs) and starts over.

Results (``<out>`` is ``--out``)
--------------------------------
Every trial is an ordinary run of the Parquet dataset (``runs``, ``metrics``,
``diagnostics``; ``trial_id`` and ``search_id`` set in its runs row; a trial stopped early by
ASHA has status ``stopped``), plus per search::

    <out>/searches/<search_id>/trials.parquet   one row per trial: identity, status, objective,
                                                epochs, the sampled values as ``hp.<name>``
                                                columns and as JSON
    <out>/searches/<search_id>/summary.parquet  one row (fixed schema :data:`SUMMARY_COLUMNS`):
                                                best trial, its objective vs the default's,
                                                the space, the settings
    <out>/searches/<search_id>/best.yaml        the best configuration for ``mtlx run``
    <out>/searches/<search_id>/tune/            Ray Tune's experiment state (resume)

:func:`tune_report` and :func:`plot_search` show a search from these files alone (objective
per trial, best vs default, hyperparameter importance by Optuna's fANOVA).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import hashlib
import json
import math
import os
import re
import shutil
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import yaml

from orchestrator.config import (
    STL,
    ConfigError,
    ExperimentConfig,
    RunConfig,
    _build,
    _f,
    apply_overrides,
    experiment_from_dict,
    load_yaml,
    parse_override,
)

if TYPE_CHECKING:  # methods/ imports torch: loaded only when a search is built
    from methods.space import Dimension

DEFAULT_METHOD = "db_mtl"
SCHEDULERS = ("asha", "none")
#: training fields searchable for every method (``train.<name>``)
TRAIN_SEARCHABLE = ("lr", "weight_decay", "momentum", "method_lr")
#: the fraction of train held out as validation when a benchmark has no validation split
HELD_OUT_FRACTION = 0.1
OBJECTIVE = "objective"  # the key Tune, ASHA and Optuna optimise
TIME_ATTR = "epochs_done"  # ASHA's time axis (survives trial restarts, unlike iterations)
#: objectives of RL benchmarks (kind "rl"): the mean over tasks of the evaluation episodes'
#: success / return (maximised); ``val/<task>/<metric>`` is also accepted
RL_METRICS = ("val_success", "val_return")
#: training fields an RL trainer (SAC: Adam, no weight decay) does not use
RL_UNSEARCHABLE = ("weight_decay", "momentum")


# ---------------------------------------------------------------------------------------
# settings (the YAML ``tune:`` section; flags override it)
# ---------------------------------------------------------------------------------------


@dataclass
class TuneSettings:
    """The ``tune:`` section of a config file (``mtlx tune --help`` for the flags)."""

    trials: int = _f(12, help="number of trials (the default configuration is the first)")
    metric: str | None = _f(
        help="objective on the validation split: val_delta_m, val_loss or val/<task>/<metric>; "
        "None = val_delta_m when the benchmark has a single-task reference, else val_loss"
    )
    scheduler: str = _f("asha", help=f"one of {list(SCHEDULERS)}: ASHA early stopping or none")
    grace_period: int | None = _f(help="ASHA: epochs before a trial can be stopped (None: E/4)")
    reduction_factor: int = _f(3, help="ASHA: keep 1/reduction_factor of the trials per rung")
    seed: int = _f(0, help="seed of the trials' runs and of the TPE sampler")
    workers_per_trial: int = _f(1, help="1: the trial trains in its own process; W >= 2: on W "
                                        "Ray Train workers (exact distributed methods)")
    gpus_per_trial: float = _f(0.0, help="GPUs per trial (split evenly over its workers)")
    max_concurrent: int | None = _f(help="at most this many trials at once (None: resources)")
    max_failures: int = _f(0, help="Tune retries of a failed trial")
    include_default: bool = _f(True, help="evaluate the default configuration as trial 0")
    space: dict[str, Any] = _f(factory=dict, help="{name: SPEC}: overrides of the search space")


# ---------------------------------------------------------------------------------------
# the search space: parsing, names, validation
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One searched dimension. ``key``: a method hyperparameter name, or ``train.<field>``;
    ``when``: (choice key, values) under which it is sampled (None: always)."""

    key: str
    dim: Dimension
    when: tuple[str, tuple[Any, ...]] | None = None
    text: str = ""  # how the user wrote it (error messages)

    def active(self, point: Mapping[str, Any]) -> bool:
        return self.when is None or point.get(self.when[0]) in self.when[1]

    def to_json(self) -> dict[str, Any]:
        sp = _sp()
        d: dict[str, Any] = {"kind": type(self.dim).__name__}
        d.update(dataclasses.asdict(self.dim))
        if isinstance(self.dim, sp.Choice):
            d["values"] = list(self.dim.values)
        if self.when is not None:
            d["when"] = {self.when[0]: list(self.when[1])}
        return d


_FIXED, _DEFAULT, _SEARCH = "fixed", "default", "search"
_CALL = re.compile(r"^\s*([A-Za-z_]\w*)\s*\((.*)\)\s*$", re.S)
_DISTS = {"uniform": "Uniform", "loguniform": "LogUniform", "int": "IntUniform",
          "intuniform": "IntUniform", "randint": "IntUniform", "choice": "Choice"}


def _sp():
    """``methods.space`` (imported on use: ``methods`` loads torch)."""
    import methods.space

    return methods.space


def _scalar(x: Any) -> Any:
    """A YAML scalar; numeric-looking text (``1e-4``: YAML 1.1 keeps it a string) → number."""
    if isinstance(x, str):
        for conv in (int, float):
            try:
                return conv(x)
            except ValueError:
                pass
    return x


def _values(text: str) -> list[Any]:
    try:
        parsed = yaml.safe_load(f"[{text}]")
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot read the values {text!r}: {e}") from None
    return [_scalar(v) for v in parsed]


def parse_spec(name: str, spec: Any) -> tuple[str, Any, tuple[str, tuple[Any, ...]] | None]:
    """(kind, payload, condition) of one space entry; kind ∈ {dimension, fixed, default,
    search}. ``ConfigError`` names the entry and the grammar."""
    where = f"space.{name}={spec!r}"
    if spec is None:
        return _DEFAULT, None, None
    if isinstance(spec, (list, tuple)):
        spec = "choice(" + ", ".join(json.dumps(v) for v in spec) + ")"
    if not isinstance(spec, str):
        if isinstance(spec, (bool, int, float)):
            return _FIXED, spec, None
        raise ConfigError(f"{where}: expected a SPEC string, a value or a list")
    text, cond = spec, None
    parts = re.split(r"\s+if\s+", spec.strip())
    if len(parts) > 2:
        raise ConfigError(f"{where}: only one 'if NAME=VALUE' condition is allowed")
    if len(parts) == 2:
        text, cond_text = parts
        if "=" not in cond_text:
            raise ConfigError(f"{where}: a condition reads 'if NAME=v1[,v2]' (e.g. "
                              "'loguniform(0.01,10) if gamma=constant')")
        cname, cvals = cond_text.split("=", 1)
        values = _values(cvals)
        if not cname.strip() or not values:
            raise ConfigError(f"{where}: the condition needs a name and at least one value")
        cond = (cname.strip(), tuple(values))
    text = text.strip()
    if text in (_DEFAULT, _SEARCH):
        return text, None, cond
    m = _CALL.match(text)
    if m is None:
        if cond is not None:
            raise ConfigError(f"{where}: a condition needs a distribution before 'if'")
        return _FIXED, _scalar(yaml.safe_load(text)) if text else text, None
    fn, args = m.group(1).lower(), _values(m.group(2))
    if fn not in _DISTS:
        close = difflib.get_close_matches(fn, list(_DISTS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}: unknown distribution {m.group(1)!r}{hint}; use "
                          "uniform(a,b), loguniform(a,b), int(a,b) or choice(x,y,...)")
    sp = _sp()
    cls = getattr(sp, _DISTS[fn])
    Choice, IntUniform = sp.Choice, sp.IntUniform  # noqa: N806
    try:
        if cls is Choice:
            dim: Dimension = Choice(tuple(args))
        else:
            if len(args) != 2:
                raise ValueError(f"{fn}() takes two bounds (low, high), got {len(args)}")
            want = int if cls is IntUniform else (int, float)
            if any(isinstance(a, bool) or not isinstance(a, want) for a in args):
                kind = "integers" if cls is IntUniform else "numbers"
                raise ValueError(f"the bounds of {fn}() must be {kind}, got {args}")
            if not all(math.isfinite(a) for a in args):
                raise ValueError(f"the bounds of {fn}() must be finite, got {args}")
            dim = cls(*args)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from None
    return "dimension", dim, cond


def canonical_key(name: str, method: str) -> str:
    """A method hyperparameter name, or ``train.<field>``; ``ConfigError`` if unknown."""
    from methods.registry import hparam_fields

    hp = hparam_fields(method)
    valid = [*hp, *(f"train.{k}" for k in TRAIN_SEARCHABLE)]
    if name.startswith("hparams."):
        bare = name.removeprefix("hparams.")
        if bare in hp:
            return bare
    elif name.startswith("train."):
        bare = name.removeprefix("train.")
        if bare in TRAIN_SEARCHABLE:
            return name
        if bare in _train_fields():
            raise ConfigError(f"space.{name}: train.{bare} is not searchable (searchable training "
                              f"fields: {', '.join(TRAIN_SEARCHABLE)}); fix: set it as an "
                              f"ordinary override train.{bare}=VALUE")
    else:
        if name in hp and name in TRAIN_SEARCHABLE:
            raise ConfigError(
                f"space.{name} is ambiguous: {method!r} has a hyperparameter {name!r} and "
                f"train.{name} is the model's training field; fix: write space.hparams.{name} "
                f"or space.train.{name}"
            )
        if name in hp:
            return name
        if name in TRAIN_SEARCHABLE:
            return f"train.{name}"
    close = difflib.get_close_matches(name, valid + list(TRAIN_SEARCHABLE), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"space.{name}: unknown hyperparameter for method {method!r}{hint}; "
                      f"searchable: {', '.join(valid) or '(none)'}")


def _train_fields() -> list[str]:
    from orchestrator.config import TrainConfig

    return [f.name for f in dataclasses.fields(TrainConfig)]


def builtin_dimension(key: str, method: str, protocol_lr: float | None) -> Dimension:
    """The ``search`` range of ``key`` (see the module docstring)."""
    sp = _sp()
    import methods

    if not key.startswith("train."):
        declared = methods.get_class(method).search_space
        if key not in declared:
            raise ConfigError(f"space.{key}=search: {method!r} declares no range for {key!r} "
                              f"(declared: {', '.join(declared) or 'none'}); fix: give one, "
                              f"e.g. space.{key}=uniform(a,b)")
        return declared[key]
    name = key.removeprefix("train.")
    if name in ("lr", "method_lr"):
        if not protocol_lr:
            raise ConfigError(f"space.{name}=search needs the protocol's lr; fix: give a range")
        return sp.LogUniform(protocol_lr / 10, protocol_lr * 10)
    if name == "weight_decay":
        return sp.LogUniform(1e-6, 1e-2)
    return sp.Uniform(0.5, 0.99)


def _contains(dim: Dimension, v: Any) -> bool:
    sp = _sp()
    if isinstance(dim, sp.Choice):
        return v in dim.values
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    if isinstance(dim, sp.IntUniform) and not float(v).is_integer():
        return False
    return dim.low <= v <= dim.high


def _candidates(dim: Dimension) -> list[Any]:
    """Values that exercise a dimension: its ends and every choice."""
    sp = _sp()
    if isinstance(dim, sp.Choice):
        return list(dim.values)
    return [dim.low, dim.high]


def _center(dim: Dimension, default: Any) -> Any:
    sp = _sp()
    if _contains(dim, default):
        return default
    if isinstance(dim, sp.Choice):
        return dim.values[0]
    if isinstance(dim, sp.IntUniform):
        return dim.low
    if isinstance(dim, sp.LogUniform):
        return math.sqrt(dim.low * dim.high)
    return (dim.low + dim.high) / 2


@dataclass(frozen=True)
class DefineSpace:
    """Optuna define-by-run function of a space (conditional parameters need it); a
    module-level class so Tune can pickle it into the experiment state."""

    params: tuple[Param, ...]

    def __call__(self, trial: Any) -> None:
        sp = _sp()
        point: dict[str, Any] = {}
        for p in self.params:  # parents come first (checked in resolve_space)
            if not p.active(point):
                continue
            d = p.dim
            if isinstance(d, sp.Choice):
                point[p.key] = trial.suggest_categorical(p.key, list(d.values))
            elif isinstance(d, sp.IntUniform):
                point[p.key] = trial.suggest_int(p.key, d.low, d.high)
            else:
                point[p.key] = trial.suggest_float(p.key, d.low, d.high,
                                                   log=isinstance(d, sp.LogUniform))


def split_params(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """({method hparam: value}, {train field: value}) of a sampled point (NaN/None = unused)."""
    hp, train = {}, {}
    for key, v in params.items():
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        if key.startswith("train."):
            train[key.removeprefix("train.")] = v
        else:
            hp[key] = v
    return hp, train


def apply_params(base: RunConfig, params: Mapping[str, Any], trial_id: str | None = None,
                 search_id: str | None = None) -> RunConfig:
    """The run of one trial: ``base`` with the sampled values, the trial and search ids."""
    hp, train = split_params(params)
    return dataclasses.replace(
        base, hparams={**base.hparams, **hp}, train=dataclasses.replace(base.train, **train),
        trial_id=trial_id, search_id=search_id,
    )


# ---------------------------------------------------------------------------------------
# the objective
# ---------------------------------------------------------------------------------------


@dataclass
class Objective:
    """The trial objective from each evaluation's report (see the module docstring).

    Lives in the trial process (W = 1) or in the Train controller's report callback
    (W ≥ 2); ``values`` maps epoch → metric value, so a resumed trial can be preloaded from
    the Parquet rows its earlier attempt wrote."""

    metric: str
    mode: str
    selection: str
    average_last: int
    spec: dict[str, list[Any]]  # {task: [envs.Metric]}
    reference: dict[str, dict[str, float]] | None
    out: str
    run_id: str
    values: dict[int, float] = field(default_factory=dict)
    split: str = "val"  # the metric rows' split: "val", or "eval" for RL benchmarks

    def value(self, epoch: int, val: Mapping[str, Mapping[str, float]] | None) -> float | None:
        """The metric at one evaluation; ``val`` = {task: {metric: value}} (None: read the
        run's Parquet rows of that epoch)."""
        if self.metric == "val_loss" or val is None:
            val = epoch_values(self.out, self.run_id, epoch, self.split)
        if not val:
            return None
        if self.metric in RL_METRICS:  # mean over tasks of the evaluation episodes
            name = self.metric.removeprefix("val_")
            got = [val[t][name] for t in self.spec if name in val.get(t, {})]
            return sum(got) / len(got) if len(got) == len(self.spec) else None
        if self.metric == "val_delta_m":
            from envs.metrics import delta_m

            return delta_m({t: val[t] for t in self.spec}, self.reference, self.spec)
        if self.metric == "val_loss":
            losses = [val[t]["loss"] for t in self.spec if "loss" in val.get(t, {})]
            return sum(losses) / len(losses) if losses else None
        _, task, name = self.metric.split("/", 2)
        return val.get(task, {}).get(name)

    def current(self) -> float | None:
        if not self.values:
            return None
        vals = [self.values[e] for e in sorted(self.values)]
        if self.selection == "best_val":
            return min(vals) if self.mode == "min" else max(vals)
        last = vals[-max(1, self.average_last):]
        return sum(last) / len(last)

    def update(self, report: Mapping[str, Any]) -> dict[str, Any]:
        """The report with ``objective`` (once there is one) and ``epochs_done`` added."""
        epoch = int(report["epoch"])
        val: dict[str, dict[str, float]] = {}
        for k, v in report.items():
            if k.startswith("val/") and k.count("/") == 2:
                _, task, name = k.split("/")
                val.setdefault(task, {})[name] = float(v)
        v = self.value(epoch, val or None)
        if v is not None and math.isfinite(v):
            self.values[epoch] = float(v)
        # Tune sees validation and training numbers only: nothing can be selected on test
        out = {k: v for k, v in report.items() if not k.startswith("test")}
        out.update({TIME_ATTR: epoch + 1, "run_id": self.run_id})
        cur = self.current()
        if cur is not None:
            out[OBJECTIVE] = cur
        return out

    def preload(self) -> int | None:
        """Feed the evaluations already in the Parquet data; returns the last epoch seen."""
        rows = run_metric_rows(self.out, self.run_id)
        if rows is None:
            return None
        val = rows[rows.split == self.split]
        if self.split == "eval":  # the RL trainer's step-0 evaluation is never reported
            val = val[(val.step > 0) & (val.task != "")]
        for epoch in sorted(set(val.epoch)):
            v = self.value(int(epoch), _nested(val[val.epoch == epoch]))
            if v is not None and math.isfinite(v):
                self.values[int(epoch)] = float(v)
        return int(val.epoch.max()) if len(val) else None


def _nested(rows: Any) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for task, metric, value in zip(rows.task, rows.metric, rows.value):
        out.setdefault(task, {})[metric] = float(value)
    return out


def run_metric_rows(out: str | Path, run_id: str):
    """One run's metric rows (pandas) or None."""
    import pyarrow.dataset as ds

    from orchestrator.results import METRIC_SCHEMA

    d = Path(out) / "metrics" / run_id
    files = sorted(str(p) for p in d.glob("*.parquet") if not p.name.startswith("."))
    if not files:
        return None
    return ds.dataset(files, schema=METRIC_SCHEMA, format="parquet").to_table().to_pandas()


def epoch_values(out: str | Path, run_id: str, epoch: int,
                 split: str = "val") -> dict[str, dict[str, float]]:
    """{task: {metric: value}} of the validation rows one evaluation wrote (incl. ``loss``;
    ``split="eval"``: an RL evaluation's per-task rows)."""
    rows = run_metric_rows(out, run_id)
    if rows is None:
        return {}
    sel = rows[(rows.split == split) & (rows.epoch == epoch)]
    return _nested(sel[sel.task != ""] if split == "eval" else sel)


def metric_choices(bench: Any) -> tuple[list[str], str | None]:
    """(valid --metric values, why val_delta_m is unavailable or None)."""
    from envs.metrics import delta_m

    spec = dict(bench.metrics)
    if _kind(bench) == "rl":
        why = (f"{bench.name!r} is an RL benchmark: it is scored by evaluation episodes, not by "
               "a validation split's loss or Δm")
        return [*RL_METRICS, *(f"val/{t}/{m.name}" for t, ms in spec.items() for m in ms)], why
    names = []
    why = None
    ref = bench.stl_reference
    if ref is None:
        why = (f"benchmark {bench.name!r} has no single-task reference for these options "
               "(Δm needs one)")
    else:
        try:
            delta_m({t: dict(ref[t]) for t in spec}, ref, spec)
            names.append("val_delta_m")
        except (KeyError, ValueError) as e:
            why = f"the single-task reference of {bench.name!r} does not cover every metric ({e})"
    names.append("val_loss")
    names += [f"val/{t}/{m.name}" for t, ms in spec.items() for m in ms]
    return names, why


def resolve_metric(metric: str | None, bench: Any) -> tuple[str, str]:
    """(metric, mode), or ``ConfigError`` listing the valid metrics."""
    names, why = metric_choices(bench)
    rl = _kind(bench) == "rl"
    if metric is None:
        metric = RL_METRICS[0] if rl else "val_delta_m" if "val_delta_m" in names else "val_loss"
    if metric not in names:
        if metric == "val_delta_m" or (rl and metric == "val_loss"):
            msg = f"--metric {metric} is not available: {why}"
        elif metric in RL_METRICS:
            msg = (f"--metric {metric} is for RL benchmarks (mean evaluation {metric[4:]}); "
                   f"{bench.name!r} is supervised")
        elif metric.startswith("test"):
            msg = (f"--metric {metric!r} would select hyperparameters on the test split, "
                   "which mtlx never does")
        else:
            close = difflib.get_close_matches(metric, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            msg = f"unknown --metric {metric!r}{hint}"
        raise ConfigError(f"{msg}; valid metrics for {bench.name!r}: {', '.join(names)}")
    if metric.startswith("val/"):
        _, task, name = metric.split("/", 2)
        hib = next(m.higher_is_better for m in bench.metrics[task] if m.name == name)
        return metric, "max" if hib else "min"
    return metric, "max" if metric in RL_METRICS else "min"


def _kind(bench: Any) -> str:
    return getattr(type(bench), "kind", "supervised")


def rl_evaluations(run: RunConfig) -> int:
    """How many evaluations an RL run makes (ASHA's ``max_t``): one every ``eval_every``
    loop steps, one at the end, plus the untrained one at step 0 (``eval_at_start``)."""
    from orchestrator.train import trainer_module

    scfg = trainer_module("rl").sac_config(run)
    return -(-scfg.steps // scfg.eval_every) + int(scfg.eval_at_start)


# ---------------------------------------------------------------------------------------
# the search specification (everything checked here, before Ray)
# ---------------------------------------------------------------------------------------


@dataclass
class Search:
    """A fully validated search: what :func:`run_search` executes."""

    exp: ExperimentConfig  # the user's experiment (one method; what best.yaml builds on)
    settings: TuneSettings
    method: str
    base: RunConfig  # the run every trial starts from (validated by orchestrator.validate)
    params: tuple[Param, ...]
    metric: str
    mode: str
    default_point: dict[str, Any] | None  # the default configuration, if inside the space
    objective: Objective
    held_out: dict[str, Any] = field(default_factory=dict)  # bench options added for val
    fixed_train: dict[str, Any] = field(default_factory=dict)  # fixed space.<train field>
    notes: list[str] = field(default_factory=list)
    resume: bool = False
    fresh: bool = False
    kind: str = "supervised"  # the benchmark's kind ("rl": evaluations, not epochs)

    @property
    def search_id(self) -> str:
        s = self.settings
        ident = {
            "base": self.base.identity(), "space": {p.key: p.to_json() for p in self.params},
            "metric": self.metric, "scheduler": s.scheduler, "trials": s.trials, "seed": s.seed,
            "include_default": s.include_default,
            "asha": [self.grace_period, s.reduction_factor] if s.scheduler == "asha" else None,
        }
        blob = json.dumps(ident, sort_keys=True, default=str)
        digest = hashlib.sha256(blob.encode()).hexdigest()[:10]
        return f"{self.base.benchmark}.{self.method}.{digest}"

    @property
    def epochs(self) -> int:
        """ASHA's ``max_t``: the epochs of a trial, or for RL its evaluations."""
        if self.kind == "rl":
            return rl_evaluations(self.base)
        return int(self.base.train.epochs)

    @property
    def unit(self) -> str:
        return "evaluations" if self.kind == "rl" else "epochs"

    @property
    def grace_period(self) -> int:
        g = self.settings.grace_period
        return max(1, self.epochs // 4) if g is None else g

    @property
    def dir(self) -> Path:
        return Path(self.base.out) / "searches" / self.search_id

    def trial_run(self, params: Mapping[str, Any], trial_id: str) -> RunConfig:
        return apply_params(self.base, params, trial_id, self.search_id)


def build_search(data: Mapping[str, Any], overrides: Sequence[str] = (), *,
                 workdir: str | None = None, resume: bool = False,
                 fresh: bool = False) -> Search:
    """Validate a tune config (YAML data + ``key=value`` / ``space.NAME=SPEC`` /
    ``tune.KEY=VALUE`` overrides) into a :class:`Search`, before any Ray process starts."""
    import methods
    from orchestrator.validate import expand, import_plugins, open_benchmark

    data = dict(data)
    tune_data = data.pop("tune", None) or {}
    if not isinstance(tune_data, Mapping):
        raise ConfigError("the 'tune' section must be a mapping (trials, metric, space, ...)")
    tune_data = dict(tune_data)
    space_in = tune_data.pop("space", None) or {}
    if not isinstance(space_in, Mapping):
        raise ConfigError("tune.space must be a mapping {name: SPEC}")
    space_in = dict(space_in)
    exp_over = []
    for text in overrides:
        key = text.split("=", 1)[0].strip()
        if key.startswith(("space.", "tune.space.")):
            name = key.split("space.", 1)[1]
            if "=" not in text or not name:
                raise ConfigError(f"override {text!r} must look like space.NAME=SPEC "
                                  "(e.g. space.c=uniform(0.2,0.6))")
            space_in[name] = text.split("=", 1)[1].strip()
        elif key.startswith("tune."):
            path, value = parse_override(text)
            tune_data[".".join(path[1:])] = value
        else:
            exp_over.append(text)
    data = apply_overrides(data, exp_over)
    methods_given = "methods" in data
    exp = experiment_from_dict(data)
    settings = _build(TuneSettings, tune_data, prefix="tune.")
    _check_settings(settings)
    import_plugins(exp.plugins, workdir)

    if not methods_given:
        exp.methods = [DEFAULT_METHOD]
    if len(exp.methods) != 1 or exp.methods[0] == STL:
        raise ConfigError(f"mtlx tune searches one method, got methods={exp.methods}; fix: "
                          "--method NAME (a method with hyperparameters, not 'stl')")
    method = exp.methods[0]
    try:
        mcls = methods.get_class(method)
    except ValueError as e:
        raise ConfigError(f"{e} (fix: --method NAME)") from None

    # the benchmark: validation split, or a documented held-out part of train; RL benchmarks
    # are scored by their evaluation episodes (every train.eval_every loop steps)
    data_root = str(Path(exp.data_root).expanduser().resolve()) if exp.data_root else None
    bench = open_benchmark(exp.benchmark, data_root, exp.bench_options)
    kind = _kind(bench)
    if kind not in ("supervised", "rl"):
        raise ConfigError(f"mtlx tune supports supervised and RL benchmarks; {exp.benchmark!r} "
                          f"is of kind {kind!r}")
    rl = kind == "rl"
    if not rl and exp.train.eval_every not in (None, 1):
        raise ConfigError("tune trials evaluate every epoch (the objective drives ASHA and TPE "
                          f"per epoch); remove train.eval_every={exp.train.eval_every}")
    held_out: dict[str, Any] = {}
    notes: list[str] = []
    if not rl and "val" not in bench.splits:
        if "val_size" not in type(bench).options or "val_size" in exp.bench_options:
            raise ConfigError(
                f"benchmark {exp.benchmark!r} has no validation split (splits "
                f"{list(bench.splits)}) and no way to hold one out of train; the objective "
                "is never computed on test"
            )
        n = _count(bench.make_loader("train", 1))
        held_out = {"val_size": max(1, int(round(HELD_OUT_FRACTION * n)))}
        notes.append(f"{exp.benchmark} has no validation split: trials hold out "
                     f"{held_out['val_size']} of its {n} training samples (val_size) as one")
        bench = open_benchmark(exp.benchmark, data_root, {**exp.bench_options, **held_out})
    metric, mode = resolve_metric(settings.metric, bench)

    # the space: the method's declared dimensions, then the user's entries
    parsed: dict[str, tuple[str, Any, Any, str]] = {}
    for name, spec in space_in.items():
        key = canonical_key(str(name), method)
        if key in parsed:
            raise ConfigError(f"space.{name}: {key!r} is given twice")
        if rl and key.removeprefix("train.") in RL_UNSEARCHABLE and key.startswith("train."):
            raise ConfigError(f"space.{name}: {exp.benchmark!r} trains SAC with Adam and no "
                              f"weight decay, so {key} has no effect; searchable training "
                              "fields for RL: train.lr, train.method_lr")
        sk, payload, cond = parse_spec(str(name), spec)
        parsed[key] = (sk, payload, cond, f"space.{name}={spec}")
    fixed_hp = {k: v for k, (kind, v, _, _) in parsed.items() if kind == _FIXED and "." not in k}
    fixed_train = {k.removeprefix("train."): v for k, (kind, v, _, _) in parsed.items()
                   if kind == _FIXED and k.startswith("train.")}

    # the base run: one method, the search seed, trials evaluate every epoch (RL: every
    # train.eval_every loop steps, the protocol's unless set). The benchmark's method_hparams
    # (MT10's CAGrad c = 0.9 ...) fill the base run in expand; sampled values replace them.
    run_exp = dataclasses.replace(
        exp, methods=[method], seeds=[settings.seed],
        hparams={method: {**exp.hparams.get(method, {}), **fixed_hp}},
        train=dataclasses.replace(exp.train, **({} if rl else {"eval_every": 1}),
                                  **fixed_train),
        bench_options={**exp.bench_options, **held_out},
        workers=settings.workers_per_trial if settings.workers_per_trial > 1 else 0,
        gpus_per_worker=settings.gpus_per_trial / settings.workers_per_trial,
    )
    if run_exp.workers == 0 and run_exp.gpus_per_worker > 0:
        run_exp.workers = 1  # the trial process holds the GPU (validate's workers=0 check is local)
    base = expand(run_exp, workdir)[0]
    base = dataclasses.replace(base, workers=settings.workers_per_trial
                               if settings.workers_per_trial > 1 else 0)

    declared = {k: d for k, d in mcls.search_space.items()}
    entries: dict[str, tuple[Dimension, Any, str]] = {
        k: (d, None, f"{method}.search_space[{k!r}]") for k, d in declared.items()}
    for key, (kind, payload, cond, text) in parsed.items():
        if kind in (_FIXED, _DEFAULT):
            entries.pop(key, None)
        elif kind == _SEARCH:
            entries[key] = (builtin_dimension(key, method, base.train.lr), cond, text)
        else:
            entries[key] = (payload, cond, text)
    params = _order(entries)
    if not params:
        raise ConfigError(
            f"nothing to search: {method!r} declares no search space and none is given; fix: "
            "add dimensions, e.g. space.lr=search space.weight_decay=search (the same budget "
            "for a baseline such as ew)"
        )
    defaults = {**base.hparams, **{f"train.{k}": getattr(base.train, k) for k in TRAIN_SEARCHABLE}}
    _check_space(params, base, bench, method, defaults)
    default_point = _default_point(params, defaults)
    if settings.include_default and default_point is None:
        notes.append("the default configuration lies outside the space: no default trial")

    objective = Objective(
        metric=metric, mode=mode, selection=base.train.selection or "last",
        average_last=base.train.average_last or 1,
        spec={t: list(ms) for t, ms in bench.metrics.items()},
        reference=None if getattr(bench, "stl_reference", None) is None
        else {t: dict(v) for t, v in bench.stl_reference.items()},
        out=base.out, run_id="", split="eval" if rl else "val",
    )  # fmt: skip
    return Search(exp=dataclasses.replace(exp, methods=[method]), settings=settings,
                  method=method, base=base, params=params, metric=metric, mode=mode,
                  default_point=default_point if settings.include_default else None,
                  objective=objective, held_out=held_out, fixed_train=fixed_train,
                  notes=notes, resume=resume, fresh=fresh, kind=kind)


def _count(loader: Any) -> int:
    ds = getattr(loader, "dataset", None)
    return len(ds) if ds is not None else len(loader)


def _check_settings(s: TuneSettings) -> None:
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(msg)

    need(s.trials >= 1, f"tune.trials must be >= 1, got {s.trials}")
    need(s.scheduler in SCHEDULERS, f"tune.scheduler must be one of {list(SCHEDULERS)}, got "
                                    f"{s.scheduler!r}")
    need(s.grace_period is None or s.grace_period >= 1, "tune.grace_period must be >= 1")
    need(s.reduction_factor >= 2, "tune.reduction_factor must be >= 2")
    need(s.seed >= 0, f"tune.seed must be >= 0, got {s.seed}")
    need(s.workers_per_trial >= 1, f"--workers-per-trial must be >= 1, got "
                                   f"{s.workers_per_trial} (1: the trial process trains)")
    need(math.isfinite(s.gpus_per_trial) and s.gpus_per_trial >= 0,
         f"--gpus-per-trial must be >= 0, got {s.gpus_per_trial}")
    need(s.max_concurrent is None or s.max_concurrent >= 1, "--max-concurrent must be >= 1")
    need(s.max_failures >= 0, "tune.max_failures must be >= 0")


def _order(entries: Mapping[str, tuple[Dimension, Any, str]]) -> tuple[Param, ...]:
    """Params with every condition's parent first; conditions checked."""
    sp = _sp()
    plain = [Param(k, d, None, t) for k, (d, c, t) in entries.items() if c is None]
    cond = []
    for k, (d, c, t) in entries.items():
        if c is None:
            continue
        parent = entries.get(c[0])
        if parent is None or not isinstance(parent[0], sp.Choice) or parent[1] is not None:
            raise ConfigError(f"{t}: the condition's {c[0]!r} must be an unconditional "
                              f"choice(...) of the space")
        bad = [v for v in c[1] if v not in parent[0].values]
        if bad:
            raise ConfigError(f"{t}: {bad} are not among {c[0]}'s choices {list(parent[0].values)}")
        cond.append(Param(k, d, (c[0], tuple(c[1])), t))
    return tuple(plain + cond)


def _complete(params: Sequence[Param], point: dict[str, Any], defaults: Mapping[str, Any]) -> dict:
    """Add active conditional parameters (at their centre), drop inactive ones."""
    out = dict(point)
    for p in params:
        if p.when is None:
            continue
        if p.active(out):
            out.setdefault(p.key, _center(p.dim, defaults.get(p.key)))
        else:
            out.pop(p.key, None)
    return out


def _check_space(params: Sequence[Param], base: RunConfig, bench: Any, method: str,
                 defaults: Mapping[str, Any]) -> None:
    """Build the range ends and every choice through the method's Config / the training
    checks (and the trainer's capability checks for choices); errors name the entry."""
    sp = _sp()
    from methods.registry import make_config
    from orchestrator.train import trainer_module
    from orchestrator.validate import check_train

    rl = _kind(bench) == "rl"
    trainer = trainer_module(_kind(bench))
    center = {p.key: _center(p.dim, defaults.get(p.key)) for p in params if p.when is None}
    point = _complete(params, center, defaults)
    try:
        make_config(method, **apply_params(base, point).hparams)
    except ValueError as e:
        raise ConfigError(
            f"the search space is inconsistent: at {point} {method!r} says: "
            f"{str(e).splitlines()[0]}; fix: make an entry conditional on the choice it "
            "belongs to (space.NAME=SPEC if CHOICE=VALUE) or remove it"
        ) from None
    checked: set[str] = set()
    for p in params:
        for v in _candidates(p.dim):
            point = dict(center)
            if p.when is not None:
                point[p.when[0]] = p.when[1][0]
            point[p.key] = v
            point = _complete(params, point, defaults)
            run = apply_params(base, point)
            try:
                make_config(method, **run.hparams)
                check_train(run.train)
                blob = json.dumps(run.hparams, sort_keys=True, default=str)
                if rl:  # cheap (no data): every candidate, incl. training fields
                    trainer.validate([run], bench)
                elif isinstance(p.dim, (sp.Choice, sp.IntUniform)) and blob not in checked:
                    checked.add(blob)
                    trainer.validate([run], bench)
            except ValueError as e:
                msg = str(e).splitlines()[0]
                raise ConfigError(
                    f"{p.text}: {p.key}={v!r} is invalid for {method!r} ({msg}); fix: narrow "
                    "the range or drop the value, or add what it needs to the space as a "
                    "conditional entry (space.NAME=SPEC if CHOICE=VALUE)"
                ) from None


def _default_point(params: Sequence[Param], defaults: Mapping[str, Any]) -> dict[str, Any] | None:
    sp = _sp()
    point = {}
    for p in params:
        if not p.active(point):
            continue
        v = defaults.get(p.key)
        if not _contains(p.dim, v):
            return None
        point[p.key] = int(v) if isinstance(p.dim, sp.IntUniform) else v
    return point


# ---------------------------------------------------------------------------------------
# Ray Tune: the trial, names, callbacks, resources
# ---------------------------------------------------------------------------------------


class TrialDiverged(RuntimeError):
    """A trial's loss became non-finite: the trial fails, the search continues."""


def trial_name(trial: Any) -> str:
    """``t0000`` for the first trial created, ... (Tune's counter; kept on restore)."""
    tag = str(getattr(trial, "experiment_tag", "")).split("_", 1)[0]
    return f"t{int(tag) - 1:04d}" if tag.isdigit() else str(trial.trial_id)


def _trial(config: dict[str, Any], job: dict[str, Any]) -> None:
    """A Tune trial: the run of ``config`` through the one training function.

    Every evaluation reports the objective (W = 1: ``RunContext.report``; W ≥ 2: the
    Train controller's report callback). A restarted trial preloads the evaluations its
    earlier attempt wrote; if its run had already trained every epoch (killed before Tune
    recorded the end) nothing is retrained and the final objective is reported from the
    Parquet rows, so Tune and Optuna always see it."""
    from ray import tune as ray_tune

    from orchestrator.results import ResultsStore
    from orchestrator.train import local_context, train_run

    base = RunConfig.from_dict(job["base"])
    name = ray_tune.get_context().get_trial_name()
    cfg = apply_params(base, config, name, job["search_id"])
    objective = dataclasses.replace(job["objective"], run_id=cfg.run_id, values={})
    objective.preload()
    row = ResultsStore(cfg.out).read_run(cfg.run_id)
    reports = [0]
    if row is None or row.get("status") != "finished":
        if cfg.workers <= 1:
            def report(metrics: dict[str, Any]) -> None:
                reports[0] += 1
                ray_tune.report(objective.update(metrics))

            summary = train_run(cfg, local_context(cfg, report=report))
        else:
            from orchestrator import ray_train

            reports[0] = -1  # the controller's callback reports; the driver cannot count
            summary = ray_train.fit(cfg, callbacks=[_objective_callback(objective)],
                                    max_failures=job["train_max_failures"])
        if summary.get("status") == "nonfinite":
            raise TrialDiverged(summary.get("error") or "non-finite loss")
    if reports[0] <= 0:
        final = dataclasses.replace(job["objective"], run_id=cfg.run_id, values={})
        last = final.preload()
        if final.current() is not None and last is not None:
            ray_tune.report({OBJECTIVE: final.current(), TIME_ATTR: last + 1, "epoch": last,
                             "run_id": cfg.run_id})


def _objective_callback(objective: Objective) -> Any:
    """A ``TuneReportCallback`` that adds the objective to rank 0's metrics (W ≥ 2)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class ObjectiveReportCallback(TuneReportCallback):
        def __init__(self, objective: Objective) -> None:
            super().__init__()
            self.objective = objective

        def after_report(self, run_context, metrics, checkpoint):  # noqa: ANN001
            metrics = [self.objective.update(metrics[0]), *metrics[1:]]
            super().after_report(run_context, metrics, checkpoint)

    return ObjectiveReportCallback(objective)


_ASHA_CLS: list[type] = []


def make_asha(max_t: int, grace_period: int, reduction_factor: int,
              protect: str | None) -> Any:
    """ASHA on the per-epoch objective (``time_attr=epochs_done``) that never stops trial
    ``protect`` (the default configuration: "best vs default" compares fully trained runs;
    its values still fill the rungs) and lets trials that reach ``max_t`` end on their own
    (``stop_last_trials=False``, and no stop at a rung on the last epoch: the run writes its
    reported numbers and ``finished``).
    Pickles as a call of this function, like :func:`make_printer`."""
    if not _ASHA_CLS:
        from ray.tune.schedulers import ASHAScheduler, TrialScheduler

        class ProtectedASHA(ASHAScheduler):
            def __init__(self, max_t: int, grace_period: int, reduction_factor: int,
                         protect: str | None) -> None:
                super().__init__(time_attr=TIME_ATTR, max_t=max_t, grace_period=grace_period,
                                 reduction_factor=reduction_factor, stop_last_trials=False)
                self._args = (max_t, grace_period, reduction_factor, protect)

            def __reduce__(self):
                return make_asha, self._args

            def on_trial_result(self, tune_controller, trial, result):  # noqa: ANN001
                action = super().on_trial_result(tune_controller, trial, result)
                last = result.get(TIME_ATTR, 0) >= self._args[0]  # nothing left to save
                if action == TrialScheduler.STOP and (last or trial_name(trial) == self._args[3]):
                    return TrialScheduler.CONTINUE
                return action

        _ASHA_CLS.append(ProtectedASHA)
    return _ASHA_CLS[0](max_t, grace_period, reduction_factor, protect)


def _fmt_params(config: Mapping[str, Any]) -> str:
    parts = []
    for k, v in sorted(config.items()):
        if isinstance(v, float):
            if math.isnan(v):
                continue
            v = f"{v:.4g}"
        parts.append(f"{k.removeprefix('train.')}={v}")
    return " ".join(parts)


_PRINTER_CLS: list[type] = []


def make_printer(total: int, epochs: int, unit: str = "epochs") -> Any:
    """A ``ray.tune.Callback`` printing one line per finished or failed trial (Tune's own
    table is off). Built lazily so that importing this module does not import Ray; it
    pickles as a call of this function (Tune stores its callbacks in the experiment state)."""
    if not _PRINTER_CLS:
        from ray.tune import Callback

        class TrialPrinter(Callback):
            def __init__(self, total: int, epochs: int, unit: str) -> None:
                self.total, self.epochs, self.unit, self.done = total, epochs, unit, 0

            def __reduce__(self):
                return make_printer, (self.total, self.epochs, self.unit)

            def _line(self, trial: Any, text: str) -> None:
                self.done += 1
                sys.stderr.write(f"  trial {trial_name(trial)} {_fmt_params(trial.config)}: "
                                 f"{text}\n")
                sys.stderr.flush()

            def on_trial_complete(self, iteration, trials, trial, **info):  # noqa: ANN001
                r = trial.last_result or {}
                obj, ep = r.get(OBJECTIVE), r.get(TIME_ATTR)
                text = "no objective" if obj is None else f"objective {obj:.4g}"
                if ep is not None and ep < self.epochs:
                    text += f" (stopped by ASHA after {ep} of {self.epochs} {self.unit})"
                self._line(trial, text)

            def on_trial_error(self, iteration, trials, trial, **info):  # noqa: ANN001
                self._line(trial, "failed")

        _PRINTER_CLS.append(TrialPrinter)
    return _PRINTER_CLS[0](total, epochs, unit)


# ---------------------------------------------------------------------------------------
# running a search
# ---------------------------------------------------------------------------------------

#: the search summary table (one row per search; ``<out>/searches/<id>/summary.parquet``)
SUMMARY_COLUMNS = (
    ("search_id", "string"), ("benchmark", "string"), ("method", "string"),
    ("metric", "string"), ("mode", "string"), ("scheduler", "string"), ("trials", "int64"),
    ("trials_finished", "int64"), ("trials_stopped", "int64"), ("trials_failed", "int64"),
    ("complete", "bool"), ("best_trial_id", "string"), ("best_run_id", "string"),
    ("best_objective", "float64"), ("best_params", "string"), ("default_trial_id", "string"),
    ("default_objective", "float64"), ("space", "string"), ("seed", "int64"),
    ("epochs", "int64"), ("workers_per_trial", "int64"), ("held_out", "string"),
    ("best_config", "string"), ("wall_time_s", "float64"), ("finished_at", "string"),
    ("base_config", "string"),
)  # fmt: skip


def _summary_schema():
    import pyarrow as pa

    types = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(),
             "bool": pa.bool_()}
    return pa.schema([(n, types[t]) for n, t in SUMMARY_COLUMNS])


@dataclass
class SearchOutcome:
    """What a search left (also readable later from its files)."""

    search_id: str
    dir: Path
    complete: bool
    trials: Any  # pandas DataFrame, one row per trial
    summary: dict[str, Any]
    best_yaml: Path | None


def capacity(search: Search, resources: Mapping[str, float]) -> int:
    """Trials at once: what the cluster's CPUs/GPUs and driver slots hold (``ConfigError``
    if not even one trial fits)."""
    s = search.settings
    W, c = s.workers_per_trial, search.base.cpus_per_worker
    need_cpu, need_gpu = W * c, s.gpus_per_trial
    have_cpu, have_gpu = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    slots = resources.get("driver_slot", 0.0)
    if slots < 1:
        raise ConfigError(
            "the Ray cluster has no 'driver_slot' resource for Tune trial drivers; fix: start "
            "it with `ray start --head --resources='{\"driver_slot\": 8}'` (a Ray started by "
            "mtlx tune declares it itself)"
        )
    if need_cpu > have_cpu or need_gpu > have_gpu + 1e-9:
        raise ConfigError(
            f"one trial needs {need_cpu} CPUs and {need_gpu:g} GPUs ({W} worker(s) × {c} CPU), "
            f"but the Ray cluster has {have_cpu:g} CPUs and {have_gpu:g} GPUs; fix: fewer "
            "--workers-per-trial / --gpus-per-trial / cpus_per_worker, or a bigger cluster"
        )
    k = int(have_cpu // need_cpu)
    if need_gpu > 0:
        k = min(k, int(have_gpu / need_gpu + 1e-9))
    k = min(k, int(slots), s.trials)
    if s.max_concurrent is not None:
        k = min(k, s.max_concurrent)
    return max(1, k)


def trial_resources(search: Search) -> dict[str, float]:
    """A trial's own reservation: the training process (W = 1), or a zero-CPU driver whose
    Ray Train workers reserve theirs (W ≥ 2)."""
    s = search.settings
    if s.workers_per_trial > 1:
        return {"CPU": 0, "driver_slot": 1}
    res = {"CPU": float(search.base.cpus_per_worker), "driver_slot": 1}
    if s.gpus_per_trial > 0:
        res["GPU"] = s.gpus_per_trial
    return res


def _state_dir(search: Search) -> Path:
    return search.dir / "tune"


def clear_search(search_dir: Path, out: Path) -> None:
    """Delete a search: its directory and the runs of its trials (``--fresh``)."""
    from orchestrator.launch import clear_run
    from orchestrator.results import read_table

    sid = search_dir.name
    runs = read_table(out, "runs")
    for run_id in runs.run_id[runs.search_id == sid]:
        clear_run(out, run_id)
    shutil.rmtree(search_dir, ignore_errors=True)


def run_search(search: Search, *, callbacks: Sequence[Any] = (), verbose: bool = False,
               ray_address: str | None = None) -> SearchOutcome:
    """Run (or resume) ``search`` on a local Ray started here, or on the running one."""
    import optuna

    state = _state_dir(search)
    if search.fresh:
        clear_search(search.dir, Path(search.base.out))
    exists = (state / "tuner.pkl").exists()
    if search.resume and not exists:
        print(f"note: no search {search.search_id} to resume in {search.dir} (other settings "
              "give another id); starting it", file=sys.stderr)
    if exists and not search.resume:
        done = load_summary(search.dir)
        if done is not None and done.get("complete"):
            print(f"note: search {search.search_id} is complete; its result follows (--fresh "
                  "repeats it)", file=sys.stderr)
            return _outcome_from_files(search)
        raise ConfigError(
            f"search {search.search_id} already exists in {search.dir} and is not complete; "
            "fix: add --resume to continue it, or --fresh to delete it and start over"
        )
    t0 = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # a trial without any result must not abort the whole search (strict metric checking
    # raises in the driver); Tune's new console output prints a header even at verbose=0
    env = {"TUNE_DISABLE_STRICT_METRIC_CHECKING": "1"}
    if not verbose:
        env["RAY_AIR_NEW_OUTPUT"] = "0"
    with _environ(env), warnings.catch_warnings():
        # a restarted trial reports its epochs again: Optuna keeps the first value
        warnings.filterwarnings("ignore", message="The reported value is ignored")
        grid = _fit(search, state, exists, callbacks, verbose, ray_address)
    return collect(search, _tune_trials(grid), time.perf_counter() - t0)


@contextlib.contextmanager
def _environ(values: Mapping[str, str]):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _fit(search: Search, state: Path, exists: bool, callbacks: Sequence[Any], verbose: bool,
         ray_address: str | None) -> Any:
    import optuna
    import ray
    from ray import tune as ray_tune
    from ray.tune.search.optuna import OptunaSearch

    from orchestrator.launch import init_ray

    s = search.settings
    started = init_ray(ray_address, verbose,
                       **({} if ray_address else {"resources": {"driver_slot": s.trials}}))
    try:
        k = capacity(search, ray.cluster_resources())
        job = {"base": search.base.to_dict(), "search_id": search.search_id,
               "objective": search.objective, "train_max_failures": search.exp.max_failures}
        trainable = ray_tune.with_resources(ray_tune.with_parameters(_trial, job=job),
                                            trial_resources(search))
        if exists:
            tuner = ray_tune.Tuner.restore(str(state), trainable, resume_unfinished=True,
                                           resume_errored=False)
        else:
            n_startup = max(2, min(10, s.trials // 3))
            searcher = OptunaSearch(
                space=DefineSpace(search.params), metric=OBJECTIVE, mode=search.mode,
                points_to_evaluate=[search.default_point] if search.default_point else None,
                sampler=optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=n_startup),
            )
            scheduler = None
            if s.scheduler == "asha":
                scheduler = make_asha(search.epochs, min(search.grace_period, search.epochs),
                                      s.reduction_factor,
                                      "t0000" if search.default_point is not None else None)
            tuner = ray_tune.Tuner(
                trainable,
                tune_config=ray_tune.TuneConfig(
                    metric=OBJECTIVE, mode=search.mode, search_alg=searcher,
                    scheduler=scheduler, num_samples=s.trials, max_concurrent_trials=k,
                    trial_name_creator=trial_name, trial_dirname_creator=trial_name,
                    reuse_actors=s.workers_per_trial == 1,
                ),
                run_config=ray_tune.RunConfig(
                    name=state.name, storage_path=str(state.parent),
                    failure_config=ray_tune.FailureConfig(max_failures=s.max_failures),
                    callbacks=[make_printer(s.trials, search.epochs, search.unit), *callbacks],
                    verbose=1 if verbose else 0,
                ),
            )  # fmt: skip
        return tuner.fit()
    finally:
        if started:
            ray.shutdown()




def _tune_trials(grid: Any) -> list[Any]:
    """The Tune ``Trial`` objects of a result grid (status, config, last result)."""
    return list(grid._experiment_analysis.trials)  # no public per-trial status in Ray 2.60


# ---------------------------------------------------------------------------------------
# results: trials table, summary, best configuration
# ---------------------------------------------------------------------------------------


def collect(search: Search, trials: Sequence[Any], wall_time_s: float) -> SearchOutcome:
    """Write the trials table, the summary and ``best.yaml`` from Tune's trials; mark
    ASHA-stopped runs ``stopped`` in the runs table."""
    import pandas as pd

    from orchestrator.results import ResultsStore

    store = ResultsStore(search.base.out)
    keys = [p.key for p in search.params]
    rows = []
    for t in sorted(trials, key=trial_name):
        name = trial_name(t)
        params = {k: t.config[k] for k in keys if k in t.config and not _missing(t.config[k])}
        run = search.trial_run(params, name)
        run_row = store.read_run(run.run_id) or {}
        last = t.last_result or {}
        epochs_done = last.get(TIME_ATTR, run_row.get("epochs_done"))
        run_status = run_row.get("status")
        if t.status == "ERROR":
            status = "nonfinite" if run_status == "nonfinite" else "failed"
        elif t.status == "TERMINATED":
            status = "finished" if run_status == "finished" else "stopped"
        else:
            status = "interrupted" if run_row else "pending"
        if status == "stopped" and run_status not in ("finished", "nonfinite", "stopped"):
            store.write_run({**run_row, "status": "stopped",
                             "error": f"stopped by ASHA after {epochs_done} of "
                                      f"{search.epochs} {search.unit} (search "
                                      f"{search.search_id})"})
        obj = last.get(OBJECTIVE)
        rows.append({
            "search_id": search.search_id, "trial_id": name, "trial_index": _index(name),
            "run_id": run.run_id, "benchmark": search.base.benchmark, "method": search.method,
            "seed": search.base.seed, "status": status,
            "is_default": search.default_point is not None and name == "t0000",
            "metric": search.metric, "mode": search.mode,
            "objective": float(obj) if obj is not None else math.nan,
            "epochs_done": int(epochs_done) if epochs_done is not None else 0,
            "wall_time_s": run_row.get("wall_time_s"), "error": run_row.get("error"),
            "params": json.dumps(params, sort_keys=True, default=str),
            **{f"hp.{k}": params.get(k) for k in keys},
        })  # fmt: skip
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame(columns=["search_id", "trial_id", "objective", "status"])
    for k in keys:  # a choice of mixed types is stored as text
        col = f"hp.{k}"
        if col in df and len({type(v) for v in df[col].dropna()}) > 1:
            df[col] = df[col].map(lambda v: None if _missing(v) else str(v))
    complete = len(df) == search.settings.trials and df.status.isin(
        ["finished", "stopped", "failed", "nonfinite"]).all()
    best = best_trial(df, search.mode)
    default = df[df.is_default] if "is_default" in df else df.iloc[0:0]
    best_yaml = None
    if best is not None:
        best_yaml = write_best_yaml(search, best, default)
    prev = load_summary(search.dir) or {}
    summary = {
        "search_id": search.search_id, "benchmark": search.base.benchmark,
        "method": search.method, "metric": search.metric, "mode": search.mode,
        "scheduler": search.settings.scheduler, "trials": search.settings.trials,
        "trials_finished": int((df.status == "finished").sum()),
        "trials_stopped": int((df.status == "stopped").sum()),
        "trials_failed": int(df.status.isin(["failed", "nonfinite"]).sum()),
        "complete": bool(complete),
        "best_trial_id": None if best is None else best["trial_id"],
        "best_run_id": None if best is None else best["run_id"],
        "best_objective": None if best is None else float(best["objective"]),
        "best_params": None if best is None else best["params"],
        "default_trial_id": default.trial_id.iloc[0] if len(default) else None,
        "default_objective": float(default.objective.iloc[0]) if len(default) else None,
        "space": json.dumps({p.key: p.to_json() for p in search.params}, default=str),
        "seed": search.settings.seed, "epochs": search.epochs,
        "workers_per_trial": search.settings.workers_per_trial,
        "held_out": json.dumps(search.held_out),
        "best_config": str(best_yaml) if best_yaml else None,
        "wall_time_s": float(prev.get("wall_time_s") or 0.0) + wall_time_s,
        "finished_at": _now(), "base_config": json.dumps(search.base.to_dict(), sort_keys=True),
    }  # fmt: skip
    _write_tables(search.dir, df, summary)
    return SearchOutcome(search.search_id, search.dir, bool(complete), df, summary, best_yaml)


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _index(name: str) -> int:
    return int(name[1:]) if name[1:].isdigit() else -1


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def best_trial(df: Any, mode: str) -> dict[str, Any] | None:
    """The best objective among trials that trained every epoch (``finished``), else among
    all with an objective; ties → the earliest trial."""
    if df.empty:
        return None
    ok = df[df.objective.map(lambda v: v is not None and math.isfinite(v))]
    pool = ok[ok.status == "finished"] if (ok.status == "finished").any() else ok
    if pool.empty:
        return None
    pool = pool.sort_values("trial_index", kind="stable")
    i = pool.objective.idxmin() if mode == "min" else pool.objective.idxmax()
    return pool.loc[i].to_dict()


def _write_tables(d: Path, trials: Any, summary: Mapping[str, Any]) -> None:
    import pyarrow as pa

    from orchestrator.results import write_atomic

    write_atomic(pa.Table.from_pandas(trials, preserve_index=False), d / "trials.parquet")
    schema = _summary_schema()
    write_atomic(pa.table({n: [summary.get(n)] for n in schema.names}, schema=schema),
                 d / "summary.parquet")


def load_summary(search_dir: Path) -> dict[str, Any] | None:
    p = Path(search_dir) / "summary.parquet"
    if not p.exists():
        return None
    import pyarrow.parquet as pq

    return pq.read_table(p).to_pylist()[0]


def load_trials(search_dir: Path):
    import pandas as pd

    p = Path(search_dir) / "trials.parquet"
    return pd.read_parquet(p) if p.exists() else None


def _outcome_from_files(search: Search) -> SearchOutcome:
    summary = load_summary(search.dir) or {}
    best = summary.get("best_config")
    return SearchOutcome(search.search_id, search.dir, bool(summary.get("complete")),
                         load_trials(search.dir), summary, Path(best) if best else None)


def best_config(search: Search, best: Mapping[str, Any]) -> dict[str, Any]:
    """The ``mtlx run`` config of the best trial: the user's experiment (full train split,
    the user's own bench options) with the trial's hyperparameters."""
    from orchestrator.config import TrainConfig

    params = json.loads(best["params"])
    run = search.trial_run(params, best["trial_id"])
    exp = search.exp
    user_train = {k: v for k, v in dataclasses.asdict(exp.train).items()
                  if v is not None and v != getattr(TrainConfig(), k)}
    _, sampled_train = split_params(params)
    data: dict[str, Any] = {"benchmark": exp.benchmark, "methods": [search.method],
                            "seeds": list(exp.seeds)}
    if exp.data_root:
        data["data_root"] = exp.data_root
    for key in ("bench_options", "model_options", "trainer_options"):
        if getattr(exp, key):
            data[key] = dict(getattr(exp, key))
    data["hparams"] = {search.method: {k: v for k, v in run.hparams.items() if v is not None}}
    train = {**user_train, **search.fixed_train, **sampled_train}
    if train:
        data["train"] = train
    if exp.plugins:
        data["plugins"] = list(exp.plugins)
    if run.workers > 1:  # W > 1 changes the numbers (drop_last of the global batch)
        data["workers"] = run.workers
    if run.gpus_per_worker > 0:
        data["gpus_per_worker"] = run.gpus_per_worker
    return json.loads(json.dumps(data, default=str))


def write_best_yaml(search: Search, best: Mapping[str, Any], default: Any) -> Path:
    data = best_config(search, best)
    lines = [
        f"# Best configuration of search {search.search_id} (mtlx tune, "
        f"{search.settings.trials} trials):",
        f"# trial {best['trial_id']}, {search.metric} = {best['objective']:.6g} on the "
        f"{'evaluation episodes' if search.kind == 'rl' else 'validation split'} "
        f"({search.mode}imised; run {best['run_id']}).",
    ]
    if len(default):
        d = default.iloc[0]
        lines.append(f"# default configuration (trial {d.trial_id}): {search.metric} = "
                     f"{d.objective:.6g}" + ("" if d.status == "finished" else f" ({d.status})"))
    if search.held_out:
        lines.append(f"# trials held out {search.held_out} of train as validation; this "
                     "config trains on the full train split.")
    lines.append(f"# run: mtlx run {search.dir / 'best.yaml'}")
    text = "\n".join(lines) + "\n" + yaml.safe_dump(data, sort_keys=False)
    experiment_from_dict(yaml.safe_load(text))  # what `mtlx run` will do: must load
    path = search.dir / "best.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".best.yaml.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


# ---------------------------------------------------------------------------------------
# reports: ``mtlx report`` of a search
# ---------------------------------------------------------------------------------------


def find_searches(root: str | Path, search_id: str | None = None) -> list[Path]:
    d = Path(root) / "searches"
    dirs = sorted(p for p in d.iterdir() if (p / "summary.parquet").exists()) if d.is_dir() else []
    if search_id is not None:
        dirs = [p for p in dirs if p.name == search_id]
        if not dirs:
            raise ConfigError(f"no search {search_id!r} in {root}/searches")
    return dirs


def param_importance(trials: Any, summary: Mapping[str, Any]) -> dict[str, float]:
    """Optuna's fANOVA importance (seeded) of each searched hyperparameter for the objective,
    from the trials that trained every epoch when there are at least 3 of them (objectives
    after fewer epochs are not comparable), else from every trial with a finite objective
    (ASHA-stopped ones with the value TPE saw); {} when fewer than 3 trials or nothing
    varies."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances
    from optuna.trial import create_trial

    space = json.loads(summary["space"])
    dists = {}
    for key, d in space.items():
        if d["kind"] == "Choice":
            dists[key] = CategoricalDistribution(d["values"])
        elif d["kind"] == "IntUniform":
            dists[key] = IntDistribution(d["low"], d["high"])
        else:
            dists[key] = FloatDistribution(d["low"], d["high"], log=d["kind"] == "LogUniform")
    ok = trials[trials.objective.map(lambda v: v is not None and math.isfinite(v))]
    if (ok.status == "finished").sum() >= 3:
        ok = ok[ok.status == "finished"]
    if len(ok) < 3 or not dists:
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize" if summary["mode"] == "min" else "maximize")
    for _, r in ok.iterrows():
        params = json.loads(r["params"])
        params = {k: v for k, v in params.items() if k in dists}
        study.add_trial(create_trial(params=params, distributions={k: dists[k] for k in params},
                                     value=float(r["objective"])))
    try:
        imp = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))
    except (RuntimeError, ValueError):  # e.g. no parameter varies
        return {}
    return {k: float(v) for k, v in imp.items()}


def tune_report(root: str | Path, search_id: str | None = None, fmt: str = "markdown") -> str:
    """Each search in ``root``: settings, best vs default, importance, the trials ranked
    (markdown) — or the trials tables as CSV. "" if ``root`` holds no search."""
    out = []
    for d in find_searches(root, search_id):
        summary, trials = load_summary(d), load_trials(d)
        if fmt == "csv":
            out.append(trials.to_csv(index=False))
            continue
        out.append(_search_markdown(summary, trials))
    return "\n".join(out)


def _search_markdown(summary: Mapping[str, Any], trials: Any) -> str:
    sid, metric, mode = summary["search_id"], summary["metric"], summary["mode"]
    lines = [f"### search {sid}", "",
             f"{summary['method']} on {summary['benchmark']}: {summary['trials']} trials "
             f"({summary['trials_finished']} finished, {summary['trials_stopped']} stopped by "
             f"ASHA, {summary['trials_failed']} failed"
             f"{'' if summary['complete'] else '; incomplete: resume with --resume'}), "
             f"objective {metric} on the validation split ({mode}imised), "
             f"{summary['wall_time_s']:.0f} s.", ""]
    if summary.get("best_trial_id"):
        line = f"best: {summary['best_trial_id']} {metric} = {summary['best_objective']:.4g}"
        if summary.get("default_objective") is not None:
            line += (f"; default configuration ({summary['default_trial_id']}): "
                     f"{summary['default_objective']:.4g}")
        lines += [line + f"; config: {summary.get('best_config')}", ""]
    imp = param_importance(trials, summary)
    if imp:
        lines += ["importance (Optuna fANOVA): "
                  + ", ".join(f"{k.removeprefix('train.')} {v:.2f}" for k, v in imp.items()), ""]
    hp = [c for c in trials.columns if c.startswith("hp.")]
    head = ["trial", "status", "epochs", metric] + [c[3:].removeprefix("train.") for c in hp]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ranked = trials.assign(_k=trials.objective * (1 if mode == "min" else -1)).sort_values(
        ["_k", "trial_index"], na_position="last")
    for _, r in ranked.iterrows():
        cells = [r.trial_id + (" (default)" if r.is_default else ""), r.status,
                 str(r.epochs_done), _num(r.objective)] + [_num(r[c]) for c in hp]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _num(v: Any) -> str:
    if _missing(v):
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def plot_search(root: str | Path, out_dir: str | Path, search_id: str | None = None) -> list[Path]:
    """PNG per search: objective per trial (with the running best) and the importances."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (MaxNLocator)

    files = []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for d in find_searches(root, search_id):
        summary, trials = load_summary(d), load_trials(d)
        imp = param_importance(trials, summary)
        fig, axes = plt.subplots(1, 2 if imp else 1, figsize=(11 if imp else 6, 4),
                                 squeeze=False)
        ax = axes[0][0]
        t = trials.sort_values("trial_index")
        for status, marker in (("finished", "o"), ("stopped", "x"), ("failed", "s"),
                               ("nonfinite", "s")):
            sel = t[t.status == status]
            if len(sel):
                ax.scatter(sel.trial_index, sel.objective, marker=marker, label=status)
        obj = t.objective.where(t.status == "finished")
        run_best = (obj.cummin() if summary["mode"] == "min" else obj.cummax()).ffill()
        ax.step(t.trial_index, run_best, where="post", color="k", lw=1, label="best so far")
        if summary.get("default_objective") is not None:
            ax.axhline(summary["default_objective"], ls="--", color="gray", label="default")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("trial")
        ax.set_ylabel(f"{summary['metric']} (validation)")
        ax.set_title(f"{summary['method']} on {summary['benchmark']}")
        ax.legend(fontsize=8)
        if imp:
            ax2 = axes[0][1]
            names = list(imp)[::-1]
            ax2.barh([n.removeprefix("train.") for n in names], [imp[n] for n in names])
            ax2.set_xlabel("importance (Optuna fANOVA)")
        fig.tight_layout()
        path = out_dir / f"search_{d.name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path)
    return files


# ---------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------

#: flag → tune setting (``tune.<name>``) or experiment key
_TUNE_FLAGS = ("trials", "metric", "scheduler", "workers_per_trial", "gpus_per_trial",
               "max_concurrent", "seed")
_EXP_FLAGS = {"benchmark": "benchmark", "method": "methods", "data_root": "data_root",
              "out": "out", "epochs": "train.epochs", "steps": "train.steps",
              "cpus_per_worker": "cpus_per_worker"}


def _add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--benchmark", help="benchmark name (default multi_digits)")
    p.add_argument("--method", help=f"the method to tune (default {DEFAULT_METHOD})")
    p.add_argument("--trials", type=int, help="number of trials (default 12)")
    p.add_argument("--metric", help="objective on the validation split: val_delta_m (default "
                                    "when there is a single-task reference), val_loss or "
                                    "val/<task>/<metric>; RL benchmarks (mt10, mt1): "
                                    "val_success (default: mean evaluation success, maximised), "
                                    "val_return or val/<task>/success|return")
    p.add_argument("--scheduler", choices=SCHEDULERS, help="asha (default): early stopping")
    p.add_argument("--workers-per-trial", type=int, dest="workers_per_trial",
                   help="1 (default): the trial trains in its own process; W >= 2: W Ray "
                        "Train workers")
    p.add_argument("--gpus-per-trial", type=float, dest="gpus_per_trial")
    p.add_argument("--cpus-per-worker", type=int, dest="cpus_per_worker")
    p.add_argument("--max-concurrent", type=int, dest="max_concurrent",
                   help="at most this many trials at once (default: what resources hold)")
    p.add_argument("--seed", type=int, help="seed of the runs and the sampler (default 0)")
    p.add_argument("--epochs", type=int, help="epochs per trial (default: the protocol's)")
    p.add_argument("--steps", type=int, help="RL benchmarks: loop steps per trial (train.steps; "
                                             "evaluations every train.eval_every steps)")
    p.add_argument("--data-root", dest="data_root")
    p.add_argument("--out", help="results directory (default results)")
    p.add_argument("--ray-address", dest="ray_address", help="connect to a Ray cluster")
    p.add_argument("--resume", action="store_true", default=None,
                   help="continue an interrupted search (finished trials are not re-run)")
    p.add_argument("--fresh", action="store_true", default=None,
                   help="delete an existing search with the same id (and its runs) first")
    p.add_argument("--verbose", action="store_true", default=None, help="show Ray's output")


_DESCRIPTION = (
    "Search a method's hyperparameters with Ray Tune + Optuna (TPE, seeded) and optional "
    "ASHA, on the validation split. Without arguments: DB-MTL's beta, beta_sigma and gamma "
    "strategy on multi_digits. Space entries: space.NAME=uniform(a,b) | loguniform(a,b) | "
    "int(a,b) | choice(x,y) | VALUE | default | search, optionally followed by "
    "'if CHOICE=VALUE'. Other key=value arguments override the config like in `mtlx run`. "
    "RL benchmarks (mt10, mt1: e.g. --method cagrad searches c, imgrad alpha) are scored by "
    "their evaluation episodes (--metric val_success), ASHA compares them per evaluation "
    "(every train.eval_every loop steps of --steps)."
)


def add_tune_subparser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``tune`` to ``mtlx``'s subcommands (positional arguments and flags may be mixed:
    everything after the first positional is re-parsed by :func:`main_tune`)."""
    p = subparsers.add_parser("tune", help="hyperparameter search (Ray Tune + Optuna)",
                              description=_DESCRIPTION)
    p.add_argument("args", nargs=argparse.REMAINDER,
                   metavar="[CONFIG.yaml] [space.NAME=SPEC | key=value ...]")
    _add_flags(p)
    meta = getattr(subparsers, "metavar", None)
    if isinstance(meta, str) and meta.startswith("{") and "tune" not in meta:
        subparsers.metavar = meta[:-1] + ",tune}"
    return p


def tune_parser() -> argparse.ArgumentParser:
    """A stand-alone parser of ``mtlx tune``'s arguments (``prog="mtlx tune"``)."""
    p = argparse.ArgumentParser(prog="mtlx tune", description=_DESCRIPTION)
    p.add_argument("args", nargs="*", metavar="[CONFIG.yaml] [space.NAME=SPEC | key=value ...]")
    _add_flags(p)
    return p


def parse_tune_args(argv: Sequence[str]) -> argparse.Namespace:
    return tune_parser().parse_intermixed_args(list(argv))


def search_from_args(args: argparse.Namespace) -> tuple[Search, dict[str, Any]]:
    """(validated search, run options) from parsed ``mtlx tune`` arguments."""
    positional = list(getattr(args, "args", []) or [])
    if any(a.startswith("-") for a in positional):  # flags after a positional (REMAINDER)
        rest = parse_tune_args(positional)
        for k, v in vars(rest).items():
            if k != "args" and v is not None:
                setattr(args, k, v)
        positional = list(rest.args)
    data: dict[str, Any] = {}
    if positional and "=" not in positional[0]:
        data = load_yaml(positional.pop(0))
    bad = [a for a in positional if "=" not in a]
    if bad:
        raise ConfigError(f"unexpected argument(s) {bad}: only the first argument may be a YAML "
                          "file, the rest must be space.NAME=SPEC or key=value overrides")
    overrides = []
    for flag, key in _EXP_FLAGS.items():
        v = getattr(args, flag, None)
        if v is not None:
            overrides.append(f"{key}={v}")
    for flag in _TUNE_FLAGS:
        v = getattr(args, flag, None)
        if v is not None:
            overrides.append(f"tune.{flag}={v}")
    if getattr(args, "verbose", None):
        overrides.append("verbose=true")
    if getattr(args, "ray_address", None):
        overrides.append(f"ray_address={args.ray_address}")
    search = build_search(data, overrides + positional, resume=bool(args.resume),
                          fresh=bool(args.fresh))
    return search, {"verbose": search.exp.verbose, "ray_address": search.exp.ray_address}


def main_tune(args: argparse.Namespace, *, callbacks: Sequence[Any] = ()) -> int:
    """``mtlx tune``: validate, search (or resume), print the best configuration.

    Returns 0 when the search is complete, 130 when it was interrupted (resume it with
    ``--resume``), 2 for a configuration error (nothing started)."""
    try:
        search, opts = search_from_args(args)
        if search.resume and search.fresh:
            raise ConfigError("--resume and --fresh exclude each other")
        for note in search.notes:
            print(f"note: {note}", file=sys.stderr)
        print(f"search {search.search_id}: {search.method} on {search.base.benchmark}, "
              f"{search.settings.trials} trials, objective {search.metric} "
              f"({search.mode}imised, validation), space: "
              + (", ".join(f"{p.key.removeprefix('train.')}={_dim_text(p)}"
                           for p in search.params)), file=sys.stderr)
        t0 = time.perf_counter()
        outcome = run_search(search, callbacks=callbacks, **opts)
    except ConfigError as e:
        print(f"mtlx tune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nmtlx tune: interrupted; continue with the same command and --resume",
              file=sys.stderr)
        return 130
    print_outcome(outcome, time.perf_counter() - t0)
    return 0 if outcome.complete else 130


def _dim_text(p: Param) -> str:
    d = p.to_json()
    kind = d.pop("kind")
    when = d.pop("when", None)
    args = d["values"] if kind == "Choice" else [d["low"], d["high"]]
    text = f"{kind.lower()}({', '.join(str(a) for a in args)})"
    return text + (f" if {next(iter(when))}={','.join(map(str, next(iter(when.values()))))}"
                   if when else "")


def print_outcome(outcome: SearchOutcome, wall_s: float, stream: TextIO | None = None) -> None:
    """The search's result: counts, best vs default, and the best configuration (YAML)."""
    err = stream or sys.stderr
    s = outcome.summary
    err.write(f"search {outcome.search_id}: {s.get('trials_finished')} finished, "
              f"{s.get('trials_stopped')} stopped by ASHA, {s.get('trials_failed')} failed "
              f"of {s.get('trials')} trials; {wall_s:.0f} s\n")
    if not outcome.complete:
        err.write("search interrupted: continue it with the same command and --resume\n")
    if s.get("best_trial_id"):
        line = f"best: {s['best_trial_id']} {s['metric']} = {s['best_objective']:.4g}"
        if s.get("default_objective") is not None:
            line += f" (default configuration: {s['default_objective']:.4g})"
        err.write(line + "\n")
    err.write(f"results: {outcome.dir}/ (trials.parquet, summary.parquet)\n")
    if outcome.best_yaml is not None:
        err.write(f"best configuration ({outcome.best_yaml}; `mtlx run {outcome.best_yaml}`):\n")
        print(outcome.best_yaml.read_text(), end="")
