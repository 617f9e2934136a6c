"""Cluster-grade scheduling: feasibility against what an autoscaling cluster can grow to, the
retry budget, and the multi-node scenarios of ``tests/cluster_scenarios.py`` on a real Ray
cluster of several raylets on this machine (run in its own process: it never meets the test
session's Ray; it stops only the cluster it started)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from orchestrator.config import ConfigError, experiment_from_dict
from orchestrator.results import read_table
from orchestrator.run import launch
from orchestrator.run.progress import ProgressBoard


def _exp(**kw):
    return experiment_from_dict(dict(benchmark="multi_digits", methods=["ew"], seeds=[0], **kw))


def test_feasibility_is_judged_against_the_autoscalers_maximum():
    gpu = _exp(workers=1, gpus_per_worker=1.0)
    up_now = {"CPU": 4.0}  # a head node; the GPU workers are min_workers: 0
    with pytest.raises(ConfigError, match="no autoscaler"):
        launch._capacity(gpu, up_now)
    assert launch._capacity(gpu, up_now, {"CPU": 36.0, "GPU": 4.0}) == 4
    with pytest.raises(ConfigError, match="maximum size"):
        launch._capacity(_exp(workers=2, gpus_per_worker=4.0), up_now, {"CPU": 36.0, "GPU": 4.0})
    assert launch._capacity(_exp(workers=2, max_concurrent=3), {"CPU": 16.0}) == 3


def test_waiting_runs_are_shown_and_refused_after_the_timeout():
    stream = io.StringIO()
    board = ProgressBoard(3, stream, tty=False)
    s = launch._Scaling(_exp(workers=1, gpus_per_worker=1.0), board, autoscaler=False,
                        timeout_s=None)
    s.update(3, 3)
    s.update(3, 3)  # shown once per change
    s.update(0, 3)
    assert stream.getvalue() == "waiting for resources: 3 runs pending (need 1 GPU each)\n"
    s = launch._Scaling(_exp(workers=2), board, autoscaler=False, timeout_s=0.0)
    with pytest.raises(ConfigError, match="waited more than 0 s"):
        s.update(1, 1)
        s.update(1, 1)


def test_retry_budget_is_above_zero_on_a_cluster_unless_asked_for_zero():
    assert launch.retry_budget(None, None, 1) == 0  # auto, this machine only
    assert launch.retry_budget(None, None, 3) == launch.CLUSTER_RETRIES > 0
    assert launch.retry_budget(None, "auto", 1) == launch.CLUSTER_RETRIES
    assert launch.retry_budget(0, "auto", 3) == 0  # a cluster user may ask for none
    assert launch.retry_budget(5, None, 3) == 5 and launch.retry_budget(-1, "auto", 1) == -1


def test_retry_and_timeout_flags_are_typed_checked_and_documented(capsys):
    from orchestrator import cli
    from orchestrator.run.plan import check_resources
    from orchestrator.tune.cli import add_parser as add_tune_parser

    for bad, match in (({"max_failures": -2}, "max_failures must be >= -1"),
                       ({"resource_timeout": -1.0}, "resource_timeout must be")):
        with pytest.raises(ConfigError, match=match):
            check_resources(_exp(**bad))
    args = cli._parser().parse_args(["run", "--max-failures", "0", "--resource-timeout",
                                          "30"])
    exp, _ = cli.build_experiment(args)
    assert exp.max_failures == 0 and exp.resource_timeout == 30.0
    assert _exp().max_failures is None and _exp().resource_timeout is None  # auto, wait
    with pytest.raises(SystemExit):
        cli._parser().parse_args(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"None = auto: {launch.CLUSTER_RETRIES} when connected to a cluster" in text
    assert "--resource-timeout SECONDS" in text
    import argparse

    tune = add_tune_parser(argparse.ArgumentParser().add_subparsers())
    assert "Tune retries of a failed trial" in tune.format_help()


def test_tune_resource_watch_refuses_a_search_whose_trials_never_start():
    from types import SimpleNamespace

    from orchestrator.tune.runner import make_resource_watch

    now = [0.0]
    watch = make_resource_watch(5.0)
    watch.clock = lambda: now[0]
    pending = [SimpleNamespace(status="PENDING")] * 2
    watch.on_step_begin(0, pending)
    now[0] = 4.0
    watch.on_step_begin(1, [*pending, SimpleNamespace(status="RUNNING")])  # progress: reset
    now[0] = 9.5
    watch.on_step_begin(2, pending)
    with pytest.raises(ConfigError, match="2 trial\\(s\\) waited more than 5 s"):
        now[0] = 15.0
        watch.on_step_begin(3, pending)


def _metrics(root: Path, run_id: str):
    m = read_table(root, "metrics")
    keys = ["split", "epoch", "task", "metric"]
    return m[(m.run_id == run_id) & (m.metric != "epoch_time_s")].set_index(keys).sort_index()


def _same_metrics(a, b, rtol: float, atol: float) -> None:
    assert list(a.index) == list(b.index) and len(a) > 0
    torch.testing.assert_close(torch.tensor(b.value.to_numpy()), torch.tensor(a.value.to_numpy()),
                               rtol=rtol, atol=atol)


def _run_scenario(module: str, out: Path, timeout: float) -> None:
    """``python -m module out`` in its own process, which starts and stops its own cluster
    (never the test session's Ray)."""
    pytest.importorskip("ray")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), *sys.path])}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", module, str(out)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.timeout(1500)
def test_multinode_cluster_exactness_and_node_loss(tmp_path):
    _run_scenario("tests.cluster_scenarios", tmp_path, timeout=1400)
    check_scenarios(tmp_path)


