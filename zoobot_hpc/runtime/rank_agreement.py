"""How the ranks of a job agree on host-side flags (a stop signal, a save that is due): one all-reduce MAX.

Used wherever every rank must act together on a signal that may have reached only some of them
(`ResumeCheckpointer`, the embedding cache's datamodule). Imports torch, unlike `compute/preemption.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from zoobot_hpc.core.stop_signals import PreemptionFlag
from zoobot_hpc.runtime.process_groups import group_timeout


def all_reduce_max(values: Sequence[float], group: Any = None) -> list[float]:
    """Element-wise max over ranks of a few host-side flags (no-op outside distributed runs)."""
    tensor = torch.tensor(list(values), dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=group)
    return tensor.tolist()


def host_flag_group() -> Any:
    """A gloo process group for host-side flags: under NCCL, agreeing on a flag then needs no GPU sync.
    A collective: every rank must call it, in the same order. Its timeout is the run's (`process_groups`)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_backend() == "gloo":
        return None
    return dist.new_group(backend="gloo", timeout=group_timeout())


def agree_on_stop(flag: PreemptionFlag | None, extra: Sequence[float] = (), group: Any = None) -> list[float]:
    """[requeue signal received, SIGTERM received, *extra], each the max over all ranks (a collective)."""
    local = [float(flag is not None and flag.requeue_requested), float(flag is not None and flag.terminated)]
    return all_reduce_max(local + list(extra), group)
