"""Evaluation: deterministic episodes on every task, success = ``info["success"]`` at any
step of the episode."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def eval_goal_sets(bench: Any, seed: int, eval_index: int) -> list[list[int]]:
    """The goal index of every env for each evaluation episode.

    ``eval_goals="all"``: 50 episodes, episode g on goal g (Meta-World 3's definition: one
    episode per goal per task). ``"fixed"``: one episode, on the training goal under fixed
    goals, else on goals drawn from (seed, eval_index) so that resume repeats them."""
    p = bench.rl_protocol
    T = bench.num_tasks
    if p.eval_goals == "all":
        from envs.mt10 import GOALS_PER_TASK

        return [[g] * T for g in range(GOALS_PER_TASK)]
    if p.goals == "fixed":
        return [bench.fixed_goal_indices(seed)]
    rng = np.random.default_rng([seed, eval_index, 0xE7A1])
    return [[int(g) for g in rng.integers(50, size=T)]]


def evaluate(policy: Callable[[np.ndarray], np.ndarray], envs: Any, goal_sets: list[list[int]],
             horizon: int) -> dict[str, np.ndarray]:
    """Run one full-horizon episode per goal set on every env; per-env success rate (success
    at any step) and mean raw return over the episodes."""
    n = envs.num_envs
    succ = np.zeros(n)
    ret = np.zeros(n)
    for goals in goal_sets:
        envs.call("set_goal_all", list(goals))
        obs, _ = envs.reset()
        hit = np.zeros(n, dtype=bool)
        total = np.zeros(n)
        for _ in range(horizon):
            obs, r, term, trunc, info = envs.step(policy(obs))
            hit |= np.asarray(info["success"], dtype=float) > 0
            total += r
        if not np.all(trunc | term):
            raise RuntimeError("evaluation episode did not end at the horizon")
        succ += hit
        ret += total
    return {"success": succ / len(goal_sets), "return": ret / len(goal_sets)}


