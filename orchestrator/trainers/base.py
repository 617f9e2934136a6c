"""What every trainer receives and must do: :class:`Trainer`, :class:`RunContext`, seeding.

A trainer trains one run of one benchmark *kind* (``envs.Benchmark.kind``: ``"supervised"``,
``"rl"``, or a plugin's). It is an object with

* ``kind: str`` — the benchmark kind it trains;
* ``validate(runs: Sequence[RunConfig], bench: envs.Benchmark) -> None`` — raise
  ``ConfigError``/``ValueError`` for anything that can be checked before training (called by
  :func:`orchestrator.run.plan.expand` in the driver, before Ray starts);
* ``train(cfg: RunConfig, ctx: RunContext) -> dict`` — train one run and return a summary
  ``{"reported": {task: {metric: value}}, "epochs_done": int, "steps_done": int}``; extra
  keys are kept.

It is registered with :func:`orchestrator.run.registry.register_trainer` and called by
:func:`orchestrator.run.execute.train_run`, which writes the run's status row around it.
``train`` receives a :class:`~orchestrator.config.RunConfig` — never a dict — and must:

* **seed** from ``cfg.seed`` (:func:`seed_everything`; data order, initialisation and
  method randomness all follow from it) and build the method with
  ``methods.create(cfg.method, T, seed=cfg.seed, **cfg.hparams)``;
* **resume**: call ``ctx.load_checkpoint()`` first; if it returns a state dict, restore
  everything from it (model, optimisers, schedulers, method ``state_dict``, RNG states via
  :func:`set_rng_state`, counters; for RL also the replay buffer) and continue; save with
  ``ctx.save_checkpoint(state)`` (rank 0 writes atomically to ``ctx.checkpoint_dir/state.pt``)
  at every point a rerun may resume from, *after* writing that point's results, so a rerun
  redoes at most the unsaved part and overwrites the same files;
* **write results** only through ``ctx.write_metrics(part, rows)`` and
  ``ctx.write_diagnostics(part, rows)`` (``part``: a file name unique within the run and
  deterministic, e.g. ``"e0003"`` or ``"step0030000"``; rows from :meth:`RunContext.metric_row`
  and :meth:`RunContext.diag_row`) and ``ctx.update_run(**columns)`` for runs-table columns
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
  check globally reduced values), recorded as status ``nonfinite``; other runs continue.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from orchestrator.config import RunConfig
from orchestrator.results import ResultsStore

if TYPE_CHECKING:
    import envs


class Trainer(Protocol):
    """The trainer of one benchmark kind (see the module docstring)."""

    kind: str

    def validate(self, runs: Sequence[RunConfig], bench: envs.Benchmark) -> None: ...

    def train(self, cfg: RunConfig, ctx: RunContext) -> dict[str, Any]: ...


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
    #: identity columns of every metric/diagnostic row (set by ``train_run``)
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


def all_reduce_mean_(t: torch.Tensor, world: int) -> torch.Tensor:
    """In place: the mean of ``t`` over ``world`` torch.distributed ranks (no-op for 1)."""
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(world)
    return t


def data_hint(name: str, data_root: str | None, e: Exception) -> str:
    """The message for a benchmark whose data could not be opened, with the fix."""
    where = "no data_root" if data_root is None else f"data_root={data_root!r}"
    return (
        f"benchmark {name!r} could not be opened with {where}: {e}\n"
        "fix: pass --data-root PATH (or data_root: in the YAML) pointing at the dataset in its "
        "published layout, or correct bench_options"
    )


def method_hparams(bench: Any, method: str, user: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The benchmark's reference hyperparameters of ``method`` (``bench.method_hparams``,
    e.g. CAGrad c = 0.9 on MT10) updated by the user's explicit ones."""
    return {**bench.method_hparams.get(method, {}), **dict(user or {})}


def diagnostic_rows(ctx: RunContext, tasks: Sequence[str], epoch: int, step: int,
                    result: Any, prefix: str = "") -> list[dict[str, Any]]:
    """``diagnostics`` rows of one engine step (a :class:`methods.StepResult`): per task its
    loss, weight and gradient norm, pairwise cosines, and the method's ``info``; quantities
    are named ``<prefix><quantity>`` (RL: one prefix per loss)."""
    rows = []
    for i, task in enumerate(tasks):
        rows.append(ctx.diag_row(epoch, step, f"{prefix}loss", task, float(result.losses[i])))
        rows.append(ctx.diag_row(epoch, step, f"{prefix}weight", task, float(result.weights[i])))
        if result.grad_norms is not None:
            rows.append(ctx.diag_row(epoch, step, f"{prefix}grad_norm", task,
                                     float(result.grad_norms[i])))
        if result.cosines is not None:
            for j in range(i + 1, len(tasks)):
                rows.append(ctx.diag_row(epoch, step, f"{prefix}cosine", task,
                                         float(result.cosines[i, j]), other_task=tasks[j]))
    for key, value in result.info.items():
        rows.append(ctx.diag_row(epoch, step, f"{prefix}info.{key}", "", float(value)))
    return rows
