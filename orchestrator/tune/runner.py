"""Running a search on Ray Tune: the trial function, ASHA that protects the default trial,
the trial printer, resources, and the ``Tuner`` (fresh or restored)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestrator.config import (
    ConfigError,
    RunConfig,
    StorageConfig,
)
from orchestrator.results.storage import open_storage
from orchestrator.run.plan import check_out
from orchestrator.run.ray_compat import experiment_trials, report_callback, tune_environment
from orchestrator.tune.objective import OBJECTIVE, TIME_ATTR
from orchestrator.tune.results import (
    SearchOutcome,
    collect,
    load_summary,
    outcome_from_files,
    trial_name,
)
from orchestrator.tune.search import Search
from orchestrator.tune.space import DefineSpace, apply_params


class TrialDiverged(RuntimeError):
    """A trial's loss became non-finite: the trial fails, the search continues."""


def _trial(config: dict[str, Any], job: dict[str, Any]) -> None:
    """A Tune trial: the run of ``config`` through the one training function.

    Every evaluation reports the objective (W = 1: ``RunContext.report``; W ≥ 2: the
    Train controller's report callback). A restarted trial preloads the evaluations its
    earlier attempt wrote; if its run had already trained every epoch (killed before Tune
    recorded the end) nothing is retrained and the final objective is reported from the
    Parquet rows, so Tune and Optuna always see it."""
    from ray import tune as ray_tune

    from orchestrator.results import ResultsStore
    from orchestrator.run.execute import train_run
    from orchestrator.trainers.base import local_context

    base: RunConfig = job["base"]
    name = ray_tune.get_context().get_trial_name()
    cfg = apply_params(base, config, name, job["search_id"])
    objective = dataclasses.replace(job["objective"], run_id=cfg.run_id, values={})
    objective.preload()
    row = ResultsStore(cfg.out, cfg.storage).read_run(cfg.run_id)
    reports = [0]
    if row is None or row.get("status") != "finished":
        if cfg.workers <= 1:
            def report(metrics: dict[str, Any]) -> None:
                reports[0] += 1
                ray_tune.report(objective.update(metrics))

            summary = train_run(cfg, local_context(cfg, report=report))
        else:
            from orchestrator.run import ray_train

            reports[0] = -1  # the controller's callback reports; the driver cannot count
            summary = ray_train.fit(cfg, callbacks=[report_callback(objective.update)],
                                    max_failures=job["train_max_failures"])
        if summary.get("status") in ("nonfinite", "diverged"):
            raise TrialDiverged(summary.get("error") or "non-finite loss")
    if reports[0] <= 0:
        final = dataclasses.replace(job["objective"], run_id=cfg.run_id, values={})
        last = final.preload()
        if final.current() is not None and last is not None:
            ray_tune.report({OBJECTIVE: final.current(), TIME_ATTR: last + 1, "epoch": last,
                             "run_id": cfg.run_id})


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

            def on_trial_result(self, tune_controller, trial, result):
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


def make_printer(total: int, epochs: int, unit: str = "epochs", metric: str = "objective",
                 mode: str = "min") -> Any:
    """A ``ray.tune.Callback`` printing one line per finished or failed trial (Tune's own
    table is off) and feeding the search's progress line
    (:class:`orchestrator.run.progress.SearchBoard`). Built lazily so that importing this
    module does not import Ray; it pickles as a call of this function (Tune stores its
    callbacks in the experiment state)."""
    if not _PRINTER_CLS:
        from ray.tune import Callback

        from orchestrator.run.progress import SearchBoard

        class TrialPrinter(Callback):
            def __init__(self, total: int, epochs: int, unit: str, metric: str,
                         mode: str) -> None:
                self.total, self.epochs, self.unit, self.done = total, epochs, unit, 0
                self._args = (total, epochs, unit, metric, mode)
                self.board = SearchBoard(total, metric, mode, epochs)

            def __reduce__(self):
                return make_printer, self._args

            def _line(self, trial: Any, text: str) -> None:
                self.done += 1
                self.board.clear()
                sys.stderr.write(f"  trial {trial_name(trial)} {_fmt_params(trial.config)}: "
                                 f"{text}\n")
                sys.stderr.flush()

            def on_trial_start(self, iteration, trials, trial, **info):
                # a restored search: trials that ended before count as done
                ended = sum(t.status in ("TERMINATED", "ERROR") for t in trials if t is not trial)
                self.board.done = max(self.board.done, ended)
                self.board.started(trial_name(trial))

            def on_trial_result(self, iteration, trials, trial, result, **info):
                self.board.result(trial_name(trial), result.get(TIME_ATTR))

            def on_trial_complete(self, iteration, trials, trial, **info):
                r = trial.last_result or {}
                obj, ep = r.get(OBJECTIVE), r.get(TIME_ATTR)
                text = "no objective" if obj is None else f"objective {obj:.4g}"
                if ep is not None and ep < self.epochs:
                    text += f" (stopped by ASHA after {ep} of {self.epochs} {self.unit})"
                self._line(trial, text)
                self.board.ended(trial_name(trial), obj, ep)

            def on_trial_error(self, iteration, trials, trial, **info):
                self._line(trial, "failed")
                self.board.ended(trial_name(trial), None, None)

            def on_experiment_end(self, trials, **info):
                self.board.clear()

        _PRINTER_CLS.append(TrialPrinter)
    return _PRINTER_CLS[0](total, epochs, unit, metric, mode)


_WATCH_CLS: list[type] = []


