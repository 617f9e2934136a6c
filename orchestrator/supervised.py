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
of every global batch from ``bench.make_loader(..., rank, world_size, drop_last=True)``,
which must shard like ``DistributedSampler`` (strided) so that the W shards of a global batch
are exactly the single-process batch; the last incomplete global batch of an epoch is dropped.
With BatchNorm in the trunk, batch statistics are per worker (as with DDP), so the update
then equals the single-process one only up to that. Evaluation runs on rank 0 over the whole
split; the other ranks wait at the next collective.

Evaluation, selection and the reported numbers: val and test are evaluated every
``eval_every`` epochs and at the end. A validation score (lower is better) is computed at each
evaluation: Δm% against the benchmark's single-task reference when it has one, else −Δp%
against the first evaluation (LibMTL's model selection), else the mean validation loss.
``selection="best_val"`` reports the test metrics of the evaluation with the best score (the
earliest on ties; never chosen on test); ``"last"`` the mean test metrics of the last
``average_last`` evaluations (research/benchmarks.md §1.1). These are written as
``split="reported"`` rows and are what ``mtlx report`` computes Δm and Δp from.

Checkpoints are taken at the end of every epoch (after its results are written): model,
optimiser, scheduler, method state (``state_dict`` incl. extra state), python/numpy/torch
RNG states, the epoch, the step and the evaluation history. The data order of an epoch is a
function of (seed, epoch) (``set_epoch``), so a resumed run continues exactly as an
uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

import envs
import methods
from envs.base import Forward
from envs.metrics import average_results, delta_m, delta_p
from methods import engine
from methods.base import StepContext
from methods.engine import resolve_level, validate_head_update
from orchestrator.config import STL, ConfigError, RunConfig, TrainConfig
from orchestrator.results import dumps
from orchestrator.train import NonFiniteLoss, RunContext, rng_state, seed_everything, set_rng_state

#: StepContext.model_stats key → model method that provides it (called when the method
#: declares ``requires_model``; CSO uses the per-task connection strengths).
MODEL_STATS = {"connection_strength": "connection_strengths"}

CHECKPOINT_VERSION = 1


# ---------------------------------------------------------------------------------------
# validation (driver side, before Ray)
# ---------------------------------------------------------------------------------------


def validate(runs: Sequence[RunConfig], bench: envs.Benchmark) -> None:
    """Check what the capabilities decide: see ``orchestrator.validate``."""
    r0 = runs[0]
    t = r0.train
    name = r0.benchmark
    for key in ("epochs", "batch_size", "optimizer", "lr"):
        if getattr(t, key) is None:
            raise ConfigError(f"train.{key} is not set and benchmark {name!r}'s protocol has no "
                              f"value for it; fix: pass train.{key}=...")
    W = r0.world_size
    if t.batch_size % W:
        raise ConfigError(
            f"batch_size={t.batch_size} is not divisible by workers={W}: each worker takes "
            f"batch_size/workers samples of every global batch; fix: a batch size that is a "
            f"multiple of {W}, or another number of workers"
        )
    selection = t.selection or "last"
    if selection == "best_val" and "val" not in bench.splits:
        raise ConfigError(
            f"selection=best_val needs a validation split, but {name!r} has splits "
            f"{list(bench.splits)}; fix: train.selection=last (or a benchmark option that holds "
            "out a validation split); model selection never uses test"
        )
    try:  # opens the data: a missing or malformed root is reported here
        bench.make_loader("train", t.batch_size // W, shuffle=True, seed=0, rank=0, world_size=W,
                          drop_last=W > 1)
    except (ValueError, OSError) as e:
        from orchestrator.validate import _data_hint

        raise ConfigError(_data_hint(name, r0.data_root, e)) from None
    try:
        model = bench.build_model(**r0.model_options)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model_options {r0.model_options} rejected by {name!r}: {e}") from None
    features = frozenset(getattr(model, "features", ()))
    task_forward = "task_batchnorm" in features
    if task_forward and "task" not in inspect.signature(bench.forward_losses).parameters:
        raise ConfigError(
            f"{name!r}'s model offers 'task_batchnorm' but its forward_losses(model, batch) takes "
            "no task= argument, so per-task forward passes are impossible; fix the benchmark "
            "(forward_losses(model, batch, task=None))"
        )
    has_rep, why = _representation(bench, features)
    T = len(bench.tasks)
    seen = set()
    for r in runs:
        if r.method == STL or r.method in seen:
            continue
        seen.add(r.method)
        m = methods.create(r.method, T, seed=0, **r.hparams)
        missing = [f for f in m.requires_model if f not in features]
        if missing:
            raise ConfigError(
                f"method {r.method!r} needs a model with {missing} (e.g. 'task_batchnorm' = "
                f"per-task BatchNorm in the shared trunk), but {name!r}'s model offers "
                f"{sorted(features) or 'nothing'}; fix: choose a benchmark/model option that "
                "provides it, or another method"
            )
        level = t.level if t.level != "auto" else (m.default_level if m.requires_grads else "param")
        if level == "rep" and m.requires_grads and m.supports_rep_grads and not has_rep:
            raise ConfigError(
                f"method {r.method!r} at level 'rep' needs a single shared representation, but "
                f"{name!r} {why}; fix: train.level=param"
                + (" (or a method without a rep-level default)" if t.level == "auto" else "")
            )
        try:
            resolve_level(m, level, True)
            validate_head_update(m, t.head_update)
        except ValueError as e:
            raise ConfigError(f"method {r.method!r}: {e} (train.level / train.head_update)") from None
        if W > 1 and level == "rep" and m.requires_grads and not m.gramian_only:
            raise ConfigError(
                f"method {r.method!r} at level 'rep' is not exact across {W} workers (its "
                "weights need more than the Gramian of representation gradients); fix: "
                "train.level=param, or workers=1"
            )


def _representation(bench: envs.Benchmark, features: frozenset[str]) -> tuple[bool, str]:
    if bench.multi_input:
        return False, "is multi-input (each task has its own batch, so no shared representation)"
    if "task_batchnorm" in features:
        return False, "has a model with per-task BatchNorm (a different representation per task)"
    if "representation" not in features:
        return False, "has a model without a single shared representation tensor"
    return True, ""


# ---------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------


def make_optimizer(t: TrainConfig, model_params: list[Tensor], method_params: list[Tensor]):
    """The protocol's optimiser; the method's own parameters (UW ...) get ``method_lr`` and
    no weight decay, as nash-mtl's separate parameter group."""
    groups: list[dict[str, Any]] = [{"params": model_params}]
    if method_params:
        groups.append({"params": method_params, "lr": t.method_lr or t.lr, "weight_decay": 0.0})
    wd = t.weight_decay or 0.0
    if t.optimizer == "adam":
        return torch.optim.Adam(groups, lr=t.lr, weight_decay=wd)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=t.lr, weight_decay=wd)
    return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum or 0.0, weight_decay=wd)


