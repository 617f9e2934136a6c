"""Launching an experiment's runs: skip, resume, and execute them in the chosen mode.

``run_experiment(exp)`` validates every run first (:func:`orchestrator.run.plan.expand`, no
Ray yet), skips runs whose row in ``<out>/runs`` says ``finished`` (or ``nonfinite``: a
deterministic rerun would diverge again; ``rerun=True`` clears and repeats them), and runs
the rest (each resumes from its checkpoint if it has one):

``workers=0``  in this process, one after another (no Ray; debugging, tests);
``workers=1``  each run is a Ray task holding ``cpus_per_worker`` CPUs (and
               ``gpus_per_worker`` GPUs; fractions pack runs on a GPU), single-threaded by
               default; Ray runs as many at once as the resources allow (or
               ``max_concurrent``). A Ray Train fit per run would cost ~20 s of start-up each
               (docs/ray.md §6); a task costs one Ray start per command (~5-15 s) and
               one torch import per worker process.
``workers≥2``  each run is a Ray Train ``TorchTrainer`` fit on W workers
               (:mod:`orchestrator.run.ray_train`), launched from a zero-CPU Ray task so that
               several fits proceed at once when the cluster has room for them.

A local Ray is started (and stopped) by the command unless one is running or
``ray_address`` names a cluster. Ray's own output is hidden unless ``verbose``.

Node loss (docs/ray.md §8): everything that must outlive a worker node — the progress sink
actor and the zero-CPU task that drives a Ray Train fit (and with it Train's controller,
which Ray places on the node of its caller) — is pinned to the driver's node. A run whose
node dies is retried from its last checkpoint: Ray task retries for ``workers=1`` (system
failures only; a Python exception is not retried), Train worker-group restarts for W ≥ 2.
The budget is ``max_failures``: unset, it is :data:`CLUSTER_RETRIES` when the command is
connected to a cluster and 0 on one machine; an explicit 0 means no retry, -1 no limit. The
runs table's ``attempts`` column counts the starts. A run that waits for resources longer
than ``resource_timeout`` seconds is refused (those waiting are cancelled, a running one is
interrupted and resumable).

Measured on the shared 2-core development machine (other jobs kept its load at 3-4), the
default method set × 2 seeds × 3 epochs of multi_digits (18 runs): ``workers=0`` 66 s,
``workers=1`` 82 s including ~12 s of Ray start-up — with no idle core, running two at a time
gains nothing; with idle cores ``workers=1`` runs one run per core, so it is the default.
Never give a run more torch threads than it has free cores: the same 4 runs took 12 s with one
thread each and 205 s with two on the loaded 2-core machine.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from orchestrator.config import (
    CLUSTER_RETRIES,
    ConfigError,
    ExperimentConfig,
    RunConfig,
    StorageConfig,
)
from orchestrator.results import ResultsStore
from orchestrator.results.storage import runtime_env
from orchestrator.run.execute import train_run
from orchestrator.run.plan import plan
from orchestrator.run.progress import ProgressBoard, ProgressSink
from orchestrator.trainers.base import local_context


@dataclass
class Outcome:
    """What happened to one run in this invocation."""

    run_id: str
    label: str
    status: str  # finished | nonfinite | failed | interrupted | skipped
    error: str | None = None
    wall_time_s: float | None = None
    summary: dict[str, Any] = field(default_factory=dict)


def clear_run(out: str | Path, run_id: str, storage: StorageConfig | None = None) -> None:
    """Delete one run's files (for ``rerun``), whatever state they are in: its row,
    metrics, diagnostics, checkpoints (:meth:`ResultsStore.clear_run`)."""
    ResultsStore(out, storage).clear_run(run_id)


def run_experiment(exp: ExperimentConfig, *, stream: TextIO | None = None,
                   workdir: str | None = None,
                   on_event: Callable[[dict[str, Any]], None] | None = None) -> list[Outcome]:
    """Validate, then execute every run of ``exp`` that is not finished yet; returns one
    :class:`Outcome` per run (skipped ones first, then in ``exp``'s method × seed order)."""
    todo, done = plan(exp, workdir)
    first = (todo or done)[0]
    out, storage = first.out, first.storage
    leases = contextlib.ExitStack()  # one writer per run: LeaseHeld before anything is written
    leases.enter_context(ResultsStore(out, storage).leases([r.run_id for r in todo]))
    board = ProgressBoard(len(todo) + len(done), stream)
    outcomes = []
    for r in done:
        board.skipped(r.label, r.run_id)
        outcomes.append(Outcome(r.run_id, r.label, "skipped"))

    def handle(event: dict[str, Any]) -> None:
        board.handle(event)
        if on_event is not None:
            on_event(event)

    try:
        if exp.rerun:
            for r in todo:
                clear_run(out, r.run_id, storage)
        if todo and exp.workers == 0:
            outcomes += _run_inline(todo, board, handle)
        elif todo:
            outcomes += _run_ray(exp, todo, board, handle)
    finally:
        board.close()
        leases.close()
    order = {r.run_id: i for i, r in enumerate(done + todo)}
    return sorted(outcomes, key=lambda o: order[o.run_id])  # plan order, not completion order


def _record(board: ProgressBoard, r: RunConfig, summary: dict[str, Any] | None,
            error: BaseException | None) -> Outcome:
    if error is not None:
        msg = _error_text(error)
        board.finished(r.label, r.run_id, "failed", None, msg)
        return Outcome(r.run_id, r.label, "failed", msg)
    assert summary is not None
    o = Outcome(r.run_id, r.label, summary.get("status", "finished"), summary.get("error"),
                summary.get("wall_time_s"), summary)
    board.finished(r.label, r.run_id, o.status, o.wall_time_s, o.error)
    return o


def _error_text(e: BaseException) -> str:
    """The innermost useful message of an exception (Ray wraps the original one)."""
    cause = getattr(e, "cause", None) or e.__cause__
    while cause is not None and cause is not e:
        e, cause = cause, getattr(cause, "cause", None) or cause.__cause__
    text = str(e).strip().splitlines()
    last = text[-1] if text else ""
    return f"{type(e).__name__}: {last}"


# ---------------------------------------------------------------------------------------
# modes
# ---------------------------------------------------------------------------------------


def _run_inline(todo: list[RunConfig], board: ProgressBoard,
                handle: Callable[[dict[str, Any]], None]) -> list[Outcome]:
    outcomes = []
    for r in todo:
        try:
            summary = train_run(r, local_context(r, on_progress=handle))
        except Exception as e:  # recorded as failed in the runs table; continue with others
            outcomes.append(_record(board, r, None, e))
            continue
        outcomes.append(_record(board, r, summary, None))
    return outcomes


def _task_entry(cfg: RunConfig, sink: Any) -> dict[str, Any]:
    """Body of a ``workers=1`` Ray task."""
    ctx = local_context(cfg, on_progress=lambda e: sink.push.remote(e))
    return train_run(cfg, ctx)


def _fit_entry(cfg: RunConfig, sink: Any, max_failures: int) -> dict[str, Any]:
    """Body of the zero-CPU Ray task that drives one ``workers>=2`` Ray Train fit."""
    from orchestrator.run import ray_train

    return ray_train.fit(cfg, sink=sink, max_failures=max_failures)


def init_ray(address: str | None = None, verbose: bool = False, **kwargs: Any) -> bool:
    """Start a local Ray (or connect to ``address``, else to ``RAY_ADDRESS`` if set, as a
    Ray Job's entrypoint is); True if this call started it. Without either, a new local Ray
    is started even if the machine runs another (``ray.init()`` alone would join the latest
    ``ray start`` cluster of the machine)."""
    import ray

    from orchestrator.run.ray_compat import check_version

    check_version(ray.__version__)
    if ray.is_initialized():
        return False
    local = address is None and not os.environ.get("RAY_ADDRESS")
    ray.init(address="local" if local else address, log_to_driver=verbose,
             logging_level=logging.INFO if verbose else logging.ERROR, **kwargs)
    if local:  # stopped even if this process is SIGKILLed
        from orchestrator.run.reaper import start_reaper

        start_reaper()
    return True


def retry_budget(max_failures: int | None, ray_address: str | None, nodes: int) -> int:
    """Retries of a run whose node died: ``max_failures`` when set (0: none, -1: no limit),
    else :data:`CLUSTER_RETRIES` when the command is connected to a cluster (an address, or
    several nodes) and 0 on one machine."""
    if max_failures is not None:
        return max_failures
    return CLUSTER_RETRIES if ray_address is not None or nodes > 1 else 0


def driver_node_strategy() -> Any:
    """Ray scheduling that keeps an actor or task on this driver's node (hard affinity):
    what must outlive worker nodes goes there."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)


def _need(exp: ExperimentConfig) -> tuple[int, float, float]:
    """(workers, CPUs, GPUs) of one run."""
    W = max(1, exp.workers)
    return W, W * exp.cpus_per_worker, W * exp.gpus_per_worker


def _fits(exp: ExperimentConfig, resources: dict[str, float]) -> int:
    """How many runs fit at once in ``resources`` (at most ``max_concurrent``)."""
    _, need_cpu, need_gpu = _need(exp)
    n = int(resources.get("CPU", 0.0) // need_cpu) if need_cpu > 0 else 1 << 30
    if need_gpu > 0:
        n = min(n, int(resources.get("GPU", 0.0) // need_gpu))
    return n if exp.max_concurrent is None else min(n, exp.max_concurrent)


def largest_resources(resources: dict[str, float], maximum: dict[str, float] | None
                      ) -> dict[str, float]:
    """The most of each resource the cluster can have: what is up now, or more where the
    autoscaler (``maximum``, :func:`~orchestrator.run.ray_compat.autoscaler_max_resources`)
    can add nodes; what ``mtlx run`` and ``mtlx tune`` judge feasibility against."""
    largest = dict(resources)
    for key, value in (maximum or {}).items():
        largest[key] = max(largest.get(key, 0.0), value)
    return largest


def _capacity(exp: ExperimentConfig, resources: dict[str, float],
              maximum: dict[str, float] | None = None) -> int:
    """How many runs fit at once in the largest the cluster can be: ``resources`` (what is
    up now) or, with an autoscaler, ``maximum`` (what its node types can grow to);
    ``ConfigError`` if not even one run fits at that size."""
    largest = largest_resources(resources, maximum)
    n = _fits(exp, largest)
    if n < 1:
        W, need_cpu, need_gpu = _need(exp)
        where = ("the Ray cluster at its maximum size (the autoscaler's node types)"
                 if maximum else "the Ray cluster (no autoscaler)")
        raise ConfigError(
            f"one run needs {need_cpu} CPUs and {need_gpu:g} GPUs ({W} worker(s) × "
            f"{exp.cpus_per_worker} CPU, {exp.gpus_per_worker:g} GPU), but {where} has "
            f"{largest.get('CPU', 0.0):g} CPUs and {largest.get('GPU', 0.0):g} GPUs; fix: fewer "
            "workers, cpus_per_worker or gpus_per_worker, or a bigger cluster"
        )
    return n


class _Scaling:
    """Runs waiting for the cluster to grow: asks the autoscaler for their resources, says
    so on the progress line when the count changes, and gives up after ``timeout_s``."""

    def __init__(self, exp: ExperimentConfig, board: ProgressBoard, autoscaler: bool,
                 timeout_s: float | None) -> None:
        self.exp, self.board, self.autoscaler, self.timeout_s = exp, board, autoscaler, timeout_s
        self.shown, self.since = 0, None
        W, cpu, gpu = _need(exp)
        self.bundle = {"CPU": float(exp.cpus_per_worker), **({"GPU": exp.gpus_per_worker}
                                                              if gpu else {})}
        self.what = f"{gpu:g} GPU each" if gpu else f"{cpu:g} CPU{'s' * (cpu != 1)} each"

    def update(self, waiting: int, wanted: int) -> None:
        """``waiting`` runs cannot start in what is up now; ``wanted`` runs should run."""
        if waiting != self.shown:
            if waiting:
                self.board.note(f"waiting for resources: {waiting} run"
                                f"{'s' * (waiting != 1)} pending (need {self.what})")
            if self.autoscaler:
                from ray.autoscaler.sdk import request_resources

                request_resources(bundles=[self.bundle] * (max(1, self.exp.workers) * wanted))
            self.shown = waiting
            self.since = time.monotonic() if waiting else None
        if waiting and self.timeout_s is not None and time.monotonic() - self.since > self.timeout_s:
            raise ConfigError(
                f"{waiting} run(s) waited more than {self.timeout_s:g} s for resources "
                f"({self.what}) that the cluster did not provide; fix: a bigger cluster, or "
                "check the autoscaler (ray status)"
            )


def _run_ray(exp: ExperimentConfig, todo: list[RunConfig], board: ProgressBoard,
             handle: Callable[[dict[str, Any]], None]) -> list[Outcome]:
    import ray

    started = init_ray(exp.ray_address, exp.verbose)
    try:
        from orchestrator.run.ray_compat import autoscaler_max_resources

        maximum = autoscaler_max_resources()
        capacity = _capacity(exp, ray.cluster_resources(), maximum)
        scaling = _Scaling(exp, board, maximum is not None, exp.resource_timeout)
        alive = sum(1 for n in ray.nodes() if n.get("Alive"))
        retries = retry_budget(exp.max_failures, exp.ray_address, alive)
        on_driver = driver_node_strategy()
        sink = ray.remote(num_cpus=0)(ProgressSink).options(
            scheduling_strategy=on_driver).remote()
        # an object-store --out: the run's workers get the driver's credentials (storage.py)
        env = {"runtime_env": e} if (e := runtime_env(todo[0].out, todo[0].storage)) else {}
        if exp.workers == 1:
            remote = ray.remote(_task_entry).options(
                num_cpus=exp.cpus_per_worker, num_gpus=exp.gpus_per_worker,
                max_retries=retries, retry_exceptions=False, **env)

            def submit(r: RunConfig):
                return remote.remote(r, sink)
        else:
            remote = ray.remote(_fit_entry).options(num_cpus=0, max_retries=0,
                                                    scheduling_strategy=on_driver, **env)

            def submit(r: RunConfig):
                return remote.remote(r, sink, retries)

        queue = list(todo)
        pending: dict[Any, RunConfig] = {}
        outcomes = []
        try:
            while queue or pending:
                # Ray queues tasks until their node exists, but a Train fit gives up on a
                # worker group it cannot place: submit fits only when they fit now
                now = _fits(exp, ray.cluster_resources())
                limit = capacity if exp.workers == 1 else min(capacity, now)
                while queue and len(pending) < limit:
                    r = queue.pop(0)
                    pending[submit(r)] = r
                wanted = min(capacity, len(pending) + len(queue))
                scaling.update(max(0, wanted - now), wanted)
                if pending:
                    ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.25)
                else:  # every fit waits for the cluster to grow
                    ready = []
                    time.sleep(0.25)
                for ev in ray.get(sink.drain.remote()):
                    handle(ev)
                for ref in ready:
                    r = pending.pop(ref)
                    try:
                        outcomes.append(_record(board, r, ray.get(ref), None))
                    except Exception as e:  # the run failed: others continue
                        outcomes.append(_record(board, r, None, e))
            for ev in ray.get(sink.drain.remote()):
                handle(ev)
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        except ConfigError:  # waited too long: queued ones never start, a running one stops
            for ref in pending:
                ray.cancel(ref)
            raise
        return outcomes
    finally:
        if started:
            ray.shutdown()


def describe(outcomes: list[Outcome], stream: TextIO | None = None) -> None:
    """A one-line summary of an invocation's outcomes."""
    stream = stream or sys.stderr
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    stream.write("runs: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + "\n")
