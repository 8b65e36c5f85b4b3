"""The callable that submitit runs on every task of a job: train one run under the preemption protocol.

Preemption has one owner (`zoobot_hpc.preemption.run_preemptible`). submitit installs its requeue handler
(checkpoint + `scontrol requeue`) before this callable runs; the first thing we do is put a flag in its place (and
on SIGTERM), so that the training loop can stop every rank at the same step and write one full-state checkpoint.
Only then does rank 0 hand over to submitit's handler (requeue signal), or every rank waits for SLURM to end the
job (SIGTERM: preemption or scancel).

`submit` pickles TrainingJob on the login node, which must not import torch: the training code is imported when
the job runs.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from zoobot_hpc.config import RunConfig
from zoobot_hpc.preemption import PreemptionFlag, run_preemptible

log = logging.getLogger("zoobot_hpc")


def configure_job_logging() -> None:
    """Plain timestamped log lines (batch jobs write to files, not terminals)."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
        force=True,
    )


def compute_node_environment() -> None:
    """Compute nodes read weights from the cache the login node filled; they never try to download."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_INIT_TIMEOUT", "300")


def start_loader_forkserver(config: dict[str, Any]) -> None:
    """Start the loader workers' forkserver now (with the stop signals blocked): it preloads torch while this
    process imports it."""
    if config["data"].get("num_workers"):
        from zoobot_hpc.data.workers import worker_context

        worker_context()


@dataclass
class TrainingJob(submitit.helpers.Checkpointable):
    """Train `config` in `run_dir` (resuming from its checkpoints); `group` is the sweep's name, if any."""

    config: dict[str, Any]
    run_dir: str
    group: str | None = None

    def __call__(self) -> dict[str, float]:
        return run_preemptible(self._train, submitted=True).metrics

    def _train(self, flag: PreemptionFlag) -> Any:
        start_loader_forkserver(self.config)
        configure_job_logging()
        compute_node_environment()
        from zoobot_hpc.launch.environment import SubmititEnvironment
        from zoobot_hpc.monitoring import StartupLog
        from zoobot_hpc.train import run_training

        startup = StartupLog()
        startup.phase("interpreter, imports")
        return run_training(
            RunConfig.model_validate(self.config),
            Path(self.run_dir),
            flag=flag,
            cluster_environment=SubmititEnvironment(),
            group=self.group,
            interactive=False,
            startup=startup,
            write_config=False,
        )

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """The requeued job is this same job: it resumes from the run dir's newest valid checkpoint."""
        return submitit.helpers.DelayedSubmission(self)
