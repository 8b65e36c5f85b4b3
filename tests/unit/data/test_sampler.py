"""ResumableDistributedSampler / ResumableDataLoader: equal shares, seeded shuffles, exact resume."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DistributedSampler

from zoobot_hpc.data.sampler import ResumableDataLoader, ResumableDistributedSampler


def rank_lists(size: int, world_size: int, epoch: int = 0, seed: int = 0) -> list[list[int]]:
    lists = []
    for rank in range(world_size):
        sampler = ResumableDistributedSampler(range(size), num_replicas=world_size, rank=rank, seed=seed)
        sampler.set_epoch(epoch)
        lists.append(list(sampler))
    return lists


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("size", [1, 2, 7, 10, 11])
def test_every_rank_gets_the_same_count_and_all_samples_are_covered(world_size: int, size: int) -> None:
    per_rank = math.ceil(size / world_size)
    lists = rank_lists(size, world_size)
    assert [len(indices) for indices in lists] == [per_rank] * world_size
    assert all(len(ResumableDistributedSampler(range(size), world_size, r)) == per_rank for r in range(world_size))
    everything = [i for indices in lists for i in indices]
    assert set(everything) == set(range(size))
    assert len(everything) - size == per_rank * world_size - size  # only the padding repeats


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_are_disjoint_when_the_size_divides(world_size: int) -> None:
    lists = rank_lists(12, world_size, epoch=3)
    assert sorted(i for indices in lists for i in indices) == list(range(12))


@pytest.mark.parametrize(("size", "world_size"), [(11, 3), (10, 2), (5, 1)])
def test_order_is_torch_distributed_sampler_order(size: int, world_size: int) -> None:
    for rank in range(world_size):
        ours = ResumableDistributedSampler(range(size), num_replicas=world_size, rank=rank, seed=7)
        reference = DistributedSampler(range(size), num_replicas=world_size, rank=rank, seed=7)
        for epoch in (0, 4):
            ours.set_epoch(epoch)
            reference.set_epoch(epoch)
            assert list(ours) == list(reference)


def test_shuffle_is_seeded_per_epoch() -> None:
    assert rank_lists(50, 2, epoch=1) == rank_lists(50, 2, epoch=1)
    assert rank_lists(50, 2, epoch=1) != rank_lists(50, 2, epoch=2)
    assert rank_lists(50, 2, epoch=1, seed=1) != rank_lists(50, 2, epoch=1, seed=2)


def test_state_round_trip_mid_epoch_yields_exactly_the_remaining_indices() -> None:
    sampler = ResumableDistributedSampler(range(23), num_replicas=2, rank=1, seed=3)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.consumed = 8
    state = sampler.state_dict()
    assert state == {"epoch": 2, "consumed": 8}

    resumed = ResumableDistributedSampler(range(23), num_replicas=2, rank=1, seed=3)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # Lightning sets the same epoch again: the position is kept
    assert list(resumed) == full[8:]
    assert len(resumed) == len(full)


def test_rolls_over_to_the_next_epoch_once_consumed() -> None:
    sampler = ResumableDistributedSampler(range(10), num_replicas=2, rank=0, seed=5)
    sampler.load_state_dict({"epoch": 0, "consumed": 5})
    next_epoch = list(sampler)
    assert sampler.state_dict() == {"epoch": 1, "consumed": 0}
    assert next_epoch == rank_lists(10, 2, epoch=1, seed=5)[0]
    sampler.consumed = 3
    sampler.set_epoch(1)  # Lightning's set_epoch after the rollover changes nothing
    assert sampler.consumed == 3
    sampler.set_epoch(2)
    assert sampler.state_dict() == {"epoch": 2, "consumed": 0}


def test_bad_state_is_refused() -> None:
    sampler = ResumableDistributedSampler(range(10))
    with pytest.raises(ValueError, match="consumed"):
        sampler.load_state_dict({"epoch": 1})
    with pytest.raises(ValueError, match="-4"):
        sampler.load_state_dict({"epoch": 1, "consumed": -4})


def test_loader_records_progress_and_resumes_mid_epoch() -> None:
    dataset = torch.arange(100, 125)

    def loader() -> ResumableDataLoader:
        sampler = ResumableDistributedSampler(dataset, num_replicas=1, rank=0, seed=11)
        return ResumableDataLoader(dataset, sampler=sampler, batch_size=4, generator=torch.Generator())

    first = loader()
    first.sampler.set_epoch(1)
    batches = []
    for batches_done, batch in enumerate(first, start=1):
        first.record_progress(batches_done)
        batches.append(batch.tolist())
        if batches_done == 3:
            state = first.state_dict()
    assert state == {"epoch": 1, "consumed": 12}
    assert len(first) == 7

    second = loader()
    second.load_state_dict(state)
    second.sampler.set_epoch(1)
    assert [batch.tolist() for batch in second] == batches[3:]


def test_loader_needs_a_resumable_sampler() -> None:
    with pytest.raises(ValueError, match="RandomSampler"):
        ResumableDataLoader(range(4), sampler=torch.utils.data.RandomSampler(range(4)))
