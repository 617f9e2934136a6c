"""Test-session setup: small thread count, deterministic torch, one Ray per session."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "2")
torch.set_num_threads(2)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny convolutions (``pytestmark =
    pytest.mark.usefixtures("one_thread")``): OpenMP threads only add spin-wait overhead
    there on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def ray_session():
    """Start Ray once for the whole test run (docs/ray.md §4): 2 CPUs, a ``driver_slot``
    custom resource for Tune trial drivers, and the dashboard left on — Train V2's
    placement-group cleaner needs the State API it serves (docs/ray.md §1.7), so do not pass
    ``include_dashboard=False``."""
    ray = pytest.importorskip("ray")
    from orchestrator.run.ray_compat import TEST_ENV, check_version

    check_version()
    for key, value in TEST_ENV.items():
        os.environ.setdefault(key, value)
    started = False
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, num_gpus=0, resources={"driver_slot": 4},
                 log_to_driver=False, configure_logging=False)
        started = True
    yield ray
    if started:
        ray.shutdown()
