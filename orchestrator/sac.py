"""Multi-task SAC on Meta-World (MT10 / MT1) with a per-task gradient method on each loss.

Haarnoja et al., "Soft Actor-Critic Algorithms and Applications", 2018,
https://arxiv.org/abs/1812.05905. Multi-task form as in facebookresearch/mtrl (Sodhani et
al. 2021) and the MT10 experiments of CAGrad, Nash-MTL, FAMO and IMGrad built on it
(research/benchmarks.md §7). Read top to bottom like CleanRL's ``sac_continuous_action.py``:
config → networks → replay buffer → learner (the three losses) → evaluation → training loop
→ orchestrator entry point.

One shared tanh-Gaussian actor and one pair of Q networks (plus targets) serve all tasks; the
networks see no task id unless the environment protocol appends a one-hot (mtrl's MT10 runs:
none, only the visible goal tells tasks apart). Every loss is computed per sample, then
turned into T **per-task means** over the batch's samples of each task (mtrl's
``_convert_loss_into_task_loss``; the task index is stored in the replay buffer):

    critic  L_t = mean_{i∈t} (Q1(s,a) − y)² + (Q2(s,a) − y)²,
            y = r + γ (1 − terminated) (min Q̄(s', a') − α log π(a'|s')),  a' ~ π(s')
    actor   L_t = mean_{i∈t} α log π(ã|s) − min Q(s, ã),                     ã ~ π(s)
    alpha   L_t = mean_{i∈t} α (−log π(ã|s) − H̄)    (gradient w.r.t. log α; H̄ = −|A|)

and each per-task loss vector goes through :func:`methods.backward` with that loss's
parameters as the shared parameters (critic: Q1+Q2; actor: the actor MLP; α: log α). The
configured method is applied to the losses named by ``apply_to``; the others use ``ew``
(one backward of Σ_t L_t). Defaults per method (:data:`APPLY_TO`): all three for the
CAGrad/PCGrad/Nash-MTL ports (mtrl ``grad_manipulation`` agents override
``_compute_gradient``, which all three updates call), critic only for FAMO (FAMO's
``mtrl_files/famo.py``), critic and actor for UW (``uw.py``). Methods that reject negative
losses (log-based weightings: FAMO, DB-MTL, ...; found by asking the method, see
:func:`takes_signed_losses`) get only the critic loss by default, since the actor and α
losses can be negative; asking for those is a ``ValueError`` before training. Per-task
gradients are taken at the parameter level (the networks have no single shared
representation; rep-level methods are rejected up front). Reference-run hyperparameters
per method are benchmark data, ``envs.mt10.METHOD_HPARAMS`` (CAGrad c = 0.9 from its MT10
``run.sh``, FAMO γ = 0.01, Nash-MTL without clipping ...), resolved before the run id is
hashed (see :func:`method_hparams`).
A method whose ``uses_after_step`` is set gets the same batch's losses again after its
optimiser step (FAMO's ξ update), recomputed with the same targets and noise.

Update order per gradient step (mtrl ``sac.py``/``famo.py``): critic step; actor step using
the *updated* critic; α step with the actor's log-probabilities from before its step
(detached); Polyak update of both target Q networks (τ 0.005). Temperature: one log α shared
by all tasks (``alpha="shared"``, what the reference MT10 runs used: with
``should_use_disentangled_alpha=False`` only ``log_alpha[0]`` is read), or one per task
(``alpha="per_task"``); per-task temperatures have no shared parameter, so their loss always
gets each task's own gradient (``ew``).

Defaults (mtrl ``config/agent/state_sac.yaml``, ``components/metaworld_*.yaml``,
``replay_buffer/mtrl.yaml``, ``experiment/metaworld.yaml``; benchmarks.md §7.3): MLPs with
3 hidden layers of 400 (ReLU; Xavier-uniform weights, zero biases), log σ squashed by tanh
into [−20, 2]; Adam lr 3e-4, betas (0.9, 0.999) for actor, critic and α; γ 0.99; τ 0.005;
initial temperature 1; batch 1280 sampled uniformly from one shared FIFO buffer of 10⁶
transitions; 1500 loop steps of uniform random actions, then at that step 1500 updates at
once (mtrl quirk, ``warmup_burst``), then one update per loop step; a loop step steps every
task's environment once (10 transitions on MT10); evaluation every 30,000 loop steps (the
effective interval of mtrl's code: its eval check sits inside ``step % 150 == 0``) with one
deterministic episode per task, success = ``info["success"]`` at any step, plus one at the
start and one at the end; both the best and the final mean success are reported, since
CAGrad/Nash-MTL report the best evaluation and FAMO's maintainer the final one.

Deliberate differences from mtrl: the buffer stores the true last observation of a
truncated episode (mtrl stored the first observation after the reset) and bootstraps through
truncation; per-task means give a task absent from a batch a zero loss with no gradient
(mtrl drops it from the vector, which a fixed-T method cannot take; with 1280 samples over
10 tasks it does not happen in practice); each loss has its own method instance (FAMO's
Nash-MTL port shares one solver warm start across the three losses); EW is the *sum* of
per-task means (mtrl's MTL-SAC is the batch mean — identical under Adam up to ε).

Checkpoint policy: checkpoints are written at episode boundaries (all training envs truncate
together, every ``horizon`` loop steps), at the first boundary at or after each evaluation
(``checkpoint_every``); they hold the learner (networks, targets, log α, the three Adam
states, the method states, the noise generator), the **whole filled part of the replay
buffer** (≈ 4·(2·obs_dim + 6) bytes per transition: ≈ 350 MB for a full 10⁶ buffer on MT10),
the loop state (step, warm-up RNG, environment wrapper states: goal RNGs, reward normaliser)
and the evaluation history. Resume rebuilds the environments from the seed, restores those
states and continues as if never stopped (tested: the next update is bit-identical).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import methods
from methods.base import Method, StepContext

LOSSES: tuple[str, ...] = ("critic", "actor", "alpha")

#: Which SAC losses a method is applied to by default (research/benchmarks.md §7.4). Methods
#: not listed get all three, as the CAGrad, PCGrad and Nash-MTL mtrl ports do.
APPLY_TO: Mapping[str, tuple[str, ...]] = {
    "famo": ("critic",),  # FAMO mtrl_files/famo.py: actor and α use plain means
    "uw": ("critic", "actor"),  # FAMO mtrl_files/uw.py: separate log σ for critic, actor
}

#: Losses that can be negative: actor α log π − Q and temperature α(−log π − H̄). The
#: critic's squared error never is.
SIGNED_LOSSES: tuple[str, ...] = ("actor", "alpha")

ALPHA_MODES = ("shared", "per_task")


# =======================================================================================
# CONFIG
# =======================================================================================


@dataclass(frozen=True)
class SACConfig:
    """Multi-task SAC settings (defaults: mtrl's MT10 configuration, see module docstring)."""

    steps: int = 2_000_000
    """loop steps; each steps every task's environment once (mtrl num_train_steps)"""
    warmup_steps: int = 1500
    """loop steps with uniform random actions before the first update (mtrl init_steps)"""
    warmup_burst: bool = True
    """at step == warmup_steps run warmup_steps updates at once (mtrl); else 1 per step"""
    updates_per_step: int = 1
    """gradient updates per loop step after the warm-up"""
    batch_size: int = 1280
    """transitions per update, sampled uniformly (all tasks together)"""
    buffer_size: int = 1_000_000
    """replay capacity in transitions (FIFO, shared by all tasks)"""
    gamma: float = 0.99
    """discount"""
    tau: float = 0.005
    """target-network Polyak coefficient"""
    lr: float = 3e-4
    """Adam learning rate of actor, critic and temperature"""
    method_lr: float | None = None
    """learning rate of a method's own parameters (UW's log σ ...); None: lr"""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas"""
    hidden: int = 400
    """hidden width of actor and critics"""
    layers: int = 3
    """hidden layers of actor and critics"""
    log_std_min: float = -20.0
    """lower bound of the policy's log σ"""
    log_std_max: float = 2.0
    """upper bound of the policy's log σ"""
    init_temperature: float = 1.0
    """initial α"""
    target_entropy: float | None = None
    """entropy target H̄; None: −|A|"""
    alpha: str = "shared"
    """"shared" (one log α, the reference runs) or "per_task" (one per task)"""
    apply_to: tuple[str, ...] | None = None
    """losses the method is applied to; None: the method's entry in APPLY_TO (default all)"""
    eval_every: int = 30_000
    """loop steps between evaluations (also one at step 0 and one at the end)"""
    eval_at_start: bool = True
    """evaluate the untrained policy at step 0 (mtrl does)"""
    log_every: int = 5000
    """loop steps between training-diagnostics rows (losses, weights, cosines, speed)"""
    checkpoint_every: int | None = None
    """loop steps between checkpoints (at the next episode boundary); None: eval_every"""
    device: str = "cpu"
    """torch device of the learner"""

    def __post_init__(self) -> None:
        for name in ("steps", "warmup_steps", "updates_per_step", "batch_size", "buffer_size",
                     "hidden", "layers", "eval_every", "log_every"):
            _check_int(name, getattr(self, name), 0 if name in ("warmup_steps",) else 1)
        if self.checkpoint_every is not None:
            _check_int("checkpoint_every", self.checkpoint_every, 1)
        for name, lo, hi in (("gamma", 0.0, 1.0), ("tau", 0.0, 1.0)):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and lo <= v <= hi):
                raise ValueError(f"{name} must be in [{lo}, {hi}], got {v!r}")
        if self.method_lr is not None and not (
            isinstance(self.method_lr, (int, float)) and self.method_lr > 0
        ):
            raise ValueError(f"method_lr must be a positive number or None, got {self.method_lr!r}")
        for name in ("lr", "init_temperature"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v > 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        if not (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas)):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if not self.log_std_min < self.log_std_max:
            raise ValueError("log_std_min must be smaller than log_std_max")
        if self.alpha not in ALPHA_MODES:
            raise ValueError(f"alpha must be one of {list(ALPHA_MODES)}, got {self.alpha!r}")
        if self.apply_to is not None:
            if isinstance(self.apply_to, str):
                raise ValueError(f"apply_to must be a tuple of loss names, got {self.apply_to!r}")
            bad = [k for k in self.apply_to if k not in LOSSES]
            if bad or len(set(self.apply_to)) != len(self.apply_to):
                raise ValueError(
                    f"apply_to must list distinct losses among {list(LOSSES)}, got "
                    f"{list(self.apply_to)}"
                )
            if self.alpha == "per_task" and "alpha" in self.apply_to:
                raise ValueError(
                    "alpha='per_task' gives every task its own temperature, so the α loss has "
                    "no shared parameter for a method to act on: remove 'alpha' from apply_to"
                )
        if self.batch_size > self.buffer_size:
            raise ValueError("batch_size must not exceed buffer_size")

    def resolved_apply_to(self, method: str, signed_ok: bool = True) -> tuple[str, ...]:
        """The losses ``method`` is applied to under this config. ``signed_ok=False``: the
        method rejects negative losses (log-based weightings), so by default it only gets
        the critic loss, and asking for the actor or α loss is an error."""
        if self.apply_to is not None:
            signed = [k for k in self.apply_to if k in SIGNED_LOSSES]
            if signed and not signed_ok:
                raise ValueError(
                    f"{method} needs strictly positive task losses (it takes their log), but "
                    f"the {' and '.join(signed)} loss(es) can be negative; fix: "
                    "trainer_options.apply_to=[critic]"
                )
            return tuple(self.apply_to)
        default = APPLY_TO.get(method, LOSSES)
        return tuple(
            k for k in default
            if not (k == "alpha" and self.alpha == "per_task")
            and (signed_ok or k not in SIGNED_LOSSES)
        )


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def method_hparams(bench: Any, method: str, user: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The benchmark's reference hyperparameters of ``method`` (``bench.method_hparams``,
    e.g. CAGrad c = 0.9 on MT10) updated by the user's explicit ones."""
    table = getattr(bench, "method_hparams", {})
    return {**table.get(method, {}), **dict(user or {})}


