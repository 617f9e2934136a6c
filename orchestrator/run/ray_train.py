"""Ray Train V2 driver: one run on W ``TorchTrainer`` workers (CPU gloo / GPU NCCL).

Layering as in Ray's Train/Tune examples: the per-worker loop (:func:`worker_loop`) only
builds a :class:`~orchestrator.trainers.base.RunContext` from ``ray.train.get_context()`` and
calls the one training function (:func:`orchestrator.run.execute.train_run`); :func:`fit`
builds the ``TorchTrainer`` and is usable on its own, from the ``mtlx run`` launcher or from a
Ray Tune trial (pass ``callbacks=[ray_compat.report_callback(...)]``). The
:class:`~orchestrator.config.RunConfig` goes to the workers as it is (Ray pickles it).

Facts this relies on (Ray 2.60):

* the model is not wrapped in DDP (the gradient engine all-reduces exactly what each method
  needs); ``TorchTrainer`` still sets up the torch.distributed process group;
* per-epoch metrics are written by rank 0 itself (Parquet) — Train V2 drops reports without a
  checkpoint from ``Result`` (docs/ray.md §1.1); ``ray.train.report`` is still called once per
  epoch on every rank so that a Tune report callback sees them;
* checkpoints are mtlx's own (``<out>/checkpoints/<run_id>/state.pt``; on a multi-node
  cluster ``--out`` must be shared storage: a shared directory or an object store, whose
  filesystem is also Train's ``storage_filesystem``); the Train run name is the deterministic run id
  and its Ray state directory is cleared before each fit, so a Ray-level auto-resume never
  mixes with mtlx's resume (docs/ray.md §1.5); worker-group restarts (``max_failures``) resume
  from mtlx's checkpoint;
* ``controller_failure_limit`` is finite so an infeasible worker group fails instead of
  retrying forever (docs/ray.md §1.3); the launcher also checks resources before the first fit;
* paths are absolute: Train workers ``chdir`` into Ray's artifact directory (docs/ray.md §1.6);
* a node lost while the worker group restarts can fail the whole fit with a
  ``ControllerError`` wrapping an actor death (seen on a 3-raylet cluster: the restarted
  group's placement group was removed under it); :func:`fit` then starts a new fit, which
  resumes from mtlx's checkpoint, within the same ``max_failures`` budget (docs/ray.md §8).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from orchestrator.config import RunConfig
from orchestrator.results.storage import open_storage, runtime_env
from orchestrator.run.execute import train_run
from orchestrator.trainers.base import RunContext

#: failed controller attempts before a fit gives up (Ray's default -1 retries forever)
CONTROLLER_FAILURE_LIMIT = 2


def worker_loop(config: dict[str, Any]) -> dict[str, Any]:
    """The Ray Train per-worker function: every rank runs the same training function."""
    import ray.train
    import ray.train.torch

    cfg = config["run"]
    sink = config.get("sink")
    tctx = ray.train.get_context()
    ctx = RunContext(
        run_id=cfg.run_id, out=cfg.out, storage=cfg.storage, rank=tctx.get_world_rank(),
        world_size=tctx.get_world_size(), device=ray.train.torch.get_device(),
        on_progress=(lambda e: sink.push.remote(e)) if sink is not None else (lambda e: None),
        report=lambda metrics: ray.train.report(metrics),
    )  # fmt: skip
    return train_run(cfg, ctx)


def fit(cfg: RunConfig, *, sink: Any = None, callbacks: Sequence[Any] = (),
        max_failures: int = 0, storage_path: str | None = None) -> dict[str, Any]:
    """Train ``cfg`` on ``cfg.workers`` Ray Train workers; returns rank 0's summary.

    Raises ``ray.train.TrainingFailedError`` if the run fails (its status is then
    ``failed`` in the runs table)."""
    import ray.exceptions
    import ray.train

    refits = 0
    while True:
        try:
            return _fit_once(cfg, sink, callbacks, max_failures, storage_path)
        except ray.train.ControllerError as e:
            lost = isinstance(e.controller_failure, (ray.exceptions.RayActorError,
                                                     ray.exceptions.NodeDiedError))
            if not lost or (max_failures != -1 and refits >= max_failures):
                raise
            refits += 1  # a node died under the controller: a new fit resumes from mtlx's checkpoint


def _fit_once(cfg: RunConfig, sink: Any, callbacks: Sequence[Any], max_failures: int,
              storage_path: str | None) -> dict[str, Any]:
    import ray.train
    from ray.train.torch import TorchTrainer

    store = open_storage(storage_path or cfg.out, cfg.storage)
    rel = "" if storage_path else "ray"  # Ray's files for this run: <rel>/<run id>
    store.delete(f"{rel}/{cfg.run_id}".lstrip("/"))
    path, filesystem = store.ray_storage(rel)
    resources: dict[str, float] = {"CPU": cfg.cpus_per_worker}
    if cfg.gpus_per_worker > 0:
        resources["GPU"] = cfg.gpus_per_worker
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"run": cfg, "sink": sink},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.workers, use_gpu=cfg.gpus_per_worker > 0,
            resources_per_worker=resources,
        ),
        run_config=ray.train.RunConfig(
            name=cfg.run_id, storage_path=path, storage_filesystem=filesystem,
            failure_config=ray.train.FailureConfig(
                max_failures=max_failures, controller_failure_limit=CONTROLLER_FAILURE_LIMIT,
            ),
            callbacks=list(callbacks),
            worker_runtime_env=runtime_env(cfg.out, cfg.storage) or {},
        ),
    )  # fmt: skip
    result = trainer.fit()
    return result.return_value
