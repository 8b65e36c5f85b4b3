"""Distributed sampling that can resume exactly in the middle of an epoch.

Lightning saves and restores the state of the *DataLoader* (when it has ``state_dict`` /
``load_state_dict``), never of its sampler, and restores it before calling ``iter()``. The
sampler below keeps its position as ``{epoch, consumed}``; the loader forwards that state and
is told how far training got by ``record_progress`` (called by the training callback in
``on_train_batch_start`` with ``batch_idx + 1``) and when an epoch is done (``record_epoch_done``). Lightning
restores the loader's state only from mid-epoch checkpoints; the datamodule keeps a copy for the others
(``SplitLoaders.state_dict``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler

_YIELD_CHUNK = 65536


class ResumableDistributedSampler(DistributedSampler):
    """A ``DistributedSampler`` (``drop_last=False``) whose position within an epoch is checkpointable.

    Every rank gets ``ceil(len(dataset) / num_replicas)`` indices (padded by repeating the start of
    the permutation, like ``DistributedSampler``), shuffled by ``(seed, epoch)``. ``__len__`` is
    always the full epoch; ``__iter__`` yields the indices this rank has not consumed yet and rolls
    over to the next epoch once the current one is fully consumed.
    """

    def __init__(
        self,
        dataset: Sized,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.consumed = 0

    def rank_indices(self) -> torch.Tensor:
        """All indices of this rank for ``self.epoch`` (int64, length ``num_samples``)."""
        n = len(self.dataset)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            indices = torch.randperm(n, generator=generator)
        else:
            indices = torch.arange(n)
        padding = self.total_size - n
        if padding > 0:
            indices = torch.cat([indices, indices.repeat(math.ceil(padding / n))[:padding]])
        return indices[self.rank : self.total_size : self.num_replicas]

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
        """The position: ``{'epoch', 'consumed'}`` (samples of this rank already trained on)."""
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore a position saved by :meth:`state_dict`."""
        missing = {"epoch", "consumed"} - set(state)
        if missing:
            raise ValueError(f"sampler state is missing keys {sorted(missing)}: got {state!r}")
        if state["consumed"] < 0:
            raise ValueError(f"sampler state 'consumed' must be >= 0, got {state['consumed']}")
        self.epoch = int(state["epoch"])
        self.consumed = int(state["consumed"])


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
