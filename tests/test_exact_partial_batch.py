"""A W-worker run is the ``--workers 0`` run, last partial batch included.

The samplers split the final, incomplete global batch over the ranks (a rank without an
example gets a zero-weight pad batch) and the supervised trainer scales each rank's losses
by its share ``W·n_r/N``, so the engine's mean over ranks is the mean over the global batch
and the number of optimiser steps does not depend on W. The distributed check runs the
training function itself on 2 gloo processes spawned by the test (no Ray).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from envs import _sampling
from orchestrator.config import experiment_from_dict
from orchestrator.results import read_table
from orchestrator.run.launch import run_experiment
from orchestrator.run.plan import plan


@pytest.mark.parametrize("n,B,W", [(13, 3, 4), (97, 4, 2), (23, 3, 2), (24, 4, 3), (5, 2, 3)])
def test_every_rank_takes_the_same_steps_and_each_example_counts_once(n, B, W):
    single = list(_sampling.ShardedBatchSampler(n, B * W, shuffle=True, seed=3))
    ranks = [list(_sampling.ShardedBatchSampler(n, B, shuffle=True, seed=3, rank=r, world_size=W))
             for r in range(W)]
    assert all(len(r) == len(single) == -(-n // (B * W)) for r in ranks)
    for k, batch in enumerate(single):
        sizes = _sampling.shard_sizes(n, B, W, k)
        assert sum(sizes) == len(batch)
        assert all(len(r[k]) == max(s, 1) for r, s in zip(ranks, sizes))  # pads: one example
        assert sum((r[k][:s] for r, s in zip(ranks, sizes)), []) == batch
    assert len(_sampling.ShardedBatchSampler(n, B, rank=W - 1, world_size=W)) == len(single)


# n_train 97 with a global batch of 8: 12 full steps, then 1 example (shares [1, 0]: rank 1
# pads); the eval splits are small. Three engine paths: loss-level, param-level, rep-level.
SMALL = {"n_train": 97, "n_val": 40, "n_test": 40}
METHODS = ["ew", "pcgrad", "mgda_ub"]


def _exp(workers: int, out: str):
    return experiment_from_dict(dict(
        benchmark="multi_digits", methods=METHODS, seeds=[0], workers=workers, out=out,
        bench_options=SMALL, train={"epochs": 2, "batch_size": 8},
    ))


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    from orchestrator.run.execute import train_run
    from orchestrator.trainers.base import RunContext

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        todo, _ = plan(_exp(world, out))
        for cfg in todo:
            train_run(cfg, RunContext(run_id=cfg.run_id, out=Path(cfg.out), rank=rank, world_size=world,
                                      device=torch.device("cpu")))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(600)
def test_two_gloo_workers_give_the_single_process_run(tmp_path):
    import torch.multiprocessing as mp

    single = run_experiment(_exp(0, str(tmp_path)))
    assert [o.status for o in single] == ["finished"] * 3, [o.error for o in single]
    os.environ["PYTHONPATH"] = os.pathsep.join([os.getcwd(), *sys.path])
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    runs = read_table(tmp_path, "runs").set_index("run_id")
    assert len(runs) == 6 and set(runs.status) == {"finished"}
    two = {r.method: rid for rid, r in runs.iterrows() if r.workers == 2}
    metrics = read_table(tmp_path, "metrics")
    for o in single:
        method = o.run_id.split(".")[1]
        a, b = runs.loc[o.run_id], runs.loc[two[method]]
        assert a.steps_done == b.steps_done == 2 * 13  # the partial batch is a step in both
        sa = torch.load(tmp_path / "checkpoints" / o.run_id / "state.pt", weights_only=False)
        sb = torch.load(tmp_path / "checkpoints" / two[method] / "state.pt", weights_only=False)
        diff = max(float((sa["model"][k] - sb["model"][k]).abs().max()) for k in sa["model"])
        print(f"{method}: max |θ(W=0) − θ(W=2)| = {diff:.3g}")
        assert diff < 1e-5, method
        ma = metrics[metrics.run_id == o.run_id].set_index(["split", "epoch", "task", "metric"])
        mb = metrics[metrics.run_id == two[method]].set_index(["split", "epoch", "task", "metric"])
        keep = [i for i in ma.index if i[3] != "epoch_time_s"]
        assert sorted(keep) == sorted(i for i in mb.index if i[3] != "epoch_time_s")
        torch.testing.assert_close(torch.tensor(mb.loc[keep, "value"].to_numpy()),
                                   torch.tensor(ma.loc[keep, "value"].to_numpy()),
                                   rtol=1e-5, atol=1e-6, msg=method)
