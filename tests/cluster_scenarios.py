"""Multi-node scenarios on a real Ray cluster of several raylets on this machine.

Run as ``python -m tests.cluster_scenarios OUT`` (tests/test_cluster_multinode.py does, in
its own process, so that this cluster never meets the test session's Ray). It starts a
``ray.cluster_utils.Cluster`` whose head has no CPU (so training must sit on worker nodes)
and two 1-CPU worker nodes, then:

``exact``        a W=2 run whose two Train workers are on two different nodes, and the
                 ``--workers 0`` run of the same config; where every other actor and task
                 of the W=2 command ran (the progress sink, the fit task, Train's
                 controller: pinned to the driver's node, the head);
``node_loss``    the same W=2 run again (another results directory); a while after its first
                 checkpoint the node hosting one Train worker is killed (not drained) and a
                 fresh node added. ``exact``'s W=2 run is its uninterrupted twin;
``node_loss_steps``  the same with a checkpoint every 2 steps (``train.checkpoint_every_steps``;
                 not part of the run id), killed at the same time after its first
                 checkpoint: how much work the kill costs with step vs epoch checkpoints;
``idle_node_loss``  the W=2 run with a third worker node that hosts nothing; that node is
                 killed mid-run: the command must not notice (one attempt);
``task_loss``    a ``--workers 1`` run (a Ray task; the same run id as the W=0 run), the
                 node running it killed: Ray retries the task, which resumes;
``tune_loss``    a 2-trial ``mtlx tune`` search run twice, the second time with the node of
                 one trial killed after the first checkpoint: Tune's FailureConfig retries it.

Every kill is followed by ``add_node`` of a fresh 1-CPU node. ``lost_s`` is the work a kill
destroyed: the time between the newest checkpoint's write and the kill (the resumed run redoes
exactly that). It writes ``OUT/scenarios.json`` and leaves the results directories under OUT
for the test to compare. It stops only the cluster it started.

``python -m tests.cluster_scenarios OUT --measure`` instead measures what a preemption costs
with epoch vs step checkpoints on longer epochs (:func:`_measure`; ``OUT/measure.json``).
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.run.ray_compat import TEST_ENV

SMALL = {"n_train": 200, "n_val": 40, "n_test": 40}  # 13 steps of 16 per epoch, the last of 8
EPOCHS = 6
NODE = {"num_cpus": 1, "resources": {"driver_slot": 2}}  # a worker node (Tune trials need a slot)


def _exp(workers: int, out: Path, epochs: int, address: str | None = None, **train):
    from orchestrator.config import experiment_from_dict

    return experiment_from_dict(dict(
        benchmark="multi_digits", methods=["pcgrad"], seeds=[0], workers=workers, out=str(out),
        bench_options=SMALL, train={"epochs": epochs, "batch_size": 16, **train},
        ray_address=address, max_failures=2,
    ))


def _state(kind: str, **filters: str) -> list[Any]:
    """This cluster's actors or tasks (alive or dead) matching ``filters``."""
    import ray
    from ray.util.state import list_actors, list_tasks

    address = ray.get_runtime_context().gcs_address  # this cluster, not another Ray here
    lister = list_actors if kind == "actors" else list_tasks
    return lister(address=address, filters=[(k, "=", v) for k, v in filters.items()],
                  detail=True, limit=10000, raise_on_missing_output=False)


def _train_workers() -> list[dict[str, Any]]:
    """Every Ray Train worker actor this cluster ever started (alive or dead)."""
    return [{"id": a.actor_id, "node_id": a.node_id, "state": a.state}
            for a in _state("actors", class_name="RayTrainWorker")]


def _started_since(before: set[str]) -> list[dict[str, Any]]:
    """The Train workers started after ``before`` (ids; the State API keeps no order)."""
    return [w for w in _train_workers() if w["id"] not in before]


