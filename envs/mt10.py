"""Meta-World MT10 and MT1 (Meta-World 3.x) for multi-task SAC, with a pinned, recorded protocol.

Yu et al., "Meta-World: A Benchmark and Evaluation for Multi-Task and Meta Reinforcement
Learning", CoRL 2019, https://arxiv.org/abs/1910.10897; Meta-World 3.x (Farama, PyPI
``metaworld`` 3.1.1, ``mujoco`` 3.3.0). As an MTL-optimisation benchmark: CAGrad (Liu et al.
2021), Nash-MTL (Navon et al. 2022), FAMO (Liu et al. 2023) and IMGrad, all through
facebookresearch/mtrl (docs/metaworld.md §1).

``mt10``: the ten MT10 tasks in Meta-World's order (reach, push, pick-place, door-open,
drawer-open, drawer-close, button-press-topdown, peg-insert-side, window-open, window-close;
all ``-v3``), one environment per task, task index = environment index. ``mt1``: one named
task (option ``task``, default ``reach-v3``) for quick checks. ``kind = "rl"``: the
orchestrator hands these benchmarks to the SAC trainer (``orchestrator/trainers/rl/``).

Protocol (:class:`MT10Protocol`, every field recorded in the run's provenance by
:meth:`MetaWorldBenchmark.protocol_record`). Defaults approximate what CAGrad/FAMO ran
through mtrl (docs/metaworld.md §2), on the v3 environments that Meta-World 3.x ships:

=======================  ============  ==========================================================
field                    default       meaning / source
=======================  ============  ==========================================================
``horizon``              150           episode length (mtrl hard-codes 150; Meta-World 3 default
                                       is 500, also available; at most 500 = ``max_path_length``)
``reward_version``       ``"v1"``      reward formulas: ``"v1"`` as in the mtrl era, ``"v2"``
                                       Meta-World 3's default (the v3 envs implement both)
``reward_normalization`` ``"ema_std"`` training rewards divided by an EMA of their std (α 0.001,
                                       one update per step, no mean subtraction of the reward:
                                       mtenv/garage ``NormalizedEnv``, what mtrl ran); ``"none"``
``one_hot``              False         append the task one-hot to the observation (mtrl: none)
``goals``                ``"fixed"``   ``"fixed"``: each env keeps one goal, drawn from its 50
                                       Meta-World goals, for the whole run, and evaluation uses
                                       the same goal (mtrl/mtenv); ``"resampled"``: a new goal
                                       among the 50 at every reset (Meta-World 3's default)
``eval_goals``           ``"fixed"``   ``"fixed"``: one deterministic episode per task on the
                                       env's training goal (resampled protocol: a goal drawn per
                                       evaluation); ``"all"``: one episode on each of the 50
                                       goals per task (Meta-World 3's evaluation definition)
``vector``               ``"sync"``    ``"sync"`` or ``"async"`` (one process per environment)
=======================  ============  ==========================================================

Seeding happens at construction, never at reset (``SawyerXYZEnv.reset`` ignores its seed):
``make_envs(seed)`` takes the 50 goals of each task from ``metaworld.MT10(seed=seed)`` (or
``MT1(task, seed=seed)``) — the same goals ``gym.make_vec('Meta-World/MT10', seed=seed)``
uses — then picks each env's fixed goal with ``numpy.random.default_rng(seed)`` (mtenv used
``random.choice``), and gives each env its own goal-resampling generator. With fixed goals
the environments are deterministic: a Meta-World reset with a frozen goal vector draws no
random numbers. Two builds from one seed therefore see identical goals and observations.

Observations are Meta-World 3's 39 dims (hand xyz, gripper, two object pose blocks, the same
18 values from the previous frame, goal xyz; the goal is visible) plus the optional one-hot;
actions are 4-dim in [−1, 1]. Episodes only end by truncation at ``horizon``; terminations
(``terminate_on_success``) are never used in training. The vector environments do NOT reset
automatically (gymnasium ``AutoresetMode.DISABLED``): the trainer sees the true last
observation of each episode and resets explicitly, so the replay buffer stores it (mtrl
stored the observation after the reset instead).

Deliberate differences from mtrl (see docs/metaworld.md §2): v3 environments, 39-dim
observations, MuJoCo 3 dynamics. Absolute success rates are therefore not comparable with the
published 0.49/0.83/0.91; the relative ordering under one pinned protocol is. Meta-World 3's
own ``reward_normalization_method='exponential'`` updates its EMA twice per step; the
``ema_std`` form here updates it once, as garage/mtenv did.
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from envs.base import Benchmark, Metric, Protocol, register

#: Meta-World's number of goals per task (``metaworld._N_GOALS``).
GOALS_PER_TASK = 50
#: Meta-World's own hard limit on episode length (``SawyerXYZEnv.max_path_length``).
MAX_PATH_LENGTH = 500

REWARD_VERSIONS = ("v1", "v2")
REWARD_NORMALIZATIONS = ("none", "ema_std")
GOAL_MODES = ("fixed", "resampled")
EVAL_GOAL_MODES = ("fixed", "all")
VECTOR_MODES = ("sync", "async")


@dataclass(frozen=True)
class MT10Protocol:
    """The environment protocol of a run; see the module docstring for each field."""

    horizon: int = 150
    reward_version: str = "v1"
    reward_normalization: str = "ema_std"
    reward_alpha: float = 0.001
    one_hot: bool = False
    goals: str = "fixed"
    eval_goals: str = "fixed"
    vector: str = "sync"

    def __post_init__(self) -> None:
        if isinstance(self.horizon, bool) or not isinstance(self.horizon, int):
            raise ValueError(f"horizon must be an integer, got {self.horizon!r}")
        if not 1 <= self.horizon <= MAX_PATH_LENGTH:
            raise ValueError(
                f"horizon must be in [1, {MAX_PATH_LENGTH}] (Meta-World's max_path_length), "
                f"got {self.horizon}"
            )
        _choice("reward_version", self.reward_version, REWARD_VERSIONS)
        _choice("reward_normalization", self.reward_normalization, REWARD_NORMALIZATIONS)
        if not (isinstance(self.reward_alpha, (int, float)) and 0 < self.reward_alpha <= 1):
            raise ValueError(f"reward_alpha must be in (0, 1], got {self.reward_alpha!r}")
        if not isinstance(self.one_hot, bool):
            raise ValueError(f"one_hot must be True or False, got {self.one_hot!r}")
        _choice("goals", self.goals, GOAL_MODES)
        _choice("eval_goals", self.eval_goals, EVAL_GOAL_MODES)
        _choice("vector", self.vector, VECTOR_MODES)


def _choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


# ---------------------------------------------------------------------------------------
# Goals: Meta-World's 50 per task, generated once per (benchmark, seed).
# ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def benchmark_tasks(task_names: tuple[str, ...], seed: int) -> tuple[tuple[Any, ...], ...]:
    """The 50 Meta-World ``Task`` objects (goals) of each task, in ``task_names`` order.

    Built by ``metaworld.MT10(seed=seed)`` when ``task_names`` is MT10, else by
    ``metaworld.MT1(name, seed=seed)`` per task: the goals ``gym.make_vec`` would use for
    the same seed. Cached per process (MT10 takes ~10 s: 50 resets of each environment)."""
    import metaworld

    if task_names == MT10_TASKS:
        tasks = metaworld.MT10(seed=seed).train_tasks
        out = tuple(tuple(t for t in tasks if t.env_name == name) for name in task_names)
    else:
        out = tuple(tuple(metaworld.MT1(name, seed=seed).train_tasks) for name in task_names)
    for name, goals in zip(task_names, out):
        if len(goals) != GOALS_PER_TASK:
            raise RuntimeError(f"Meta-World gave {len(goals)} goals for {name}, expected 50")
    return out


def goal_position(task: Any) -> list[float]:
    """The goal xyz stored in a Meta-World ``Task`` (the last 3 entries of ``rand_vec``)."""
    import pickle

    return [float(v) for v in pickle.loads(task.data)["rand_vec"][-3:]]


# ---------------------------------------------------------------------------------------
# Wrappers: goal selection and reward normalisation, each with checkpointable state.
# ---------------------------------------------------------------------------------------


class GoalWrapper(gym.Wrapper):
    """Sets the Meta-World task (goal) of one environment.

    ``fixed``: the goal ``index`` stays until :meth:`set_goal` changes it. ``resampled``:
    every reset first draws a goal index with this wrapper's own generator."""

    def __init__(self, env: gym.Env, tasks: Sequence[Any], index: int, resample: bool,
                 seed: Sequence[int], env_id: int = 0) -> None:
        super().__init__(env)
        self.env_id = env_id
        self.tasks = tuple(tasks)
        self.resample = resample
        self.rng = np.random.default_rng(list(seed))
        self.set_goal(index)

    def set_goal(self, index: int) -> None:
        """Use goal ``index`` (of the task's 50) from the next reset on."""
        self.goal_index = int(index)
        self.env.unwrapped.set_task(self.tasks[self.goal_index])  # type: ignore[attr-defined]

    def set_goal_all(self, indices: Sequence[int]) -> None:
        """Vector-env form of :meth:`set_goal`: take this env's entry of ``indices``."""
        self.set_goal(indices[self.env_id])

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if self.resample:
            self.set_goal(int(self.rng.integers(len(self.tasks))))
        return self.env.reset(seed=seed, options=options)

    def get_goal_state(self) -> dict[str, Any]:
        return {"goal_index": self.goal_index, "rng": self.rng.bit_generator.state}

    def set_goal_state(self, state: Mapping[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.set_goal(state["goal_index"])

    def set_goal_state_all(self, states: Sequence[Mapping[str, Any]]) -> None:
        self.set_goal_state(states[self.env_id])


class EmaStdReward(gym.Wrapper):
    """r / (sqrt(v) + 1e-8) with EMAs m ← (1−α)m + αr, v ← (1−α)v + α(r − m)², updated once
    per step before dividing; m = 0, v = 1 initially (garage/mtenv ``NormalizedEnv``).
    The raw reward is kept in ``info["raw_reward"]``."""

    def __init__(self, env: gym.Env, alpha: float, env_id: int = 0) -> None:
        super().__init__(env)
        self.env_id = env_id
        self.alpha = float(alpha)
        self.mean = 0.0
        self.var = 1.0

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        r = float(reward)
        self.mean = (1 - self.alpha) * self.mean + self.alpha * r
        self.var = (1 - self.alpha) * self.var + self.alpha * (r - self.mean) ** 2
        info = dict(info)
        info["raw_reward"] = r
        return obs, r / (np.sqrt(self.var) + 1e-8), terminated, truncated, info

    def get_reward_state(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var}

    def set_reward_state(self, state: Mapping[str, float]) -> None:
        self.mean, self.var = float(state["mean"]), float(state["var"])

    def set_reward_state_all(self, states: Sequence[Mapping[str, float]]) -> None:
        self.set_reward_state(states[self.env_id])


def make_env(
    task_name: str,
    tasks: Sequence[Any],
    goal_index: int,
    env_id: int,
    num_tasks: int,
    protocol: MT10Protocol,
    seed: int,
    split: str,
) -> gym.Env:
    """One Meta-World environment with the protocol's wrappers (module-level, so that the
    async vector environment can pickle it)."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS
    from metaworld.wrappers import OneHotWrapper

    env: gym.Env = ALL_V3_ENVIRONMENTS[task_name](reward_function_version=protocol.reward_version)
    split_id = 0 if split == "train" else 1
    env.seed(int(np.random.SeedSequence([seed, env_id, split_id]).generate_state(1)[0]))  # type: ignore[attr-defined]
    env = GoalWrapper(env, tasks, goal_index, protocol.goals == "resampled",
                      seed=(seed, env_id, split_id, 7), env_id=env_id)
    env = gym.wrappers.TimeLimit(env, protocol.horizon)
    if protocol.one_hot:
        env = OneHotWrapper(env, env_id, num_tasks)
    if split == "train" and protocol.reward_normalization == "ema_std":
        env = EmaStdReward(env, protocol.reward_alpha, env_id)
    return env


# ---------------------------------------------------------------------------------------
# The benchmarks
# ---------------------------------------------------------------------------------------

MT10_TASKS: tuple[str, ...] = (
    "reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3",
    "drawer-close-v3", "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3",
    "window-close-v3",
)

_METRICS = (Metric("success", True), Metric("return", True))

#: Method hyperparameters of the reference MT10 runs (docs/metaworld.md §4), used
#: instead of each method's own defaults on these benchmarks; a user's explicit
#: hyperparameters override them. Which SAC losses each method touches is trainer data
#: (``orchestrator.trainers.rl.APPLY_TO``).
METHOD_HPARAMS: Mapping[str, Mapping[str, Any]] = {
    # CAGrad mtrl_files/run.sh: cagrad_c=0.9; its cagrad.py update Σ(1/T + λw_t)g_t/(1 + c²)
    # (mean-scaled, no ×T)
    "cagrad": {"c": 0.9, "rescale": 1, "scale_by_tasks": False},
    # IMGrad released no MT10 code and says it builds on CAGrad's: same final scaling; its
    # α stays at the method default (no MT10 value published)
    "imgrad": {"rescale": 1, "scale_by_tasks": False},
    # FAMO mtrl_files/run.sh: γ = 0.01, w_lr = 0.025
    "famo": {"gamma": 0.01, "w_lr": 0.025},
    # FAMO's mtrl_files/nashmtl.py: optim_niter 20, weights every step; its max_norm "clip"
    # divides by max_norm = 1, i.e. does nothing, so clipping is off
    "nash_mtl": {"update_weights_every": 1, "optim_niter": 20, "max_norm": 0.0},
}


class MetaWorldBenchmark(Benchmark):
    """A Meta-World multi-task benchmark: one vectorised environment per task.

    The SAC trainer calls :meth:`make_envs`, :meth:`fixed_goal_indices`,
    :meth:`protocol_record` and reads ``tasks``, ``rl_protocol``, ``obs_dim``,
    ``action_dim``. Supervised-trainer entry points (``build_model``, ``make_loader``...)
    do not apply and raise ``ValueError``."""

    kind: ClassVar[str] = "rl"
    #: {method: {hparam: value}} defaults of the reference runs (see METHOD_HPARAMS)
    method_hparams: ClassVar[Mapping[str, Mapping[str, Any]]] = METHOD_HPARAMS
    options: ClassVar[Mapping[str, Any]] = {
        k: v for k, v in asdict(MT10Protocol()).items()
    }
    splits = ("train", "eval")
    action_dim = 4
    base_obs_dim = 39
    protocol = Protocol(
        optimizer="adam", lr=3e-4, batch_size=1280, epochs=1, eval_every=30_000,
        selection="last",
        source="mtrl config/agent/state_sac.yaml, replay_buffer/mtrl.yaml, "
        "experiment/metaworld.yaml; CAGrad/FAMO mtrl_files/run.sh (docs/metaworld.md §3)",
    )

    def __init__(self, root: str | None = None, **options: Any) -> None:
        # Meta-World ships its MuJoCo assets; there is no dataset root to read.
        self.root = root
        self.rl_protocol = MT10Protocol(**options)
        self.metrics = {t: _METRICS for t in self.tasks}

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def obs_dim(self) -> int:
        return self.base_obs_dim + (self.num_tasks if self.rl_protocol.one_hot else 0)

    def fixed_goal_indices(self, seed: int) -> list[int]:
        """Each env's goal under ``goals='fixed'``: one of its 50, drawn from ``seed``."""
        rng = np.random.default_rng(seed)
        return [int(i) for i in rng.integers(GOALS_PER_TASK, size=self.num_tasks)]

    def make_envs(self, seed: int, split: str = "train") -> gym.vector.VectorEnv:
        """The vector environment of ``split`` (``"train"`` or ``"eval"``) for ``seed``.

        Env i runs task i. ``eval`` environments have no reward normalisation (returns are
        raw Meta-World rewards) and never resample goals on their own (the evaluator sets
        them). No automatic reset: call ``reset(options={"reset_mask": done})``."""
        _choice("split", split, self.splits)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        p = self.rl_protocol
        if split == "eval":
            p = MT10Protocol(**{**asdict(p), "goals": "fixed"})
        tasks = benchmark_tasks(self.tasks, seed)
        goals = self.fixed_goal_indices(seed)
        thunks = [
            functools.partial(make_env, name, tasks[i], goals[i], i, self.num_tasks, p, seed, split)
            for i, name in enumerate(self.tasks)
        ]
        mode = gym.vector.AutoresetMode.DISABLED
        if p.vector == "async":
            return gym.vector.AsyncVectorEnv(thunks, autoreset_mode=mode)
        return gym.vector.SyncVectorEnv(thunks, autoreset_mode=mode)

    def protocol_record(self, seed: int) -> dict[str, Any]:
        """Everything that defines the environment side of a run, for provenance."""
        tasks = benchmark_tasks(self.tasks, seed)
        goals = self.fixed_goal_indices(seed)
        rec: dict[str, Any] = {
            "benchmark": self.name,
            "tasks": list(self.tasks),
            "seed": seed,
            **asdict(self.rl_protocol),
            "goal_source": f"metaworld.{'MT10' if self.tasks == MT10_TASKS else 'MT1'}"
            f"(seed={seed}).train_tasks",
            "obs_dim": self.obs_dim,
            "action_dim": self.action_dim,
            "terminate_on_success": False,
            "autoreset": "disabled (explicit resets; true final observations)",
        }
        if self.rl_protocol.goals == "fixed":
            rec["fixed_goal_indices"] = goals
            rec["fixed_goal_positions"] = [goal_position(tasks[i][g]) for i, g in enumerate(goals)]
        for pkg in ("metaworld", "mujoco", "gymnasium"):
            try:
                rec[f"{pkg}_version"] = importlib.metadata.version(pkg)
            except importlib.metadata.PackageNotFoundError:  # pragma: no cover
                rec[f"{pkg}_version"] = "unknown"
        return rec

    # -- supervised entry points do not apply -------------------------------------------

    def _not_supervised(self, *args: Any, **kwargs: Any) -> Any:
        raise ValueError(
            f"{self.name} is a reinforcement-learning benchmark (kind='rl'): it has no "
            "model/loader/evaluator; train it with orchestrator.trainers.rl"
        )

    build_model = make_loader = forward_losses = new_evaluator = _not_supervised


@register("mt10")
class MT10(MetaWorldBenchmark):
    """Meta-World MT10: ten manipulation tasks, one environment each."""

    description = "Meta-World 3.x MT10 (10 tasks, multi-task SAC)"
    tasks = MT10_TASKS


@register("mt1")
class MT1(MetaWorldBenchmark):
    """Meta-World MT1: one named task (default ``reach-v3``), for quick checks."""

    description = "Meta-World 3.x MT1 (one task; option task=<name>-v3)"
    options: ClassVar[Mapping[str, Any]] = {**MetaWorldBenchmark.options, "task": "reach-v3"}

    def __init__(self, root: str | None = None, task: str = "reach-v3", **options: Any) -> None:
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        if task not in ALL_V3_ENVIRONMENTS:
            raise ValueError(
                f"unknown Meta-World task {task!r}; choose one of: "
                f"{', '.join(sorted(ALL_V3_ENVIRONMENTS))}"
            )
        self.tasks = (task,)
        super().__init__(root, **options)
