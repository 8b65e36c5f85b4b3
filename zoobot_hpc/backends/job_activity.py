"""Whether the job that holds a run directory's lease has ended, by its scheduler's word: the compute node's one
question to the scheduler about another job (the login node asks through `login/status.py`).

A job of a scheduler has ended when its backend's state for it is a final phase. A plain process (`zoobot-hpc
train` outside any scheduler) has ended when its host is this one and the process, as started, no longer exists.
Anything else has not provably ended.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from zoobot_hpc.backends.base import JobRecord
from zoobot_hpc.backends.local import process_start_ticks
from zoobot_hpc.backends.registry import BACKENDS, get_backend


def holder_record() -> dict[str, Any]:
    """What a lease records about the job of this process: its backend and job record (as `submit` records
    them), host and process."""
    name = next((name for name in BACKENDS if get_backend(name).in_job()), None)
    record: dict[str, Any] = {}
    if name is not None:
        job_id = get_backend(name).job_id() or ""
        record = {"job_id": job_id, **(get_backend(name).submitted_job_record(job_id) if job_id else {})}
    return {
        "backend": name,
        "job_record": record,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_start": process_start_ticks(os.getpid()),
    }


def holder_ended(holder: dict[str, Any]) -> bool:
    """True only when the holder's scheduler (outside one: this host's process table) says it has ended."""
    if holder.get("backend"):
        try:
            backend = get_backend(str(holder["backend"]))
        except ValueError:
            return False
        record = JobRecord.from_submission(holder.get("job_record") or {})
        if not record.job_id:
            return False
        state = backend.job_states([record]).get(record.job_id, "UNKNOWN")
        return backend.phase(state).ended
    if holder.get("host") != socket.gethostname():
        return False
    ticks = process_start_ticks(holder.get("pid", -1))
    return ticks is None or (holder.get("pid_start") is not None and ticks != holder["pid_start"])
