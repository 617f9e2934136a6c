"""Test-session setup: small thread count, deterministic torch, one Ray per session."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "2")
torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


#: Environment for every Ray test (research/ray.md §10(c)5): faster Train health checks and
#: finalisation, no preemption watcher, no state-actor reconciliation, a generous worker-group
#: start timeout on a loaded 2-core machine. Set before ``ray.init`` so Train actors inherit it.
RAY_TEST_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION": "0",
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "120",
}


@pytest.fixture(scope="session")
def ray_session():
    """Start Ray once for the whole test run (research/ray.md §10(c)): 2 CPUs, a
    ``driver_slot`` custom resource for Tune trial drivers, and the dashboard left on — Train
    V2's placement-group cleaner needs the State API it serves (gotcha G7), so do not pass
    ``include_dashboard=False``."""
    ray = pytest.importorskip("ray")
    for key, value in RAY_TEST_ENV.items():
        os.environ.setdefault(key, value)
    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=2, num_gpus=0, resources={"driver_slot": 4}, log_to_driver=False,
                 configure_logging=False)
        started = True
    yield ray
    if started:
        ray.shutdown()
