"""Shared fixtures: the loopback SLURM cluster (tests/slurm_cluster.py) and a small demo dataset."""

from __future__ import annotations

import os

os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")

from pathlib import Path

pytest_plugins = ["tests.slurm_cluster"] if (Path(__file__).parent / "slurm_cluster.py").exists() else []
