"""The one training function: ``train_run(cfg, ctx)``, and the contract of its trainers.

``train_run`` is called the same way in every execution mode:

* in-process (``--workers 0``; tests, debugging): ``ctx`` from :func:`local_context`;
* in a Ray task (``--workers 1``, the default: one process per run, several runs at once);
* on each of W Ray Train workers (``--workers W`` ≥ 2; ``orchestrator.ray_train``): every
  rank calls it; torch.distributed is initialised and ``ctx.rank``/``ctx.world_size`` say so;
* as a Ray Tune trial (``mtlx tune``): the trial function builds a :class:`RunContext` whose
  ``report`` forwards to Tune, and calls ``train_run`` (or, with W ≥ 2 workers per trial,
  ``orchestrator.ray_train.fit`` with a ``TuneReportCallback``). ``RunConfig.trial_id`` and
  ``search_id`` end up in the runs table.

It writes the run's row in the runs table (``running`` → ``finished`` | ``nonfinite`` |
``failed`` | ``interrupted``) and hands the work to the trainer of the benchmark's ``kind``
(a class attribute of the benchmark, default ``"supervised"``)::

    kind           module                     function
    "supervised"   orchestrator.supervised    train_run(cfg, ctx) -> dict
    "rl"           orchestrator.sac           train_run(cfg, ctx) -> dict

Trainer contract (what ``orchestrator.sac`` implements for MT10)
----------------------------------------------------------------
``train_run(cfg: RunConfig, ctx: RunContext) -> dict`` trains one run and returns a summary
``{"reported": {task: {metric: value}}, "epochs_done": int, "steps_done": int}``; extra keys
are kept. It must:

* **seed** from ``cfg.seed`` (:func:`seed_everything`; data order, initialisation and
  method randomness all follow from it) and build the method with
  ``methods.create(cfg.method, T, seed=cfg.seed, **cfg.hparams)``;
* **resume**: call ``ctx.load_checkpoint()`` first; if it returns a state dict, restore
  everything from it (model, optimisers, schedulers, method ``state_dict``, RNG states via
  :func:`set_rng_state`, counters; for RL also the replay buffer or a documented policy) and
  continue; save with ``ctx.save_checkpoint(state)`` (rank 0 writes atomically to
  ``ctx.checkpoint_dir/state.pt``) at every point a rerun may resume from, *after* writing
  that point's results, so a rerun redoes at most the unsaved part and overwrites the same
  files;
* **write results** only through ``ctx.write_metrics(part, rows)`` and
  ``ctx.write_diagnostics(part, rows)`` (``part``: a file name unique within the run and
  deterministic, e.g. ``"e0003"`` or ``"step0030000"``; rows follow
  ``orchestrator.results.METRIC_SCHEMA`` / ``DIAG_SCHEMA``; :meth:`RunContext.metric_row`
  and :meth:`RunContext.diag_row` fill the identity columns) and ``ctx.update_run(**columns)`` for runs-table columns
  (``tasks``, ``metrics_spec``, ``stl_reference``, ``epochs_done``, ``steps_done``,
  ``reported_epochs`` ...). Non-zero ranks' writes are dropped, so every rank may call them;
  write the reported numbers as ``split="reported"`` rows;
* **progress**: call ``ctx.progress({...})`` now and then (at most a few times per second)
  with ``epoch, epochs, step, steps`` (any unit; ``steps`` = total), ``losses``
  ({task: float}) and ``eta_s``; the driver draws the progress line;
* **report** once per evaluation on *every* rank: ``ctx.report({"epoch": e, ...})``
  (under Ray Train it is a barrier; Tune's scheduler sees these metrics; include
  ``val_score`` — lower is better — when there is one);
* **stop on a non-finite loss** by raising :class:`NonFiniteLoss` (the same on every rank:
  check globally reduced values), which ``train_run`` records as status ``nonfinite`` with the
  message, keeping what was written; other runs continue;
* optionally define ``validate(runs: list[RunConfig], bench) -> None`` raising
  ``ConfigError``/``ValueError`` for anything that can be checked before training
  (called by ``orchestrator.validate.expand`` in the driver, before Ray starts).
"""

from __future__ import annotations

import datetime as _dt
import functools
import importlib
import os
import platform
import random
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from orchestrator.config import RunConfig
from orchestrator.results import ResultsStore, dumps

TRAINERS = {"supervised": "orchestrator.supervised", "rl": "orchestrator.sac"}


