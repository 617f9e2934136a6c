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

import inspect
import io
import math
import random
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from orchestrator.config import RunConfig, StorageConfig
from orchestrator.results import ResultsStore

if TYPE_CHECKING:
    import envs


class Trainer(Protocol):
    """The trainer of one benchmark kind (see the module docstring)."""

    kind: str

    def validate(self, runs: Sequence[RunConfig], bench: envs.Benchmark) -> None: ...

    def train(self, cfg: RunConfig, ctx: RunContext) -> dict[str, Any]: ...


class NonFiniteLoss(FloatingPointError):
    """A task's loss (or, with ``quantity="gradient"``, its gradient) became NaN/inf: the
    run stops with status :attr:`status`, others continue."""

    status = "nonfinite"

    def __init__(self, run_id: str, task: str, value: float, epoch: int, step: int,
                 quantity: str = "loss") -> None:
        self.task, self.value, self.epoch, self.step = task, value, epoch, step
        super().__init__(
            f"run {run_id}: the {quantity} of task {task!r} is {value} at epoch {epoch}, step "
            f"{step}; the run is stopped and what was written so far is kept (fix: a lower "
            "learning rate, e.g. train.lr=..., or other method hyperparameters, then --rerun)"
        )


class Diverged(NonFiniteLoss):
    """A task's loss grew past ``divergence_factor`` × its loss at the first step (status
    ``diverged``; see docs/protocols.md, "Divergence"). A subclass of :class:`NonFiniteLoss`
    so that every place that stops a run on a numerical failure stops it on this too."""

    status = "diverged"

    def __init__(self, run_id: str, task: str, value: float, start: float, factor: float,
                 epoch: int, step: int) -> None:
        self.task, self.value, self.epoch, self.step = task, value, epoch, step
        FloatingPointError.__init__(
            self,
            f"run {run_id}: the loss of task {task!r} is {value:.4g} at epoch {epoch}, step "
            f"{step}, more than divergence_factor={factor:g} × its first-step loss "
            f"{start:.4g}; the run diverged and is stopped (fix: a lower learning rate, e.g. "
            "train.lr=..., then --rerun; or a larger train.divergence_factor if this growth "
            "is expected)",
        )


#: ``train.divergence_factor`` when unset, for kinds whose losses should not grow (supervised)
DIVERGENCE_FACTOR = 1e4
#: the smallest first-step |loss| the bound is taken relative to (a loss starting at 0)
DIVERGENCE_FLOOR = 1e-3


class DivergenceGuard:
    """Stops a run whose task loss grows past ``factor`` × max(|first-step loss|, floor).

    ``check`` takes the globally reduced losses of a step (the same on every rank, so every
    rank stops alike); the first-step losses are part of the checkpoint (:meth:`state_dict`),
    so a resumed run compares against the same start. ``factor=None`` disables the check."""

    def __init__(self, run_id: str, tasks: Sequence[str], factor: float | None) -> None:
        self.run_id, self.tasks, self.factor = run_id, list(tasks), factor
        self.start: list[float] | None = None

    def check(self, losses: torch.Tensor, epoch: int, step: int,
              names: Sequence[str] | None = None) -> None:
        if self.factor is None:
            return
        names = list(names or self.tasks)
        values = [abs(float(v)) for v in losses.detach().flatten().cpu()]
        if self.start is None:
            self.start = [math.nan] * len(self.tasks)
        for name, v in zip(names, values):
            i = self.tasks.index(name)
            if math.isnan(self.start[i]):
                self.start[i] = v
                continue
            ref = max(self.start[i], DIVERGENCE_FLOOR)
            if v > self.factor * ref:
                raise Diverged(self.run_id, name, v, self.start[i], self.factor, epoch, step)

    def state_dict(self) -> list[float] | None:
        return self.start

    def load_state_dict(self, start: list[float] | None) -> None:
        self.start = None if start is None else list(start)


def is_nonfinite_gradients(e: BaseException) -> bool:
    """Whether ``e`` is a method's "non-finite per-task gradients" refusal (a ValueError the
    methods raise when the Gramian or the per-task gradients hold NaN/inf)."""
    return isinstance(e, ValueError) and "non-finite per-task gradients" in str(e)


def first_nonfinite_grad(losses: torch.Tensor, params: Sequence[torch.Tensor]
                         ) -> tuple[int, float] | None:
    """(index, squared norm) of the first task whose gradient w.r.t. ``params`` is NaN/inf
    or whose squared norm overflows its dtype (what makes a Gramian non-finite), None if
    there is none. One backward per task; only called once a run has already failed."""
    params = [p for p in params if p.requires_grad]
    for i in range(losses.numel()):
        grads = torch.autograd.grad(losses[i], params, retain_graph=True, allow_unused=True)
        sq = sum(float(g.square().sum()) for g in grads if g is not None)
        if not math.isfinite(sq):
            return i, sq
    return None


