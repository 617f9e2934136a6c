"""``mtlx tune``'s settings and the fully validated :class:`Search` built before Ray starts."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.config import (
    STL,
    ConfigError,
    ExperimentConfig,
    RunConfig,
    _build,
    _f,
    apply_overrides,
    experiment_from_dict,
    parse_override,
)
from orchestrator.results.storage import Storage, open_storage
from orchestrator.tune.objective import Objective, resolve_metric, rl_evaluations
from orchestrator.tune.space import (
    DEFAULT,
    FIXED,
    SEARCH,
    TRAIN_SEARCHABLE,
    Param,
    apply_params,
    builtin_dimension,
    canonical_key,
    complete_point,
    dim_candidates,
    dim_center,
    find_default_point,
    order_params,
    parse_spec,
    space_types,
)

if TYPE_CHECKING:  # methods/ imports torch: loaded only when a search is built
    from methods.space import Dimension


DEFAULT_METHOD = "db_mtl"


SCHEDULERS = ("asha", "none")


#: the fraction of train held out as validation when a benchmark has no validation split
HELD_OUT_FRACTION = 0.1


#: training fields an RL trainer (SAC: Adam, no weight decay) does not use
RL_UNSEARCHABLE = ("weight_decay", "momentum")


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
    max_failures: int | None = _f(
        help="Tune retries of a failed trial (its node died, its process crashed), each from "
        "the trial run's last checkpoint; -1 = unlimited; None = auto as mtlx run's "
        "max_failures (retries on a cluster, 0 on one machine)")
    include_default: bool = _f(True, help="evaluate the default configuration as trial 0")
    space: dict[str, Any] = _f(factory=dict, help="{name: SPEC}: overrides of the search space")


@dataclass
class Search:
    """A fully validated search: what :func:`run_search` executes."""

    exp: ExperimentConfig  # the user's experiment (one method; what best.yaml builds on)
    settings: TuneSettings
    method: str
    base: RunConfig  # the run every trial starts from (validated by orchestrator.run.plan)
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
    def dir(self) -> Path | str:
        """``<out>/searches/<id>``: a Path for a local ``--out``, else its URI."""
        return open_storage(self.base.out, self.base.storage).at(f"searches/{self.search_id}")

    @property
    def storage(self) -> Storage:
        """The search's directory as a storage (summary, trials, best.yaml, Tune's state)."""
        return open_storage(self.dir, self.base.storage)

    def trial_run(self, params: Mapping[str, Any], trial_id: str) -> RunConfig:
        return apply_params(self.base, params, trial_id, self.search_id)


def build_search(data: Mapping[str, Any], overrides: Sequence[str] = (), *,
                 workdir: str | None = None, resume: bool = False,
                 fresh: bool = False) -> Search:
    """Validate a tune config (YAML data + ``key=value`` / ``space.NAME=SPEC`` /
    ``tune.KEY=VALUE`` overrides) into a :class:`Search`, before any Ray process starts."""
    from orchestrator.run.registry import import_plugins

    data, tune_data, space_in = _split_overrides(data, overrides)
    methods_given = "methods" in data
    exp = experiment_from_dict(data)
    settings = _build(TuneSettings, tune_data, prefix="tune.")
    _check_settings(settings)
    import_plugins(exp.plugins, workdir)
    method = _the_method(exp, methods_given)
    bench, held_out, notes = _validation_benchmark(exp)
    rl = bench.kind == "rl"
    metric, mode = resolve_metric(settings.metric, bench)
    parsed = _parse_space(space_in, method, rl, exp.benchmark)
    fixed_hp = {k: v for k, (kind, v, _, _) in parsed.items() if kind == FIXED and "." not in k}
    fixed_train = {k.removeprefix("train."): v for k, (kind, v, _, _) in parsed.items()
                   if kind == FIXED and k.startswith("train.")}
    base = _base_run(exp, method, settings, rl, fixed_hp, fixed_train, held_out, workdir)
    params = _params(method, parsed, base)
    defaults = {**base.hparams, **{f"train.{k}": getattr(base.train, k) for k in TRAIN_SEARCHABLE}}
    _check_space(params, base, bench, method, defaults)
    default_point = find_default_point(params, defaults)
    if settings.include_default and default_point is None:
        notes.append("the default configuration lies outside the space: no default trial")
    objective = Objective(
        metric=metric, mode=mode, selection=base.train.selection or "last",
        average_last=base.train.average_last or 1,
        spec={t: list(ms) for t, ms in bench.metrics.items()},
        reference=None if bench.stl_reference is None
        else {t: dict(v) for t, v in bench.stl_reference.items()},
        out=base.out, run_id="", split="eval" if rl else "val", storage=base.storage,
    )  # fmt: skip
    return Search(exp=dataclasses.replace(exp, methods=[method]), settings=settings,
                  method=method, base=base, params=params, metric=metric, mode=mode,
                  default_point=default_point if settings.include_default else None,
                  objective=objective, held_out=held_out, fixed_train=fixed_train,
                  notes=notes, resume=resume, fresh=fresh, kind=bench.kind)


def _split_overrides(data: Mapping[str, Any], overrides: Sequence[str]
                     ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(experiment data with its overrides applied, the ``tune:`` settings, the space)."""
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
    return apply_overrides(data, exp_over), tune_data, space_in