def _attempts(out: Path) -> dict[str, int]:
    from orchestrator.results import read_table

    runs = read_table(out, "runs")
    return {r: int(a) for r, a in zip(runs.run_id, runs.attempts)}


def _newest_checkpoint(out: Path) -> float | None:
    found = [p.stat().st_mtime for p in (out / "checkpoints").glob("*/state.pt")]
    return max(found) if found else None


def _lose_node(cluster: Any, out: Path, start: Callable[[], Any],
               victim: Callable[[], str | list[str] | None], delay: float = 0.0,
               replace: bool = True) -> dict[str, Any]:
    """Run ``start()`` in a thread; ``delay`` s after the first checkpoint under ``out``
    kill the node(s) ``victim()`` names (and add as many fresh ones); what happened. The
    victim is chosen while the run runs (``victim()`` returns None until it can tell), not
    after the checkpoint: a State API query can take longer than the rest of a small run."""
    done: dict[str, Any] = {}

    def target() -> None:
        try:
            done["o"] = start()
        except BaseException as e:  # the command itself failed: what the test must not see
            done["error"] = f"{type(e).__name__}: {e}"

    t0 = time.perf_counter()
    thread = threading.Thread(target=target)
    thread.start()
    node_id = None
    while thread.is_alive() and (node_id is None or _newest_checkpoint(out) is None):
        node_id = node_id or victim()
        time.sleep(0.02)
    if node_id is None:  # over before it could be told where it ran: nothing to kill
        thread.join()
        return {"command_error": done.get("error"), "outcomes": done.get("o"),
                "finished_before_kill": True}
    time.sleep(delay)
    ids = [node_id] if isinstance(node_id, str) else list(node_id)
    nodes = [n for n in cluster.worker_nodes if n.node_id in ids]
    before_kill = not thread.is_alive()
    newest = _newest_checkpoint(out)
    lost = time.time() - newest if newest is not None else None
    t_kill = time.perf_counter()
    for node in nodes:
        cluster.remove_node(node, allow_graceful=False)
    for _ in nodes if replace else ():
        cluster.add_node(**NODE)
    thread.join()
    t_end = time.perf_counter()
    return {"command_error": done.get("error"), "outcomes": done.get("o"),
            "killed_nodes": ids, "finished_before_kill": before_kill, "lost_s": lost,
            "kill_after_s": t_kill - t0, "finish_after_kill_s": t_end - t_kill}


def _runs_summary(res: dict[str, Any], out: Path) -> dict[str, Any]:
    outcomes = res.pop("outcomes") or []
    return {**res, "status": [o.status for o in outcomes], "errors": [o.error for o in outcomes],
            "run_ids": [o.run_id for o in outcomes], "attempts": _attempts(out)}


def _exact(out: Path, address: str, head: str) -> dict[str, Any]:
    from orchestrator.run.launch import run_experiment

    t0 = time.perf_counter()
    two = run_experiment(_exp(2, out, EPOCHS, address))
    t_fit = time.perf_counter() - t0
    nodes = sorted({w["node_id"] for w in _train_workers()})
    helpers = {a.class_name: a.node_id for a in _state("actors")
               if a.class_name != "RayTrainWorker"}
    helpers.update({f"task:{t.name}": t.node_id for t in _state("tasks", name="_fit_entry")})
    zero = run_experiment(_exp(0, out, EPOCHS))
    return {"status": [o.status for o in two + zero], "errors": [o.error for o in two + zero],
            "worker_nodes": nodes, "fit_s": t_fit, "helpers": helpers,
            "helpers_off_head": sorted(k for k, v in helpers.items() if v != head),
            "run_ids": {"w2": two[0].run_id, "w0": zero[0].run_id}}


def _train_worker_node(before: set[str]) -> Callable[[], str | None]:
    def victim() -> str | None:
        return next((w["node_id"] for w in _started_since(before) if w["state"] == "ALIVE"),
                    None)
    return victim


