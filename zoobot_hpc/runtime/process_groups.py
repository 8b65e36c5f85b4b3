"""The process groups' timeouts, derived from `trainer.stall_timeout_s` (torch-free: set before any group exists).

The stall watchdog (`runtime.stall_watchdog`) ends a job whose rank made no progress for the stall timeout; a
collective that waits longer than `group_timeout_s` raises instead. So the groups' timeout must exceed the
watchdog's (which grows with the slowest step or save): twice the stall timeout, plus a minute. It reaches the
DDP group (Lightning's `DDPStrategy(timeout=...)`, else 30 min), the host-side flag groups we create
(`GROUP_TIMEOUT_ENV`, read by `rank_agreement.host_flag_group`) and NCCL: its watchdog aborts a timed-out
collective (async error handling) and its heartbeat monitor kills a process whose NCCL watchdog hangs.
"""

from __future__ import annotations

import os
from datetime import timedelta

GROUP_TIMEOUT_ENV = "ZOOBOT_HPC_GROUP_TIMEOUT_S"
NCCL_ENV = ("TORCH_NCCL_ASYNC_ERROR_HANDLING", "TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC")


def group_timeout_s(stall_timeout_s: float) -> float:
    """How long a collective may wait for its peers: longer than the stall watchdog waits."""
    return 2 * stall_timeout_s + 60


def set_group_timeouts(stall_timeout_s: float) -> timedelta:
    """Put the groups' timeout into this process's environment (the flag groups, NCCL) and return it (DDP's).
    NCCL's variables are left as the job's environment sets them, if it does."""
    timeout = group_timeout_s(stall_timeout_s)
    os.environ[GROUP_TIMEOUT_ENV] = str(timeout)
    os.environ.setdefault(NCCL_ENV[0], "1")
    os.environ.setdefault(NCCL_ENV[1], str(int(timeout + 60)))
    return timedelta(seconds=timeout)


def group_timeout() -> timedelta | None:
    """The groups' timeout this process was given (None: torch's default)."""
    value = os.environ.get(GROUP_TIMEOUT_ENV)
    return timedelta(seconds=float(value)) if value else None
