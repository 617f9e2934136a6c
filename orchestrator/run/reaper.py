"""Stop the local Ray that a driver started when the driver dies without stopping it.

A driver that exits through any path it sees (normal end, an exception, SIGINT, SIGTERM)
stops its local Ray with ``ray.shutdown()``. A driver that is SIGKILLed (or OOM-killed)
cannot: Ray's GCS and raylet then exit on their own, but the raylet's agents
(``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) are reparented to init and live on
(seen with Ray 2.60: still there minutes later). So when mtlx starts a local Ray it also
starts this small watcher, in its own session so that signals to the driver's process group
do not reach it: every second it records the driver's Ray descendants (pid and start time),
and once the driver is gone it sends SIGTERM to those still alive, then SIGKILL to those
that ignore it. The start time guards against a recycled pid; only processes whose name or
command line is Ray's are recorded, so nothing else the driver started is touched.

    python -m orchestrator.run.reaper DRIVER_PID
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Callable

import psutil

#: seconds between snapshots, and the grace between SIGTERM and SIGKILL
POLL_S, GRACE_S = 1.0, 3.0


def _is_ray(p: psutil.Process) -> bool:
    try:
        text = " ".join([p.name(), *p.cmdline()])
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return "ray::" in text or "/ray/" in text or "raylet" in text or "gcs_server" in text


def ray_descendants(pid: int) -> dict[int, float]:
    """{pid: start time} of the Ray processes below ``pid`` (empty if it is gone)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return {}
    found = {}
    for c in children:
        try:
            if _is_ray(c):
                found[c.pid] = c.create_time()
        except psutil.NoSuchProcess:
            continue
    return found


def _alive(known: dict[int, float]) -> list[psutil.Process]:
    procs = []
    for pid, started in known.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == started and p.status() != psutil.STATUS_ZOMBIE:
                procs.append(p)
        except psutil.NoSuchProcess:
            continue
    return procs


def reap(known: dict[int, float]) -> list[int]:
    """SIGTERM the recorded processes still alive, SIGKILL those left after the grace;
    returns the pids signalled."""
    procs = _alive(known)
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, left = psutil.wait_procs(procs, timeout=GRACE_S)
    for p in left:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    return [p.pid for p in procs]


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def watch(driver: int, ready: Callable[[], None] = lambda: None) -> None:
    """Record ``driver``'s Ray descendants until it is gone, then reap them; ``ready`` is
    called after the first record."""
    known = ray_descendants(driver)
    ready()
    while _running(driver):
        time.sleep(POLL_S)
        known.update(ray_descendants(driver))
    reap(known)


def start_reaper(driver: int | None = None, timeout_s: float = 30.0) -> subprocess.Popen:
    """Start the watcher of ``driver`` (default: this process) in its own session; returns
    once it has recorded the Ray processes up now (so a driver killed right after
    ``ray.init`` is covered too), or after ``timeout_s`` on a very slow machine."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.run.reaper", str(driver or os.getpid())],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True,
    )
    assert proc.stdout is not None
    if select.select([proc.stdout], [], [], timeout_s)[0]:
        proc.stdout.readline()
    proc.stdout.close()
    return proc


def _say_ready() -> None:
    try:
        print("ready", flush=True)
        os.close(sys.stdout.fileno())  # nothing more is written
    except OSError:  # the driver stopped waiting (or died): watch all the same
        pass


if __name__ == "__main__":
    watch(int(sys.argv[1]), _say_ready)
