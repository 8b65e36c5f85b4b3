"""The training order of an epoch: shard-aware, and a pure function of (seed, epoch, shard sizes, window).

Shards are visited in an order shuffled by (seed, epoch); consecutive groups of ``window`` shards (in that order)
form blocks, and the samples of each block are shuffled together (a block shuffle, as MosaicML Streaming,
WebDataset and FFCV's quasi-random order do). Reads then stay local: a batch comes from at most a couple of blocks,
so a loader worker opens each shard about once per epoch and reads runs of samples from ``window`` shards, instead
of one image from each of ~115 shards per batch as a uniform permutation does at survey scale. Neither the world
size nor the number of loader workers enters the order: ranks take contiguous slices of it per step
(:func:`rank_slice`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def block_shuffled_order(shard_sizes: Sequence[int], seed: int, epoch: int, window: int) -> np.ndarray:
    """Every sample index (int64, positions in the concatenated shards) once, in the block-shuffled order.

    ``window`` is the number of shards whose samples are shuffled together; a window at least the number of
    shards is a uniform shuffle.
    """
    if window < 1:
        raise ValueError(f"the shuffle window must be >= 1 shard, got {window}")
    sizes = np.asarray(shard_sizes, dtype=np.int64)
    starts = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(sizes)])
    rng = np.random.default_rng([seed, epoch])
    shard_order = rng.permutation(sizes.size)
    blocks = []
    for first in range(0, sizes.size, window):
        group = shard_order[first : first + window]
        block = np.concatenate([np.arange(starts[s], starts[s + 1], dtype=np.int64) for s in group])
        blocks.append(block[rng.permutation(block.size)])
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.int64)


def pad_order(order: np.ndarray, total: int) -> np.ndarray:
    """``order`` extended to ``total`` samples by repeating it from its start (``DistributedSampler``'s padding)."""
    padding = total - order.size
    if padding <= 0:
        return order[:total]
    return np.concatenate([order, np.resize(order, padding)])


def rank_slice(order: np.ndarray, world_size: int, rank: int, batch_size: int) -> np.ndarray:
    """The samples ``rank`` trains on, step after step: of each step's ``world_size * batch_size`` consecutive
    samples of ``order``, the ``rank``-th contiguous run of ``batch_size``. A last, short step is split evenly
    (``order.size`` must be a multiple of ``world_size``). The images of a step are therefore the same at any
    world size, which is what lets a run resume on another number of ranks with the same global batches."""
    if order.size % world_size:
        raise ValueError(f"an order of {order.size} samples does not split over {world_size} ranks")
    per_rank = order.size // world_size
    full_steps = per_rank // batch_size
    head_end = full_steps * batch_size * world_size
    head = order[:head_end].reshape(full_steps, world_size, batch_size)[:, rank, :].reshape(-1)
    tail = order[head_end:].reshape(world_size, per_rank - full_steps * batch_size)[rank]
    return np.concatenate([head, tail])
