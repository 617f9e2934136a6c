"""An autoscaling Ray cluster on this machine that starts with no worker node: a run that
needs a worker node's CPU waits ("waiting for resources"), the autoscaler adds the node,
the run finishes.

Run as ``python -m tests.autoscaling_scenario OUT`` (tests/test_cluster_multinode.py does, in
its own process). ``ray.cluster_utils.AutoscalingCluster`` cannot be used here: its
``start()`` and ``shutdown()`` call ``ray stop --force``, which kills every Ray on the
machine, and it reads a ``fake_multi_node/example.yaml`` that this Ray wheel does not ship.
So this starts the same thing itself (:func:`start_head`): ``ray start --head --block`` with
``RAY_FAKE_CLUSTER=1`` and ``--autoscaling-config`` naming Ray's ``fake_multinode`` provider,
in a private temp dir, on free ports, in its own process group. Its autoscaler (the monitor
process) starts worker raylets as its own children, so killing that process group stops
every process of this cluster and nothing else (:func:`stop_head` checks that none is left).

Writes ``OUT/autoscaling.json``: the progress lines, the run's status, where it ran, the
nodes before and after, and how long the run waited.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from orchestrator.run.ray_compat import TEST_ENV

SMALL = {"n_train": 64, "n_val": 16, "n_test": 16}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def fake_config(gcs_address: str, worker_cpus: int = 1, max_workers: int = 1) -> dict[str, Any]:
    """A ``fake_multinode`` autoscaling config: a head without CPUs, one worker type."""
    return {
        "cluster_name": "mtlx-fake",
        "max_workers": max_workers,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 1,
        # the fake provider's nodes are known by node id, not IP; no SSH node updaters
        "provider": {"type": "fake_multinode", "gcs_address": gcs_address,
                     "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True},
        "auth": {"ssh_user": "ubuntu"},
        "head_node_type": "ray.head.default",
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "cpu_worker": {"resources": {"CPU": worker_cpus}, "node_config": {},
                           "min_workers": 0, "max_workers": max_workers},
        },
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }  # fmt: skip


def start_head(tmp: Path) -> tuple[subprocess.Popen, str]:
    """``ray start --head --block`` of a fake autoscaling cluster (see the module docstring);
    (the process, the GCS address). Its autoscaler checks for demand every second."""
    from ray._private.services import get_node_ip_address

    port, ip = free_port(), get_node_ip_address()  # the address worker raylets use too
    address = f"{ip}:{port}"
    config = tmp / "autoscaling.yaml"
    config.write_text(yaml.safe_dump(fake_config(address)))
    # `ray start` turns token authentication on; a private cluster on one machine opts out
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
           "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
           f"--node-ip-address={ip}", f"--port={port}", f"--temp-dir={tmp / 'ray'}",
           f"--autoscaling-config={config}", "--num-cpus=0", "--include-dashboard=true",
           f"--dashboard-port={free_port()}", f"--ray-client-server-port={free_port()}",
           f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats"]
    log = open(tmp / "head.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    return proc, address


def own_processes(tmp: Path) -> list[int]:
    """Pids of the processes whose command line names this cluster's temp dir."""
    import psutil

    mine = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        if str(tmp) in " ".join(p.info["cmdline"] or []):
            mine.append(p.info["pid"])
    return mine


def stop_head(proc: subprocess.Popen, tmp: Path) -> list[int]:
    """Stop this cluster only: its process group (SIGTERM, then SIGKILL); returns the pids
    of processes of this cluster that were still alive after that (killed one by one)."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    time.sleep(1)
    left = own_processes(tmp)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def _wait_for_gcs(address: str, proc: subprocess.Popen, tmp: Path, timeout: float = 120) -> None:
    host, port = address.split(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited: {(tmp / 'head.log').read_text()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex((host, int(port))) == 0:
                return
        time.sleep(0.5)
    raise RuntimeError("the head's GCS never came up")


def scenario(out: Path, address: str) -> dict[str, Any]:
    import ray

    from orchestrator.config import experiment_from_dict
    from orchestrator.run.launch import run_experiment
    from orchestrator.run.ray_compat import autoscaler_max_resources

    deadline = time.monotonic() + 60
    while autoscaler_max_resources() is None and time.monotonic() < deadline:
        time.sleep(0.5)  # the autoscaler publishes its node types once it has started
    nodes_before = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    exp = experiment_from_dict(dict(
        benchmark="multi_digits", methods=["ew"], seeds=[0], workers=1, out=str(out / "results"),
        bench_options=SMALL, train={"epochs": 1, "batch_size": 16}, ray_address=address,
        resource_timeout=300))
    stream = io.StringIO()
    t0 = time.perf_counter()
    [o] = run_experiment(exp, stream=stream)
    wall = time.perf_counter() - t0
    from orchestrator.results import ResultsStore

    row = ResultsStore(out / "results").read_run(o.run_id) or {}
    return {"status": o.status, "error": o.error, "wall_s": wall, "lines": stream.getvalue(),
            "maximum": autoscaler_max_resources(), "nodes_before": nodes_before,
            "nodes_after": [n["NodeID"] for n in ray.nodes() if n["Alive"]],
            "hostname": row.get("hostname"), "started_at": row.get("started_at")}


def main(out: Path) -> None:
    for key, value in TEST_ENV.items():
        os.environ.setdefault(key, value)
    os.environ.pop("RAY_ADDRESS", None)
    tmp = Path(tempfile.mkdtemp(prefix="mtlxas_", dir="/tmp"))  # short: socket paths
    proc, address = start_head(tmp)
    result: dict[str, Any] = {"address": address}
    try:
        _wait_for_gcs(address, proc, tmp)
        import ray

        ray.init(address=address, log_to_driver=False)
        result.update(scenario(out, address))
    finally:
        import ray

        ray.shutdown()
        result["left_after_stop"] = stop_head(proc, tmp)
        (out / "autoscaling.json").write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