def _node_loss(out: Path, cluster: Any, address: str, delay: float, **train) -> dict[str, Any]:
    from orchestrator.run.launch import run_experiment

    before = {w["id"] for w in _train_workers()}
    res = _lose_node(cluster, out, lambda: run_experiment(_exp(2, out, EPOCHS, address, **train)),
                     _train_worker_node(before), delay)
    res["workers_started"] = len(_started_since(before))
    return _runs_summary(res, out)


def _idle_node_loss(out: Path, cluster: Any, address: str) -> dict[str, Any]:
    from orchestrator.run.launch import run_experiment

    cluster.add_node(**NODE)
    cluster.wait_for_nodes()
    before = {w["id"] for w in _train_workers()}

    def victim() -> str | None:
        busy = {w["node_id"] for w in _started_since(before) if w["state"] == "ALIVE"}
        if len(busy) < 2:  # the worker group is not up yet
            return None
        return next(n.node_id for n in cluster.worker_nodes if n.node_id not in busy)

    res = _lose_node(cluster, out, lambda: run_experiment(_exp(2, out, EPOCHS, address)),
                     victim, replace=False)
    res["workers_started"] = len(_started_since(before))
    return _runs_summary(res, out)


def _task_loss(out: Path, cluster: Any, address: str) -> dict[str, Any]:
    """A ``--workers 1`` run whose node dies. This run is a few seconds long, less than a
    State API query can take on a loaded machine (the query that names the task's node once
    answered after the run's last checkpoint, so the kill came too late), so every worker
    node is killed right after the first checkpoint — the task's node is one of them — and
    as many fresh ones are added."""
    from orchestrator.run.launch import run_experiment

    res = _lose_node(cluster, out, lambda: run_experiment(_exp(1, out, EPOCHS, address)),
                     lambda: [n.node_id for n in cluster.worker_nodes])
    return _runs_summary(res, out)


def _search(out: Path, address: str):
    from orchestrator.tune import build_search, run_search

    # trials of ~250 steps: long enough to find where one runs before it ends
    search = build_search(dict(
        benchmark="multi_digits", methods=["cagrad"], out=str(out),
        bench_options={**SMALL, "n_train": 1000},
        train={"epochs": 4, "batch_size": 16}, ray_address=address, max_failures=2,
        tune={"trials": 2, "scheduler": "none", "max_concurrent": 2}))
    return run_search(search, ray_address=address)


