"""An autoscaling Ray cluster on this machine that starts with no worker node: a run that
needs a worker node's CPU waits ("waiting for resources"), the autoscaler adds the node,
the run finishes.

Run as ``python -m tests.autoscaling_scenario OUT`` (tests/test_cluster_multinode.py does, in
its own process). ``ray.cluster_utils.AutoscalingCluster`` cannot be used here: its
``start()`` and ``shutdown()`` call ``ray stop --force``, which kills every Ray on the
machine, and it reads a ``fake_multi_node/example.yaml`` that this Ray wheel does not ship.
So this starts the same thing itself (:func:`start_head`): ``ray start --head --block`` with
``RAY_FAKE_CLUSTER=1`` and ``--autoscaling-config`` naming the repository's
``cluster-local.yaml`` (Ray's ``fake_multinode`` provider), in a private temp dir, on free
ports, in its own process group, then runs the README's ``mtlx run`` command against it. Its autoscaler (the monitor
process) starts worker raylets as its own children, so killing that process group stops
every process of this cluster and nothing else (:func:`stop_head` checks that none is left).

Writes ``OUT/autoscaling.json``: the progress lines, the run's status, where it ran, the
nodes before and after, and how long the run waited.
"""

from __future__ import annotations

import contextlib
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


REPO = Path(__file__).resolve().parents[1]
#: the local autoscaling config the README's "Try the cluster path on your laptop" starts
LOCAL_CONFIG = REPO / "cluster-local.yaml"
#: the README's `mtlx run` command (smaller data; the address is this cluster's)
COMMAND = ["run", "--benchmark", "multi_digits", "--methods", "ew", "--seeds", "0",
           "--epochs", "1", "--workers", "1", "--no-report", "--resource-timeout", "300",
           *[f"bench_options.{k}={v}" for k, v in SMALL.items()]]


def fake_config(gcs_address: str) -> dict[str, Any]:
    """``cluster-local.yaml`` with the head's GCS address (a private port here)."""
    config = yaml.safe_load(LOCAL_CONFIG.read_text())
    config["provider"]["gcs_address"] = gcs_address
    return config


def start_head(tmp: Path) -> tuple[subprocess.Popen, str]:
    """``ray start --head --block`` of a fake autoscaling cluster (see the module docstring);
    (the process, the GCS address). Its autoscaler checks for demand every second."""
    from orchestrator.run.ray_compat import node_ip_address

    port, ip = free_port(), node_ip_address()  # the address worker raylets use too
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

    from orchestrator import cli
    from orchestrator.run.ray_compat import autoscaler_max_resources, max_resources_of_config

    deadline = time.monotonic() + 60
    while autoscaler_max_resources() is None and time.monotonic() < deadline:
        time.sleep(0.5)  # the autoscaler publishes its node types once it has started
    nodes_before = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    stream = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(stream):  # the progress lines
        code = cli.main([*COMMAND, "--out", str(out / "results"), "--ray-address", address])
    wall = time.perf_counter() - t0
    from orchestrator.results import read_table

    [row] = read_table(out / "results", "runs").to_dict("records")
    return {"code": code, "status": row["status"], "error": row["error"], "wall_s": wall,
            "lines": stream.getvalue(), "config_maximum": max_resources_of_config(fake_config("")),
            "maximum": autoscaler_max_resources(), "nodes_before": nodes_before,
            "nodes_after": [n["NodeID"] for n in ray.nodes() if n["Alive"]],
            "hostname": row.get("hostname"), "started_at": row.get("started_at")}


def main(out: Path) -> None:
    for key, value in TEST_ENV.items():
        os.environ.setdefault(key, value)
    os.environ.pop("RAY_ADDRESS", None)
    os.environ["RAY_ENABLE_AUTO_CONNECT"] = "0"  # a late call after a failure: no local Ray
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
