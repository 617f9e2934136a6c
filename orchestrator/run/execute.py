"""The one training function: ``train_run(cfg, ctx)``, the same in every execution mode.

* in-process (``--workers 0``; tests, debugging): ``ctx`` from
  :func:`~orchestrator.trainers.base.local_context`;
* in a Ray task (``--workers 1``, the default: one process per run, several runs at once);
* on each of W Ray Train workers (``--workers W`` ≥ 2; :mod:`orchestrator.run.ray_train`):
  every rank calls it; torch.distributed is initialised and ``ctx.rank``/``ctx.world_size``
  say so;
* as a Ray Tune trial (``mtlx tune``): the trial builds a context whose ``report`` forwards to
  Tune and calls ``train_run`` (or, with W ≥ 2 workers per trial, ``ray_train.fit`` with a
  report callback). ``RunConfig.trial_id`` and ``search_id`` end up in the runs table.

It writes the run's row in the runs table (``running`` → ``finished`` | ``nonfinite`` |
``failed`` | ``interrupted``) and hands the work to the trainer of the benchmark's ``kind``
(:func:`orchestrator.run.registry.trainer_for`; the contract: :mod:`orchestrator.trainers.base`).
"""

from __future__ import annotations

import time
from typing import Any

import torch

import envs
from orchestrator.config import RunConfig
from orchestrator.results.provenance import now, run_row
from orchestrator.run.registry import import_plugins, trainer_for
from orchestrator.trackers import open_trackers
from orchestrator.trainers.base import NonFiniteLoss, RunContext


def train_run(cfg: RunConfig, ctx: RunContext) -> dict[str, Any]:
    """Train one run (see the module docstring); returns its summary.

    Returns ``{"run_id", "status", "error", "wall_time_s", "reported", ...}``. A
    :class:`NonFiniteLoss` is recorded and returned as ``status="nonfinite"``; any other
    exception is recorded as ``failed`` and re-raised."""
    if not isinstance(cfg, RunConfig):
        raise TypeError(f"train_run takes a RunConfig, got {type(cfg).__name__}")
    import_plugins(cfg.plugins, cfg.workdir)
    torch.set_num_threads(max(1, cfg.cpus_per_worker))
    trainer = trainer_for(envs.get_class(cfg.benchmark))
    start = time.perf_counter()
    # a resumed run's wall time includes the attempts its checkpoint saved
    if ctx.is_main:  # a killed earlier attempt's half-written files
        ctx.store.clean_temporaries(cfg.run_id)
    prev = ctx.store.read_run(cfg.run_id) if ctx.is_main else None
    resumed = prev is not None and ctx.store.has_checkpoint(cfg.run_id)
    prev_wall = float(prev.get("wall_time_s") or 0.0) if resumed else 0.0
    # every start since the run's files were last cleared (--rerun) counts: a Ray retry
    # after a node loss, a resume after a kill, a new worker group
    attempts = int(prev.get("attempts") or 1) + 1 if prev is not None else 1
    ctx.identity = {"run_id": cfg.run_id, "benchmark": cfg.benchmark, "method": cfg.method,
                    "seed": cfg.seed}
    ctx.run_info = {**run_row(cfg, ctx.device), "status": "running", "error": None,
                    "started_at": now(), **ctx.run_info, "attempts": attempts}
    ctx.update_run()
    if ctx.is_main and cfg.trackers:  # the same tracker run again when resuming
        ctx.trackers = open_trackers(cfg, ctx.run_info, resumed)
    summary: dict[str, Any] = {"run_id": cfg.run_id, "attempts": attempts}

    def finish(status: str, error: str | None) -> None:
        wall = time.perf_counter() - start
        ctx.update_run(status=status, error=error, finished_at=now(), wall_time_s=prev_wall + wall)
        summary.update(status=status, error=error, wall_time_s=wall)
        if ctx.trackers is not None:
            ctx.trackers.close(status, ctx.run_info)

    try:
        result = trainer.train(cfg, ctx)
    except NonFiniteLoss as e:  # nonfinite, or its subclass Diverged: diverged
        finish(e.status, str(e))
        ctx.progress({"kind": "end", "status": e.status, "message": str(e)})
        return summary
    except Exception as e:
        finish("failed", f"{type(e).__name__}: {e}")
        raise
    except BaseException:  # KeyboardInterrupt, SystemExit: resumable later
        finish("interrupted", None)
        raise
    summary.update(result)
    finish("finished", None)
    ctx.progress({"kind": "end", "status": "finished", "wall_time_s": summary["wall_time_s"]})
    return summary
