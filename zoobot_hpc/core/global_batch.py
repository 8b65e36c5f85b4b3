"""The global batch of a run (per-rank batch x ranks x accumulation), kept when a run resumes on other resources.

The training order and its position are global (:mod:`zoobot_hpc.data.sampler`), so a run can continue on another
number of ranks as long as each optimiser step still sees the same samples: the accumulation is then adjusted to
``global batch / (per-rank batch x ranks)``, which must be a whole number.
"""

from __future__ import annotations


class GlobalBatchError(ValueError):
    """A world size that cannot keep the run's global batch; one line naming the three numbers."""


def accumulation_for(global_batch: int, batch_size: int, world_size: int) -> int:
    """The accumulation that keeps ``global_batch`` with ``batch_size`` per rank on ``world_size`` ranks."""
    per_step = batch_size * world_size
    if global_batch % per_step:
        raise GlobalBatchError(
            f"the run's global batch of {global_batch} cannot be kept on {world_size} rank(s) with "
            f"data.batch_size={batch_size}: {global_batch} is not a multiple of {batch_size} x {world_size}"
        )
    return global_batch // per_step
