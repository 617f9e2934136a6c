"""Step- and time-based checkpoints: a run killed mid-epoch resumes from its last step
checkpoint to metrics bit-identical to an uninterrupted run's, ``attempts`` counts the starts,
the cadence is not part of the run id, and the sampler's order does not depend on the
loader's worker processes (what makes skipping an epoch's first batches on resume exact)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from envs._sampling import EpochDataLoader, ShardedBatchSampler
from orchestrator.config import ConfigError, RunConfig, TrainConfig, experiment_from_dict
from orchestrator.results import ResultsStore, read_table
from orchestrator.run.launch import run_experiment
from orchestrator.trainers.base import rng_state
from orchestrator.trainers.cadence import CheckpointCadence, resume_batches

REPO = Path(__file__).resolve().parents[1]
SMALL = {"n_train": 240, "n_val": 32, "n_test": 32}  # 30 steps of 8 per epoch
TRAIN = {"epochs": 2, "batch_size": 8, "max_eval_batches": 2, "checkpoint_every_steps": 4}


def _exp(out, method, **train):
    return experiment_from_dict(dict(
        benchmark="multi_digits", methods=[method], seeds=[0], workers=0, out=str(out),
        bench_options=SMALL, train={**TRAIN, **train}))


def _metrics(out, run_id):
    m = read_table(out, "metrics")
    m = m[(m.run_id == run_id) & (m.metric != "epoch_time_s")]
    return m.sort_values(["split", "epoch", "step", "task", "metric"]).reset_index(drop=True)


def _diagnostics(out, run_id):
    d = read_table(out, "diagnostics")
    d = d[d.run_id == run_id]
    return d.sort_values(["epoch", "step", "quantity", "task", "other_task"]).reset_index(drop=True)


def _same(a, b):
    assert len(a) > 0 and a.drop(columns="value").equals(b.drop(columns="value"))
    assert a.value.tolist() == b.value.tolist()  # bit-identical, NaN-free


def _partial(out, run_id):
    path = ResultsStore(out).checkpoint_dir(run_id) / "state.pt"
    try:
        return torch.load(path, weights_only=False).get("partial")
    except (OSError, RuntimeError, EOFError):  # not there yet
        return None


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    runs = {m: run_experiment(_exp(out, m, checkpoint_every_steps=0))[0]
            for m in ("pcgrad", "dwa")}
    assert all(o.status == "finished" for o in runs.values())
    return out, {m: o.run_id for m, o in runs.items()}


def test_sigkill_mid_epoch_resumes_bit_identical(tmp_path, uninterrupted):
    """PCGrad draws its visit order from its generator and the model's init from torch's
    RNG: both must continue where the step checkpoint left them."""
    whole, ids = uninterrupted
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "orchestrator", "run", "--benchmark", "multi_digits",
           "--methods", "pcgrad", "--seeds", "0", "--workers", "0", "--no-report",
           "--out", str(out), *[f"bench_options.{k}={v}" for k, v in SMALL.items()],
           *[f"train.{k}={v}" for k, v in TRAIN.items()]]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    run_id = ids["pcgrad"]  # the cadence is not in the run id: the same run as `whole`'s
    deadline = time.monotonic() + 240
    while _partial(out, run_id) is None:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "no step checkpoint within 4 minutes"
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    part = _partial(out, run_id)
    assert part is not None and 0 < part["batch"] < 30  # killed mid-epoch
    assert ResultsStore(out).read_run(run_id)["status"] == "running"  # SIGKILL: unrecorded
    [o] = run_experiment(_exp(out, "pcgrad"))
    assert o.status == "finished" and o.summary["attempts"] == 2
    row = ResultsStore(out).read_run(run_id)
    assert row["attempts"] == 2 and row["steps_done"] == 60
    _same(_metrics(whole, run_id), _metrics(out, run_id))
    _same(_diagnostics(whole, run_id), _diagnostics(out, run_id))


def test_interrupt_mid_epoch_keeps_epoch_state_of_the_method(tmp_path, uninterrupted):
    """DWA accumulates the epoch's losses inside its state: an interrupt after the second
    step checkpoint of epoch 1, then a resume, gives the uninterrupted numbers."""
    whole, ids = uninterrupted
    seen = []

    def stop(event):
        part = _partial(tmp_path, ids["dwa"])
        if part is not None and part["epoch"] == 1 and part["batch"] >= 8:
            seen.append(part["batch"])
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_experiment(_exp(tmp_path, "dwa"), on_event=stop)
    assert seen and ResultsStore(tmp_path).read_run(ids["dwa"])["status"] == "interrupted"
    [o] = run_experiment(_exp(tmp_path, "dwa"))
    assert o.status == "finished" and o.summary["attempts"] == 2
    _same(_metrics(whole, ids["dwa"]), _metrics(tmp_path, ids["dwa"]))
    exp = _exp(tmp_path, "dwa")
    exp.rerun = True  # a clean start: the count starts again
    [o] = run_experiment(exp)
    assert o.summary["attempts"] == 1 == ResultsStore(tmp_path).read_run(ids["dwa"])["attempts"]


def test_cadence_is_validated_and_not_part_of_the_run_id():
    base = RunConfig(benchmark="multi_digits", method="ew", seed=0, train=TrainConfig(lr=1e-3))
    other = RunConfig(benchmark="multi_digits", method="ew", seed=0,
                      train=TrainConfig(lr=1e-3, checkpoint_every_s=5.0, checkpoint_every_steps=3))
    assert other.run_id == base.run_id
    from orchestrator.run.plan import check_train

    for key, bad in (("checkpoint_every_s", -1.0), ("checkpoint_every_steps", -2)):
        with pytest.raises(ConfigError, match=f"train.{key} must be"):
            check_train(TrainConfig(**{key: bad}))


def test_cadence_by_steps_and_by_time():
    now = [0.0]
    c = CheckpointCadence(TrainConfig(checkpoint_every_s=10.0, checkpoint_every_steps=0),
                          clock=lambda: now[0])
    assert not c.due(1)
    now[0] = 10.0
    assert c.due(2)
    c.saved()
    assert not c.due(3)
    steps = CheckpointCadence(TrainConfig(checkpoint_every_s=0.0, checkpoint_every_steps=3))
    assert [s for s in range(1, 10) if steps.due(s)] == [3, 6, 9]


class _Indices(Dataset):
    """Item i is i, drawn with a torch random number (an augmentation's draw)."""

    def __len__(self) -> int:
        return 50

    def __getitem__(self, i: int):
        return torch.tensor([i, int(torch.randint(1 << 30, ()))])


def _loader(workers: int) -> EpochDataLoader:
    sampler = ShardedBatchSampler(50, 4, shuffle=True, seed=3)
    return EpochDataLoader(_Indices(), batch_sampler=sampler, num_workers=workers)


def test_sampler_order_is_independent_of_loader_workers_and_resume_skips_exactly():
    orders = []
    for workers in (0, 2):
        ld = _loader(workers)
        ld.set_epoch(1)
        orders.append(torch.cat([b[:, 0] for b in ld]).tolist())
    assert orders[0] == orders[1] and sorted(orders[0]) == list(range(50))
    assert orders[0] != list(range(50))  # shuffled
    # the batches after a resume at batch 5 are the uninterrupted epoch's, worker draws too
    ld = _loader(2)
    ld.set_epoch(1)
    torch.manual_seed(7)
    epoch_rng = rng_state()
    whole = list(ld)
    after = rng_state()
    ld.set_epoch(1)
    torch.manual_seed(99)  # whatever the RNG is when the resumed run starts
    tail = list(resume_batches(ld, 5, epoch_rng, after))
    assert all(torch.equal(a, b) for a, b in zip(whole[5:], tail, strict=True))
    assert torch.equal(torch.get_rng_state(), after["torch"])


def test_rl_loop_checkpoints_at_the_steps_cadence_on_episode_boundaries(tmp_path):
    """The RL trainer takes ``train.checkpoint_every_steps`` too (its own
    ``checkpoint_every`` otherwise), at the next episode boundary (horizon 10)."""
    from orchestrator.run.execute import train_run
    from orchestrator.trainers.base import RunContext

    saved: dict[int, list[int]] = {}
    for every in (0, 15):
        steps = saved.setdefault(every, [])

        class Counting(RunContext):
            def save_checkpoint(self, state, steps=steps):
                steps.append(state["loop"]["step"])
                super().save_checkpoint(state)

        cfg = RunConfig(benchmark="mt1", method="ew", seed=0, bench_options={"horizon": 10},
                        train=TrainConfig(steps=40, batch_size=32, lr=1e-3, eval_every=40,
                                          checkpoint_every_steps=every),
                        trainer_options={"hidden": 16, "layers": 2, "warmup_steps": 10,
                                         "buffer_size": 400},
                        out=str(tmp_path / str(every)))
        assert train_run(cfg, Counting(run_id=cfg.run_id, out=tmp_path / str(every)))[
            "status"] == "finished"
    assert saved == {0: [40], 15: [20, 30, 40]}
