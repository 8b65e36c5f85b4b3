"""How a submitted job ended, as JSON the job writes into its own run directory (`RUN_DIR/job_result.json`).

`zoobot-hpc status` reads a local job's outcome from here (SLURM jobs: from the scheduler), never from submitit's
`*_result.pkl`: a pickle runs code when it is read, and the run directory, or a `submission.json` pointing
elsewhere, may be writable by others. The error line is redacted (`zoobot_hpc.core.redaction`).
Standard library only: `status` reads it on the login node.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.core.redaction import redact_text

JOB_RESULT = "job_result.json"
T = TypeVar("T")


def _last_line(error: BaseException) -> str:
    lines = [line.strip() for line in f"{type(error).__name__}: {error}".splitlines() if line.strip()]
    return redact_text(lines[-1])


def record_outcome(run_dir: str | Path, work: Callable[[], T], rank: int, job_id: str) -> T:
    """Run `work()`; rank 0 records whether it returned or raised (a plain exception: not the exit of a requeue)
    under `job_id`, the id `submission.json` records for this job."""
    try:
        result = work()
    except Exception as error:
        if rank == 0:
            write_result(run_dir, job_id, "error", _last_line(error))
        raise
    if rank == 0:
        write_result(run_dir, job_id, "success")
    return result


def write_result(run_dir: str | Path, job_id: str, outcome: str, error: str | None = None) -> None:
    run_dir = Path(run_dir)
    if run_dir.is_dir():
        layout.write_json(run_dir / JOB_RESULT, {"job_id": job_id, "outcome": outcome, "error": error})


def read_result(run_dir: str | Path, job_id: str | None) -> dict[str, Any] | None:
    """The outcome the job `job_id` recorded in `run_dir`, or None (none recorded, or another job's)."""
    try:
        record = layout.read_json(Path(run_dir) / JOB_RESULT)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or str(record.get("job_id")) != str(job_id):
        return None
    return record
