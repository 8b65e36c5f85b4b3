"""Shared test setup: the loopback SLURM cluster plugin (tests/slurm_cluster.py) and one torch thread per test."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")

pytest_plugins = ["tests.slurm_cluster"]


@pytest.fixture(autouse=True)
def single_torch_thread():
    """Tiny models run fastest (and reproducibly) on one intra-op thread; restore the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
