"""The supervised multi-task trainer (benchmark ``kind = "supervised"``, the default).

One epoch-based loop for every supervised benchmark and method; it never branches on a
method's or benchmark's name, only on declared capabilities:

* **a step** is planned by ``method.plan_step(epoch, epochs)``:
  ``"joint"`` — one forward, ``methods.backward`` (the engine computes what the method needs:
  nothing, the T×P Jacobian, or representation gradients; at ``train.level``, with
  ``train.head_update``), one optimiser step; then, if ``method.uses_after_step``, the same
  batch's new losses (no grad) go to ``method.after_step`` (FAMO).
  ``"sequential"`` — for each task in order: zero gradients, forward, back-propagate that
  task's loss alone, optimiser step (CSO's Phase 1);
* **models with ``"task_batchnorm"``** (per-task BatchNorm in the shared trunk) are run once
  per task: ``bench.forward_losses(model, batch, task=t)`` — task t's loss comes from task t's
  own forward pass (CSO); the evaluator receives ``outputs[t]`` of each task's pass;
* **model statistics** a method declares it needs (``requires_model``) are passed in
  ``StepContext.model_stats`` when the model provides them (:data:`MODEL_STATS`), with
  ``param_slices`` naming every shared parameter as in ``model.named_parameters()``;
* **``stl`` runs** (``cfg.stl_task``) train the whole model on that one task's loss; only its
  metrics are recorded (single-task baselines for Δm).

Distributed (W Ray Train workers): the model is *not* wrapped in DDP — the engine reduces
exactly what each method needs (see ``methods/engine.py``), and the plain gradients of
``stl``/sequential steps are mean-all-reduced here. Each worker gets ``batch_size / W`` samples
of every global batch from ``bench.make_loader(..., rank, world_size, drop_last=False)``,
which must shard so that the W shards of a global batch are exactly the single-process batch
(``envs._sampling``). The last, partial global batch is kept in every mode, so the number of
steps never depends on W: its examples are split over the ranks (a rank without any gets a
pad batch) and each rank's losses are scaled by ``W·n_r/N`` (its share of the N examples,
from ``loader.shard_sizes(step)``), so the engine's mean over ranks is the mean over the
global batch — exact for losses that are means over examples (docs/ray.md §7).
With BatchNorm in the trunk, batch statistics are per worker (as with DDP), so the update
then equals the single-process one only up to that. Evaluation runs on rank 0 over the whole
split; the other ranks wait at the next collective.

Evaluation, selection and the reported numbers: val and test are evaluated every
``eval_every`` epochs and at the end. A validation score (lower is better) is computed at each
evaluation: Δm% against the benchmark's single-task reference when it has one, else −Δp%
against the first evaluation (LibMTL's model selection), else the mean validation loss.
``selection="best_val"`` reports the test metrics of the evaluation with the best score (the
earliest on ties; never chosen on test); ``"last"`` the mean test metrics of the last
``average_last`` evaluations (docs/protocols.md §2). These are written as
``split="reported"`` rows and are what ``mtlx report`` computes Δm and Δp from.

Checkpoints are taken at the end of every epoch (after its results are written): model,
optimiser, scheduler, method state (``state_dict`` incl. extra state), python/numpy/torch
RNG states, the epoch, the step and the evaluation history; and mid-epoch as
``train.checkpoint_every_steps`` / ``checkpoint_every_s`` say, then with the epoch's partial
state too (batches done, loss sums, diagnostics rows, the RNG state at the epoch's start;
:mod:`orchestrator.trainers.cadence`). The data order of an epoch is a function of (seed,
epoch) (``set_epoch``), so a resumed run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

import envs
import methods
from envs.base import Forward
from methods import engine
from methods.base import StepContext
from methods.precision import LossScaler
from orchestrator.config import STL, RunConfig
from orchestrator.results import dumps
from orchestrator.trainers.base import (
    DIVERGENCE_FACTOR,
    DivergenceGuard,
    NonFiniteLoss,
    RunContext,
    diagnostic_rows,
    first_nonfinite_grad,
    is_nonfinite_gradients,
    loader_options,
    rng_state,
    seed_everything,
    set_rng_state,
)
from orchestrator.trainers.cadence import CheckpointCadence, resume_batches
from orchestrator.trainers.capabilities import validate
from orchestrator.trainers.eval_progress import EvalProgress
from orchestrator.trainers.optim import make_optimizer, make_scheduler
from orchestrator.trainers.selection import select_reported, val_score

#: StepContext.model_stats key → model method that provides it (called when the method
#: declares ``requires_model``; CSO uses the per-task connection strengths).
MODEL_STATS = {"connection_strength": "connection_strengths"}

CHECKPOINT_VERSION = 1


# ---------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------


def _all_reduce_grads_(params: Sequence[Tensor], world: int) -> None:
    """Mean-all-reduce the plain gradients (stl / sequential steps) in one collective."""
    if world <= 1:
        return
    ps = [p for p in params if p.grad is not None]
    if not ps:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in ps])
    engine.all_reduce_mean_(flat)
    for p, g in zip(ps, torch.split(flat, [p.numel() for p in ps])):
        p.grad = g.view_as(p).clone()


def _set_epoch(loader: Any, epoch: int) -> bool:
    """Pin the data order of ``epoch`` (DistributedSampler convention)."""
    for obj in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        if obj is not None and hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
            return True
    return False


class _Step:
    """Forward/backward machinery of one run (holds the model, method and optimiser)."""

    def __init__(self, cfg: RunConfig, ctx: RunContext, bench: envs.Benchmark, model, method,
                 optimizer) -> None:
        self.cfg, self.ctx, self.bench = cfg, ctx, bench
        self.model, self.method, self.optimizer = model, method, optimizer
        self.tasks = list(bench.tasks)
        self.world = ctx.world_size
        self.task_forward = "task_batchnorm" in getattr(model, "features", ())
        self.shared = list(model.shared_parameters())
        self.task_params = list(model.all_task_parameters())
        names = {id(p): n for n, p in model.named_parameters()}
        self.slices, off = [], 0
        for p in self.shared:
            self.slices.append((names.get(id(p), f"shared.{len(self.slices)}"), off, p.shape))
            off += p.numel()
        self.stl_index = self.tasks.index(cfg.stl_task) if cfg.stl_task is not None else None
        self.share: float | None = None  # this rank's loss scale W·n_r/N at the current step
        precision = cfg.train.precision
        self.amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.scaler = LossScaler() if precision == "fp16" else None

    # -- forward --------------------------------------------------------------------------
    def forward(self, batch: Any, task: str | None = None) -> Forward:
        """One forward pass (under autocast for bf16/fp16; losses in fp32); with per-task
        BatchNorm, one pass per task (or only ``task``)."""
        device = getattr(self.ctx.device, "type", str(self.ctx.device))
        with torch.autocast(device, dtype=self.amp, enabled=self.amp is not None):
            fwd = self._forward(batch, task)
        if self.amp is None:
            return fwd
        return Forward(losses=fwd.losses.float(), rep=fwd.rep, outputs=fwd.outputs)

    def _forward(self, batch: Any, task: str | None = None) -> Forward:
        if not self.task_forward:
            return self.bench.forward_losses(self.model, batch)
        if task is not None:
            return self.bench.forward_losses(self.model, batch, task=task)  # type: ignore[call-arg]
        fwds = [self.bench.forward_losses(self.model, batch, task=t) for t in self.tasks]  # type: ignore[call-arg]
        losses = torch.stack([f.losses[i] for i, f in enumerate(fwds)])
        return Forward(losses=losses, rep=None,
                       outputs={t: f.outputs[t] for t, f in zip(self.tasks, fwds)})

    def train_forward(self, batch: Any, task: str | None = None) -> Tensor:
        """This rank's training losses, scaled by its share of the global batch."""
        losses = self.forward(batch, task).losses
        return losses if self.share is None else losses * self.share

    def global_losses(self, losses: Tensor, epoch: int, step: int,
                      names: Sequence[str] | None = None) -> Tensor:
        """Mean over workers (detached), checked finite on every rank alike."""
        g = engine.all_reduce_mean_(losses.detach().clone())
        if not torch.isfinite(g).all():
            i = int((~torch.isfinite(g)).nonzero()[0])
            raise NonFiniteLoss(self.cfg.run_id, (names or self.tasks)[i], float(g[i]), epoch, step)
        return g

    # -- steps ----------------------------------------------------------------------------
    def joint(self, batch: Any, epoch: int, epochs: int, step: int, diagnose: bool):
        opt, method = self.optimizer, self.method
        opt.zero_grad(set_to_none=True)
        fwd = self.forward(batch)
        if self.share is not None:
            fwd = dataclasses.replace(fwd, losses=fwd.losses * self.share)
        g = self.global_losses(fwd.losses, epoch, step)
        result = None
        if self.stl_index is not None:
            self.stl_backward(fwd.losses[self.stl_index])
        else:
            sctx = StepContext(epoch=epoch, num_epochs=epochs, step=step,
                               param_slices=self.slices, model_stats=self.model_stats())
            try:
                result = methods.backward(
                    method, fwd.losses, self.shared, self.task_params, rep=fwd.rep,
                    level=self.cfg.train.level, head_update=self.cfg.train.head_update,  # type: ignore[arg-type]
                    context=sctx, diagnostics=diagnose, scaler=self.scaler,
                )  # fmt: skip
            except FloatingPointError as e:  # e.g. log of a zero loss in a loss transform
                raise NonFiniteLoss(self.cfg.run_id, f"transformed ({e})", math.nan, epoch,
                                    step) from None
            except ValueError as e:
                if not is_nonfinite_gradients(e):
                    raise
                raise self.gradient_failure(batch, epoch, step) from None
        opt.step()
        if method is not None and method.uses_after_step:
            with torch.no_grad():
                new = self.train_forward(batch)
            self.global_losses(new, epoch, step)  # the same non-finite check on every rank
            engine.after_step(method, new)  # averages over ranks, then method.after_step
        return g, result

    def stl_backward(self, loss: Tensor) -> None:
        """One loss's plain backward (a single-task run, a sequential step), all-reduced;
        under fp16 scaled, unscaled, and the step skipped (no gradients) on overflow."""
        params = list(self.model.parameters())
        scale = 1.0 if self.scaler is None else self.scaler.scale
        (loss * scale if self.scaler is not None else loss).backward()
        _all_reduce_grads_(params, self.world)
        if self.scaler is None:
            return
        grads = [p.grad.div_(scale) for p in params if p.grad is not None]
        found = not all(bool(torch.isfinite(g).all()) for g in grads)  # same on every rank
        self.scaler.update(found)
        if found:
            for p in params:
                p.grad = None

    def gradient_failure(self, batch: Any, epoch: int, step: int) -> NonFiniteLoss:
        """The :class:`NonFiniteLoss` naming the first task whose gradient is NaN/inf (the
        model is unchanged: the method refused before the optimiser step)."""
        self.optimizer.zero_grad(set_to_none=True)
        bad = first_nonfinite_grad(self.forward(batch).losses, self.shared)
        task, value = (self.tasks[bad[0]], bad[1]) if bad else ("(their combination)", math.nan)
        return NonFiniteLoss(self.cfg.run_id, task, value, epoch, step,
                             quantity="squared gradient norm")

    def sequential(self, batch: Any, epoch: int, step: int) -> Tensor:
        """One optimiser step per task on the same batch (``plan_step == "sequential"``)."""
        out = torch.zeros(len(self.tasks), dtype=torch.float64)
        for i, task in enumerate(self.tasks):
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.train_forward(batch, task=task)[i]
            out[i] = float(self.global_losses(loss.reshape(1), epoch, step, [task])[0])
            self.stl_backward(loss)  # one task's plain backward (loss-scaled under fp16)
            self.optimizer.step()
        return out

    def model_stats(self) -> dict[str, Any]:
        if self.method is None or not self.method.requires_model:
            return {}
        stats = {}
        for key, attr in MODEL_STATS.items():
            fn = getattr(self.model, attr, None)
            if callable(fn):
                with torch.no_grad():
                    stats[key] = fn()
        return stats

    # -- evaluation -----------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split: str) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
        """({task: {metric: value}}, {task: mean loss}) over the whole split (this rank)."""
        t = self.cfg.train
        self.model.eval()
        ev = self.bench.new_evaluator()
        loader = self.bench.make_loader(split, t.eval_batch_size or t.batch_size, shuffle=False,
                                        **loader_options(self.bench, self.cfg, self.ctx.device))
        # Per-task counts: multi-input benchmarks (Office) give a task whose data ran out a
        # NaN loss in the remaining batches; average each task over its own batches only.
        sums = torch.zeros(len(self.tasks), dtype=torch.float64)
        counts = torch.zeros(len(self.tasks), dtype=torch.float64)
        progress = EvalProgress(self.ctx, self.cfg.label, split, loader, t.max_eval_batches)
        for i, batch in enumerate(loader):
            if t.max_eval_batches is not None and i >= t.max_eval_batches:
                break
            progress.batch(i)
            batch = self.bench.to_device(batch, self.ctx.device)
            fwd = self.forward(batch)
            ev.update(fwd, batch)
            batch_losses = fwd.losses.detach().double().cpu()
            present = torch.isfinite(batch_losses)
            sums += torch.where(present, batch_losses, 0.0)
            counts += present.double()
        self.model.train()
        losses = {task: float(sums[i] / counts[i]) if counts[i] > 0 else float("nan")
                  for i, task in enumerate(self.tasks)}
        return ev.compute(), losses