# =======================================================================================
# NETWORKS (mtrl agent/utils.py build_mlp + weight_init; actor.py's squashing)
# =======================================================================================


def mlp(inp: int, out: int, hidden: int, layers: int) -> nn.Sequential:
    """``layers`` hidden ReLU layers of width ``hidden``; Xavier-uniform weights, zero bias."""
    dims = [inp] + [hidden] * layers
    mods: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        mods += [nn.Linear(a, b), nn.ReLU()]
    mods.append(nn.Linear(dims[-1], out))
    net = nn.Sequential(*mods)
    for m in net:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return net


class Actor(nn.Module):
    """Tanh-Gaussian policy: (μ, log σ) = MLP(s), log σ = lo + ½(hi − lo)(tanh(·) + 1)."""

    def __init__(self, obs_dim: int, action_dim: int, cfg: SACConfig) -> None:
        super().__init__()
        self.net = mlp(obs_dim, 2 * action_dim, cfg.hidden, cfg.layers)
        self.log_std_min, self.log_std_max = cfg.log_std_min, cfg.log_std_max

    def forward(self, obs: Tensor, noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(action, log π(action|s), deterministic action tanh(μ)); action = tanh(μ + σε)."""
        mu, log_std = self.net(obs).chunk(2, dim=-1)
        log_std = torch.tanh(log_std)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (log_std + 1)
        if noise is None:
            return torch.tanh(mu), torch.zeros_like(mu[:, 0]), torch.tanh(mu)
        u = mu + noise * log_std.exp()
        log_prob = (-0.5 * noise.pow(2) - log_std).sum(-1) - 0.5 * math.log(2 * math.pi) * mu.shape[-1]
        action = torch.tanh(u)
        # tanh change of variables (SAC appendix C); relu + 1e-6 as mtrl/pytorch_sac
        log_prob = log_prob - torch.log(F.relu(1 - action.pow(2)) + 1e-6).sum(-1)
        return action, log_prob, torch.tanh(mu)


class TwinQ(nn.Module):
    """Two independent Q networks Q(s, a) = MLP([s, a])."""

    def __init__(self, obs_dim: int, action_dim: int, cfg: SACConfig) -> None:
        super().__init__()
        self.q1 = mlp(obs_dim + action_dim, 1, cfg.hidden, cfg.layers)
        self.q2 = mlp(obs_dim + action_dim, 1, cfg.hidden, cfg.layers)

    def forward(self, obs: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.cat([obs, action], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


# =======================================================================================
# REPLAY BUFFER: one FIFO for all tasks, storing the task index and the true last obs
# =======================================================================================


@dataclass
class Batch:
    obs: Tensor
    action: Tensor
    reward: Tensor
    next_obs: Tensor
    terminated: Tensor
    task: Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))


class ReplayBuffer:
    """Uniform-sampling FIFO replay of (s, a, r, s', terminated, task) transitions.

    ``next_obs`` is whatever the environment's ``step`` returned — with explicit resets this
    is the true last observation of a truncated episode. ``terminated`` (not truncated) stops
    bootstrapping; Meta-World training episodes only truncate."""

    ARRAYS = ("obs", "action", "reward", "next_obs", "terminated", "task")

    def __init__(self, capacity: int, obs_dim: int, action_dim: int, seed: int = 0) -> None:
        _check_int("capacity", capacity, 1)
        self.capacity = capacity
        self.obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.action = np.zeros((capacity, action_dim), dtype=np.float32)
        self.reward = np.zeros(capacity, dtype=np.float32)
        self.terminated = np.zeros(capacity, dtype=np.float32)
        self.task = np.zeros(capacity, dtype=np.int64)
        self.ptr = 0
        self.size = 0
        self.rng = np.random.default_rng([seed, 0xB0F])

    def __len__(self) -> int:
        return self.size

    def add(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray,
            next_obs: np.ndarray, terminated: np.ndarray, task: np.ndarray) -> None:
        """Append one transition per row (one per environment)."""
        n = len(obs)
        idx = (self.ptr + np.arange(n)) % self.capacity
        self.obs[idx] = obs
        self.action[idx] = action
        self.reward[idx] = reward
        self.next_obs[idx] = next_obs
        self.terminated[idx] = terminated
        self.task[idx] = task
        self.ptr = int((self.ptr + n) % self.capacity)
        self.size = int(min(self.size + n, self.capacity))

    def sample(self, batch_size: int) -> Batch:
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        idx = self.rng.integers(0, self.size, size=batch_size)
        return Batch(*(torch.from_numpy(getattr(self, k)[idx]) for k in self.ARRAYS))

    # -- checkpoint: the filled part of every array, plus pointer and sampler state --------

    def state_dict(self) -> dict[str, Any]:
        return {**{k: getattr(self, k)[: self.size].copy() for k in self.ARRAYS},
                "ptr": self.ptr, "size": self.size, "capacity": self.capacity,
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["capacity"] != self.capacity:
            raise ValueError(
                f"the checkpointed replay buffer has capacity {state['capacity']}, this run "
                f"{self.capacity}: resume with the same buffer_size"
            )
        for k in self.ARRAYS:
            getattr(self, k)[: state["size"]] = state[k]
        self.ptr, self.size = int(state["ptr"]), int(state["size"])
        self.rng.bit_generator.state = state["rng"]


def per_task_mean(values: Tensor, task: Tensor, num_tasks: int) -> Tensor:
    """Tensor[T]: the mean of ``values`` over each task's samples (0 for absent tasks)."""
    sums = torch.zeros(num_tasks, dtype=values.dtype, device=values.device)
    sums = sums.index_add(0, task, values)
    counts = torch.bincount(task, minlength=num_tasks).to(values.dtype)
    return sums / counts.clamp_min(1)


# =======================================================================================
# LEARNER: networks, optimisers, one method per loss, the update
# =======================================================================================


class NonFiniteSACLoss(FloatingPointError):
    """A per-task SAC loss became NaN/inf (``train_run`` turns it into ``NonFiniteLoss``)."""

    def __init__(self, loss: str, task: int, value: float) -> None:
        self.loss, self.task, self.value = loss, task, value
        super().__init__(f"non-finite {loss} loss of task {task}: {value}")


def takes_signed_losses(method: str, num_tasks: int, hparams: Mapping[str, Any]) -> bool:
    """Whether ``method`` accepts negative task losses. Log-based weightings (FAMO, DB-MTL,
    ...) raise ``ValueError`` for them; this asks a throwaway instance, before training,
    instead of keeping a list of names."""
    m = methods.create(method, num_tasks, **hparams)
    losses = -torch.linspace(1.0, 2.0, num_tasks)
    grads = torch.eye(num_tasks, num_tasks + 1) if m.requires_grads else None
    try:
        agg = m.aggregate(grads, m.transform_losses(losses).detach())
    except (ValueError, FloatingPointError):
        return False
    return bool(torch.isfinite(agg.weights).all())


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
        res = methods.backward(method, losses, params, context=StepContext(step=self.updates),
                               diagnostics=diagnostics)
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


# =======================================================================================
# EVALUATION: deterministic episodes, success = info["success"] at any step
# =======================================================================================


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


# =======================================================================================
# TRAINING LOOP (the orchestrator's trainer for benchmarks of kind "rl")
# =======================================================================================

#: SACConfig fields that come from the run's ``train`` settings, not ``trainer_options``
FROM_TRAIN = {"steps": "steps", "batch_size": "batch_size", "lr": "lr",
              "eval_every": "eval_every", "method_lr": "method_lr"}
TRAINER_OPTIONS = tuple(
    f.name for f in dataclasses.fields(SACConfig) if f.name not in FROM_TRAIN and f.name != "device"
)


def sac_config(cfg: Any, device: torch.device | str = "cpu") -> SACConfig:
    """The :class:`SACConfig` of a ``RunConfig``: ``train.steps/batch_size/lr/eval_every/
    method_lr`` (the benchmark protocol fills the ones left None) plus ``trainer_options``."""
    opts = dict(cfg.trainer_options)
    unknown = sorted(set(opts) - set(TRAINER_OPTIONS))
    if unknown:
        moved = [k for k in unknown if k in FROM_TRAIN]
        hint = f"; set {', '.join('train.' + k for k in moved)} instead" if moved else ""
        raise ValueError(
            f"unknown SAC trainer option(s) {unknown}{hint}; valid trainer_options: "
            f"{', '.join(TRAINER_OPTIONS)}"
        )
    for k in ("apply_to", "betas"):
        if isinstance(opts.get(k), list):
            opts[k] = tuple(opts[k])
    for k, tk in FROM_TRAIN.items():
        v = getattr(cfg.train, tk)
        if v is not None:
            opts[k] = v
    return SACConfig(**opts, device=str(device))


def validate(runs: Sequence[Any], bench: Any) -> None:
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
        T = bench.num_tasks
        m = methods.create(run.method, T, seed=run.seed, **run.hparams)
        signed_ok = takes_signed_losses(run.method, T, run.hparams)
        if cfg.resolved_apply_to(run.method, signed_ok):
            check_method(m)


def _env_states(envs: Any, protocol: Any) -> dict[str, Any]:
    out = {"goal": list(envs.call("get_goal_state"))}
    if protocol.reward_normalization != "none":
        out["reward"] = list(envs.call("get_reward_state"))
    return out


def _set_env_states(envs: Any, states: Mapping[str, Any]) -> None:
    envs.call("set_goal_state_all", states["goal"])
    if "reward" in states:
        envs.call("set_reward_state_all", states["reward"])


def train_run(cfg: Any, ctx: Any) -> dict[str, Any]:
    """Train one multi-task SAC run (the ``"rl"`` trainer of ``orchestrator.train``).

    Results: ``metrics`` rows with ``split="eval"`` at every evaluation (``epoch`` = the
    evaluation's index, ``step`` = loop steps done; per task ``success`` and ``return``, and
    run-level ``task=""`` rows ``mean_success``/``mean_return``), ``split="train"`` rows of
    the training episodes since the previous evaluation (per task ``success``, ``return``),
    and ``split="reported"`` rows at the end: per task ``success``/``return`` of the final
    evaluation and ``success_at_best`` of the evaluation with the best mean success, and
    run-level ``mean_success_final``, ``mean_success_best``, ``best_step``.
    ``diagnostics`` rows every ``log_every`` loop steps, named ``<loss>.<quantity>`` with
    loss ∈ {critic, actor, alpha} and quantity ∈ {loss, weight, grad_norm, cosine,
    info.<key>}, plus run-level ``info.alpha``, ``info.entropy``, ``info.env_steps_per_s``,
    ``info.updates_per_s``. The environment protocol (:meth:`protocol_record`) goes to the
    runs table (``protocol`` column). ``ctx.report`` after every evaluation: ``epoch`` (its
    index), ``step``, ``val_score`` = −mean success (lower is better), ``mean_success``,
    ``mean_return`` and ``val/<task>/success|return`` (MT10 has no separate validation
    split: evaluation episodes run on the training tasks, as in every MT10 paper)."""
    import envs
    from orchestrator.results import dumps
    from orchestrator.train import NonFiniteLoss, seed_everything

    seed_everything(cfg.seed)
    bench = envs.create(cfg.benchmark, root=cfg.data_root, **cfg.bench_options)
    scfg = sac_config(cfg, ctx.device)
    p, T, tasks = bench.rl_protocol, bench.num_tasks, list(bench.tasks)

    # -- environments, learner, buffer ---------------------------------------------------
    train_envs = bench.make_envs(cfg.seed, "train")
    eval_envs = bench.make_envs(cfg.seed, "eval")
    learner = SACLearner(bench.obs_dim, bench.action_dim, T, cfg.method, cfg.hparams, scfg,
                         cfg.seed)
    record = {**bench.protocol_record(cfg.seed), "sac": dataclasses.asdict(scfg),
              "apply_to": list(learner.apply_to), "method": cfg.method, "hparams": cfg.hparams}
    run_cols: dict[str, Any] = {
        "tasks": dumps(tasks),
        "metrics_spec": dumps({t: [[m.name, m.higher_is_better] for m in bench.metrics[t]]
                               for t in tasks}),
        "selection": "last",
    }
    if _has_protocol_column():
        run_cols["protocol"] = dumps(record)
    ctx.update_run(**run_cols)
    buffer = ReplayBuffer(scfg.buffer_size, bench.obs_dim, bench.action_dim, cfg.seed)
    warm_rng = np.random.default_rng([cfg.seed, 0xACE])  # uniform random warm-up actions
    task_ids = np.arange(T)
    ckpt_every = scfg.checkpoint_every or scfg.eval_every
    n_evals = -(-scfg.steps // scfg.eval_every) + int(scfg.eval_at_start)

    start, history, ckpt_due = 0, [], False
    train_stats: dict[str, list[float]] = {"success": [], "return": [], "task": []}
    diag_rows: list[dict[str, Any]] = []
    state = ctx.load_checkpoint()
    if state is not None:  # resume: everything restored, environments rebuilt from the seed
        learner.load_state_dict(state["learner"])
        buffer.load_state_dict(state["buffer"])
        loop = state["loop"]
        start, history = loop["step"], loop["history"]
        train_stats, diag_rows = loop["train_stats"], loop["diag_rows"]
        warm_rng.bit_generator.state = loop["warm_rng"]
        _set_env_states(train_envs, loop["env_states"])

    def checkpoint(step: int) -> None:
        ctx.save_checkpoint({
            "learner": learner.state_dict(),
            "buffer": buffer.state_dict(),
            "loop": {"step": step, "history": history, "warm_rng": warm_rng.bit_generator.state,
                     "env_states": _env_states(train_envs, p), "train_stats": train_stats,
                     "diag_rows": diag_rows},
        })

    def run_eval(step: int) -> None:
        idx = len(history)
        goal_sets = eval_goal_sets(bench, cfg.seed, idx)
        res = evaluate(lambda o: learner.act(o, deterministic=True), eval_envs, goal_sets,
                       p.horizon)
        mean_s, mean_r = float(res["success"].mean()), float(res["return"].mean())
        rows = [ctx.metric_row("eval", idx, step, t, m, float(res[m][i]), True)
                for i, t in enumerate(tasks) for m in ("success", "return")]
        rows += [ctx.metric_row("eval", idx, step, "", "mean_success", mean_s, True),
                 ctx.metric_row("eval", idx, step, "", "mean_return", mean_r, True)]
        ts = train_stats
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
        history.append({"step": step, "mean_success": mean_s, "mean_return": mean_r,
                        "success": res["success"].tolist(), "return": res["return"].tolist()})

    # -- the loop ------------------------------------------------------------------------
    needs_reset = np.ones(T, dtype=bool)
    obs = np.zeros((T, bench.obs_dim))
    ep_ret, ep_succ = np.zeros(T), np.zeros(T, dtype=bool)
    t_env = t_learn = 0.0
    n_env = n_upd = 0
    last_progress = 0.0
    critic_losses = np.zeros(T)
    if start == 0 and scfg.eval_at_start and not history:
        run_eval(0)
    for step in range(start, scfg.steps):
        t0 = time.perf_counter()
        if needs_reset.any():
            reset_obs, _ = train_envs.reset(options={"reset_mask": needs_reset.copy()})
            obs = np.where(needs_reset[:, None], reset_obs, obs)
            ep_ret[needs_reset], ep_succ[needs_reset] = 0.0, False
        # ALGO LOGIC: act (uniform random during the warm-up)
        if step < scfg.warmup_steps:
            actions = warm_rng.uniform(-1, 1, size=(T, bench.action_dim)).astype(np.float32)
        else:
            actions = learner.act(obs)
        next_obs, reward, terminated, truncated, info = train_envs.step(actions)
        # CRUCIAL: next_obs is the true last observation at truncation (no autoreset)
        buffer.add(obs, actions, reward, next_obs, terminated, task_ids)
        ep_ret += np.asarray(info.get("raw_reward", reward), dtype=float)
        ep_succ |= np.asarray(info["success"], dtype=float) > 0
        needs_reset = np.logical_or(terminated, truncated)
        for i in np.flatnonzero(needs_reset):
            train_stats["task"].append(int(i))
            train_stats["success"].append(float(ep_succ[i]))
            train_stats["return"].append(float(ep_ret[i]))
        obs = next_obs
        t1 = time.perf_counter()
        t_env += t1 - t0
        n_env += T

        # ALGO LOGIC: learn
        done = step + 1
        log_now = done % scfg.log_every == 0
        if step >= scfg.warmup_steps:
            burst = scfg.warmup_burst and step == scfg.warmup_steps and scfg.warmup_steps > 0
            n = scfg.warmup_steps if burst else scfg.updates_per_step
            for u in range(n):
                try:
                    out = learner.update(buffer.sample(scfg.batch_size),
                                         diagnostics=log_now and u == n - 1)
                except NonFiniteSACLoss as e:
                    raise NonFiniteLoss(cfg.run_id, f"{tasks[e.task]} ({e.loss})", e.value,
                                        len(history), done) from None
            n_upd += n
            critic_losses = out["critic"].losses.cpu().numpy()
            if log_now:
                upd_rate = n_upd / max(t_learn + time.perf_counter() - t1, 1e-9)
                diag_rows += _diag_rows(ctx, len(history), done, tasks, out,
                                        n_env / max(t_env, 1e-9), upd_rate)
        t_learn += time.perf_counter() - t1

        # EVALUATE, write, checkpoint (at an episode boundary), report
        if done % scfg.eval_every == 0 or done == scfg.steps:
            run_eval(done)
            ctx.write_diagnostics(f"step{done:010d}", diag_rows)
            diag_rows = []
            ctx.update_run(steps_done=done, epochs_done=len(history))
            ckpt_due = True
        if done % ckpt_every == 0:
            ckpt_due = True
        if ckpt_due and (needs_reset.all() or done == scfg.steps):
            checkpoint(done)
            ckpt_due = False
        if done % scfg.eval_every == 0 or done == scfg.steps:
            h = history[-1]
            per_task = {f"val/{t}/{m}": h[m][i] for i, t in enumerate(tasks)
                        for m in ("success", "return")}
            ctx.report({"epoch": len(history) - 1, "step": done, "val_score": -h["mean_success"],
                        "mean_success": h["mean_success"], "mean_return": h["mean_return"],
                        **per_task})
        now = time.perf_counter()
        if now - last_progress > 2.0 or done == scfg.steps:
            last_progress = now
            rate = done - start
            eta = (scfg.steps - done) * (t_env + t_learn) / max(rate, 1)
            ctx.progress({"epoch": len(history), "epochs": n_evals, "step": done,
                          "steps": scfg.steps, "eta_s": eta,
                          "losses": {t: float(critic_losses[i]) for i, t in enumerate(tasks)}})

    # -- reported numbers: final and best evaluation ---------------------------------------
    final = history[-1]
    best_i = int(np.argmax([h["mean_success"] for h in history]))  # first best on ties
    best = history[best_i]
    rows = []
    for i, t in enumerate(tasks):
        rows += [ctx.metric_row("reported", len(history) - 1, final["step"], t, "success",
                                final["success"][i], True),
                 ctx.metric_row("reported", len(history) - 1, final["step"], t, "return",
                                final["return"][i], True),
                 ctx.metric_row("reported", best_i, best["step"], t, "success_at_best",
                                best["success"][i], True)]
    rows += [ctx.metric_row("reported", len(history) - 1, final["step"], "",
                            "mean_success_final", final["mean_success"], True),
             ctx.metric_row("reported", best_i, best["step"], "", "mean_success_best",
                            best["mean_success"], True),
             ctx.metric_row("reported", best_i, best["step"], "", "best_step", best["step"],
                            None)]
    ctx.write_metrics("reported", rows)
    ctx.update_run(steps_done=scfg.steps, epochs_done=len(history),
                   reported_epochs=dumps({"final": len(history) - 1, "best": best_i}))
    train_envs.close()
    eval_envs.close()
    return {
        "reported": {t: {"success": final["success"][i], "return": final["return"][i]}
                     for i, t in enumerate(tasks)},
        "epochs_done": len(history),
        "steps_done": scfg.steps,
        "mean_success_final": final["mean_success"],
        "mean_success_best": best["mean_success"],
    }


def _has_protocol_column() -> bool:
    from orchestrator.results import RUN_SCHEMA

    return "protocol" in RUN_SCHEMA.names


def _diag_rows(ctx: Any, epoch: int, step: int, tasks: list[str], out: Mapping[str, Any],
               env_rate: float, upd_rate: float) -> list[dict[str, Any]]:
    rows = []
    T = len(tasks)
    for kind in LOSSES:
        r: methods.StepResult = out[kind]
        for i, t in enumerate(tasks):
            rows.append(ctx.diag_row(epoch, step, f"{kind}.loss", t, float(r.losses[i])))
            rows.append(ctx.diag_row(epoch, step, f"{kind}.weight", t, float(r.weights[i])))
            if r.grad_norms is not None:
                rows.append(ctx.diag_row(epoch, step, f"{kind}.grad_norm", t,
                                         float(r.grad_norms[i])))
        if r.cosines is not None:
            for i in range(T):
                for j in range(i + 1, T):
                    rows.append(ctx.diag_row(epoch, step, f"{kind}.cosine", tasks[i],
                                             float(r.cosines[i, j]), other_task=tasks[j]))
        for key, v in r.info.items():
            rows.append(ctx.diag_row(epoch, step, f"{kind}.info.{key}", "", float(v)))
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
