"""mtlx on a real Ray (one session for the test run): the default execution mode (one Ray
task per run) end to end, and Ray Train with 2 workers giving the same parameters as 1.

Slow on 2 cores (a Ray Train fit costs ~20-60 s here): kept to three runs of Ray work."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from orchestrator import cli
from orchestrator.config import experiment_from_dict
from orchestrator.results import METRIC_SCHEMA, RUN_SCHEMA, read_table
from orchestrator.run.launch import run_experiment

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SMALL = {"n_train": 256, "n_val": 128, "n_test": 128}


@pytest.mark.timeout(300)
def test_mtlx_run_on_ray_tasks_end_to_end(ray_session, tmp_path, capsys):
    code = cli.main(["run", "--benchmark", "multi_digits", "--methods", "ew,pcgrad", "--seeds",
                     "0", "--epochs", "1", "--workers", "1", "--out", str(tmp_path),
                     "train.max_steps_per_epoch=3",
                     *[f"bench_options.{k}={v}" for k, v in SMALL.items()]])
    assert code == 0
    out = capsys.readouterr().out
    assert "### multi_digits" in out and "left accuracy" in out
    metrics = pd.read_parquet(tmp_path / "metrics")
    runs = pd.read_parquet(tmp_path / "runs")
    assert list(metrics.columns) == METRIC_SCHEMA.names
    assert list(runs.columns) == RUN_SCHEMA.names
    assert set(runs.status) == {"finished"} and (runs.workers == 1).all()
    assert set(metrics.method) == {"ew", "pcgrad"}
    assert ((metrics.split == "reported") & (metrics.metric == "accuracy")).sum() == 4


@pytest.mark.timeout(300)
def test_failures_in_ray_tasks_are_recorded_and_others_continue(ray_session, tmp_path):
    base = dict(benchmark="_orch_toy", seeds=[0], workers=1, out=str(tmp_path),
                plugins=["tests.orchestrator_bench"], train={"epochs": 2})
    crash = run_experiment(experiment_from_dict(
        {**base, "methods": ["ew", "imtl_g"], "bench_options": {"raise_at_step": 3}}))
    assert [o.status for o in crash] == ["failed", "failed"]
    assert all("injected failure" in o.error for o in crash)
    nan = run_experiment(experiment_from_dict(
        {**base, "methods": ["pcgrad"], "bench_options": {"nan_at_step": 3}}))
    assert nan[0].status == "nonfinite" and "task 'b'" in nan[0].error
    runs = read_table(tmp_path, "runs").set_index("method")
    assert runs.status.to_dict() == {"ew": "failed", "imtl_g": "failed", "pcgrad": "nonfinite"}
    assert runs.loc["ew", "error"] == "RuntimeError: injected failure"


@pytest.mark.timeout(600)
def test_two_workers_equal_one_worker_on_the_same_global_batch(ray_session, tmp_path):
    """k = 3 steps of PCGrad (parameter level: the T×P Jacobian is all-reduced) and MGDA-UB
    (representation level: the T×T Gramian is all-reduced), global batch 64 = 2 × 32."""
    def exp(workers):
        return experiment_from_dict(dict(
            benchmark="multi_digits", methods=["pcgrad", "mgda_ub"], seeds=[0], workers=workers,
            out=str(tmp_path), bench_options=SMALL,
            train={"epochs": 1, "max_steps_per_epoch": 3, "batch_size": 64},
        ))

    one = run_experiment(exp(1))
    two = run_experiment(exp(2))
    assert [o.status for o in one + two] == ["finished"] * 4, [o.error for o in one + two]
    runs = read_table(tmp_path, "runs").set_index("run_id")
    assert (runs.loc[[o.run_id for o in two], "workers"] == 2).all()
    assert (runs.steps_done == 3).all()
    assert [o.run_id.split(".")[1] for o in one] == ["pcgrad", "mgda_ub"]
    for a, b in zip(one, two):
        assert a.run_id.split(".")[1] == b.run_id.split(".")[1]
        assert a.run_id != b.run_id  # the world size is part of the run's identity
        sa = torch.load(tmp_path / "checkpoints" / a.run_id / "state.pt", weights_only=False)
        sb = torch.load(tmp_path / "checkpoints" / b.run_id / "state.pt", weights_only=False)
        diff = max(float((sa["model"][k] - sb["model"][k]).abs().max()) for k in sa["model"])
        moved = max(float((sa["model"][k] - _init(k)).abs().max()) for k in sa["model"])
        print(f"{a.run_id}: max |θ(W=1) − θ(W=2)| = {diff:.3g}, max |θ − θ0| = {moved:.3g}")
        assert diff < 1e-5
        assert moved > 1e-3  # the comparison is not vacuous: the parameters did move
        ra, rb = a.summary["reported"], b.summary["reported"]
        for task in ra:
            assert abs(ra[task]["accuracy"] - rb[task]["accuracy"]) <= 1 / 128


def _init(key: str) -> torch.Tensor:
    """The initial parameters of every run (seed 0)."""
    import envs

    torch.manual_seed(0)
    model = envs.create("multi_digits", **SMALL).build_model()
    return model.state_dict()[key]