def _noop(*_: Any, **__: Any) -> None:
    return None


@dataclass
class RunContext:
    """Where and how one run executes; built by the launcher for each mode."""

    run_id: str
    #: the results location (a path or a URI, :mod:`orchestrator.results.storage`)
    out: str | Path
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
    #: how to reach an object-store ``out`` (``RunConfig.storage``)
    storage: StorageConfig = field(default_factory=StorageConfig)
    #: experiment trackers (``orchestrator.trackers.Trackers``, rank 0; set by ``train_run``):
    #: they get every row the store gets, after the store
    trackers: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def store(self) -> ResultsStore:
        return ResultsStore(self.out, self.storage)

    @property
    def checkpoint_dir(self) -> Path | str:
        return self.store.checkpoint_dir(self.run_id)

    # -- results --------------------------------------------------------------------------
    def write_metrics(self, part: str, rows: list[Mapping[str, Any]]) -> None:
        if self.is_main:
            self.store.write_metrics(self.run_id, part, rows)
            if self.trackers is not None:
                self.trackers.log_metrics(rows)

    def write_diagnostics(self, part: str, rows: list[Mapping[str, Any]]) -> None:
        if self.is_main:
            self.store.write_diagnostics(self.run_id, part, rows)
            if self.trackers is not None:
                self.trackers.log_diagnostics(rows)

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
        """Atomically write ``state`` (rank 0) to ``checkpoint_dir/state.pt``, keeping the
        previous one as ``state.prev.pt`` (the fallback of :meth:`load_checkpoint`); saved
        into memory first, so an object store gets one PUT
        (:meth:`~orchestrator.results.ResultsStore.write_checkpoint`)."""
        if not self.is_main:
            return
        buf = io.BytesIO()
        torch.save(dict(state), buf)
        self.store.write_checkpoint(self.run_id, buf.getvalue())

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The newest checkpoint that loads (``state.pt``, else ``state.prev.pt``, saying so
        on stderr), None if there is none; ``RuntimeError`` naming ``--rerun`` if neither
        loads."""
        store, errors = self.store, []
        for name in ("state.pt", "state.prev.pt"):
            path = f"{self.checkpoint_dir}/{name}"
            data = store.read_checkpoint(self.run_id, name)
            if data is None:
                continue
            try:
                state = torch.load(io.BytesIO(data), map_location=self.device, weights_only=False)
            except Exception as e:  # truncated, zero bytes, not a torch file: try the older
                errors.append(f"{path}: {type(e).__name__}: {str(e).strip()[:200]}")
                continue
            if errors:
                print(f"mtlx: run {self.run_id}: {errors[0]}; resuming from the previous "
                      f"checkpoint {path}", file=sys.stderr)
            return state
        if errors:
            raise RuntimeError(f"run {self.run_id}: no checkpoint loads ({'; '.join(errors)}); "
                               "fix: rerun with --rerun to start this run again")
        return None


def local_context(cfg: RunConfig, **kwargs: Any) -> RunContext:
    """A single-process context (``--workers 0`` / a Ray task): CUDA if asked and present."""
    use_cuda = cfg.gpus_per_worker > 0 and torch.cuda.is_available()
    device = torch.device("cuda" if use_cuda else "cpu")
    return RunContext(run_id=cfg.run_id, out=cfg.out, device=device, storage=cfg.storage,
                      **kwargs)


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


#: most loader processes the automatic ``train.loader_workers`` starts per Train worker
MAX_AUTO_LOADER_WORKERS = 8


def loader_options(bench: Any, cfg: RunConfig, device: torch.device) -> dict[str, Any]:
    """``bench.make_loader`` keywords of a run: ``train.loader_workers`` processes (None: all
    but one of the worker's CPUs on CUDA, none on CPU, where those CPUs run the model), and
    pinned memory on CUDA so that batch copies do not block the step. A plugin benchmark
    whose ``make_loader`` predates these keywords is not passed them."""
    workers = cfg.train.loader_workers
    if workers is None:
        cuda = device.type == "cuda"
        workers = min(MAX_AUTO_LOADER_WORKERS, max(0, cfg.cpus_per_worker - 1)) if cuda else 0
    opts = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    params = inspect.signature(bench.make_loader).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return opts
    return {k: v for k, v in opts.items() if k in params}


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
