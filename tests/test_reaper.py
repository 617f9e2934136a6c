"""A SIGKILLed driver leaves no Ray behind: the reaper started with its local Ray stops the
agents that Ray itself would leave running (ray::DashboardAgent, ray::RuntimeEnvAgent)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from orchestrator.run.reaper import ray_descendants

DRIVER = """
import sys, time
from orchestrator.run.launch import init_ray
assert init_ray(num_cpus=1, include_dashboard=False)
print("up", flush=True)
time.sleep(600)
"""


def _names(pids):
    out = {}
    for pid in pids:
        try:
            out[pid] = psutil.Process(pid).name()
        except psutil.NoSuchProcess:
            pass
    return out


def _alive(pids):
    left = []
    for pid, started in pids.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == started and p.status() != psutil.STATUS_ZOMBIE:
                left.append(pid)
        except psutil.NoSuchProcess:
            pass
    return left


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_sigkilled_driver_leaves_no_ray_processes(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), *sys.path])}
    env.pop("RAY_ADDRESS", None)
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], env=env, stdout=subprocess.PIPE,
                              text=True, cwd=tmp_path)
    try:
        assert driver.stdout.readline().strip() == "up"
        deadline, ray = time.time() + 60, {}
        while time.time() < deadline:  # the raylet starts its agents shortly after init
            ray = ray_descendants(driver.pid)
            if any("Agent" in n for n in _names(ray).values()):
                break
            time.sleep(0.5)
        names = _names(ray)
        assert any("raylet" in n for n in names.values()), names
        assert any("RuntimeEnvAgent" in n or "DashboardAgent" in n for n in names.values()), names
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    deadline = time.time() + 60
    while _alive(ray) and time.time() < deadline:
        time.sleep(0.5)
    assert _alive(ray) == [], _names(_alive(ray))
