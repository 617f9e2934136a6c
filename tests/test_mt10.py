"""Meta-World MT10/MT1 benchmark and the multi-task SAC trainer (envs/mt10.py,
orchestrator/trainers/rl/). CPU, tiny networks, short episodes; MT1 (reach-v3) wherever one task
shows the property, MT10 only in the end-to-end smoke run (its 500 goals take ~15 s)."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import envs
import methods
from envs.mt10 import EmaStdReward, MT10Protocol, benchmark_tasks, goal_position
from orchestrator.config import RunConfig, TrainConfig
from orchestrator.results import read_table
from orchestrator.run.execute import train_run
from orchestrator.trainers.base import RunContext
from orchestrator.trainers.rl import (
    LOSSES,
    Batch,
    ReplayBuffer,
    SACConfig,
    SACLearner,
    eval_goal_sets,
    evaluate,
    method_hparams,
    per_task_mean,
    sac_config,
    takes_signed_losses,
)

PAPER_METHODS = ("ew", "pcgrad", "cagrad", "nash_mtl", "imgrad", "famo")
TINY = SACConfig(hidden=16, layers=2, batch_size=64, buffer_size=2000, warmup_steps=0)


def _random_buffer(T: int, obs_dim: int = 7, n: int = 40, seed: int = 0) -> ReplayBuffer:
    rng = np.random.default_rng(seed)
    rb = ReplayBuffer(n * T, obs_dim, 4, seed)
    for _ in range(n):
        rb.add(rng.normal(size=(T, obs_dim)), rng.uniform(-1, 1, (T, 4)), rng.normal(size=T),
               rng.normal(size=(T, obs_dim)), np.zeros(T), np.arange(T))
    return rb


def _params(learner: SACLearner) -> list[torch.Tensor]:
    return [p.detach().clone() for p in
            [*learner.actor.parameters(), *learner.critic.parameters(),
             *learner.critic_target.parameters(), learner.log_alpha]]


# ---------------------------------------------------------------------------------------
# environments: protocol, seeding, goals
# ---------------------------------------------------------------------------------------


def _first_steps(seed: int, **options) -> tuple[list, np.ndarray, np.ndarray]:
    benchmark_tasks.cache_clear()  # really regenerate the goals for this build
    bench = envs.create("mt1", horizon=5, **options)
    e = bench.make_envs(seed)
    obs0, _ = e.reset()
    actions = np.linspace(-1, 1, 4, dtype=np.float32)[None]
    obs1 = e.step(actions)[0]
    goals = [goal_position(t) for t in benchmark_tasks(bench.tasks, seed)[0]]
    e.close()
    return goals, obs0, obs1


def test_same_seed_same_goals_and_observations_different_seed_differs():
    goals_a, o0_a, o1_a = _first_steps(3)
    goals_b, o0_b, o1_b = _first_steps(3)
    goals_c, o0_c, _ = _first_steps(4)
    assert goals_a == goals_b and len(goals_a) == 50
    np.testing.assert_array_equal(o0_a, o0_b)
    np.testing.assert_array_equal(o1_a, o1_b)
    assert goals_a != goals_c
    assert not np.allclose(o0_a, o0_c)
    # the goal is visible: the last 3 observation entries are the fixed goal's position
    bench = envs.create("mt1")
    g = bench.fixed_goal_indices(3)[0]
    np.testing.assert_allclose(o0_a[0, -3:], goals_a[g], atol=1e-6)


def test_resampled_goals_follow_the_seed():
    def goal_sequence(seed: int) -> list[int]:
        bench = envs.create("mt1", horizon=2, goals="resampled")
        e = bench.make_envs(seed)
        seq = []
        for _ in range(6):
            e.reset()
            seq.append(e.call("get_goal_state")[0]["goal_index"])
        e.close()
        return seq

    a, b, c = goal_sequence(0), goal_sequence(0), goal_sequence(1)
    assert a == b and a != c and len(set(a)) > 1


def test_protocol_validation_and_record():
    with pytest.raises(ValueError, match="horizon"):
        MT10Protocol(horizon=501)
    with pytest.raises(ValueError, match="reward_version"):
        MT10Protocol(reward_version="v3")
    with pytest.raises(ValueError, match="unknown option"):
        envs.create("mt10", horizn=150)
    with pytest.raises(ValueError, match="unknown Meta-World task"):
        envs.create("mt1", task="reach-v9")
    b = envs.create("mt10")
    assert b.kind == "rl" and b.num_tasks == 10 and b.obs_dim == 39
    assert envs.create("mt10", one_hot=True).obs_dim == 49
    with pytest.raises(ValueError, match="reinforcement-learning"):
        b.build_model()
    assert envs.create("mt1", task="push-v3").tasks == ("push-v3",)
    rec = envs.create("mt1", horizon=500, reward_version="v2").protocol_record(0)
    assert rec["horizon"] == 500 and rec["reward_version"] == "v2" and rec["tasks"] == ["reach-v3"]
    assert rec["metaworld_version"] == "3.1.1" and len(rec["fixed_goal_positions"]) == 1


def test_ema_std_reward_matches_hand_computation():
    import gymnasium as gym

    class Scripted(gym.Env):
        """Returns the rewards of a fixed list, one per step."""

        def __init__(self, rewards):
            self.rewards = list(rewards)

        def step(self, action):
            return 0, self.rewards.pop(0), False, False, {}

    rewards = [3.0, -1.0, 10.0, 0.5]
    w = EmaStdReward(Scripted(rewards), alpha=0.1)
    m, v = 0.0, 1.0
    for r in rewards:
        m = 0.9 * m + 0.1 * r
        v = 0.9 * v + 0.1 * (r - m) ** 2
        _, out, _, _, info = w.step(None)
        assert out == pytest.approx(r / (np.sqrt(v) + 1e-8), rel=1e-12)
        assert info["raw_reward"] == r


def test_eval_goal_sets():
    b = envs.create("mt1")
    assert eval_goal_sets(b, 5, 0) == [b.fixed_goal_indices(5)]
    all_goals = eval_goal_sets(envs.create("mt1", eval_goals="all"), 5, 0)
    assert [g[0] for g in all_goals] == list(range(50))
    rs = envs.create("mt1", goals="resampled")
    assert eval_goal_sets(rs, 5, 2) == eval_goal_sets(rs, 5, 2) != eval_goal_sets(rs, 5, 3)


def test_evaluate_counts_success_at_any_step_and_sums_returns():
    class FakeVec:
        """Two envs; env 0 succeeds only at step 2, env 1 never; reward = step index."""

        num_envs = 2

        def call(self, name, *args):
            self.called = (name, args)

        def reset(self, **_):
            self.t = 0
            return np.zeros((2, 3)), {}

        def step(self, actions):
            self.t += 1
            succ = np.array([1.0 if self.t == 2 else 0.0, 0.0])
            end = np.full(2, self.t == 4)
            return np.zeros((2, 3)), np.full(2, float(self.t)), np.zeros(2, bool), end, {
                "success": succ}

    v = FakeVec()
    res = evaluate(lambda o: np.zeros((2, 4)), v, [[0, 0], [1, 1]], horizon=4)
    np.testing.assert_array_equal(res["success"], [1.0, 0.0])
    np.testing.assert_array_equal(res["return"], [10.0, 10.0])
    assert v.called == ("set_goal_all", ([1, 1],))


# ---------------------------------------------------------------------------------------
# replay buffer and per-task losses
# ---------------------------------------------------------------------------------------


def test_replay_buffer_fifo_and_state():
    rb = ReplayBuffer(5, 2, 4, seed=0)
    for i in range(3):
        rb.add(np.full((2, 2), i), np.zeros((2, 4)), np.full(2, i), np.full((2, 2), i + 0.5),
               np.zeros(2), np.arange(2))
    assert len(rb) == 5 and rb.ptr == 1
    assert rb.reward.tolist() == [2, 0, 1, 1, 2]  # the oldest transition overwritten first
    clone = ReplayBuffer(5, 2, 4, seed=9)
    clone.load_state_dict(copy.deepcopy(rb.state_dict()))
    a, b = rb.sample(7), clone.sample(7)
    for k in ReplayBuffer.ARRAYS:
        assert torch.equal(getattr(a, k), getattr(b, k))
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(6, 2, 4).load_state_dict(rb.state_dict())


def test_buffer_stores_true_final_observation_at_truncation(tmp_path):
    """Run the real training loop for 1.5 episodes of random actions, then replay the stored
    actions in a fresh env: the stored next_obs of the last step of episode 1 is the env's
    true final observation, and the next stored obs is the reset observation."""
    H = 6
    cfg = RunConfig(benchmark="mt1", method="ew", seed=1, bench_options={"horizon": H},
                    train=TrainConfig(steps=H + 3, batch_size=8, lr=3e-4, eval_every=100),
                    trainer_options={"hidden": 8, "layers": 1, "warmup_steps": 100,
                                     "buffer_size": 50, "eval_at_start": False},
                    out=str(tmp_path))
    ctx = RunContext(run_id=cfg.run_id, out=tmp_path)
    train_run(cfg, ctx)
    buf = ctx.load_checkpoint()["buffer"]
    assert buf["size"] == H + 3
    e = envs.create("mt1", horizon=H).make_envs(1)
    obs, _ = e.reset()
    np.testing.assert_allclose(buf["obs"][0], obs[0], rtol=1e-6)
    for t in range(H):
        obs, r, term, trunc, _ = e.step(buf["action"][t][None])
        np.testing.assert_allclose(buf["next_obs"][t], obs[0], rtol=1e-6, atol=1e-6)
    assert trunc[0] and not term[0] and buf["terminated"][H - 1] == 0
    final = obs[0].copy()
    reset_obs, _ = e.reset()
    np.testing.assert_allclose(buf["obs"][H], reset_obs[0], rtol=1e-6, atol=1e-6)
    assert not np.allclose(final, reset_obs[0])  # so the check above can tell them apart


def test_per_task_mean_by_hand():
    values = torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0])
    task = torch.tensor([0, 2, 0, 2, 2])
    out = per_task_mean(values, task, 4)
    torch.testing.assert_close(out, torch.tensor([2.0, 0.0, 32.0 / 3, 0.0]))


def test_sac_per_task_losses_match_hand_computation():
    """Critic, actor and α per-task losses of one update equal a per-sample Python loop."""
    T, obs_dim = 3, 5
    cfg = SACConfig(hidden=8, layers=1, init_temperature=0.7)
    learner = SACLearner(obs_dim, 4, T, "ew", cfg=cfg, seed=2)
    g = torch.Generator().manual_seed(0)
    B = 7
    batch = Batch(torch.randn(B, obs_dim, generator=g), torch.rand(B, 4, generator=g) * 2 - 1,
                  torch.randn(B, generator=g), torch.randn(B, obs_dim, generator=g),
                  torch.tensor([0, 0, 0, 0, 0, 1, 0], dtype=torch.float32),
                  torch.tensor([2, 0, 2, 1, 2, 0, 2]))
    actor, critic, target = (copy.deepcopy(m) for m in (learner.actor, learner.critic,
                                                          learner.critic_target))
    gen = torch.Generator()
    gen.set_state(learner.generator.get_state())
    eps_next, eps_pi = torch.randn(B, 4, generator=gen), torch.randn(B, 4, generator=gen)
    alpha, gamma, H = 0.7, cfg.gamma, -4.0
    crit, act, alp = [[] for _ in range(T)], [[] for _ in range(T)], [[] for _ in range(T)]
    with torch.no_grad():
        a_next, logp_next, _ = actor(batch.next_obs, eps_next)
        tq = torch.min(*target(batch.next_obs, a_next))
        q1, q2 = critic(batch.obs, batch.action)
    for i in range(B):
        y = batch.reward[i] + (1 - batch.terminated[i]) * gamma * (tq[i] - alpha * logp_next[i])
        crit[int(batch.task[i])].append(float((q1[i] - y) ** 2 + (q2[i] - y) ** 2))
    out = learner.update(batch)
    with torch.no_grad():  # the actor loss uses the critic after its step
        a_pi, logp_pi, _ = actor(batch.obs, eps_pi)
        q = torch.min(*learner.critic(batch.obs, a_pi))
    for i in range(B):
        act[int(batch.task[i])].append(float(alpha * logp_pi[i] - q[i]))
        alp[int(batch.task[i])].append(float(alpha * (-logp_pi[i] - H)))
    for name, ref in (("critic", crit), ("actor", act), ("alpha", alp)):
        np.testing.assert_allclose(out[name].losses.numpy(), [np.mean(v) for v in ref],
                                   rtol=1e-5, atol=1e-6, err_msg=name)


# ---------------------------------------------------------------------------------------
# methods inside SAC
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PAPER_METHODS)
def test_one_update_with_each_paper_method_changes_parameters(name):
    if name not in methods.available():
        pytest.skip(f"{name} is not registered yet")
    bench = envs.create("mt10")
    T = bench.num_tasks
    learner = SACLearner(7, 4, T, name, method_hparams(bench, name), TINY, seed=0)
    before = _params(learner)
    famo_logits = {k: m.logits.clone() for k, m in learner.methods.items() if hasattr(m, "logits")}
    out = learner.update(_random_buffer(T).sample(64), diagnostics=True)
    after = _params(learner)
    changed = [not torch.equal(a, b) for a, b in zip(before, after)]
    n_actor = len(list(learner.actor.parameters()))
    n_critic = len(list(learner.critic.parameters()))
    assert all(changed[:n_actor]), "actor not updated"
    assert all(changed[n_actor:n_actor + 2 * n_critic]), "critic or target not updated"
    assert changed[-1], "temperature not updated"
    for kind in LOSSES:
        assert torch.isfinite(out[kind].losses).all()
        assert out[kind].grad_norms is not None and out[kind].cosines is not None
    applied = learner.apply_to
    # the reference ports: FAMO on the critic loss only (FAMO mtrl_files/famo.py), the
    # CAGrad, PCGrad and Nash-MTL ports on all three (docs/metaworld.md §4)
    assert applied == (("critic",) if name == "famo" else ("critic", "actor", "alpha"))
    for k in LOSSES:  # the method handled its losses (once), EW the others
        m = learner.methods[k]
        assert (m.name, m.step_count) == ((name, 1) if k in applied else ("ew", 1)), k
    if name in ("cagrad", "nash_mtl", "imgrad", "famo"):  # their weights are never all 1
        assert not torch.allclose(out["critic"].weights, torch.ones(T))
    for k, logits in famo_logits.items():  # FAMO's after_step saw the same batch again
        assert not torch.equal(logits, learner.methods[k].logits)


def test_every_registered_method_runs_in_sac_or_is_rejected_up_front():
    T = 3
    rb = _random_buffer(T, n=30)
    for name in methods.available():
        try:
            learner = SACLearner(7, 4, T, name, cfg=TINY, seed=0)
        except ValueError as e:
            cls = methods.get_class(name)
            assert cls.requires_model or cls.default_level == "rep", (name, e)
            continue
        before = _params(learner)
        learner.update(rb.sample(64))
        learner.update(rb.sample(64))
        after = _params(learner)
        assert all(torch.isfinite(p).all() for p in after), name
        assert any(not torch.equal(a, b) for a, b in zip(before, after)), name


def test_benchmark_method_hparams_are_valid():
    bench = envs.create("mt10")
    for name, hp in bench.method_hparams.items():
        if name in methods.available():
            m = methods.create(name, 10, **hp)
            assert all(m.hparams()[k] == v for k, v in hp.items())
    assert method_hparams(bench, "cagrad")["c"] == 0.9
    assert method_hparams(bench, "cagrad", {"c": 0.5})["c"] == 0.5
    assert method_hparams(bench, "ew") == {}


def test_config_validation():
    with pytest.raises(ValueError, match="apply_to"):
        SACConfig(apply_to=("critic", "policy"))
    with pytest.raises(ValueError, match="per_task"):
        SACConfig(alpha="per_task", apply_to=("critic", "alpha"))
    assert SACConfig(alpha="per_task").resolved_apply_to("cagrad") == ("critic", "actor")
    assert SACConfig().resolved_apply_to("famo") == ("critic",)
    assert SACConfig().resolved_apply_to("dwa", signed_ok=False) == ("critic",)
    with pytest.raises(ValueError, match="positive"):
        SACConfig(apply_to=("critic", "actor")).resolved_apply_to("famo", signed_ok=False)
    with pytest.raises(ValueError, match="batch_size"):
        SACConfig(batch_size=10, buffer_size=5)
    run = RunConfig(benchmark="mt10", method="ew", seed=0, trainer_options={"stepz": 3})
    with pytest.raises(ValueError, match="valid trainer_options"):
        sac_config(run)
    run = RunConfig(benchmark="mt10", method="ew", seed=0, trainer_options={"steps": 3})
    with pytest.raises(ValueError, match="train.steps"):
        sac_config(run)
    run = RunConfig(benchmark="mt10", method="ew", seed=0, train=TrainConfig(steps=7, lr=1e-3),
                    trainer_options={"apply_to": ["critic"], "alpha": "per_task"})
    c = sac_config(run)
    assert (c.steps, c.lr, c.apply_to, c.alpha) == (7, 1e-3, ("critic",), "per_task")


def test_divergence_factor_is_refused_up_front_for_sac(tmp_path, capsys):
    from orchestrator import cli

    argv = ["run", "--benchmark", "mt10", "--methods", "ew", "--seeds", "0", "--workers", "0",
            "--out", str(tmp_path), "--no-report", "train.divergence_factor=100"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "train.divergence_factor is not supported for mt10" in err and "fix: leave it" in err
    assert not (tmp_path / "runs").exists()


def test_log_based_methods_get_only_the_positive_critic_loss():
    """Methods that reject negative losses are found by asking them (no name list): they are
    applied to the critic only, whose squared error is always positive."""
    assert not takes_signed_losses("famo", 3, {})
    assert takes_signed_losses("cagrad", 3, {}) and takes_signed_losses("ew", 3, {})
    for name in methods.available():
        try:
            learner = SACLearner(7, 4, 3, name, cfg=TINY)
        except ValueError:
            continue
        if not takes_signed_losses(name, 3, {}):
            assert learner.apply_to == ("critic",), name


def test_methods_needing_model_features_or_a_representation_are_rejected():
    for name in methods.available():
        cls = methods.get_class(name)
        if cls.requires_model or (cls.requires_grads and cls.default_level == "rep"):
            with pytest.raises(ValueError, match="SAC"):
                SACLearner(7, 4, 3, name, cfg=TINY)


def test_per_task_temperatures():
    T = 3
    learner = SACLearner(7, 4, T, "cagrad", cfg=dataclasses.replace(TINY, alpha="per_task"))
    assert learner.log_alpha.shape == (T,) and learner.apply_to == ("critic", "actor")
    out = learner.update(_random_buffer(T).sample(64))
    assert out["alpha_value"].shape == (T,)
    # L_t = α_t·mean_t(−log π − H̄), so ∂L_t/∂log α_t = L_t: each temperature got exactly its
    # own task's gradient
    torch.testing.assert_close(learner.log_alpha.grad, out["alpha"].losses)
    assert len(set(out["alpha"].losses.tolist())) == T

    shared = SACLearner(7, 4, T, "ew", cfg=TINY)
    out = shared.update(_random_buffer(T).sample(64))
    torch.testing.assert_close(shared.log_alpha.grad, out["alpha"].losses.sum().reshape(1))


# ---------------------------------------------------------------------------------------
# checkpoint / resume
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["famo", "pcgrad", "nash_mtl", "cagrad"])
def test_learner_resume_reproduces_the_next_update_exactly(name):
    T = 4
    rb = _random_buffer(T)
    a = SACLearner(7, 4, T, name, cfg=TINY, seed=0)
    for _ in range(3):
        a.update(rb.sample(64))
    blob = io.BytesIO()
    torch.save({"learner": a.state_dict(), "buffer": rb.state_dict()}, blob)
    a.update(rb.sample(64))
    expected = _params(a)

    blob.seek(0)
    state = torch.load(blob, weights_only=False)
    b = SACLearner(7, 4, T, name, cfg=TINY, seed=123)  # different init, all overwritten
    b.load_state_dict(state["learner"])
    rb2 = ReplayBuffer(rb.capacity, 7, 4, seed=99)
    rb2.load_state_dict(state["buffer"])
    b.update(rb2.sample(64))
    for x, y in zip(expected, _params(b)):
        assert torch.equal(x, y)


def _tiny_run(tmp_path: Path, method: str = "famo", **train) -> RunConfig:
    return RunConfig(
        benchmark="mt1", method=method, seed=0, hparams={},
        bench_options={"horizon": 10, "goals": "resampled"},
        train=TrainConfig(**{"steps": 40, "batch_size": 32, "lr": 1e-3, "eval_every": 20, **train}),
        trainer_options={"hidden": 16, "layers": 2, "warmup_steps": 10, "buffer_size": 400,
                         "log_every": 10},
        out=str(tmp_path),
    )


def test_interrupted_run_resumes_to_the_same_result(tmp_path):
    """Kill a run right after its step-20 evaluation and checkpoint; the rerun resumes from it
    and ends bit-identical to an uninterrupted run (learner, method state, buffer, evaluations,
    with resampled goals and reward normalisation carried across)."""
    cfg = _tiny_run(tmp_path / "a")
    full_ctx = RunContext(run_id=cfg.run_id, out=tmp_path / "a")
    train_run(cfg, full_ctx)
    full = full_ctx.load_checkpoint()

    cfg_b = _tiny_run(tmp_path / "b")

    class Stop(Exception):
        pass

    def stop_after_step_20(metrics):
        if metrics["step"] == 20:
            raise Stop

    ctx_b = RunContext(run_id=cfg_b.run_id, out=tmp_path / "b", report=stop_after_step_20)
    with pytest.raises(Stop):
        train_run(cfg_b, ctx_b)
    assert ctx_b.load_checkpoint()["loop"]["step"] == 20
    train_run(cfg_b, RunContext(run_id=cfg_b.run_id, out=tmp_path / "b"))
    resumed = RunContext(run_id=cfg_b.run_id, out=tmp_path / "b").load_checkpoint()

    for k, v in full["learner"]["actor"].items():
        assert torch.equal(v, resumed["learner"]["actor"][k]), k
    assert torch.equal(full["learner"]["log_alpha"], resumed["learner"]["log_alpha"])
    assert torch.equal(full["learner"]["methods"]["critic"]["logits"],
                       resumed["learner"]["methods"]["critic"]["logits"])
    np.testing.assert_array_equal(full["buffer"]["obs"], resumed["buffer"]["obs"])
    assert full["loop"]["history"] == resumed["loop"]["history"]
    ma = read_table(tmp_path / "a", "metrics").sort_values(["split", "step", "task", "metric"])
    mb = read_table(tmp_path / "b", "metrics").sort_values(["split", "step", "task", "metric"])
    np.testing.assert_array_equal(ma.value.to_numpy(), mb.value.to_numpy())


# ---------------------------------------------------------------------------------------
# end to end through the CLI and the results store
# ---------------------------------------------------------------------------------------


def _cli(argv: list[str]) -> int:
    from orchestrator.cli import main

    return main(argv)


def test_cli_run_writes_eval_rows_and_reported_numbers(tmp_path):
    out = tmp_path / "res"
    rc = _cli(["run", "--benchmark", "mt1", "--methods", "cagrad", "--seeds", "0",
               "--steps", "50", "--workers", "0", "--out", str(out), "--no-report",
               "bench_options.horizon=10", "train.eval_every=20", "train.batch_size=32",
               "trainer_options.hidden=16", "trainer_options.warmup_steps=10",
               "trainer_options.buffer_size=300", "trainer_options.log_every=10"])
    assert rc == 0
    runs = read_table(out, "runs")
    assert list(runs.status) == ["finished"] and list(runs.method) == ["cagrad"]
    proto = json.loads(runs.protocol.iloc[0])  # the exact protocol, in the Parquet provenance
    assert (proto["horizon"], proto["reward_version"], proto["reward_normalization"],
            proto["goals"], proto["one_hot"]) == (10, "v1", "ema_std", "fixed", False)
    assert proto["seed"] == 0 and len(proto["fixed_goal_positions"]) == 1
    assert proto["apply_to"] == ["critic", "actor", "alpha"] and proto["sac"]["batch_size"] == 32
    assert proto["mujoco_version"] == "3.3.0" and proto["sac"]["warmup_steps"] == 10
    m = read_table(out, "metrics")
    ev = m[(m.split == "eval") & (m.task == "reach-v3")]
    assert sorted(set(ev.step)) == [0, 20, 40, 50] and set(ev.metric) == {"success", "return"}
    rep = m[m.split == "reported"]
    assert {"success", "return", "success_at_best", "mean_success_final",
            "mean_success_best"} <= set(rep.metric)
    d = read_table(out, "diagnostics")
    assert {"critic.weight", "actor.grad_norm", "alpha.loss", "info.alpha"} <= set(d.quantity)


@pytest.mark.slow
def test_mt10_smoke_run_through_the_cli(tmp_path):
    """``mtlx run --benchmark mt10`` for a few hundred loop steps writes evaluation rows for
    all ten tasks, training diagnostics and the protocol."""
    out = tmp_path / "res"
    rc = _cli(["run", "--benchmark", "mt10", "--methods", "pcgrad", "--seeds", "0",
               "--steps", "200", "--workers", "0", "--out", str(out), "--no-report",
               "bench_options.horizon=50", "train.eval_every=100", "train.batch_size=200",
               "trainer_options.hidden=32", "trainer_options.warmup_steps=150",
               "trainer_options.buffer_size=5000", "trainer_options.log_every=25"])
    assert rc == 0
    m = read_table(out, "metrics")
    ev = m[(m.split == "eval") & (m.metric == "success")]
    assert set(ev.task) == set(envs.create("mt10").tasks)
    assert sorted(set(ev.step)) == [0, 100, 200]
    assert ev.value.between(0, 1).all()
    proto = json.loads(read_table(out, "runs").protocol.iloc[0])
    assert proto["tasks"] == list(envs.create("mt10").tasks) and proto["horizon"] == 50
    assert len(set(map(tuple, proto["fixed_goal_positions"]))) == 10
    d = read_table(out, "diagnostics")
    cos = d[d.quantity == "critic.cosine"]
    assert len(cos) == 45 * 2  # upper triangle at steps 175 and 200
    assert (d[d.quantity == "info.env_steps_per_s"].value > 0).all()


def test_rl_report_mean_sem_learned_fraction_and_curves(tmp_path):
    """The MT10 table from hand-written results: mean ± SEM over seeds of the final and best
    mean success, the fraction of seeds that learned, per-task final success, curves."""
    from orchestrator.report import Results
    from orchestrator.report import rl as rl_report
    from orchestrator.results import ResultsStore

    store = ResultsStore(tmp_path)
    tasks = ["a-v3", "b-v3"]
    finals = {0: (0.5, 0.5, [1.0, 0.0]), 1: (0.0, 0.5, [0.0, 0.0]), 2: (1.0, 1.0, [1.0, 1.0])}
    for seed, (final, best, per_task) in finals.items():
        rid = f"mt10.ew.s{seed}.h"
        ident = {"run_id": rid, "benchmark": "mt10", "method": "ew", "seed": seed}
        store.write_run({**ident, "status": "finished", "config_hash": "h", "hparams": "{}",
                         "tasks": json.dumps(tasks)})

        def row(split, step, task, metric, value, ident=ident):
            return {**ident, "split": split, "epoch": 0, "step": step, "task": task,
                    "metric": metric, "value": value, "higher_is_better": True}

        store.write_metrics(rid, "reported", [
            row("reported", 10, "", "mean_success_final", final),
            row("reported", 5, "", "mean_success_best", best),
            *[row("reported", 10, t, "success", v) for t, v in zip(tasks, per_task)]])
        store.write_metrics(rid, "eval", [row("eval", s, "", "mean_success", v)
                                          for s, v in ((0, 0.0), (10, final))])
    res = Results.load(tmp_path)
    frame = rl_report.summarize(res, "mt10")
    r = frame.iloc[0]
    assert r.seeds == 3 and r.final_mean == pytest.approx(0.5)
    assert r.final_sem == pytest.approx(np.std([0.5, 0.0, 1.0], ddof=1) / np.sqrt(3))
    assert r.best_mean == pytest.approx(2 / 3)
    assert r.learned == 3 and rl_report.summarize(res, "mt10", 0.6).iloc[0].learned == 1
    assert r["a-v3/success"] == pytest.approx(2 / 3) and r["b-v3/success"] == pytest.approx(1 / 3)
    text = rl_report.render(res)
    assert "0.500 ± 0.289" in text and "3/3" in text
    c = rl_report.curves(res, "mt10")
    assert c[c.step == 10]["mean"].iloc[0] == pytest.approx(0.5)
    files = rl_report.plot(res, tmp_path / "plots")
    assert [f.name for f in files] == ["mt10_success.png"]


@pytest.mark.slow
def test_mt10_builds_from_one_seed_are_identical():
    """All ten MT10 environments: identical goals (all 500) and first observations from one
    seed, different ones from another."""
    def build(seed: int):
        benchmark_tasks.cache_clear()
        bench = envs.create("mt10")
        goals = [[goal_position(t) for t in per_task]
                 for per_task in benchmark_tasks(bench.tasks, seed)]
        e = bench.make_envs(seed)
        obs, _ = e.reset()
        e.close()
        return goals, obs

    (ga, oa), (gb, ob), (gc, oc) = build(0), build(0), build(1)
    assert ga == gb and all(len(g) == 50 for g in ga)
    np.testing.assert_array_equal(oa, ob)
    assert all(x != y for x, y in zip(ga, gc))
    assert not np.allclose(oa, oc)


def test_cli_config_resolves_the_mt10_reference_hyperparameters():
    """``mtlx run --benchmark mt10`` runs CAGrad with c = 0.9 etc. (hashed into the run id)
    unless the user sets a value."""
    from orchestrator.config import experiment_from_dict
    from orchestrator.run.plan import expand

    runs = expand(experiment_from_dict({
        "benchmark": "mt10", "methods": ["cagrad", "famo"], "seeds": [0],
        "train": {"steps": 10}, "hparams": {"famo": {"gamma": 0.001}}}))
    hp = {r.method: r.hparams for r in runs}
    # the reference values (envs.mt10.METHOD_HPARAMS) and the user's value, resolved with
    # every other hyperparameter's default before the run id is hashed
    assert {k: hp["cagrad"][k] for k in ("c", "rescale", "scale_by_tasks")} == \
        {"c": 0.9, "rescale": 1, "scale_by_tasks": False}
    assert {k: hp["famo"][k] for k in ("gamma", "w_lr")} == {"gamma": 0.001, "w_lr": 0.025}
    with pytest.raises(ValueError, match="positive"):
        expand(experiment_from_dict({
            "benchmark": "mt10", "methods": ["famo"], "seeds": [0], "train": {"steps": 10},
            "trainer_options": {"apply_to": ["critic", "actor"]}}))
