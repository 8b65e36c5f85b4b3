"""One run, one job: the lease a job takes in its run directory at start (`RUN_DIR/lease.json`).

The lease names its holder (the scheduler's job key, host, process); the holder's heartbeat renews it. A second job
started on the run directory exits at once naming the owner; it takes the lease over only when the scheduler says
the holder has ended (`backends.job_activity.holder_ended`). A requeued job has the same job key and takes its own
lease back. A job that ends its run (not preempted) gives the lease up.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from zoobot_hpc.backends.job_activity import holder_ended, holder_record
from zoobot_hpc.core import atomic

LEASE = "lease.json"

log = logging.getLogger(__name__)


class RunDirOwned(RuntimeError):
    """Another job holds the run directory."""


def read_lease(run_dir: Path) -> dict[str, Any] | None:
    """The lease's holder, or None when there is none (or it does not parse: a torn write of a crashed holder)."""
    try:
        holder = json.loads((Path(run_dir) / LEASE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _ended(holder: dict[str, Any]) -> bool:
    """The holder has ended: the scheduler says so, or it is this very process (an earlier run of this process's
    `zoobot-hpc train`, which has returned)."""
    if holder.get("host") == socket.gethostname() and holder.get("pid") == os.getpid():
        return True
    return holder_ended(holder)


def _describe(holder: dict[str, Any]) -> str:
    return f"job {holder.get('job')} on {holder.get('host')} (pid {holder.get('pid')})"


def take_lease(run_dir: Path, job_key: str) -> None:
    """Take the run directory's lease for job `job_key`, or raise RunDirOwned (one line) naming the owner."""
    path = Path(run_dir) / LEASE
    record = {"job": job_key, **holder_record(), "taken": time.time(), "renewed": time.time()}
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_lease(path.parent)
            if holder is not None and holder.get("job") != job_key and not _ended(holder):
                raise RunDirOwned(
                    f"{run_dir} is in use by {_describe(holder)}: one run directory, one job "
                    f"(cancel that job, or wait for it to end; remove {path} only if it has)"
                ) from None
            if holder is not None and holder.get("job") != job_key:
                log.warning("%s: taking over the lease of %s, which has ended", run_dir, _describe(holder))
            aside = path.with_name(f"{LEASE}.{uuid.uuid4().hex}.ended")
            try:
                os.rename(path, aside)
            except FileNotFoundError:
                continue
            aside.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(record))
            handle.flush()
            os.fsync(handle.fileno())
        atomic.fsync_directory(path.parent)
        return


def check_lease(run_dir: Path, job_key: str) -> None:
    """On a rank other than 0: raise RunDirOwned when another job, still running, holds the lease."""
    holder = read_lease(run_dir)
    if holder is not None and holder.get("job") != job_key and not _ended(holder):
        raise RunDirOwned(f"{run_dir} is in use by {_describe(holder)}: one run directory, one job")


def renew_lease(run_dir: Path, job_key: str) -> None:
    """The holder's heartbeat: record that it is alive (only while it still holds the lease)."""
    holder = read_lease(run_dir)
    if holder is None or holder.get("job") != job_key:
        return
    holder["renewed"] = time.time()
    atomic.write_text(Path(run_dir) / LEASE, json.dumps(holder))


def release_lease(run_dir: Path, job_key: str) -> None:
    """Give the lease up at the end of the run (only the holder's own)."""
    holder = read_lease(run_dir)
    if holder is not None and holder.get("job") == job_key:
        (Path(run_dir) / LEASE).unlink(missing_ok=True)
