"""How a submitted job ended, as JSON the job writes into its own run directory (`RUN_DIR/job_result.json`).

`zoobot-hpc status` reads a local job's outcome from here (SLURM jobs: from the scheduler), never from submitit's
`*_result.pkl`: a pickle runs code when it is read, and the run directory, or a `submission.json` pointing
elsewhere, may be writable by others. The error line is redacted (`zoobot_hpc.core.redaction`).
Standard library only: `status` reads it on the login node.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.core.redaction import redact_text

log = logging.getLogger(__name__)

JOB_RESULT = "job_result.json"
RANK_ERRORS = "rank_errors"  # RUN_DIR/rank_errors/JOB-rankR.json: the error each rank raised, when it raised it
T = TypeVar("T")

# What a rank raises when another rank died under it: the symptom, not the cause.
_COMMUNICATION = re.compile(
    r"Connection (closed|reset) by peer|Broken pipe|DistBackendError|DistNetworkError|ProcessGroup|gloo|NCCL|"
    r"Socket Timeout|timed out waiting|connection refused",
    re.IGNORECASE,
)
_recorded: set[tuple[str, str]] = set()  # (run dir, job id) whose rank error this process recorded


def last_line(error: BaseException) -> str:
    """`Type: message` of an error, its message's last line, redacted."""
    lines = [line.strip() for line in f"{type(error).__name__}: {error}".splitlines() if line.strip()]
    return redact_text(lines[-1])


def is_communication_error(line: str) -> bool:
    """The error line of a rank that lost a peer (a closed connection, a collective's timeout)."""
    return bool(_COMMUNICATION.search(line))


def record_rank_error(run_dir: str | Path, job_id: str, rank: int, line: str) -> None:
    """Record the error line this rank raised (`last_line`) with its host and time; only the first of a process
    (the job's callable records again what the trainer recorded as it happened)."""
    run_dir = Path(run_dir)
    if (str(run_dir), job_id) in _recorded or not run_dir.is_dir():
        return
    _recorded.add((str(run_dir), job_id))
    record = {"job_id": job_id, "rank": rank, "host": socket.gethostname(), "time": time.time(), "error": line}
    try:
        (run_dir / RANK_ERRORS).mkdir(exist_ok=True)
        layout.write_json(run_dir / RANK_ERRORS / f"{job_id or 'run'}-rank{rank}.json", record)
    except OSError as error:  # a full disk: the error being raised is the one to keep
        log.warning("could not record rank %d's error in %s (%s)", rank, run_dir, error)


def _is_record_of(record: Any, job_id: str | None, since: float | None) -> bool:
    if not isinstance(record, dict) or not isinstance(record.get("error"), str):
        return False
    when = record.get("time")
    same_job = str(record.get("job_id")) == str(job_id or "")
    return same_job and isinstance(when, float) and (since is None or when >= since)


def rank_errors(run_dir: str | Path, job_id: str | None, since: float | None = None) -> list[dict[str, Any]]:
    """The errors the ranks of job `job_id` recorded (at or after `since`: this start of the job), oldest first."""
    records: list[dict[str, Any]] = []
    for path in sorted((Path(run_dir) / RANK_ERRORS).glob(f"{job_id or 'run'}-rank*.json")):
        try:
            record = layout.read_json(path)
        except (OSError, ValueError):
            continue
        if record is not None and _is_record_of(record, job_id, since):
            records.append(record)
    return sorted(records, key=lambda record: record["time"])


def root_cause(run_dir: str | Path, job_id: str | None, since: float | None = None) -> str | None:
    """The error that ended the job: the earliest rank error that is not a lost peer's symptom (else the
    earliest), as `OutOfMemoryError: ... on rank 1 (host X)`; None when no rank recorded one."""
    records = rank_errors(run_dir, job_id, since)
    if not records:
        return None
    first = next((r for r in records if not is_communication_error(r["error"])), records[0])
    return f"{first['error']} on rank {first['rank']} (host {first.get('host', '?')})"


def record_outcome(run_dir: str | Path, work: Callable[[], T], rank: int, job_id: str) -> T:
    """Run `work()`; every rank records the error it raised (`record_rank_error`), and rank 0 records whether
    the job returned or raised (a plain exception: not the exit of a requeue) under `job_id`, the id
    `submission.json` records for this job, with the ranks' root cause as its error."""
    started = time.time()
    try:
        result = work()
    except Exception as error:
        record_rank_error(run_dir, job_id, rank, last_line(error))
        if rank == 0:
            cause = root_cause(run_dir, job_id, started) or last_line(error)
            try:
                write_result(run_dir, job_id, "error", cause, started)
            except OSError as failed:  # a full disk: the error being raised is the one to keep
                log.warning("could not record the job's error in %s (%s)", run_dir, failed)
        raise
    if rank == 0:
        write_result(run_dir, job_id, "success", started=started)
    return result


def write_result(
    run_dir: str | Path, job_id: str, outcome: str, error: str | None = None, started: float | None = None
) -> None:
    """Record how job `job_id` ended (`started`: when this start of it began, for its ranks' errors)."""
    run_dir = Path(run_dir)
    if run_dir.is_dir():
        record = {"job_id": job_id, "outcome": outcome, "error": error, "started": started}
        layout.write_json(run_dir / JOB_RESULT, record)


def read_result(run_dir: str | Path, job_id: str | None) -> dict[str, Any] | None:
    """The outcome the job `job_id` recorded in `run_dir`, or None (none recorded, or another job's)."""
    try:
        record = layout.read_json(Path(run_dir) / JOB_RESULT)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or str(record.get("job_id")) != str(job_id):
        return None
    return record
