"""The callable that submitit runs on every task of a job: train one run, and requeue it when preempted.

Preemption has one owner. submitit installs its USR2 handler (checkpoint + `scontrol requeue`) before this
callable runs; the first thing we do is put a flag in its place, so that the training loop can stop every
rank at the same step and write one full-state checkpoint. Only then does rank 0 hand over to submitit's
handler, which requeues the job and exits; the other ranks leave without writing a result.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import submitit

from zoobot_hpc.config import RunConfig

if TYPE_CHECKING:  # `submit` pickles TrainingJob on the login node, which must not import torch
    from zoobot_hpc.checkpointing import PreemptionFlag

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


def hand_over_preemption(flag: PreemptionFlag, rank: int) -> None:
    """Once every rank has stopped and saved: rank 0 lets submitit requeue the job (it exits there); the other
    ranks exit without returning, since a returned callable would write a "success" result."""
    if rank == 0:
        log.info("stopped and saved on every rank; handing over to submitit to requeue")
        flag.hand_over()
        raise RuntimeError("submitit did not requeue the preempted job")
    sys.stdout.flush()
    os._exit(0)


def slurm_task_rank() -> int:
    """This process's task rank in its SLURM step (SLURM_PROCID), 0 outside SLURM."""
    return int(os.environ.get("SLURM_PROCID", "0"))


def requeue_self() -> None:
    """After a preemption checkpoint in a job we did not submit (`zoobot-hpc train` under sbatch):
    rank 0 requeues the SLURM job; every rank exits. Outside SLURM, say how to resume."""
    job_id = os.environ.get("SLURM_JOB_ID")
    if job_id is None:
        log.info("stopped on a signal with a checkpoint written; run the same command again to resume")
        sys.exit(0)
    if slurm_task_rank() == 0:
        subprocess.run(["scontrol", "requeue", job_id], check=True)
        log.info("requeued SLURM job %s", job_id)
    sys.exit(0)


@dataclass
class TrainingJob(submitit.helpers.Checkpointable):
    """Train `config` in `run_dir` (resuming from its checkpoints); `group` is the sweep's name, if any."""

    config: dict[str, Any]
    run_dir: str
    group: str | None = None

    def __call__(self) -> dict[str, float]:
        if self.config["data"].get("num_workers"):
            # Start the loader workers' forkserver now: it preloads torch while this process imports it.
            from zoobot_hpc.data.workers import worker_context

            worker_context()
        from zoobot_hpc.checkpointing import PreemptionFlag

        flag = PreemptionFlag().install()
        configure_job_logging()
        compute_node_environment()
        from zoobot_hpc.launch.environment import SubmititEnvironment
        from zoobot_hpc.monitoring import StartupLog
        from zoobot_hpc.train import run_training

        startup = StartupLog()
        startup.phase("interpreter, imports")
        environment = SubmititEnvironment()
        outcome = run_training(
            RunConfig.model_validate(self.config),
            Path(self.run_dir),
            flag=flag,
            cluster_environment=environment,
            group=self.group,
            interactive=False,
            startup=startup,
            write_config=False,
        )
        if outcome.preempted:
            hand_over_preemption(flag, environment.global_rank())
        return outcome.metrics

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """The requeued job is this same job: it resumes from the run dir's newest valid checkpoint."""
        return submitit.helpers.DelayedSubmission(self)
