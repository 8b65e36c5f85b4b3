"""Weights & Biases: a run identity that survives requeues, the logger for a job, and syncing offline runs."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoobot_hpc.backends.registry import job_key
from zoobot_hpc.core import atomic
from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.core.config import RunConfig
from zoobot_hpc.core.redaction import redact_argv, redact_config, redact_value
from zoobot_hpc.training.wandb_history import offline_segments

if TYPE_CHECKING:
    from zoobot_hpc.training.segment_logger import SegmentWandbLogger

log = logging.getLogger(__name__)


def scheduler_job_key() -> str:
    """The scheduler's key for this job, the same in every requeue of it; a random key outside any scheduler."""
    return job_key() or f"run{uuid.uuid4().hex[:8]}"  # never all digits: not mistaken for a scheduler's job id


def wandb_run_id(run_dir: Path) -> str:
    """The W&B run id of a run directory: derived from the job id at its first start, then kept in the run dir.

    A requeued job keeps its scheduler's job id, so its id is the same; keeping it in the run dir also makes a later
    `zoobot-hpc train` of the same directory continue the same W&B run.
    """
    path = Path(run_dir) / layout.WANDB_RUN_ID
    if path.exists():
        return path.read_text().strip()
    run_id = re.sub(r"[^A-Za-z0-9_-]", "-", f"{Path(run_dir).name[:40]}-{scheduler_job_key()}")
    atomic.write_text(path, run_id + "\n")
    return run_id


def swept_parameters(run_dir: Path) -> dict[str, Any]:
    """A sweep run's swept values as top-level config keys (`model.learning_rate`: 0.001), for W&B's
    parallel-coordinates and parameter-importance panels: the `point` its submission recorded (redacted there)."""
    submission = layout.read_json(Path(run_dir) / layout.SUBMISSION) or {}
    return dict(submission.get("point") or {}) if submission.get("sweep") else {}


def create_wandb_logger(
    config: RunConfig, run_dir: Path, group: str | None, task: str, params: Mapping[str, Any] | None = None
) -> SegmentWandbLogger | None:
    """The Lightning W&B logger for this run (None when tracking is disabled). Logs from rank 0 only. A sweep's swept
    values and a search trial's `params` are top-level config keys; the group is the sweep or search."""
    from zoobot_hpc.training.segment_logger import SegmentWandbLogger  # here: `sync` and `status` run on the login node

    tracking = config.tracking
    if tracking.mode == "disabled":
        return None
    save_dir = Path(run_dir) / layout.WANDB
    save_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_SILENT", "true")
    # W&B stages the files of logged tables (the galaxy thumbnails) under its data dir, by default in the home
    # directory: keep them with the run's offline segments, which `zoobot-hpc sync` uploads.
    os.environ["WANDB_DATA_DIR"] = str(save_dir)
    # W&B records this process's command line as run metadata (`args`, from sys.argv when the run starts):
    # `zoobot-hpc train CONFIG 'resources.setup=[...]'` must not put a secret there.
    sys.argv[1:] = redact_argv(sys.argv[1:])
    finish_leftover_run()
    return SegmentWandbLogger(
        project=tracking.project,
        entity=tracking.entity,
        id=wandb_run_id(run_dir),
        name=config.name,
        group=group,
        job_type=task,
        tags=redact_value(list(tracking.tags)),
        save_dir=str(save_dir),
        mode=tracking.mode,
        config={
            **redact_config(config).model_dump(mode="json"),
            **swept_parameters(run_dir),
            **redact_value(dict(params or {})),
        },
        run_dir=run_dir,
    )


def finish_leftover_run() -> None:
    """Finish a W&B run an earlier run in this process left open (one that stopped on a signal, in a notebook or a
    test): Lightning's logger would otherwise log this run into it, under the other run's id and directory."""
    import wandb

    if wandb.run is not None:
        log.info("finishing the W&B run %s left open in this process", wandb.run.id)
        wandb.finish()


def sync_command(run_dir: Path, config: RunConfig) -> list[str] | None:
    """`wandb sync` joining every offline segment of a run into its one W&B run (None if nothing to sync)."""
    segments = offline_segments(run_dir)
    if not segments:
        return None
    command = ["wandb", "sync", "--id", wandb_run_id(run_dir), "--project", config.tracking.project]
    if config.tracking.entity:
        command += ["--entity", config.tracking.entity]
    return command + [str(s) for s in segments]


def sync_plan(run_dir: Path) -> list[str]:
    """What `sync` uploads for a run, in upload order: each segment's folder and the W&B step range of its history,
    flagged where a segment's steps do not all come after the earlier ones' (they would overwrite them)."""
    from zoobot_hpc.training.wandb_history import history_steps, run_file

    lines, last = [], -1
    segments = offline_segments(run_dir)
    for number, folder in enumerate(segments, start=1):
        path = run_file(folder)
        steps = history_steps(path) if path is not None else None
        if steps is None or steps.first is None:
            lines.append(f"# segment {number}/{len(segments)}: {folder} (no history)")
            continue
        overlap = "  OVERLAPS AN EARLIER SEGMENT" if steps.first <= last else ""
        where = f"{folder} steps {steps.first}-{steps.last} ({steps.rows} rows)"
        lines.append(f"# segment {number}/{len(segments)}: {where}{overlap}")
        last = max(last, steps.last)
    return lines


def sync_run(run_dir: Path, config: RunConfig) -> int:
    """Upload a run's offline segments; returns wandb's exit code (0 when there was nothing to do)."""
    command = sync_command(run_dir, config)
    if command is None:
        return 0
    if shutil.which(command[0]) is None:
        raise RuntimeError("the `wandb` command is not on PATH")
    return subprocess.run(command, check=False).returncode