def make_scheduler(t: TrainConfig, optimizer: torch.optim.Optimizer):
    sched = t.lr_schedule or "none"
    if sched == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, t.step_size or 100, t.gamma or 0.5)
    if sched == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t.epochs)
    if sched == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=t.gamma or 0.5,
            patience=10 if t.patience is None else t.patience, min_lr=t.min_lr or 0.0,
        )  # fmt: skip
    return None


def _all_reduce_mean_(t: Tensor, world: int) -> Tensor:
    if world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(world)
    return t


def _all_reduce_grads_(params: Sequence[Tensor], world: int) -> None:
    """Mean-all-reduce the plain gradients (stl / sequential steps) in one collective."""
    if world <= 1:
        return
    ps = [p for p in params if p.grad is not None]
    if not ps:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in ps])
    _all_reduce_mean_(flat, world)
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

    # -- forward --------------------------------------------------------------------------
    def forward(self, batch: Any, task: str | None = None) -> Forward:
        """One forward pass; with per-task BatchNorm, one pass per task (or only ``task``)."""
        if not self.task_forward:
            return self.bench.forward_losses(self.model, batch)
        if task is not None:
            return self.bench.forward_losses(self.model, batch, task=task)  # type: ignore[call-arg]
        fwds = [self.bench.forward_losses(self.model, batch, task=t) for t in self.tasks]  # type: ignore[call-arg]
        losses = torch.stack([f.losses[i] for i, f in enumerate(fwds)])
        return Forward(losses=losses, rep=None,
                       outputs={t: f.outputs[t] for t, f in zip(self.tasks, fwds)})

    def global_losses(self, losses: Tensor, epoch: int, step: int,
                      names: Sequence[str] | None = None) -> Tensor:
        """Mean over workers (detached), checked finite on every rank alike."""
        g = _all_reduce_mean_(losses.detach().clone(), self.world)
        if not torch.isfinite(g).all():
            i = int((~torch.isfinite(g)).nonzero()[0])
            raise NonFiniteLoss(self.cfg.run_id, (names or self.tasks)[i], float(g[i]), epoch, step)
        return g

    # -- steps ----------------------------------------------------------------------------
    def joint(self, batch: Any, epoch: int, epochs: int, step: int, diagnose: bool):
        opt, method = self.optimizer, self.method
        opt.zero_grad(set_to_none=True)
        fwd = self.forward(batch)
        g = self.global_losses(fwd.losses, epoch, step)
        result = None
        if self.stl_index is not None:
            fwd.losses[self.stl_index].backward()
            _all_reduce_grads_(list(self.model.parameters()), self.world)
        else:
            sctx = StepContext(epoch=epoch, num_epochs=epochs, step=step,
                               param_slices=self.slices, model_stats=self.model_stats())
            try:
                result = methods.backward(
                    method, fwd.losses, self.shared, self.task_params, rep=fwd.rep,
                    level=self.cfg.train.level, head_update=self.cfg.train.head_update,  # type: ignore[arg-type]
                    context=sctx, diagnostics=diagnose,
                )  # fmt: skip
            except FloatingPointError as e:  # e.g. log of a zero loss in a loss transform
                raise NonFiniteLoss(self.cfg.run_id, f"transformed ({e})", math.nan, epoch,
                                    step) from None
        opt.step()
        if method is not None and method.uses_after_step:
            with torch.no_grad():
                new = self.forward(batch).losses
            self.global_losses(new, epoch, step)  # the same non-finite check on every rank
            engine.after_step(method, new)  # averages over ranks, then method.after_step
        return g, result

    def sequential(self, batch: Any, epoch: int, step: int) -> Tensor:
        """One optimiser step per task on the same batch (``plan_step == "sequential"``)."""
        out = torch.zeros(len(self.tasks), dtype=torch.float64)
        params = list(self.model.parameters())
        for i, task in enumerate(self.tasks):
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.forward(batch, task=task).losses[i]
            out[i] = float(self.global_losses(loss.reshape(1), epoch, step, [task])[0])
            loss.backward()
            _all_reduce_grads_(params, self.world)
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
        loader = self.bench.make_loader(split, t.eval_batch_size or t.batch_size, shuffle=False)
        # Per-task counts: multi-input benchmarks (Office) give a task whose data ran out a
        # NaN loss in the remaining batches; average each task over its own batches only.
        sums = torch.zeros(len(self.tasks), dtype=torch.float64)
        counts = torch.zeros(len(self.tasks), dtype=torch.float64)
        for i, batch in enumerate(loader):
            if t.max_eval_batches is not None and i >= t.max_eval_batches:
                break
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
# selection of the reported numbers
# ---------------------------------------------------------------------------------------


