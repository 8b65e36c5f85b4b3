"""Shared test setup: plugins (the loopback SLURM cluster, job and trained-run fixtures), one torch thread per test."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")

pytest_plugins = ["tests.cluster.slurm_cluster", "tests.support.jobs", "tests.support.trained_runs"]


@pytest.fixture(autouse=True)
def single_torch_thread():
    """Tiny models run fastest (and reproducibly) on one intra-op thread; restore the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
