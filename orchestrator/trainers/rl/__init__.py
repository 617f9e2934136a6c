"""Multi-task SAC on Meta-World (MT10 / MT1) with a per-task gradient method on each loss.

Haarnoja et al., "Soft Actor-Critic Algorithms and Applications", 2018,
https://arxiv.org/abs/1812.05905. Multi-task form as in facebookresearch/mtrl (Sodhani et
al. 2021) and the MT10 experiments of CAGrad, Nash-MTL, FAMO and IMGrad built on it
(docs/metaworld.md §1). Read like CleanRL's ``sac_continuous_action.py``, one file per part, in this order:
``config`` → ``networks`` → ``replay`` (the buffer) → ``learner`` (the three losses) →
``evaluation`` → ``loop`` (the training loop and the trainer object).

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
hashed (:func:`orchestrator.trainers.base.method_hparams`).
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
``replay_buffer/mtrl.yaml``, ``experiment/metaworld.yaml``; docs/metaworld.md §3): MLPs with
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
(``checkpoint_every``; ``train.checkpoint_every_steps`` overrides it, and
``train.checkpoint_every_s`` adds one at the first boundary after that many seconds since the
last); they hold the learner (networks, targets, log α, the three Adam
states, the method states, the noise generator), the **whole filled part of the replay
buffer** (≈ 4·(2·obs_dim + 6) bytes per transition: ≈ 350 MB for a full 10⁶ buffer on MT10),
the loop state (step, warm-up RNG, environment wrapper states: goal RNGs, reward normaliser)
and the evaluation history. Resume rebuilds the environments from the seed, restores those
states and continues as if never stopped (tested: the next update is bit-identical).
"""


from orchestrator.trainers.base import method_hparams
from orchestrator.trainers.rl.config import (
    ALPHA_MODES,
    APPLY_TO,
    FROM_TRAIN,
    LOSSES,
    SIGNED_LOSSES,
    TRAINER_OPTIONS,
    SACConfig,
    sac_config,
)
from orchestrator.trainers.rl.evaluation import eval_goal_sets, evaluate
from orchestrator.trainers.rl.learner import (
    NonFiniteSACLoss,
    SACLearner,
    check_method,
    takes_signed_losses,
    validate,
)
from orchestrator.trainers.rl.loop import TRAINER, train_run
from orchestrator.trainers.rl.networks import Actor, TwinQ, mlp
from orchestrator.trainers.rl.replay import Batch, ReplayBuffer, per_task_mean

__all__ = [
    "ALPHA_MODES", "APPLY_TO", "FROM_TRAIN", "LOSSES", "SIGNED_LOSSES", "TRAINER",
    "TRAINER_OPTIONS", "Actor", "Batch", "NonFiniteSACLoss", "ReplayBuffer", "SACConfig",
    "SACLearner", "TwinQ", "check_method", "eval_goal_sets", "evaluate", "method_hparams",
    "mlp", "per_task_mean", "sac_config", "takes_signed_losses", "train_run", "validate",
]  # fmt: skip
