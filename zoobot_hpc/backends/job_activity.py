"""Whether the job that holds a run directory's lease has ended, by the scheduler's word (the compute node's one
question to the scheduler; the login node asks through `login/status.py`). Standard library only.

A SLURM job is asked of `squeue`: it has ended when squeue no longer lists it, or lists it in a final state. A
process outside a scheduler (`zoobot-hpc train`, submitit's local executor) has ended when its host is this one and
the process, as started, no longer exists. Anything else has not provably ended.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

ACTIVE_STATES = {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "CONFIGURING",
    "COMPLETING",
    "RESIZING",
    "SUSPENDED",
    "STOPPED",
    "SIGNALING",
    "STAGE_OUT",
    "PREEMPTED",  # a preempted job with --requeue goes back to PENDING
}
SQUEUE_TIMEOUT_S = 30

log = logging.getLogger(__name__)


def process_start_ticks(pid: int | str) -> int | None:
    """When a live process started (clock ticks since boot, field 22 of /proc/PID/stat); None when there is none
    or it is a zombie."""
    try:
        fields = Path(f"/proc/{int(pid)}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    if fields[0] == "Z":
        return None
    return int(fields[19])


def slurm_job_active(job_id: str) -> bool | None:
    """True when squeue lists the job in an active state, False when it does not list it or lists it ended, None
    when squeue cannot be asked."""
    if shutil.which("squeue") is None:
        return None
    try:
        done = subprocess.run(
            ["squeue", "-h", "-o", "%T", "-j", job_id], capture_output=True, text=True, timeout=SQUEUE_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return False if "Invalid job id" in done.stderr else None
    states = {line.strip() for line in done.stdout.splitlines() if line.strip()}
    return bool(states & ACTIVE_STATES)


def holder_ended(holder: dict[str, Any]) -> bool:
    """True only when the scheduler (or, outside one, this host's process table) says the holder has ended."""
    if holder.get("slurm_job"):
        return slurm_job_active(str(holder["slurm_job"])) is False
    if holder.get("host") != socket.gethostname():
        return False
    ticks = process_start_ticks(holder.get("pid", -1))
    return ticks is None or (holder.get("pid_start") is not None and ticks != holder["pid_start"])