def val_score(val: Mapping[str, Mapping[str, float]] | None, val_loss: Mapping[str, float] | None,
              spec: Mapping[str, Sequence[envs.Metric]], reference: Mapping | None,
              first_val: Mapping | None) -> tuple[float | None, str]:
    """(score, name), lower is better: Δm vs the STL reference, else −Δp vs the first
    evaluation, else the mean validation loss."""
    if val is None:
        return None, "none"
    for name, base, sign, fn in (("val_delta_m", reference, 1.0, delta_m),
                                 ("val_neg_delta_p_first", first_val, -1.0, delta_p)):
        if base:
            try:
                return sign * fn(val, base, spec), name
            except ValueError:
                continue
    if val_loss:
        return sum(val_loss.values()) / len(val_loss), "val_loss"
    return None, "none"


def select_reported(history: Sequence[Mapping[str, Any]], selection: str, average_last: int,
                    split: str) -> tuple[dict[str, dict[str, float]], list[int]]:
    """The protocol's reported numbers from the evaluation history (see module docstring)."""
    evals = [h for h in history if h.get(split) is not None]
    if not evals:
        return {}, []
    if selection == "best_val":
        scored = [h for h in evals if h.get("score") is not None and math.isfinite(h["score"])]
        if scored:
            best = min(scored, key=lambda h: h["score"])  # min keeps the earliest on ties
            return {k: dict(v) for k, v in best[split].items()}, [best["epoch"]]
    last = evals[-max(1, average_last):]
    return average_results([h[split] for h in last]), [h["epoch"] for h in last]


# ---------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------


