"""The SAC learner: networks, optimisers, one method instance per loss, and the update
(critic step, actor step on the updated critic, temperature step, Polyak target update);
the checks of the method × SAC capabilities before training (:func:`validate`) and the
diagnostics rows of an update (:func:`diag_rows`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

import envs
import methods
from methods.base import Method, StepContext
from orchestrator.config import RunConfig
from orchestrator.trainers.base import (
    RunContext,
    diagnostic_rows,
    first_nonfinite_grad,
    is_nonfinite_gradients,
)
from orchestrator.trainers.rl.config import LOSSES, SACConfig, sac_config
from orchestrator.trainers.rl.networks import Actor, TwinQ
from orchestrator.trainers.rl.replay import Batch, per_task_mean


class NonFiniteSACLoss(FloatingPointError):
    """A per-task SAC loss became NaN/inf (``train_run`` turns it into ``NonFiniteLoss``)."""

    def __init__(self, loss: str, task: int, value: float) -> None:
        self.loss, self.task, self.value = loss, task, value
        super().__init__(f"non-finite {loss} loss of task {task}: {value}")


def takes_signed_losses(method: str, num_tasks: int, hparams: Mapping[str, Any]) -> bool:
    """Whether ``method`` accepts negative task losses: the method's own declaration
    (``Method.requires_positive_losses``), read before training."""
    return not methods.create(method, num_tasks, **hparams).requires_positive_losses()


def check_method(method: Method) -> None:
    """``ValueError`` for capabilities the SAC networks cannot serve (checked before compute)."""
    if method.requires_model:
        raise ValueError(
            f"{method.name} needs model features {list(method.requires_model)} that the SAC "
            "MLPs do not offer; choose another method for mt10"
        )
    if method.requires_grads and method.default_level == "rep":
        raise ValueError(
            f"{method.name} works on representation-level gradients, but the SAC actor and "
            "critics expose no single shared representation; use its parameter-level "
            "counterpart"
        )


class SACLearner:
    """Shared actor, twin critics with targets, temperature(s) and one method per loss."""

    def __init__(self, obs_dim: int, action_dim: int, num_tasks: int, method: str,
                 hparams: Mapping[str, Any] | None = None, cfg: SACConfig | None = None,
                 seed: int = 0) -> None:
        self.cfg = cfg = cfg if cfg is not None else SACConfig()
        self.num_tasks = T = num_tasks
        self.action_dim = action_dim
        self.device = torch.device(cfg.device)
        self.method_name = method
        self.hparams = dict(hparams or {})
        self.apply_to = cfg.resolved_apply_to(method, takes_signed_losses(method, T, self.hparams))
        self.target_entropy = (
            -float(action_dim) if cfg.target_entropy is None else float(cfg.target_entropy)
        )
        # One instance per loss: the method where configured, EW elsewhere.
        self.methods: dict[str, Method] = {}
        for i, kind in enumerate(LOSSES):
            # the critic's instance gets the run seed; the others seeds derived from it
            mseed = seed if i == 0 else int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
            if kind in self.apply_to:
                m = methods.create(method, T, seed=mseed, **self.hparams)
                check_method(m)
            else:
                m = methods.create("ew", T, seed=mseed)
            self.methods[kind] = m.to(self.device)

        # TRY NOT TO MODIFY: seeding (initial weights from the seed, global RNG untouched)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.actor = Actor(obs_dim, action_dim, cfg).to(self.device)
            self.critic = TwinQ(obs_dim, action_dim, cfg).to(self.device)
        self.critic_target = TwinQ(obs_dim, action_dim, cfg).to(self.device)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        n_alpha = T if cfg.alpha == "per_task" else 1
        self.log_alpha = torch.full((n_alpha,), math.log(cfg.init_temperature),
                                    device=self.device, requires_grad=True)
        self.generator = torch.Generator().manual_seed(seed)

        def adam(params: list[Tensor], kind: str) -> torch.optim.Adam:
            groups: list[dict[str, Any]] = [{"params": params}]
            extra = list(self.methods[kind].parameters())  # UW / IMTL-L scales
            if extra:
                groups.append({"params": extra, "lr": cfg.method_lr or cfg.lr})
            return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas)

        self.critic_opt = adam(list(self.critic.parameters()), "critic")
        self.actor_opt = adam(list(self.actor.parameters()), "actor")
        self.alpha_opt = adam([self.log_alpha], "alpha")
        self.updates = 0

    # -- acting ---------------------------------------------------------------------------

    def noise(self, n: int) -> Tensor:
        return torch.randn(n, self.action_dim, generator=self.generator).to(self.device)

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        o = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        a, _, mean = self.actor(o, None if deterministic else self.noise(len(o)))
        return (mean if deterministic else a).cpu().numpy()

    def alpha_of(self, task: Tensor) -> Tensor:
        """α per sample: the shared temperature or each sample's task temperature."""
        a = self.log_alpha.exp()
        return a[task] if self.cfg.alpha == "per_task" else a.expand(task.shape[0])

    # -- ALGO LOGIC: one gradient update on a batch ---------------------------------------

    def update(self, batch: Batch, diagnostics: bool = False) -> dict[str, Any]:
        """Critic, actor and temperature steps, then the target update. Returns per-loss
        per-task losses and the engine's diagnostics (weights; norms/cosines if asked)."""
        b = batch.to(self.device)
        T, cfg = self.num_tasks, self.cfg
        out: dict[str, Any] = {}
        with torch.no_grad():
            alpha = self.alpha_of(b.task)
            next_a, next_logp, _ = self.actor(b.next_obs, self.noise(len(b.task)))
            tq1, tq2 = self.critic_target(b.next_obs, next_a)
            target_q = b.reward + (1 - b.terminated) * cfg.gamma * (
                torch.min(tq1, tq2) - alpha * next_logp
            )

        def critic_losses() -> Tensor:
            q1, q2 = self.critic(b.obs, b.action)
            return per_task_mean((q1 - target_q).pow(2) + (q2 - target_q).pow(2), b.task, T)

        out["critic"] = self._step("critic", critic_losses, list(self.critic.parameters()),
                                   self.critic_opt, diagnostics)

        eps = self.noise(len(b.task))  # one draw, reused if the method recomputes the loss
        cache: dict[str, Tensor] = {}

        def actor_losses() -> Tensor:
            a, logp, _ = self.actor(b.obs, eps)
            q1, q2 = self.critic(b.obs, a)
            cache.setdefault("logp", logp.detach())  # log π before the actor step (α loss)
            return per_task_mean(alpha * logp - torch.min(q1, q2), b.task, T)

        out["actor"] = self._step("actor", actor_losses, list(self.actor.parameters()),
                                  self.actor_opt, diagnostics)

        def alpha_losses() -> Tensor:
            return per_task_mean(
                self.alpha_of(b.task) * (-cache["logp"] - self.target_entropy), b.task, T
            )

        out["alpha"] = self._step("alpha", alpha_losses, [self.log_alpha], self.alpha_opt,
                                  diagnostics)

        with torch.no_grad():  # Polyak averaging of both target critics
            for p, tp in zip(self.critic.parameters(), self.critic_target.parameters()):
                tp.lerp_(p, cfg.tau)
        self.updates += 1
        out["alpha_value"] = self.log_alpha.detach().exp().cpu()
        out["entropy"] = float(-cache["logp"].mean())
        return out

    def _step(self, kind: str, loss_fn: Callable[[], Tensor], params: list[Tensor],
              opt: torch.optim.Optimizer, diagnostics: bool) -> methods.StepResult:
        method = self.methods[kind]
        losses = loss_fn()
        bad = (~torch.isfinite(losses.detach())).nonzero().flatten().tolist()
        if bad:
            raise NonFiniteSACLoss(kind, bad[0], float(losses[bad[0]]))
        opt.zero_grad(set_to_none=True)
        try:
            res = methods.backward(method, losses, params, context=StepContext(step=self.updates),
                                   diagnostics=diagnostics)
        except ValueError as e:
            if not is_nonfinite_gradients(e):
                raise
            bad_grad = first_nonfinite_grad(loss_fn(), params)
            task, value = bad_grad if bad_grad else (0, math.nan)
            raise NonFiniteSACLoss(f"{kind} (squared gradient norm)", task, value) from None
        opt.step()
        if method.uses_after_step:  # e.g. FAMO: the same batch's losses after the step
            with torch.no_grad():
                method.after_step(loss_fn())
        return res

    # -- checkpoint state -----------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "critic_opt": self.critic_opt.state_dict(),
            "actor_opt": self.actor_opt.state_dict(),
            "alpha_opt": self.alpha_opt.state_dict(),
            "methods": {k: m.state_dict() for k, m in self.methods.items()},
            "generator": self.generator.get_state(),
            "updates": self.updates,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.alpha_opt.load_state_dict(state["alpha_opt"])
        for k, m in self.methods.items():
            m.load_state_dict(state["methods"][k])
        self.generator.set_state(state["generator"])
        self.updates = int(state["updates"])