# ---------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------


class _Loop:
    """One run's epochs: setup, resume, then per epoch train → evaluate → write → checkpoint."""

    def __init__(self, cfg: RunConfig, ctx: RunContext) -> None:
        self.cfg, self.ctx, self.t = cfg, ctx, cfg.train
        self.bench = bench = envs.create(cfg.benchmark, root=cfg.data_root, **cfg.bench_options)
        self.tasks = list(bench.tasks)
        self.E = int(self.t.epochs)
        seed_everything(cfg.seed)
        self.model = bench.build_model(**cfg.model_options).to(ctx.device)
        self.method = None
        if cfg.method != STL:
            self.method = methods.create(cfg.method, len(self.tasks), seed=cfg.seed,
                                         **cfg.hparams).to(ctx.device)
        method_params = ([] if self.method is None
                         else [p for p in self.method.parameters() if p.requires_grad])
        self.optimizer = make_optimizer(self.t, list(self.model.parameters()), method_params)
        self.scheduler = make_scheduler(self.t, self.optimizer)
        self.step_fn = _Step(cfg, ctx, bench, self.model, self.method, self.optimizer)
        stl = cfg.stl_task
        self.spec = dict(bench.metrics) if stl is None else {stl: bench.metrics[stl]}
        self.hib = {(task, m.name): m.higher_is_better for task, ms in self.spec.items() for m in ms}
        self.reference = bench.stl_reference
        if self.reference is not None and stl is not None:
            self.reference = {stl: self.reference[stl]} if stl in self.reference else None
        self.report_split = "test" if "test" in bench.splits else "val"
        self.start_epoch, self.step, self.history = 0, 0, []
        factor = self.t.divergence_factor or DIVERGENCE_FACTOR
        self.guard = DivergenceGuard(cfg.run_id, self.tasks if stl is None else [stl], factor)
        self.solver_failures = 0  # steps whose method solve failed (info["solver_failed"])
        self.cadence = CheckpointCadence(self.t)
        self.partial: dict[str, Any] | None = None  # a mid-epoch checkpoint's epoch state

    def record_run_info(self) -> None:
        bench, spec = self.bench, self.spec
        self.ctx.update_run(
            tasks=dumps(self.tasks),
            metrics_spec=dumps({k: [[m.name, m.higher_is_better] for m in ms]
                                for k, ms in spec.items()}),
            stl_reference=dumps(bench.stl_reference) if bench.stl_reference is not None else None,
            stl_reference_source=bench.stl_reference_source or None,
            protocol=dumps(dataclasses.asdict(bench.protocol))
            if dataclasses.is_dataclass(bench.protocol) else None,
        )

    def resume(self) -> None:
        state = self.ctx.load_checkpoint()
        if state is None:
            return
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.method is not None:
            self.method.load_state_dict(state["method"])
        set_rng_state(state["rng"])
        self.start_epoch, self.step = state["epoch"] + 1, state["step"]
        self.history = list(state["history"])
        self.guard.load_state_dict(state.get("divergence_start"))
        self.solver_failures = int(state.get("solver_failures", 0))
        if state.get("partial") is not None:  # the RNG after its last step, as saved
            self.partial = {**state["partial"], "rng": state["rng"]}
        if self.step_fn.scaler is not None and state.get("scaler") is not None:
            self.step_fn.scaler.load_state_dict(state["scaler"])

    def loader(self, epoch: int | None) -> Any:
        """The train loader of this rank (``epoch``: a fresh one seeded by the epoch)."""
        world = self.ctx.world_size
        seed = self.cfg.seed + (epoch or 0)
        return self.bench.make_loader("train", self.t.batch_size // world, shuffle=True,
                                      seed=seed, rank=self.ctx.rank, world_size=world,
                                      **loader_options(self.bench, self.cfg, self.ctx.device))

    def share(self, loader: Any, step: int) -> float | None:
        """This rank's loss scale ``W·n_r/N`` at ``step`` (None when the shares are equal)."""
        world = self.ctx.world_size
        sizes = getattr(loader, "shard_sizes", None)
        sizes = sizes(step) if world > 1 and callable(sizes) else None
        if not sizes or len(set(sizes)) == 1:
            return None
        return world * sizes[self.ctx.rank] / sum(sizes)

    def steps_in(self, loader: Any) -> int:
        n_steps = len(loader)
        if self.ctx.world_size > 1:  # every rank must take the same number of steps
            n = torch.tensor([n_steps], dtype=torch.float64, device=self.ctx.device)  # NCCL
            dist.all_reduce(n, op=dist.ReduceOp.MIN)
            n_steps = int(n.item())
        if self.t.max_steps_per_epoch is not None:
            n_steps = min(n_steps, self.t.max_steps_per_epoch)
        return n_steps

    def train_epoch(self, loader: Any, epoch: int, n_steps: int, clock: dict[str, float]
                    ) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """One epoch of steps: ({task: mean training loss}, diagnostics rows)."""
        cfg, ctx, method, tasks, E = self.cfg, self.ctx, self.method, self.tasks, self.E
        diag_every = self.t.diagnostics_every
        loss_sum = torch.zeros(len(tasks), dtype=torch.float64, device=ctx.device)
        diag_rows: list[dict[str, Any]] = []
        first, part, epoch_rng = 0, self.partial, rng_state()
        if part is not None and part["epoch"] == epoch:  # resuming mid-epoch
            first, epoch_rng, diag_rows = part["batch"], part["epoch_rng"], list(part["diag_rows"])
            loss_sum += part["loss_sum"].to(ctx.device)
            batches = resume_batches(loader, first, epoch_rng, part["rng"])
        else:
            batches = iter(loader)
        self.partial = None
        last_emit = 0.0
        for i in range(first, n_steps):
            batch = self.bench.to_device(next(batches), ctx.device)
            self.step_fn.share = self.share(loader, i)
            plan = "joint" if method is None else method.plan_step(epoch, E)
            if plan == "sequential":
                g = self.step_fn.sequential(batch, epoch, self.step)
            elif plan == "joint":
                diagnose = diag_every > 0 and self.step % diag_every == 0 and method is not None
                g, result = self.step_fn.joint(batch, epoch, E, self.step, diagnose)
                if result is not None:
                    self.solver_failures += int(result.info.get("solver_failed", 0))
                if diagnose and result is not None:
                    diag_rows += diagnostic_rows(ctx, tasks, epoch, self.step, result)
            else:
                raise ValueError(f"{cfg.method}.plan_step returned {plan!r}; expected 'joint' "
                                 "or 'sequential'")
            if cfg.stl_task is None:
                self.guard.check(g, epoch, self.step)
            else:
                self.guard.check(g[tasks.index(cfg.stl_task)], epoch, self.step, [cfg.stl_task])
            loss_sum += g.double().to(ctx.device)
            self.step += 1
            clock["steps"] += 1
            if i < n_steps - 1 and self.cadence.due(self.step):
                self.checkpoint(epoch - 1, {"epoch": epoch, "batch": i + 1, "epoch_rng": epoch_rng,
                                            "loss_sum": loss_sum.cpu(), "diag_rows": diag_rows})
            now = time.perf_counter()
            if now - last_emit > 0.5 or i == n_steps - 1:
                last_emit = now
                rate = (now - clock["t0"]) / clock["steps"]
                left = (E - epoch - 1) * n_steps + (n_steps - i - 1)
                ctx.progress({"kind": "progress", "label": cfg.label, "epoch": epoch + 1,
                              "epochs": E, "step": i + 1, "steps": n_steps,
                              "losses": {k: float(g[j]) for j, k in enumerate(tasks)},
                              "eta_s": rate * left})
        loss_sum = loss_sum.cpu()
        return {k: float(loss_sum[j] / max(n_steps, 1)) for j, k in enumerate(tasks)}, diag_rows

    def evaluate(self, epoch: int, rows: list[dict[str, Any]], report: dict[str, Any]
                 ) -> float | None:
        """Evaluate val and test (rank 0), append their rows and report entries and the
        history record; returns the validation score (None on other ranks)."""
        ctx, spec, step = self.ctx, self.spec, self.step
        record: dict[str, Any] = {"epoch": epoch, "step": step, "val": None, "test": None}
        score = None
        if ctx.is_main:
            losses_by_split = {}
            for split in ("val", "test"):
                if split not in self.bench.splits:
                    continue
                values, split_loss = self.step_fn.evaluate(split)
                values = {k: {m: float(v) for m, v in values[k].items()} for k in spec}
                record[split], losses_by_split[split] = values, split_loss
                for k, ms in values.items():
                    for m, v in ms.items():
                        rows.append(ctx.metric_row(split, epoch, step, k, m, v, self.hib.get((k, m))))
                        report[f"{split}/{k}/{m}"] = v
                    rows.append(ctx.metric_row(split, epoch, step, k, "loss", split_loss[k], False))
            first_val = next((h["val"] for h in self.history if h.get("val")), record["val"])
            score, score_name = val_score(
                record["val"] if "val" in self.bench.splits else None,
                {k: v for k, v in losses_by_split.get("val", {}).items() if k in spec},
                spec, self.reference, first_val,
            )
            record["score"] = score
            if score is not None:
                report["val_score"] = score
                report[score_name] = score
        self.history.append(record)
        return score

    def scheduler_step(self, is_eval: bool, score: float | None) -> None:
        sched = self.scheduler
        if sched is None:
            return
        if not isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sched.step()
        elif is_eval:
            box = [score]  # rank 0's score decides on every rank
            if self.ctx.world_size > 1:
                dist.broadcast_object_list(box, src=0)
            if box[0] is not None:
                sched.step(box[0])

    def checkpoint(self, epoch: int, partial: dict[str, Any] | None = None) -> None:
        """Save the state after ``epoch`` (the last whole one) and, mid-epoch, ``partial``:
        the current epoch's progress (batches done, sums, rows, the RNG at its start)."""
        self.cadence.saved()
        self.ctx.save_checkpoint({
            "partial": partial,
            "version": CHECKPOINT_VERSION, "run_id": self.cfg.run_id, "epoch": epoch,
            "step": self.step, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "method": None if self.method is None else self.method.state_dict(),
            "rng": rng_state(), "history": self.history,
            "divergence_start": self.guard.state_dict(), "solver_failures": self.solver_failures,
            "scaler": None if self.step_fn.scaler is None else self.step_fn.scaler.state_dict(),
        })  # fmt: skip

    def write_reported(self) -> dict[str, Any]:
        ctx, t = self.ctx, self.t
        reported, epochs = select_reported(self.history, t.selection or "last",
                                           t.average_last or 1, self.report_split)
        rows = [ctx.metric_row("reported", epochs[-1] if epochs else -1, self.step, k, m, v,
                               self.hib.get((k, m)))
                for k, ms in reported.items() for m, v in ms.items()]
        ctx.write_metrics("reported", rows)
        ctx.update_run(reported_epochs=dumps(epochs))
        return {"reported": reported, "reported_epochs": epochs, "epochs_done": self.E,
                "steps_done": self.step}


