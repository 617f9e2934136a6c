"""The training loop of the ``"rl"`` trainer: validation before Ray, then collect → learn →
evaluate → checkpoint, read top to bottom like CleanRL's ``sac_continuous_action.py``.

Results: ``metrics`` rows with ``split="eval"`` at every evaluation (``epoch`` = the
evaluation's index, ``step`` = loop steps done; per task ``success`` and ``return``, and
run-level ``task=""`` rows ``mean_success``/``mean_return``), ``split="train"`` rows of the
training episodes since the previous evaluation (per task ``success``, ``return``), and
``split="reported"`` rows at the end: per task ``success``/``return`` of the final evaluation
and ``success_at_best`` of the evaluation with the best mean success, and run-level
``mean_success_final``, ``mean_success_best``, ``best_step``. ``diagnostics`` rows every
``log_every`` loop steps, named ``<loss>.<quantity>`` with loss ∈ {critic, actor, alpha} and
quantity ∈ {loss, weight, grad_norm, cosine, info.<key>}, plus run-level ``info.alpha``,
``info.entropy``, ``info.env_steps_per_s``, ``info.updates_per_s``. The environment protocol
goes to the runs table (``protocol`` column). ``ctx.report`` after every evaluation:
``epoch`` (its index), ``step``, ``val_score`` = −mean success (lower is better),
``mean_success``, ``mean_return`` and ``val/<task>/success|return`` (MT10 has no separate
validation split: evaluation episodes run on the training tasks, as in every MT10 paper).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

import envs
from orchestrator.config import RunConfig
from orchestrator.results import dumps
from orchestrator.trainers.base import (
    NonFiniteLoss,
    RunContext,
    seed_everything,
)
from orchestrator.trainers.cadence import CheckpointCadence
from orchestrator.trainers.rl.config import sac_config
from orchestrator.trainers.rl.evaluation import eval_goal_sets, evaluate
from orchestrator.trainers.rl.learner import NonFiniteSACLoss, SACLearner, diag_rows, validate
from orchestrator.trainers.rl.replay import ReplayBuffer


class SACRun:
    """The state of one run: environments, learner, replay buffer, evaluation history, and
    what has been collected since the last write (training episodes, diagnostics rows)."""

    def __init__(self, cfg: RunConfig, ctx: RunContext) -> None:
        self.cfg, self.ctx = cfg, ctx
        self.bench = bench = envs.create(cfg.benchmark, root=cfg.data_root, **cfg.bench_options)
        self.scfg = scfg = sac_config(cfg, ctx.device)
        self.p, self.T, self.tasks = bench.rl_protocol, bench.num_tasks, list(bench.tasks)
        self.train_envs = bench.make_envs(cfg.seed, "train")
        self.eval_envs = bench.make_envs(cfg.seed, "eval")
        self.learner = SACLearner(bench.obs_dim, bench.action_dim, self.T, cfg.method,
                                  cfg.hparams, scfg, cfg.seed)
        self.buffer = ReplayBuffer(scfg.buffer_size, bench.obs_dim, bench.action_dim, cfg.seed)
        self.warm_rng = np.random.default_rng([cfg.seed, 0xACE])  # uniform warm-up actions
        self.history: list[dict[str, Any]] = []
        self.train_stats: dict[str, list[float]] = {"success": [], "return": [], "task": []}
        self.diag_rows: list[dict[str, Any]] = []

    def record_protocol(self) -> None:
        """Runs-table columns: tasks, metric directions and the full protocol record."""
        cfg, bench = self.cfg, self.bench
        record = {**bench.protocol_record(cfg.seed), "sac": dataclasses.asdict(self.scfg),
                  "apply_to": list(self.learner.apply_to), "method": cfg.method,
                  "hparams": cfg.hparams}
        self.ctx.update_run(
            tasks=dumps(self.tasks),
            metrics_spec=dumps({t: [[m.name, m.higher_is_better] for m in bench.metrics[t]]
                                for t in self.tasks}),
            selection="last", protocol=dumps(record),
        )

    # -- checkpoint: everything, so that a resumed run continues bit-identically ---------
    def checkpoint(self, step: int) -> None:
        self.ctx.save_checkpoint({
            "learner": self.learner.state_dict(),
            "buffer": self.buffer.state_dict(),
            "loop": {"step": step, "history": self.history,
                     "warm_rng": self.warm_rng.bit_generator.state,
                     "env_states": _env_states(self.train_envs, self.p),
                     "train_stats": self.train_stats, "diag_rows": self.diag_rows},
        })  # fmt: skip

    def resume(self) -> int:
        """Restore the checkpoint if there is one; the loop step to start from."""
        state = self.ctx.load_checkpoint()
        if state is None:
            return 0
        self.learner.load_state_dict(state["learner"])
        self.buffer.load_state_dict(state["buffer"])
        loop = state["loop"]
        self.history = loop["history"]
        self.train_stats, self.diag_rows = loop["train_stats"], loop["diag_rows"]
        self.warm_rng.bit_generator.state = loop["warm_rng"]
        _set_env_states(self.train_envs, loop["env_states"])
        return loop["step"]

    # -- EVALUATE -------------------------------------------------------------------------
    def run_eval(self, step: int) -> None:
        """Deterministic episodes on every task; writes the eval rows and the training
        episodes' rows since the previous evaluation."""
        ctx, tasks, idx = self.ctx, self.tasks, len(self.history)
        goal_sets = eval_goal_sets(self.bench, self.cfg.seed, idx)
        res = evaluate(lambda o: self.learner.act(o, deterministic=True), self.eval_envs,
                       goal_sets, self.p.horizon)
        mean_s, mean_r = float(res["success"].mean()), float(res["return"].mean())
        rows = [ctx.metric_row("eval", idx, step, t, m, float(res[m][i]), True)
                for i, t in enumerate(tasks) for m in ("success", "return")]
        rows += [ctx.metric_row("eval", idx, step, "", "mean_success", mean_s, True),
                 ctx.metric_row("eval", idx, step, "", "mean_return", mean_r, True)]
        ts = self.train_stats
        for i, t in enumerate(tasks):
            sel = [j for j, k in enumerate(ts["task"]) if k == i]
            if sel:
                rows += [ctx.metric_row("train", idx, step, t, "success",
                                        float(np.mean([ts["success"][j] for j in sel])), True),
                         ctx.metric_row("train", idx, step, t, "return",
                                        float(np.mean([ts["return"][j] for j in sel])), True)]
        for v in ts.values():
            v.clear()
        ctx.write_metrics(f"step{step:010d}", rows)
        self.history.append({"step": step, "mean_success": mean_s, "mean_return": mean_r,
                             "success": res["success"].tolist(),
                             "return": res["return"].tolist()})

    def report_eval(self, done: int) -> None:
        h, tasks = self.history[-1], self.tasks
        per_task = {f"val/{t}/{m}": h[m][i] for i, t in enumerate(tasks)
                    for m in ("success", "return")}
        self.ctx.report({"epoch": len(self.history) - 1, "step": done,
                         "val_score": -h["mean_success"], "mean_success": h["mean_success"],
                         "mean_return": h["mean_return"], **per_task})

    # -- reported numbers: final and best evaluation --------------------------------------
    def write_reported(self) -> dict[str, Any]:
        ctx, tasks, history = self.ctx, self.tasks, self.history
        final, n = history[-1], len(history) - 1
        best_i = int(np.argmax([h["mean_success"] for h in history]))  # first best on ties
        best = history[best_i]
        rows = []
        for i, t in enumerate(tasks):
            rows += [ctx.metric_row("reported", n, final["step"], t, "success",
                                    final["success"][i], True),
                     ctx.metric_row("reported", n, final["step"], t, "return",
                                    final["return"][i], True),
                     ctx.metric_row("reported", best_i, best["step"], t, "success_at_best",
                                    best["success"][i], True)]
        rows += [ctx.metric_row("reported", n, final["step"], "", "mean_success_final",
                                final["mean_success"], True),
                 ctx.metric_row("reported", best_i, best["step"], "", "mean_success_best",
                                best["mean_success"], True),
                 ctx.metric_row("reported", best_i, best["step"], "", "best_step", best["step"],
                                None)]
        ctx.write_metrics("reported", rows)
        ctx.update_run(steps_done=self.scfg.steps, epochs_done=len(history),
                       reported_epochs=dumps({"final": n, "best": best_i}))
        return {
            "reported": {t: {"success": final["success"][i], "return": final["return"][i]}
                         for i, t in enumerate(tasks)},
            "epochs_done": len(history), "steps_done": self.scfg.steps,
            "mean_success_final": final["mean_success"],
            "mean_success_best": best["mean_success"],
        }  # fmt: skip

    def close(self) -> None:
        self.train_envs.close()
        self.eval_envs.close()


