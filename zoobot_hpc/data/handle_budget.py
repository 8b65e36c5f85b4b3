"""Whether a training layout fits the HDF5 handle cache of a loader process, so that each shard opens once an epoch.

With the block-shuffled order (:mod:`zoobot_hpc.data.block_order`) a batch touches the shards of at most two
consecutive blocks of ``window`` shards, plus those a batch larger than a block spans; a cache of that many handles
opens every shard once per epoch, a smaller one reopens shards batch after batch (each open is ~1.5 ms on a local
disk, more on a parallel filesystem's metadata server).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def handles_needed(shard_sizes: Sequence[int], batch_size: int, window: int) -> int:
    """The handles a loader process needs for the training order to open each shard once per epoch."""
    if not shard_sizes:
        return 0
    smallest = max(1, min(shard_sizes))
    return min(len(shard_sizes), 2 * min(window, len(shard_sizes)) + math.ceil(batch_size / smallest))


def thrash_warning(shard_sizes: Sequence[int], batch_size: int, window: int, max_open: int) -> str | None:
    """One line when ``max_open`` handles are too few for the layout (``data.max_open_shards``), else None."""
    needed = handles_needed(shard_sizes, batch_size, window)
    if max_open >= needed:
        return None
    return (
        f"data.max_open_shards={max_open} is below the {needed} HDF5 handles the training order needs "
        f"({len(shard_sizes)} train shards, data.shuffle_window_shards={window}, data.batch_size={batch_size}): "
        f"loader workers would reopen shards batch after batch; raise data.max_open_shards to {needed}"
    )
