"""Shared test fixtures: one real local Ray for the whole session (starting Ray costs seconds)."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray with 2 CPUs, shared by every test that asks for it."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray


def pytest_sessionfinish(session, exitstatus):
    """Shut Ray down before pytest prints its summary, so Ray's reports about workers that tests kill on purpose do
    not come after the summary line."""
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def torch_one_thread():
    """torch on one thread for the duration of a test: the tiny models are dominated by per-op overhead, and one
    thread is faster and steadier on a shared 2-core machine. Folders opt in with an autouse fixture using it."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
