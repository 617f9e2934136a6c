"""Multi-node scenarios on a real Ray cluster of several raylets on this machine.

Run as ``python -m tests.cluster_scenarios OUT`` (tests/test_cluster_multinode.py does, in
its own process, so that this cluster never meets the test session's Ray). It starts a
``ray.cluster_utils.Cluster`` whose head has no CPU (so Train workers must sit on worker
nodes) and two 1-CPU worker nodes, then:

``exact``      a W=2 run whose two Train workers are on two different nodes, and the
               ``--workers 0`` run of the same config;
``node_loss``  the same W=2 run again (another results directory); once its first
               checkpoint exists, the node hosting one Train worker is killed (not drained)
               and a fresh node added. ``exact``'s W=2 run is its uninterrupted twin.

It writes ``OUT/scenarios.json`` (node ids, timings, how many Train workers were started)
and leaves the results directories under OUT for the test to compare. It stops only the
cluster it started.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from orchestrator.run.ray_compat import TEST_ENV

SMALL = {"n_train": 200, "n_val": 40, "n_test": 40}  # 13 steps of 16 per epoch, the last of 8
EPOCHS = 6


def _exp(workers: int, out: Path, epochs: int, address: str | None = None):
    from orchestrator.config import experiment_from_dict

    return experiment_from_dict(dict(
        benchmark="multi_digits", methods=["pcgrad"], seeds=[0], workers=workers, out=str(out),
        bench_options=SMALL, train={"epochs": epochs, "batch_size": 16}, ray_address=address,
        max_failures=2,
    ))


def _train_workers() -> list[dict[str, Any]]:
    """Every Ray Train worker actor this cluster ever started (alive or dead)."""
    import ray
    from ray.util.state import list_actors

    address = ray.get_runtime_context().gcs_address  # this cluster, not another Ray here
    actors = list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker")],
                         detail=True, limit=1000, raise_on_missing_output=False)
    return [{"node_id": a.node_id, "state": a.state} for a in actors]


def _exact(out: Path, address: str) -> dict[str, Any]:
    from orchestrator.run.launch import run_experiment

    t0 = time.perf_counter()
    two = run_experiment(_exp(2, out, EPOCHS, address))
    t_fit = time.perf_counter() - t0
    nodes = sorted({w["node_id"] for w in _train_workers()})
    zero = run_experiment(_exp(0, out, EPOCHS))
    return {"status": [o.status for o in two + zero], "errors": [o.error for o in two + zero],
            "worker_nodes": nodes, "fit_s": t_fit,
            "run_ids": {"w2": two[0].run_id, "w0": zero[0].run_id}}


def _node_loss(out: Path, cluster: Any, address: str) -> dict[str, Any]:
    from orchestrator.run.launch import run_experiment

    before = len(_train_workers())
    done: dict[str, Any] = {}
    t0 = time.perf_counter()
    thread = threading.Thread(
        target=lambda: done.update(o=run_experiment(_exp(2, out, EPOCHS, address))))
    thread.start()
    ckpt = None
    while thread.is_alive() and ckpt is None:  # wait for the first checkpoint
        found = list((out / "checkpoints").glob("*/state.pt"))
        ckpt = found[0] if found else None
        time.sleep(0.05)
    import torch

    killed_at_epoch = torch.load(ckpt, weights_only=False)["epoch"] if ckpt else None
    alive = {w["node_id"] for w in _train_workers()[before:] if w["state"] == "ALIVE"}
    victim = next(n for n in cluster.worker_nodes if n.node_id in alive)
    t_kill = time.perf_counter()
    cluster.remove_node(victim, allow_graceful=False)
    cluster.add_node(num_cpus=1)
    thread.join()
    t_end = time.perf_counter()
    outcomes = done["o"]
    return {"status": [o.status for o in outcomes], "errors": [o.error for o in outcomes],
            "killed_node": victim.node_id, "checkpoint_epoch_at_kill": killed_at_epoch,
            "workers_started": len(_train_workers()) - before,
            "kill_after_s": t_kill - t0, "finish_after_kill_s": t_end - t_kill,
            "run_id": outcomes[0].run_id}


def main(out: Path) -> None:
    for key, value in TEST_ENV.items():
        os.environ.setdefault(key, value)
    os.environ.pop("RAY_ADDRESS", None)
    import ray
    from ray.cluster_utils import Cluster

    # a free dashboard port: the State API (and Train's placement-group cleaner) needs the
    # dashboard, and another Ray on this machine may hold the default 8265
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": True, "dashboard_port": port})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        head = ray.get_runtime_context().get_node_id()
        result = {"head_node": head, "exact": _exact(out / "exact", cluster.address)}
        result["node_loss"] = _node_loss(out / "node_loss", cluster, cluster.address)
        (out / "scenarios.json").write_text(json.dumps(result, indent=1))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
