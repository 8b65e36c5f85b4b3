"""What every job does first on a compute node, whatever it runs: log lines, offline weights, the loaders'
forkserver."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any


def configure_job_logging() -> None:
    """Plain timestamped log lines (batch jobs write to files, not terminals)."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
        force=True,
    )


def compute_node_environment() -> None:
    """Compute nodes read weights from the cache the login node filled; they never try to download. Each job
    process starts its own W&B service: a `WANDB_SERVICE` inherited from the submitting process (a notebook that
    used W&B) names a service on another machine, or one in which a killed predecessor's run is still "in use"."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_INIT_TIMEOUT", "300")
    os.environ.pop("WANDB_SERVICE", None)


def start_loader_forkserver(config: dict[str, Any]) -> None:
    """Start the loader workers' forkserver now (with the stop signals blocked): it preloads torch while this
    process imports it."""
    if config["data"].get("num_workers"):
        from zoobot_hpc.data.workers import worker_context

        worker_context()