def trainer_module(kind: str):
    """The trainer module for a benchmark ``kind`` (see the module docstring)."""
    if kind not in TRAINERS:
        raise ValueError(f"no trainer for benchmark kind {kind!r}; known kinds: {list(TRAINERS)}")
    return importlib.import_module(TRAINERS[kind])


class NonFiniteLoss(FloatingPointError):
    """A task's loss became NaN/inf: the run stops (status ``nonfinite``), others continue."""

    def __init__(self, run_id: str, task: str, value: float, epoch: int, step: int) -> None:
        self.task, self.value, self.epoch, self.step = task, value, epoch, step
        super().__init__(
            f"run {run_id}: the loss of task {task!r} is {value} at epoch {epoch}, step {step}; "
            "the run is stopped and what was written so far is kept (try a lower learning "
            "rate or other method hyperparameters)"
        )


def _noop(*_: Any, **__: Any) -> None:
    return None


@dataclass
class RunContext:
    """Where and how one run executes; built by the launcher for each mode."""

    run_id: str
    out: Path
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    #: progress events → the driver's progress line (rank 0 only)
    on_progress: Callable[[dict[str, Any]], None] = _noop
    #: per-evaluation metrics → Ray Train / Tune (every rank calls it)
    report: Callable[[dict[str, Any]], None] = _noop
    #: runs-table columns accumulated by :meth:`update_run`
    run_info: dict[str, Any] = field(default_factory=dict)
    #: identity columns of every metric/diagnostic row (set by :func:`train_run`)
    identity: dict[str, Any] = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def store(self) -> ResultsStore:
        return ResultsStore(self.out)

    @property
    def checkpoint_dir(self) -> Path:
        return self.store.checkpoint_dir(self.run_id)

    # -- results --------------------------------------------------------------------------
    def write_metrics(self, part: str, rows: list[Mapping[str, Any]]) -> None:
        if self.is_main:
            self.store.write_metrics(self.run_id, part, rows)

    def write_diagnostics(self, part: str, rows: list[Mapping[str, Any]]) -> None:
        if self.is_main:
            self.store.write_diagnostics(self.run_id, part, rows)

    def metric_row(self, split: str, epoch: int, step: int, task: str, metric: str,
                   value: float, higher_is_better: bool | None) -> dict[str, Any]:
        """A ``metrics`` row with this run's identity columns."""
        return {**self.identity, "split": split, "epoch": epoch, "step": step, "task": task,
                "metric": metric, "value": float(value), "higher_is_better": higher_is_better}

    def diag_row(self, epoch: int, step: int, quantity: str, task: str, value: float,
                 other_task: str | None = None) -> dict[str, Any]:
        """A ``diagnostics`` row with this run's identity columns."""
        return {**self.identity, "epoch": epoch, "step": step, "quantity": quantity,
                "task": task, "other_task": other_task, "value": float(value)}

    def update_run(self, **columns: Any) -> None:
        """Set runs-table columns and rewrite this run's row (rank 0)."""
        self.run_info.update(columns)
        if self.is_main and "run_id" in self.run_info:
            self.store.write_run(self.run_info)

    def progress(self, event: dict[str, Any]) -> None:
        if self.is_main:
            self.on_progress({"run_id": self.run_id, **event})

    # -- checkpoints ----------------------------------------------------------------------
    def save_checkpoint(self, state: Mapping[str, Any]) -> None:
        """Atomically write ``state`` (rank 0) to ``checkpoint_dir/state.pt``."""
        if not self.is_main:
            return
        d = self.checkpoint_dir
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".state.pt.{os.getpid()}.tmp"
        torch.save(dict(state), tmp)
        os.replace(tmp, d / "state.pt")

    def load_checkpoint(self) -> dict[str, Any] | None:
        path = self.checkpoint_dir / "state.pt"
        if not path.exists():
            return None
        return torch.load(path, map_location=self.device, weights_only=False)


def local_context(cfg: RunConfig, **kwargs: Any) -> RunContext:
    """A single-process context (``--workers 0`` / a Ray task): CUDA if asked and present."""
    use_cuda = cfg.gpus_per_worker > 0 and torch.cuda.is_available()
    device = torch.device("cuda" if use_cuda else "cpu")
    return RunContext(run_id=cfg.run_id, out=Path(cfg.out), device=device, **kwargs)