def _tune_loss(out: Path, cluster: Any, address: str, head: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    whole = _search(out / "whole", address)
    t_whole = time.perf_counter() - t0

    def victim() -> str | None:  # a trial's actor: the only actors off the head
        return next((a.node_id for a in _state("actors", state="ALIVE")
                     if a.node_id != head), None)

    res = _lose_node(cluster, out / "lost", lambda: _search(out / "lost", address), victim)
    lost = res.pop("outcomes")
    return {**res, "search_s": t_whole, "attempts": _attempts(out / "lost"),
            "whole_attempts": _attempts(out / "whole"),
            "trials": [None if lost is None else len(lost.trials), len(whole.trials)]}


#: ``--measure``: epochs long enough that the work a kill destroys is worth measuring
MEASURE = {"n_train": 8000, "n_val": 40, "n_test": 40}  # 500 steps of 16 per epoch


def _measure(out: Path, cluster: Any, address: str) -> dict[str, Any]:
    """The cost of a preemption with epoch vs step checkpoints (every 25 steps): an
    uninterrupted W=2 run of 3 long epochs, then the same run killed 0.6 epochs after its
    first epoch ended (the node of a Train worker), with each cadence."""
    from orchestrator.results import ResultsStore, read_table
    from orchestrator.run.launch import run_experiment

    def exp(where: Path, every: int):
        e = _exp(2, where, 3, address, checkpoint_every_steps=every)
        e.bench_options = dict(MEASURE)
        return e

    t0 = time.perf_counter()
    [whole] = run_experiment(exp(out / "whole", 0))
    result: dict[str, Any] = {"whole_s": time.perf_counter() - t0, "status": [whole.status]}
    m = read_table(out / "whole", "metrics")
    epoch_s = float(m[m.metric == "epoch_time_s"].value.median())
    result["epoch_s"] = epoch_s
    for name, every in (("epoch_checkpoints", 0), ("step_checkpoints", 25)):
        where = out / name
        store = ResultsStore(where)
        before = {w["id"] for w in _train_workers()}
        done: dict[str, Any] = {}
        thread = threading.Thread(target=lambda w=where, k=every, d=done: d.update(
            o=run_experiment(exp(w, k))))
        t_start = time.perf_counter()
        thread.start()
        while thread.is_alive() and ((store.read_run(whole.run_id) or {}).get("epochs_done")
                                     or 0) < 1:
            time.sleep(0.05)
        time.sleep(0.6 * epoch_s)
        if not thread.is_alive():
            result[name] = {"finished_before_kill": True}
            continue
        victim = _train_worker_node(before)()
        lost = time.time() - (_newest_checkpoint(where) or math.nan)
        t_kill = time.perf_counter()
        cluster.remove_node(next(n for n in cluster.worker_nodes if n.node_id == victim),
                            allow_graceful=False)
        cluster.add_node(**NODE)
        thread.join()
        [o] = done["o"]
        result[name] = {"status": o.status, "attempts": _attempts(where), "lost_s": lost,
                        "kill_after_s": t_kill - t_start,
                        "finish_after_kill_s": time.perf_counter() - t_kill,
                        "wall_s": time.perf_counter() - t_start}
    return result


def _forget_address(address: str) -> None:
    """Remove the address file ``Cluster`` writes (``/tmp/ray/ray_current_cluster``, "for
    convenience in unit testing") if it names this cluster: otherwise every ``ray.init()``
    on this machine without an address (another test session's) joins this cluster."""
    from orchestrator.run.ray_compat import ray_address_file

    path = ray_address_file()
    try:
        if path.read_text().strip() == address:
            path.unlink()
    except OSError:
        pass


def main(out: Path, measure: bool = False) -> None:
    for key, value in TEST_ENV.items():
        os.environ.setdefault(key, value)
    os.environ.pop("RAY_ADDRESS", None)
    os.environ["RAY_ENABLE_AUTO_CONNECT"] = "0"  # a late call after a failure: no local Ray
    import ray
    from ray.cluster_utils import Cluster

    # a free dashboard port: the State API (and Train's placement-group cleaner) needs the
    # dashboard, and another Ray on this machine may hold the default 8265
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": True, "dashboard_port": port})
    _forget_address(cluster.address)
    try:
        for _ in range(2):
            cluster.add_node(**NODE)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        head = ray.get_runtime_context().get_node_id()
        a = cluster.address
        if measure:
            (out / "measure.json").write_text(json.dumps(_measure(out, cluster, a), indent=1))
            return
        result: dict[str, Any] = {"head_node": head, "exact": _exact(out / "exact", a, head)}
        from orchestrator.results import read_table

        # kill mid-epoch: an epoch and a half after the first checkpoint

        m = read_table(out / "exact", "metrics")
        epoch_s = float(m[m.metric == "epoch_time_s"].value.median())
        delay = 1.5 * epoch_s
        result["epoch_s"] = epoch_s
        result["node_loss"] = _node_loss(out / "node_loss", cluster, a, delay)
        result["node_loss_steps"] = _node_loss(out / "node_loss_steps", cluster, a, delay,
                                               checkpoint_every_steps=2)
        result["idle_node_loss"] = _idle_node_loss(out / "idle_node_loss", cluster, a)
        result["task_loss"] = _task_loss(out / "task_loss", cluster, a)
        result["tune_loss"] = _tune_loss(out / "tune", cluster, a, head)
        (out / "scenarios.json").write_text(json.dumps(result, indent=1))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), measure="--measure" in sys.argv[2:])