def train_run(cfg: RunConfig, ctx: RunContext) -> dict[str, Any]:
    """Train one supervised run (the contract: :mod:`orchestrator.trainers.base`)."""
    run = _Loop(cfg, ctx)
    run.record_run_info()
    run.resume()
    E, t = run.E, run.t
    loader = run.loader(None)
    ctx.progress({"kind": "start", "label": cfg.label, "epoch": run.start_epoch, "epochs": E})
    clock = {"t0": time.perf_counter(), "steps": 0}
    run.model.train()
    for epoch in range(run.start_epoch, E):
        epoch_start = time.perf_counter()
        if run.method is not None:
            run.method.start_epoch(epoch, E)
        if hasattr(run.model, "start_epoch"):  # architectures with a schedule (LTB)
            run.model.start_epoch(epoch, E)
        if not _set_epoch(loader, epoch):  # no set_epoch: a fresh loader seeded by epoch
            loader = run.loader(epoch)
        train_loss, diag_rows = run.train_epoch(loader, epoch, run.steps_in(loader), clock)
        rows = [ctx.metric_row("train", epoch, run.step, k, "loss", v, False)
                for k, v in train_loss.items() if cfg.stl_task in (None, k)]
        rows.append(ctx.metric_row("train", epoch, run.step, "", "lr",
                                   run.optimizer.param_groups[0]["lr"], None))
        report: dict[str, Any] = {"epoch": epoch, "step": run.step,
                                  **{f"train_loss/{k}": v for k, v in train_loss.items()}}
        is_eval = (epoch + 1) % (t.eval_every or 1) == 0 or epoch == E - 1
        score = run.evaluate(epoch, rows, report) if is_eval else None
        rows.append(ctx.metric_row("train", epoch, run.step, "", "epoch_time_s",
                                   time.perf_counter() - epoch_start, None))
        ctx.write_metrics(f"e{epoch:05d}", rows)
        ctx.write_diagnostics(f"e{epoch:05d}", diag_rows)
        run.scheduler_step(is_eval, score)
        run.checkpoint(epoch)
        ctx.update_run(epochs_done=epoch + 1, steps_done=run.step,
                       solver_failures=run.solver_failures)
        ctx.report(report)
        ctx.progress({"kind": "epoch", "label": cfg.label, "epoch": epoch + 1, "epochs": E,
                      "metrics": {k: v for k, v in report.items()
                                  if k.startswith(run.report_split)},
                      "val_score": score})
    return run.write_reported()


class SupervisedTrainer:
    """The trainer of ``kind = "supervised"`` benchmarks (:class:`~orchestrator.trainers.base.Trainer`)."""

    kind = "supervised"
    validate = staticmethod(validate)
    train = staticmethod(train_run)


TRAINER = SupervisedTrainer()