def validate(runs: Sequence[RunConfig], bench: envs.Benchmark) -> None:
    """Check every run before Ray starts: SAC options, the method × SAC capabilities, and
    the training settings SAC does not use (they must stay at the protocol's values)."""
    for run in runs:
        cfg = sac_config(run)
        t = run.train
        if run.stl_task is not None:
            raise ValueError(
                f"single-task baselines ('stl') are not implemented for {bench.name}; train "
                "one task with --benchmark mt1 bench_options.task=<name>-v3 instead"
            )
        if run.world_size > 1:
            raise ValueError(
                f"{bench.name} trains one SAC learner per process: use workers=0 or 1 (several "
                "seeds/methods still run in parallel), not workers="
                f"{run.workers}"
            )
        if t.level == "rep":
            raise ValueError("the SAC networks expose no shared representation: train.level "
                             "must be 'auto' or 'param'")
        for name, ok in (("optimizer", t.optimizer in (None, "adam")),
                         ("weight_decay", t.weight_decay in (None, 0, 0.0)),
                         ("lr_schedule", t.lr_schedule in (None, "none"))):
            if not ok:
                raise ValueError(f"SAC uses Adam without weight decay or schedule; "
                                 f"train.{name}={getattr(t, name)!r} is not supported for "
                                 f"{bench.name}")
        if t.divergence_factor is not None:
            raise ValueError(
                f"train.divergence_factor is not supported for {bench.name}: SAC's critic "
                "losses grow legitimately as the Q-values grow with the returns, so a bound "
                "relative to the first step would stop healthy runs; fix: leave it unset "
                "(non-finite losses and gradients still stop a run as nonfinite, naming the task)"
            )
        T = bench.num_tasks
        m = methods.create(run.method, T, seed=run.seed, **run.hparams)
        signed_ok = takes_signed_losses(run.method, T, run.hparams)
        if cfg.resolved_apply_to(run.method, signed_ok):
            check_method(m)


def diag_rows(ctx: RunContext, epoch: int, step: int, tasks: list[str], out: Mapping[str, Any],
               env_rate: float, upd_rate: float) -> list[dict[str, Any]]:
    """Each loss's engine diagnostics (``<loss>.<quantity>``), then the temperature, the
    policy entropy and the speeds."""
    rows = []
    for kind in LOSSES:
        rows += diagnostic_rows(ctx, tasks, epoch, step, out[kind], prefix=f"{kind}.")
    alpha = out["alpha_value"]
    if alpha.numel() == 1:
        rows.append(ctx.diag_row(epoch, step, "info.alpha", "", float(alpha[0])))
    else:
        rows += [ctx.diag_row(epoch, step, "info.alpha", t, float(alpha[i]))
                 for i, t in enumerate(tasks)]
    rows += [ctx.diag_row(epoch, step, "info.entropy", "", out["entropy"]),
             ctx.diag_row(epoch, step, "info.env_steps_per_s", "", env_rate),
             ctx.diag_row(epoch, step, "info.updates_per_s", "", upd_rate)]
    return rows