# ---------------------------------------------------------------------------------------
# seeding and RNG state
# ---------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# ---------------------------------------------------------------------------------------
# provenance and the runs row
# ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _static_provenance() -> dict[str, Any]:
    try:
        from importlib.metadata import version

        mtlx_version = version("mtlx")
    except Exception:  # not installed as a distribution
        mtlx_version = "unknown"
    try:
        import ray

        ray_version = ray.__version__
    except ImportError:
        ray_version = None
    return {
        "mtlx_version": mtlx_version, "git_commit": git_commit(),
        "torch_version": torch.__version__, "ray_version": ray_version,
        "python_version": platform.python_version(), "hostname": socket.gethostname(),
    }  # fmt: skip


def git_commit() -> str | None:
    """HEAD of the mtlx checkout, with ``+dirty`` if it has uncommitted changes."""
    repo = Path(__file__).resolve().parent.parent
    if not (repo / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def provenance(device: torch.device) -> dict[str, Any]:
    name = str(device)
    if device.type == "cuda":
        name += f" ({torch.cuda.get_device_name(device)})"
    return {**_static_provenance(), "device": name}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def base_run_row(cfg: RunConfig, device: torch.device) -> dict[str, Any]:
    t = cfg.train
    return {
        "run_id": cfg.run_id, "benchmark": cfg.benchmark, "method": cfg.method,
        "seed": cfg.seed, "stl_task": cfg.stl_task, "config_hash": cfg.config_hash(),
        "trial_id": cfg.trial_id, "search_id": cfg.search_id,
        "hparams": dumps(cfg.hparams), "level": t.level, "head_update": t.head_update,
        "epochs": t.epochs, "steps": t.steps, "batch_size": t.batch_size,
        "optimizer": t.optimizer, "lr": t.lr, "weight_decay": t.weight_decay,
        "momentum": t.momentum, "lr_schedule": t.lr_schedule, "step_size": t.step_size,
        "gamma": t.gamma, "patience": t.patience, "min_lr": t.min_lr,
        "eval_every": t.eval_every, "average_last": t.average_last,
        "selection": t.selection, "method_lr": t.method_lr,
        "max_steps_per_epoch": t.max_steps_per_epoch, "max_eval_batches": t.max_eval_batches,
        "data_root": cfg.data_root, "bench_options": dumps(cfg.bench_options),
        "model_options": dumps(cfg.model_options),
        "trainer_options": dumps(cfg.trainer_options), "workers": cfg.workers,
        "gpus_per_worker": cfg.gpus_per_worker, "cpus_per_worker": cfg.cpus_per_worker,
        "config_json": dumps(cfg.to_dict()), **provenance(device),
    }  # fmt: skip


# ---------------------------------------------------------------------------------------
# the one training function
# ---------------------------------------------------------------------------------------


def train_run(cfg: RunConfig | Mapping[str, Any], ctx: RunContext) -> dict[str, Any]:
    """Train one run (see the module docstring); returns its summary.

    Returns ``{"run_id", "status", "error", "wall_time_s", "reported", ...}``. A
    :class:`NonFiniteLoss` is recorded and returned as ``status="nonfinite"``; any other
    exception is recorded as ``failed`` and re-raised."""
    if isinstance(cfg, Mapping):
        cfg = RunConfig.from_dict(cfg)
    from orchestrator.validate import import_plugins

    import_plugins(cfg.plugins, cfg.workdir)
    import envs

    torch.set_num_threads(max(1, cfg.cpus_per_worker))
    kind = getattr(envs.get_class(cfg.benchmark), "kind", "supervised")
    trainer = trainer_module(kind)
    start = time.perf_counter()
    # a resumed run's wall time includes the attempts its checkpoint saved
    prev = ctx.store.read_run(cfg.run_id) if ctx.is_main else None
    resumed = prev is not None and (ctx.checkpoint_dir / "state.pt").exists()
    prev_wall = float(prev.get("wall_time_s") or 0.0) if resumed else 0.0
    ctx.identity = {"run_id": cfg.run_id, "benchmark": cfg.benchmark, "method": cfg.method,
                    "seed": cfg.seed}
    ctx.run_info = {**base_run_row(cfg, ctx.device), "status": "running", "error": None,
                    "started_at": _now(), **ctx.run_info}
    ctx.update_run()
    summary: dict[str, Any] = {"run_id": cfg.run_id}

    def finish(status: str, error: str | None) -> None:
        wall = time.perf_counter() - start
        ctx.update_run(status=status, error=error, finished_at=_now(), wall_time_s=prev_wall + wall)
        summary.update(status=status, error=error, wall_time_s=wall)

    try:
        result = trainer.train_run(cfg, ctx)
    except NonFiniteLoss as e:
        finish("nonfinite", str(e))
        ctx.progress({"kind": "end", "status": "nonfinite", "message": str(e)})
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