def _the_method(exp: ExperimentConfig, methods_given: bool) -> str:
    import methods

    if not methods_given:
        exp.methods = [DEFAULT_METHOD]
    if len(exp.methods) != 1 or exp.methods[0] == STL:
        raise ConfigError(f"mtlx tune searches one method, got methods={exp.methods}; fix: "
                          "--method NAME (a method with hyperparameters, not 'stl')")
    try:
        methods.get_class(exp.methods[0])
    except ValueError as e:
        raise ConfigError(f"{e} (fix: --method NAME)") from None
    return exp.methods[0]


def _validation_benchmark(exp: ExperimentConfig) -> tuple[Any, dict[str, Any], list[str]]:
    """(benchmark, bench options added for a held-out validation split, notes): the
    validation split, or a documented held-out part of train; RL benchmarks are scored by
    their evaluation episodes (every train.eval_every loop steps)."""
    from orchestrator.run.plan import open_benchmark, resolve_path

    data_root = resolve_path(exp.data_root or None)
    bench = open_benchmark(exp.benchmark, data_root, exp.bench_options)
    if bench.kind not in ("supervised", "rl"):
        raise ConfigError(f"mtlx tune supports supervised and RL benchmarks; {exp.benchmark!r} "
                          f"is of kind {bench.kind!r}")
    if bench.kind == "rl":
        return bench, {}, []
    if exp.train.eval_every not in (None, 1):
        raise ConfigError("tune trials evaluate every epoch (the objective drives ASHA and TPE "
                          f"per epoch); remove train.eval_every={exp.train.eval_every}")
    if "val" in bench.splits:
        return bench, {}, []
    if "val_size" not in type(bench).options or "val_size" in exp.bench_options:
        raise ConfigError(
            f"benchmark {exp.benchmark!r} has no validation split (splits "
            f"{list(bench.splits)}) and no way to hold one out of train; the objective "
            "is never computed on test"
        )
    n = _count(bench.make_loader("train", 1))
    held_out = {"val_size": max(1, int(round(HELD_OUT_FRACTION * n)))}
    notes = [f"{exp.benchmark} has no validation split: trials hold out "
             f"{held_out['val_size']} of its {n} training samples (val_size) as one"]
    bench = open_benchmark(exp.benchmark, data_root, {**exp.bench_options, **held_out})
    return bench, held_out, notes


