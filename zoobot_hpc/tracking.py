"""Weights & Biases: a run identity that survives requeues, the logger for a job, and syncing offline runs."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger

from zoobot_hpc import run_dir as layout
from zoobot_hpc.config import RunConfig


def scheduler_job_key() -> str:
    """The scheduler's id for this job, the same in every requeue of it: SLURM array job + task, SLURM job, or
    submitit's local job; a random key outside any scheduler."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '0')}"
    if env.get("SLURM_JOB_ID"):
        return env["SLURM_JOB_ID"]
    if env.get("SUBMITIT_LOCAL_JOB_ID"):
        return f"local{env['SUBMITIT_LOCAL_JOB_ID']}"
    return uuid.uuid4().hex[:8]


def wandb_run_id(run_dir: Path) -> str:
    """The W&B run id of a run directory: derived from the job id at its first start, then kept in the run dir.

    A requeued job keeps its SLURM job id, so its id is the same; keeping it in the run dir also makes a later
    `zoobot-hpc train` of the same directory continue the same W&B run.
    """
    path = Path(run_dir) / layout.WANDB_RUN_ID
    if path.exists():
        return path.read_text().strip()
    run_id = re.sub(r"[^A-Za-z0-9_-]", "-", f"{Path(run_dir).name[:40]}-{scheduler_job_key()}")
    path.write_text(run_id + "\n")
    return run_id


log = logging.getLogger("zoobot_hpc")


class SegmentWandbLogger(WandbLogger):
    """Lightning's W&B logger, except that a lost W&B service costs only this segment's remaining W&B output.

    SLURM signals every process of a job step: at preemption the W&B service dies of SIGTERM (it is a Go program
    that unblocks it), and the next W&B call raises `ConnectionResetError`. Training must still reach its save, so
    the first failing call stops W&B logging for the segment with one warning instead of ending the job.
    """

    _lost = False

    def _guarded(self, method: Any, *args: Any, **kwargs: Any) -> None:
        if self._lost:
            return
        try:
            method(*args, **kwargs)
        except Exception as error:
            self._lost = True
            log.warning("W&B logging stopped for this job segment (%s: %s)", type(error).__name__, error)

    def log_metrics(self, *args: Any, **kwargs: Any) -> None:
        self._guarded(super().log_metrics, *args, **kwargs)

    def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
        self._guarded(super().log_hyperparams, *args, **kwargs)

    def after_save_checkpoint(self, *args: Any, **kwargs: Any) -> None:
        self._guarded(super().after_save_checkpoint, *args, **kwargs)

    def finalize(self, *args: Any, **kwargs: Any) -> None:
        self._guarded(super().finalize, *args, **kwargs)

    def finish(self, preempted: bool) -> None:
        """Flush and close this segment's run (marked preempting when the job stopped on a signal)."""
        if self._experiment is None:
            return

        def close() -> None:
            if preempted:
                self.experiment.mark_preempting()
            self.experiment.finish()

        self._guarded(close)


def create_wandb_logger(config: RunConfig, run_dir: Path, group: str | None, task: str) -> SegmentWandbLogger | None:
    """The Lightning W&B logger for this run (None when tracking is disabled). Logs from rank 0 only."""
    tracking = config.tracking
    if tracking.mode == "disabled":
        return None
    save_dir = Path(run_dir) / layout.WANDB
    save_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_SILENT", "true")
    return SegmentWandbLogger(
        project=tracking.project,
        entity=tracking.entity,
        id=wandb_run_id(run_dir),
        name=config.name,
        group=group,
        job_type=task,
        tags=list(tracking.tags),
        save_dir=str(save_dir),
        mode=tracking.mode,
        config=config.model_dump(mode="json"),
    )


def offline_segments(run_dir: Path) -> list[Path]:
    """The offline W&B run folders of one run, oldest first (one per job start)."""
    return sorted((Path(run_dir) / layout.WANDB / "wandb").glob("offline-run-*"))


def sync_command(run_dir: Path, config: RunConfig) -> list[str] | None:
    """`wandb sync` joining every offline segment of a run into its one W&B run (None if nothing to sync)."""
    segments = offline_segments(run_dir)
    if not segments:
        return None
    command = ["wandb", "sync", "--id", wandb_run_id(run_dir), "--project", config.tracking.project]
    if config.tracking.entity:
        command += ["--entity", config.tracking.entity]
    return command + [str(s) for s in segments]


def sync_run(run_dir: Path, config: RunConfig) -> int:
    """Upload a run's offline segments; returns wandb's exit code (0 when there was nothing to do)."""
    command = sync_command(run_dir, config)
    if command is None:
        return 0
    if shutil.which(command[0]) is None:
        raise RuntimeError("the `wandb` command is not on PATH")
    return subprocess.run(command, check=False).returncode
