"""`inspect --checksums` as a job (any scheduler backend): every shard hashed on a compute node, `workers` at a
time, the outcome written next to the dataset's check cache for `inspect` on the login node to show.

Requeue-safe: shards verified before and unchanged since are not hashed again, so a requeued job (time limit, or
preempted and requeued by the scheduler) hashes only the rest.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from zoobot_hpc.core.atomic import write_text
from zoobot_hpc.data.validate import check_state_dir, inspect_dataset
from zoobot_hpc.runtime.node import configure_job_logging

log = logging.getLogger(__name__)
RESULT_NAME = "checksum_job.json"


def result_path(dataset_dir: Path) -> Path:
    return check_state_dir(Path(dataset_dir)) / RESULT_NAME


@dataclass
class ChecksumJob(submitit.helpers.Checkpointable):
    """Validate a dataset with every shard's sha256; returns the summary, and writes it with its verdict."""

    dataset_dir: Path
    label_cols: tuple[str, ...]
    workers: int
    rehash: bool = False
    locking: bool = False

    def __call__(self) -> str:
        configure_job_logging()
        started = time.time()
        summary = inspect_dataset(
            self.dataset_dir,
            required_label_cols=self.label_cols,
            verify_checksums=True,
            locking=self.locking,
            workers=self.workers,
            rehash=self.rehash,
        )
        text = summary.format()
        outcome = {"valid": summary.is_valid, "summary": text, "started": started, "finished": time.time()}
        path = result_path(self.dataset_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(outcome, indent=2) + "\n")
        log.info("checksums of %s: %s (%s)", self.dataset_dir, "valid" if summary.is_valid else "INVALID", path)
        return text

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """The requeued job is this same job: it hashes only the shards not verified yet."""
        return submitit.helpers.DelayedSubmission(self)