def train_run(cfg: RunConfig, ctx: RunContext) -> dict[str, Any]:
    """Train one multi-task SAC run (the ``"rl"`` trainer; what it writes: the module
    docstring)."""
    seed_everything(cfg.seed)
    run = SACRun(cfg, ctx)
    run.record_protocol()
    scfg, T, learner, buffer = run.scfg, run.T, run.learner, run.buffer
    task_ids = np.arange(T)
    # train.checkpoint_every_steps/_s as in the supervised loop, at episode boundaries
    ckpt_every = cfg.train.checkpoint_every_steps or scfg.checkpoint_every or scfg.eval_every
    cadence = CheckpointCadence(dataclasses.replace(cfg.train, checkpoint_every_steps=0))
    n_evals = -(-scfg.steps // scfg.eval_every) + int(scfg.eval_at_start)
    start = run.resume()
    needs_reset = np.ones(T, dtype=bool)
    obs = np.zeros((T, run.bench.obs_dim))
    ep_ret, ep_succ = np.zeros(T), np.zeros(T, dtype=bool)
    clock = {"env": 0.0, "learn": 0.0, "n_env": 0, "n_upd": 0, "progress": 0.0}
    critic_losses, ckpt_due = np.zeros(T), False
    if start == 0 and scfg.eval_at_start and not run.history:
        run.run_eval(0)
    for step in range(start, scfg.steps):
        t0 = time.perf_counter()
        if needs_reset.any():
            reset_obs, _ = run.train_envs.reset(options={"reset_mask": needs_reset.copy()})
            obs = np.where(needs_reset[:, None], reset_obs, obs)
            ep_ret[needs_reset], ep_succ[needs_reset] = 0.0, False
        # ALGO LOGIC: act (uniform random during the warm-up)
        if step < scfg.warmup_steps:
            actions = run.warm_rng.uniform(-1, 1, size=(T, run.bench.action_dim)).astype(np.float32)
        else:
            actions = learner.act(obs)
        next_obs, reward, terminated, truncated, info = run.train_envs.step(actions)
        # CRUCIAL: next_obs is the true last observation at truncation (no autoreset)
        buffer.add(obs, actions, reward, next_obs, terminated, task_ids)
        ep_ret += np.asarray(info.get("raw_reward", reward), dtype=float)
        ep_succ |= np.asarray(info["success"], dtype=float) > 0
        needs_reset = np.logical_or(terminated, truncated)
        for i in np.flatnonzero(needs_reset):
            run.train_stats["task"].append(int(i))
            run.train_stats["success"].append(float(ep_succ[i]))
            run.train_stats["return"].append(float(ep_ret[i]))
        obs = next_obs
        t1 = time.perf_counter()
        clock["env"] += t1 - t0
        clock["n_env"] += T

        done = step + 1
        if step >= scfg.warmup_steps:  # ALGO LOGIC: learn
            critic_losses = _learn(run, step, done, clock, t1)
        clock["learn"] += time.perf_counter() - t1

        # EVALUATE, write, checkpoint (at an episode boundary), report
        evaluated = done % scfg.eval_every == 0 or done == scfg.steps
        if evaluated:
            run.run_eval(done)
            ctx.write_diagnostics(f"step{done:010d}", run.diag_rows)
            run.diag_rows = []
            ctx.update_run(steps_done=done, epochs_done=len(run.history))
        ckpt_due = ckpt_due or evaluated or done % ckpt_every == 0 or cadence.due(done)
        if ckpt_due and (needs_reset.all() or done == scfg.steps):
            run.checkpoint(done)
            cadence.saved()
            ckpt_due = False
        if evaluated:
            run.report_eval(done)
        _progress(run, clock, start, done, n_evals, critic_losses)
    summary = run.write_reported()
    run.close()
    return summary


def _learn(run: SACRun, step: int, done: int, clock: dict[str, Any], t1: float) -> np.ndarray:
    """The gradient updates of one loop step (a burst of ``warmup_steps`` at the end of the
    warm-up, mtrl's quirk); returns the last update's per-task critic losses."""
    scfg = run.scfg
    log_now = done % scfg.log_every == 0
    burst = scfg.warmup_burst and step == scfg.warmup_steps and scfg.warmup_steps > 0
    n = scfg.warmup_steps if burst else scfg.updates_per_step
    for u in range(n):
        try:
            out = run.learner.update(run.buffer.sample(scfg.batch_size),
                                     diagnostics=log_now and u == n - 1)
        except NonFiniteSACLoss as e:
            raise NonFiniteLoss(run.cfg.run_id, f"{run.tasks[e.task]} ({e.loss})", e.value,
                                len(run.history), done) from None
    clock["n_upd"] += n
    if log_now:
        upd_rate = clock["n_upd"] / max(clock["learn"] + time.perf_counter() - t1, 1e-9)
        run.diag_rows += diag_rows(run.ctx, len(run.history), done, run.tasks, out,
                                    clock["n_env"] / max(clock["env"], 1e-9), upd_rate)
    return out["critic"].losses.cpu().numpy()


def _progress(run: SACRun, clock: dict[str, Any], start: int, done: int, n_evals: int,
              critic_losses: np.ndarray) -> None:
    now = time.perf_counter()
    steps = run.scfg.steps
    if now - clock["progress"] > 2.0 or done == steps:
        clock["progress"] = now
        eta = (steps - done) * (clock["env"] + clock["learn"]) / max(done - start, 1)
        run.ctx.progress({"epoch": len(run.history), "epochs": n_evals, "step": done,
                          "steps": steps, "eta_s": eta,
                          "losses": {t: float(critic_losses[i]) for i, t in enumerate(run.tasks)}})


def _env_states(train_envs: Any, protocol: Any) -> dict[str, Any]:
    out = {"goal": list(train_envs.call("get_goal_state"))}
    if protocol.reward_normalization != "none":
        out["reward"] = list(train_envs.call("get_reward_state"))
    return out


def _set_env_states(train_envs: Any, states: Mapping[str, Any]) -> None:
    train_envs.call("set_goal_state_all", states["goal"])
    if "reward" in states:
        train_envs.call("set_reward_state_all", states["reward"])


class RLTrainer:
    """The trainer of ``kind = "rl"`` benchmarks (:class:`~orchestrator.trainers.base.Trainer`)."""

    kind = "rl"
    validate = staticmethod(validate)
    train = staticmethod(train_run)


TRAINER = RLTrainer()