def _parse_space(space_in: Mapping[str, Any], method: str, rl: bool, benchmark: str
                 ) -> dict[str, tuple[str, Any, Any, str]]:
    """{canonical key: (kind, payload, condition, how the user wrote it)} of the entries."""
    parsed: dict[str, tuple[str, Any, Any, str]] = {}
    for name, spec in space_in.items():
        key = canonical_key(str(name), method)
        if key in parsed:
            raise ConfigError(f"space.{name}: {key!r} is given twice")
        if rl and key.removeprefix("train.") in RL_UNSEARCHABLE and key.startswith("train."):
            raise ConfigError(f"space.{name}: {benchmark!r} trains SAC with Adam and no "
                              f"weight decay, so {key} has no effect; searchable training "
                              "fields for RL: train.lr, train.method_lr")
        sk, payload, cond = parse_spec(str(name), spec)
        parsed[key] = (sk, payload, cond, f"space.{name}={spec}")
    return parsed


def _base_run(exp: ExperimentConfig, method: str, settings: TuneSettings, rl: bool,
              fixed_hp: Mapping[str, Any], fixed_train: Mapping[str, Any],
              held_out: Mapping[str, Any], workdir: str | None) -> RunConfig:
    """The run every trial starts from: one method, the search seed, trials evaluate every
    epoch (RL: every train.eval_every loop steps, the protocol's unless set). The benchmark's
    method_hparams (MT10's CAGrad c = 0.9 ...) fill it in expand; sampled values replace them."""
    from orchestrator.run.plan import expand

    W = settings.workers_per_trial
    run_exp = dataclasses.replace(
        exp, methods=[method], seeds=[settings.seed],
        hparams={method: {**exp.hparams.get(method, {}), **fixed_hp}},
        train=dataclasses.replace(exp.train, **({} if rl else {"eval_every": 1}),
                                  **fixed_train),
        bench_options={**exp.bench_options, **held_out},
        workers=W if W > 1 else 0, gpus_per_worker=settings.gpus_per_trial / W,
    )  # fmt: skip
    if run_exp.workers == 0 and run_exp.gpus_per_worker > 0:
        run_exp.workers = 1  # the trial process holds the GPU (validate's workers=0 check is local)
    base = expand(run_exp, workdir)[0]
    return dataclasses.replace(base, workers=W if W > 1 else 0)


def _params(method: str, parsed: Mapping[str, tuple[str, Any, Any, str]], base: RunConfig
            ) -> tuple[Param, ...]:
    """The searched dimensions: the method's declared space, changed by the user's entries."""
    import methods

    declared = methods.get_class(method).search_space
    entries: dict[str, tuple[Dimension, Any, str]] = {
        k: (d, None, f"{method}.search_space[{k!r}]") for k, d in declared.items()}
    for key, (kind, payload, cond, text) in parsed.items():
        if kind in (FIXED, DEFAULT):
            entries.pop(key, None)
        elif kind == SEARCH:
            entries[key] = (builtin_dimension(key, method, base.train.lr), cond, text)
        else:
            entries[key] = (payload, cond, text)
    params = order_params(entries)
    if not params:
        raise ConfigError(
            f"nothing to search: {method!r} declares no search space and none is given; fix: "
            "add dimensions, e.g. space.lr=search space.weight_decay=search (the same budget "
            "for a baseline such as ew)"
        )
    return params


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
    need(s.max_failures is None or s.max_failures >= -1,
         f"tune.max_failures must be >= -1 (-1 = unlimited), got {s.max_failures}")


def _check_space(params: Sequence[Param], base: RunConfig, bench: Any, method: str,
                 defaults: Mapping[str, Any]) -> None:
    """Build the range ends and every choice through the method's Config / the training
    checks (and the trainer's capability checks for choices); errors name the entry."""
    sp = space_types()
    from methods.registry import make_config
    from orchestrator.run.plan import check_train
    from orchestrator.run.registry import trainer_for

    rl = bench.kind == "rl"
    trainer = trainer_for(bench)
    center = {p.key: dim_center(p.dim, defaults.get(p.key)) for p in params if p.when is None}
    point = complete_point(params, center, defaults)
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
        for v in dim_candidates(p.dim):
            point = dict(center)
            if p.when is not None:
                point[p.when[0]] = p.when[1][0]
            point[p.key] = v
            point = complete_point(params, point, defaults)
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