def check_scenarios(tmp_path: Path) -> None:
    """The assertions on what ``tests/cluster_scenarios.py`` left in ``tmp_path``."""
    res = json.loads((tmp_path / "scenarios.json").read_text())
    print(json.dumps(res, indent=1))
    # W=2 on two different worker nodes (the head has no CPU) == --workers 0
    ex = res["exact"]
    assert ex["status"] == ["finished", "finished"], ex["errors"]
    assert len(ex["worker_nodes"]) == 2 and res["head_node"] not in ex["worker_nodes"]
    runs = read_table(tmp_path / "exact", "runs").set_index("run_id")
    assert runs.loc[ex["run_ids"]["w2"], "steps_done"] == runs.loc[ex["run_ids"]["w0"], "steps_done"]
    zero, two = (_metrics(tmp_path / "exact", ex["run_ids"][k]) for k in ("w0", "w2"))
    acc = zero.index.get_level_values("metric") == "accuracy"
    _same_metrics(zero[acc], two[acc], 0, 0)  # the same predictions on val and test
    # losses agree up to the summation order of 2 ranks, amplified over 78 PCGrad steps
    # (≤ 1e-6 for the first 4 epochs, ~3e-4 after 6 when measured)
    _same_metrics(zero, two, 1e-3, 1e-3)
    # every helper of the command (progress sink, fit task, Train controller) on the head
    assert ex["helpers_off_head"] == [] and "ProgressSink" in ex["helpers"], ex["helpers"]
    w2, w0 = ex["run_ids"]["w2"], ex["run_ids"]["w0"]
    # a node hosting a Train worker killed mid-run, a fresh one added: epoch checkpoints,
    # then step checkpoints (every 2 steps; the same run id)
    for key in ("node_loss", "node_loss_steps"):
        nl = res[key]
        assert nl["command_error"] is None and not nl["finished_before_kill"], nl
        assert nl["status"] == ["finished"], nl["errors"]  # one run: the W=2 one
        assert nl["run_ids"] == [w2] and nl["attempts"] == {w2: 2}
        assert nl["workers_started"] >= 4  # a new worker group (or a new fit) after the kill
        # resumed from the checkpoint: exactly the uninterrupted W=2 run's numbers
        _same_metrics(two, _metrics(tmp_path / key, w2), 0, 0)
    # a node hosting nothing killed: the command does not notice
    idle = res["idle_node_loss"]
    assert idle["command_error"] is None and not idle["finished_before_kill"], idle
    assert idle["status"] == ["finished"] and idle["attempts"] == {w2: 1}, idle
    assert idle["workers_started"] == 2
    _same_metrics(two, _metrics(tmp_path / "idle_node_loss", w2), 0, 0)
    # --workers 1: Ray retries the task on the fresh node, it resumes to the W=0 numbers
    task = res["task_loss"]
    assert task["command_error"] is None and not task["finished_before_kill"], task
    assert task["status"] == ["finished"] and task["attempts"] == {w0: 2}, task
    _same_metrics(zero, _metrics(tmp_path / "task_loss", w0), 0, 0)
    # a 2-trial search: Tune retries the killed trial, which resumes to the same numbers
    tune = res["tune_loss"]
    assert tune["command_error"] is None and not tune["finished_before_kill"], tune
    assert tune["trials"] == [2, 2] and sorted(tune["attempts"].values()) == [1, 2], tune
    assert set(tune["attempts"]) == set(tune["whole_attempts"])
    for run_id in tune["attempts"]:
        _same_metrics(_metrics(tmp_path / "tune" / "whole", run_id),
                      _metrics(tmp_path / "tune" / "lost", run_id), 0, 0)


def test_max_resources_of_an_autoscaling_config():
    from orchestrator.run.ray_compat import max_resources_of_config
    from tests.autoscaling_scenario import fake_config

    assert max_resources_of_config(fake_config("x:1")) == {"CPU": 2.0}  # cluster-local.yaml
    config = {"head_node_type": "head", "max_workers": 4, "available_node_types": {
        "head": {"resources": {"CPU": 8, "driver_slot": 8}, "max_workers": 0},
        "gpu": {"resources": {"CPU": 4, "GPU": 1}, "min_workers": 0, "max_workers": 4}}}
    assert max_resources_of_config(config) == {"CPU": 24.0, "driver_slot": 8.0, "GPU": 4.0}
    del config["available_node_types"]["gpu"]["resources"]  # filled in by `ray up` only
    assert max_resources_of_config(config) is None


@pytest.mark.timeout(600)
def test_autoscaling_cluster_from_zero_workers_grows_for_a_waiting_run(tmp_path):
    """A fake autoscaling cluster (Ray's fake_multinode provider) started and stopped by
    tests/autoscaling_scenario.py itself, without `ray stop` (which would kill every Ray on
    the machine)."""
    _run_scenario("tests.autoscaling_scenario", tmp_path, timeout=500)
    res = json.loads((tmp_path / "autoscaling.json").read_text())
    print(json.dumps(res, indent=1))
    assert res["maximum"] == res["config_maximum"] == {"CPU": 2.0}  # the monitor's config
    assert len(res["nodes_before"]) == 1  # the head only, without CPUs
    assert res["code"] == 0 and res["status"] == "finished", res["error"]
    assert res["lines"].startswith("waiting for resources: 1 run pending (need 1 CPU each)\n")
    assert len(res["nodes_after"]) == 2  # the autoscaler added the worker node it ran on
    assert res["left_after_stop"] == []  # stopping its process group stopped all of it
