"""Shared test setup: plugins (the loopback SLURM cluster, job and trained-run fixtures), one torch thread per test."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")

pytest_plugins = ["tests.cluster.slurm_cluster", "tests.support.jobs", "tests.support.trained_runs"]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Groups for pytest-xdist's `--dist loadgroup` (pyproject's addopts): every test that uses the loopback SLURM
    cluster runs on one worker, one after another (they share its nodes, and some change its configuration), and
    every other module runs whole on one worker (its module fixtures are built once), while the cluster tests wait
    on the scheduler."""
    for item in items:
        group = "slurm-cluster" if item.get_closest_marker("slurm") else item.nodeid.split("::", 1)[0]
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(autouse=True)
def single_torch_thread():
    """Tiny models run fastest (and reproducibly) on one intra-op thread; restore the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
