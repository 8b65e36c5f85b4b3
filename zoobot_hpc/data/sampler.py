"""Distributed sampling that can resume exactly in the middle of an epoch.

Lightning saves and restores the state of the *DataLoader* (when it has ``state_dict`` /
``load_state_dict``), never of its sampler, and restores it before calling ``iter()``. The
sampler below keeps its position as ``{epoch, consumed}``; the loader forwards that state and
is told how far training got by ``record_progress`` (called by the training callback in
``on_train_batch_start`` with ``batch_idx + 1``) and when an epoch is done (``record_epoch_done``). Lightning
restores the loader's state only from mid-epoch checkpoints; the datamodule keeps a copy for the others
(``SplitLoaders.state_dict``).

The order is :func:`zoobot_hpc.data.block_order.block_shuffled_order` (the same at every world size and number of
workers), and each rank takes a contiguous run of ``batch_size`` of every step's samples, so the position of a run
is global: ``consumed * world_size`` samples of the epoch's order. A state saved at one world size therefore
resumes at another (elastic resume), as long as the saved position is a whole number of the new world's steps.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence, Sized
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from zoobot_hpc.data.block_order import block_shuffled_order, pad_order, rank_slice

_YIELD_CHUNK = 65536


class ResumableDistributedSampler(DistributedSampler):
    """A ``DistributedSampler`` (``drop_last=False``) with a world-size-independent order and a checkpointable,
    global position within an epoch.

    Every rank gets ``ceil(len(dataset) / num_replicas)`` indices (the epoch's order padded by repeating its
    start, like ``DistributedSampler``): per step, the ``rank``-th contiguous run of ``batch_size`` samples of the
    block-shuffled order (``shard_sizes`` and ``window``: see :mod:`zoobot_hpc.data.block_order`; without
    ``shard_sizes`` the dataset is one block, a uniform shuffle). ``__len__`` is always the full epoch;
    ``__iter__`` yields the indices this rank has not consumed yet and rolls over to the next epoch once the
    current one is fully consumed.
    """

    def __init__(
        self,
        dataset: Sized,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        *,
        batch_size: int = 1,
        shard_sizes: Sequence[int] | None = None,
        window: int = 4,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.shard_sizes = tuple(shard_sizes) if shard_sizes is not None else (len(dataset),)
        if sum(self.shard_sizes) != len(dataset):
            raise ValueError(f"shard sizes add up to {sum(self.shard_sizes)}, the dataset has {len(dataset)}")
        self.window = window
        self.consumed = 0

    def epoch_order(self) -> np.ndarray:
        """The global order of ``self.epoch`` (int64, padded to ``total_size``): the same on every rank."""
        if self.shuffle:
            order = block_shuffled_order(self.shard_sizes, self.seed, self.epoch, self.window)
        else:
            order = np.arange(len(self.dataset), dtype=np.int64)
        return pad_order(order, self.total_size)

    def rank_indices(self) -> torch.Tensor:
        """All indices of this rank for ``self.epoch`` (int64, length ``num_samples``)."""
        order = rank_slice(self.epoch_order(), self.num_replicas, self.rank, self.batch_size)
        return torch.from_numpy(order)

    def __iter__(self) -> Iterator[int]:
        if self.consumed >= self.num_samples:
            self.epoch += 1
            self.consumed = 0
        remaining = self.rank_indices()[self.consumed :]
        for chunk in remaining.split(_YIELD_CHUNK):
            yield from chunk.tolist()

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch; the position is reset only when the epoch actually changes."""
        if epoch != self.epoch:
            self.consumed = 0
        self.epoch = epoch

    def state_dict(self) -> dict[str, int]:
        """The position: ``{'epoch', 'consumed', 'world_size'}`` (samples of this rank already trained on, and the
        world size they were counted at: ``consumed * world_size`` samples of the epoch's order are done)."""
        return {"epoch": self.epoch, "consumed": self.consumed, "world_size": self.num_replicas}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore a position saved by :meth:`state_dict`, at this world size or another (a state without
        ``world_size`` is taken to be of this one). A position that is not a whole number of this world's steps
        (``num_replicas * batch_size`` samples) is refused, as is one that the other world size pads differently."""
        missing = {"epoch", "consumed"} - set(state)
        if missing:
            raise ValueError(f"sampler state is missing keys {sorted(missing)}: got {state!r}")
        if state["consumed"] < 0:
            raise ValueError(f"sampler state 'consumed' must be >= 0, got {state['consumed']}")
        self.epoch = int(state["epoch"])
        self.consumed = self._local_position(int(state["consumed"]), int(state.get("world_size", self.num_replicas)))

    def _local_position(self, consumed: int, world_size: int) -> int:
        if world_size == self.num_replicas:
            return consumed
        done = consumed * world_size
        if done >= len(self.dataset):
            return self.num_samples
        step = self.num_replicas * self.batch_size
        if done % step:
            raise ValueError(
                f"cannot resume at world size {self.num_replicas}: the saved position ({consumed} samples on each "
                f"of {world_size} ranks = {done}) is not a whole number of steps of {self.num_replicas} x "
                f"{self.batch_size} samples"
            )
        return done // self.num_replicas


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` over a :class:`ResumableDistributedSampler` whose state Lightning checkpoints."""

    def __init__(self, dataset: Any, *, sampler: ResumableDistributedSampler, **kwargs: Any) -> None:
        if not isinstance(sampler, ResumableDistributedSampler):
            raise ValueError(
                f"ResumableDataLoader needs a ResumableDistributedSampler, got sampler={type(sampler).__name__}"
            )
        super().__init__(dataset, sampler=sampler, **kwargs)

    def record_progress(self, batches_done: int) -> None:
        """Mark ``batches_done`` batches of the current epoch as consumed by this rank."""
        self.sampler.consumed = batches_done * self.batch_size

    def record_epoch_done(self) -> None:
        """Mark the current epoch finished (its last batch trained, also one cut short by `limit_train_batches`):
        the position moves to the start of the next epoch, which is what a checkpoint taken at the epoch's end
        must resume from."""
        self.sampler.set_epoch(self.sampler.epoch + 1)

    def state_dict(self) -> dict[str, int]:
        """The sampler's position (see :meth:`ResumableDistributedSampler.state_dict`)."""
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore the sampler's position."""
        self.sampler.load_state_dict(state)