def make_resource_watch(timeout_s: float) -> Any:
    """A ``ray.tune.Callback`` refusing the search (``ConfigError``, out of ``Tuner.fit``)
    once trials have been pending with none running for more than ``timeout_s`` seconds:
    ``--resource-timeout`` for Tune, whose trials wait for resources by themselves."""
    if not _WATCH_CLS:
        from ray.tune import Callback

        class ResourceWatch(Callback):
            def __init__(self, timeout_s: float, clock: Any = time.monotonic) -> None:
                self.timeout_s, self.clock, self.since = timeout_s, clock, None

            def __reduce__(self):
                return make_resource_watch, (self.timeout_s,)

            def on_step_begin(self, iteration, trials, **info):
                states = {t.status for t in trials}
                if "PENDING" not in states or "RUNNING" in states:
                    self.since = None
                    return
                self.since = self.clock() if self.since is None else self.since
                if self.clock() - self.since > self.timeout_s:
                    n = sum(t.status == "PENDING" for t in trials)
                    raise ConfigError(
                        f"{n} trial(s) waited more than {self.timeout_s:g} s for resources "
                        "that the cluster did not provide; fix: a bigger cluster, fewer "
                        "resources per trial, or check the autoscaler (ray status)")

        _WATCH_CLS.append(ResourceWatch)
    return _WATCH_CLS[0](timeout_s)


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


def _state_dir(search: Search) -> tuple[str, Any]:
    """(path, filesystem) of Tune's experiment directory ``<search dir>/tune``: the same
    filesystem as the results (None: local), as Tune's ``storage_filesystem``."""
    return search.storage.ray_storage("tune")


def clear_search(search_dir: Path | str, out: Path | str,
                 storage: StorageConfig | None = None) -> None:
    """Delete a search: its directory and the runs of its trials (``--fresh``)."""
    from orchestrator.results import read_table
    from orchestrator.run.launch import clear_run

    sid = str(search_dir).rstrip("/").rsplit("/", 1)[-1]
    runs = read_table(out, "runs", options=storage)
    for run_id in runs.run_id[runs.search_id == sid]:
        clear_run(out, run_id, storage)
    open_storage(out, storage).delete(f"searches/{sid}")


def run_search(search: Search, *, callbacks: Sequence[Any] = (), verbose: bool = False,
               ray_address: str | None = None) -> SearchOutcome:
    """Run (or resume) ``search`` on a local Ray started here, or on the running one."""
    import optuna

    check_out(search.base.out, search.exp.storage)  # reachable and writable, before Ray
    state = _state_dir(search)
    if search.fresh:
        clear_search(search.dir, search.base.out, search.base.storage)
    exists = search.storage.kind("tune/tuner.pkl") == "file"
    if search.resume and not exists:
        print(f"note: no search {search.search_id} to resume in {search.dir} (other settings "
              "give another id); starting it", file=sys.stderr)
    if exists and not search.resume:
        done = load_summary(search.dir, search.base.storage)
        if done is not None and done.get("complete"):
            print(f"note: search {search.search_id} is complete; its result follows (--fresh "
                  "repeats it)", file=sys.stderr)
            return outcome_from_files(search)
        raise ConfigError(
            f"search {search.search_id} already exists in {search.dir} and is not complete; "
            "fix: add --resume to continue it, or --fresh to delete it and start over"
        )
    t0 = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # a trial without any result must not abort the whole search (strict metric checking
    # raises in the driver); Tune's new console output prints a header even at verbose=0
    with _environ(tune_environment(verbose)), warnings.catch_warnings():
        # a restarted trial reports its epochs again: Optuna keeps the first value
        warnings.filterwarnings("ignore", message="The reported value is ignored")
        _fit(search, state, exists, callbacks, verbose, ray_address)
    return collect(search, experiment_trials(*state), time.perf_counter() - t0)


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


def _fit(search: Search, state: tuple[str, Any], exists: bool, callbacks: Sequence[Any], verbose: bool,
         ray_address: str | None) -> Any:
    import optuna
    import ray
    from ray import tune as ray_tune
    from ray.tune.search.optuna import OptunaSearch

    from orchestrator.run.launch import init_ray

    s = search.settings
    started = init_ray(ray_address, verbose,
                       **({} if ray_address else {"resources": {"driver_slot": s.trials}}))
    try:
        from orchestrator.run.launch import largest_resources, retry_budget
        from orchestrator.run.ray_compat import autoscaler_max_resources

        # as mtlx run: judged against what the cluster can become, not what is up now
        k = capacity(search, largest_resources(ray.cluster_resources(), autoscaler_max_resources()))
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        job = {"base": search.base, "search_id": search.search_id, "objective": search.objective,
               "train_max_failures": retry_budget(search.exp.max_failures, ray_address, nodes)}
        timeout = search.exp.resource_timeout
        callbacks = [*callbacks, *([] if timeout is None else [make_resource_watch(timeout)])]
        trainable = ray_tune.with_resources(ray_tune.with_parameters(_trial, job=job),
                                            trial_resources(search))
        if exists:
            tuner = ray_tune.Tuner.restore(state[0], trainable, resume_unfinished=True,
                                           resume_errored=False, storage_filesystem=state[1])
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
                    name="tune", storage_path=state[0].rpartition("/")[0],
                    storage_filesystem=state[1],
                    failure_config=ray_tune.FailureConfig(
                        max_failures=retry_budget(s.max_failures, ray_address, nodes)),
                    callbacks=[make_printer(s.trials, search.epochs, search.unit, search.metric,
                                           search.mode), *callbacks],
                    verbose=1 if verbose else 0,
                ),
            )  # fmt: skip
        return tuner.fit()
    finally:
        if started:
            ray.shutdown()