def train_run(cfg: RunConfig, ctx: RunContext) -> dict[str, Any]:
    """Train one supervised run (contract: ``orchestrator/train.py``)."""
    t = cfg.train
    bench = envs.create(cfg.benchmark, root=cfg.data_root, **cfg.bench_options)
    tasks = list(bench.tasks)
    world, rank, dev = ctx.world_size, ctx.rank, ctx.device
    E = int(t.epochs)
    seed_everything(cfg.seed)
    model = bench.build_model(**cfg.model_options).to(dev)
    method = None
    if cfg.method != STL:
        method = methods.create(cfg.method, len(tasks), seed=cfg.seed, **cfg.hparams).to(dev)
    method_params = [] if method is None else [p for p in method.parameters() if p.requires_grad]
    optimizer = make_optimizer(t, list(model.parameters()), method_params)
    scheduler = make_scheduler(t, optimizer)
    step_fn = _Step(cfg, ctx, bench, model, method, optimizer)

    spec = dict(bench.metrics) if cfg.stl_task is None else {cfg.stl_task: bench.metrics[cfg.stl_task]}
    hib = {(task, m.name): m.higher_is_better for task, ms in spec.items() for m in ms}
    reference = bench.stl_reference
    if reference is not None and cfg.stl_task is not None:
        reference = {cfg.stl_task: reference[cfg.stl_task]} if cfg.stl_task in reference else None
    report_split = "test" if "test" in bench.splits else "val"
    has_val = "val" in bench.splits
    ctx.update_run(
        tasks=dumps(tasks),
        metrics_spec=dumps({k: [[m.name, m.higher_is_better] for m in ms] for k, ms in spec.items()}),
        stl_reference=dumps(bench.stl_reference) if bench.stl_reference is not None else None,
        stl_reference_source=getattr(bench, "stl_reference_source", "") or None,
        protocol=dumps(dataclasses.asdict(bench.protocol))
        if dataclasses.is_dataclass(bench.protocol) else None,
    )

    start_epoch, step, history = 0, 0, []
    state = ctx.load_checkpoint()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])
        if method is not None:
            method.load_state_dict(state["method"])
        set_rng_state(state["rng"])
        start_epoch, step, history = state["epoch"] + 1, state["step"], list(state["history"])

    per_worker = t.batch_size // world
    loader = bench.make_loader("train", per_worker, shuffle=True, seed=cfg.seed, rank=rank,
                               world_size=world, drop_last=world > 1)
    diag_every = t.diagnostics_every
    ctx.progress({"kind": "start", "label": cfg.label, "epoch": start_epoch, "epochs": E})
    t0, steps_this_session = time.perf_counter(), 0
    model.train()
    for epoch in range(start_epoch, E):
        epoch_start = time.perf_counter()
        if method is not None:
            method.start_epoch(epoch, E)
        if not _set_epoch(loader, epoch):  # no set_epoch: a fresh loader seeded by epoch
            loader = bench.make_loader("train", per_worker, shuffle=True, seed=cfg.seed + epoch,
                                       rank=rank, world_size=world, drop_last=world > 1)
        n_steps = len(loader)
        if world > 1:  # every rank must take the same number of steps
            n = torch.tensor([n_steps], dtype=torch.float64, device=dev)  # NCCL: on device
            dist.all_reduce(n, op=dist.ReduceOp.MIN)
            n_steps = int(n.item())
        if t.max_steps_per_epoch is not None:
            n_steps = min(n_steps, t.max_steps_per_epoch)
        loss_sum = torch.zeros(len(tasks), dtype=torch.float64, device=dev)
        diag_rows: list[dict[str, Any]] = []
        last_emit = 0.0
        for i, batch in enumerate(loader):
            if i >= n_steps:
                break
            batch = bench.to_device(batch, dev)
            plan = "joint" if method is None else method.plan_step(epoch, E)
            if plan == "sequential":
                g = step_fn.sequential(batch, epoch, step)
            elif plan == "joint":
                diagnose = diag_every > 0 and step % diag_every == 0 and method is not None
                g, result = step_fn.joint(batch, epoch, E, step, diagnose)
                if diagnose and result is not None:
                    diag_rows += _diagnostic_rows(ctx, tasks, epoch, step, result)
            else:
                raise ValueError(f"{cfg.method}.plan_step returned {plan!r}; expected 'joint' "
                                 "or 'sequential'")
            loss_sum += g.double().to(dev)
            step += 1
            steps_this_session += 1
            now = time.perf_counter()
            if now - last_emit > 0.5 or i == n_steps - 1:
                last_emit = now
                rate = (now - t0) / steps_this_session
                left = (E - epoch - 1) * n_steps + (n_steps - i - 1)
                ctx.progress({"kind": "progress", "label": cfg.label, "epoch": epoch + 1,
                              "epochs": E, "step": i + 1, "steps": n_steps,
                              "losses": {k: float(g[j]) for j, k in enumerate(tasks)},
                              "eta_s": rate * left})
        loss_sum = loss_sum.cpu()
        train_loss = {k: float(loss_sum[j] / max(n_steps, 1)) for j, k in enumerate(tasks)}

        rows = [ctx.metric_row("train", epoch, step, k, "loss", v, False)
                for k, v in train_loss.items() if cfg.stl_task in (None, k)]
        rows.append(ctx.metric_row("train", epoch, step, "", "lr", optimizer.param_groups[0]["lr"], None))
        report: dict[str, Any] = {"epoch": epoch, "step": step,
                                  **{f"train_loss/{k}": v for k, v in train_loss.items()}}
        is_eval = (epoch + 1) % (t.eval_every or 1) == 0 or epoch == E - 1
        score = None
        if is_eval:
            record: dict[str, Any] = {"epoch": epoch, "step": step, "val": None, "test": None}
            if ctx.is_main:
                losses_by_split = {}
                for split in ("val", "test"):
                    if split not in bench.splits:
                        continue
                    values, split_loss = step_fn.evaluate(split)
                    values = {k: {m: float(v) for m, v in values[k].items()} for k in spec}
                    record[split], losses_by_split[split] = values, split_loss
                    for k, ms in values.items():
                        for m, v in ms.items():
                            rows.append(ctx.metric_row(split, epoch, step, k, m, v, hib.get((k, m))))
                            report[f"{split}/{k}/{m}"] = v
                        rows.append(ctx.metric_row(split, epoch, step, k, "loss",
                                                   split_loss[k], False))
                first_val = next((h["val"] for h in history if h.get("val")), record["val"])
                score, score_name = val_score(
                    record["val"] if has_val else None,
                    {k: v for k, v in losses_by_split.get("val", {}).items() if k in spec},
                    spec, reference, first_val,
                )
                record["score"] = score
                if score is not None:
                    report["val_score"] = score
                    report[score_name] = score
            history.append(record)
        rows.append(ctx.metric_row("train", epoch, step, "", "epoch_time_s",
                                   time.perf_counter() - epoch_start, None))
        ctx.write_metrics(f"e{epoch:05d}", rows)
        ctx.write_diagnostics(f"e{epoch:05d}", diag_rows)
        if scheduler is not None:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                if is_eval:
                    box = [score]
                    if world > 1:
                        dist.broadcast_object_list(box, src=0)
                    if box[0] is not None:
                        scheduler.step(box[0])
            else:
                scheduler.step()
        ctx.save_checkpoint({
            "version": CHECKPOINT_VERSION, "run_id": cfg.run_id, "epoch": epoch, "step": step,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "method": None if method is None else method.state_dict(),
            "rng": rng_state(), "history": history,
        })  # fmt: skip
        ctx.update_run(epochs_done=epoch + 1, steps_done=step)
        ctx.report(report)
        ctx.progress({"kind": "epoch", "label": cfg.label, "epoch": epoch + 1, "epochs": E,
                      "metrics": {k: v for k, v in report.items() if k.startswith(report_split)},
                      "val_score": score})

    reported, epochs = select_reported(history, t.selection or "last", t.average_last or 1,
                                       report_split)
    rows = [ctx.metric_row("reported", epochs[-1] if epochs else -1, step, k, m, v, hib.get((k, m)))
            for k, ms in reported.items() for m, v in ms.items()]
    ctx.write_metrics("reported", rows)
    ctx.update_run(reported_epochs=dumps(epochs))
    return {"reported": reported, "reported_epochs": epochs, "epochs_done": E, "steps_done": step}


def _diagnostic_rows(ctx: RunContext, tasks: Sequence[str], epoch: int, step: int,
                     result: methods.StepResult) -> list[dict[str, Any]]:
    rows = []
    for i, task in enumerate(tasks):
        rows.append(ctx.diag_row(epoch, step, "loss", task, float(result.losses[i])))
        rows.append(ctx.diag_row(epoch, step, "weight", task, float(result.weights[i])))
        if result.grad_norms is not None:
            rows.append(ctx.diag_row(epoch, step, "grad_norm", task, float(result.grad_norms[i])))
        if result.cosines is not None:
            for j in range(i + 1, len(tasks)):
                rows.append(ctx.diag_row(epoch, step, "cosine", task, float(result.cosines[i, j]),
                                         other_task=tasks[j]))
    for key, value in result.info.items():
        rows.append(ctx.diag_row(epoch, step, f"info.{key}", "", float(value)))
    return rows
