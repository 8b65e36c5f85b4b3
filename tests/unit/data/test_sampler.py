"""ResumableDistributedSampler / ResumableDataLoader: equal shares, seeded shuffles, exact resume."""

from __future__ import annotations

import math

import pytest
import torch

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


def global_steps(size: int, world_size: int, batch_size: int, shard_sizes: list[int], epoch: int = 0) -> list[int]:
    """The epoch's samples step by step, each step the ranks' batches in rank order."""
    ranks = []
    for rank in range(world_size):
        sampler = ResumableDistributedSampler(
            range(size), world_size, rank, seed=7, batch_size=batch_size, shard_sizes=shard_sizes, window=2
        )
        sampler.set_epoch(epoch)
        ranks.append(list(sampler))
    steps = math.ceil(len(ranks[0]) / batch_size)
    return [i for step in range(steps) for r in ranks for i in r[step * batch_size : (step + 1) * batch_size]]


@pytest.mark.parametrize("epoch", [0, 3])
def test_the_global_order_is_the_same_at_every_world_size(epoch: int) -> None:
    shard_sizes, size = [13, 9, 20, 5, 11], 58
    single = global_steps(size, 1, 4, shard_sizes, epoch)
    assert sorted(single) == list(range(size))
    for world_size in (2, 4):
        order = global_steps(size, world_size, 4, shard_sizes, epoch)
        assert order[:size] == single
        assert order[size:] == single[: len(order) - size]  # the padding repeats the start


def test_ranks_take_contiguous_runs_of_each_step() -> None:
    sampler = ResumableDistributedSampler(range(40), 2, 1, shuffle=False, batch_size=4)
    assert list(sampler) == [4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31, 36, 37, 38, 39]


def test_a_position_resumes_at_another_world_size() -> None:
    shard_sizes, size = [13, 9, 20, 5, 11], 58
    settings = {"seed": 7, "batch_size": 4, "shard_sizes": shard_sizes}
    two = [ResumableDistributedSampler(range(size), 2, r, **settings) for r in (0, 1)]
    done = [list(sampler)[:8] for sampler in two]  # two steps on each rank
    for sampler in two:
        sampler.consumed = 8
    one = ResumableDistributedSampler(range(size), 1, 0, **settings)
    one.load_state_dict(two[0].state_dict())
    assert one.consumed == 16
    assert sorted(done[0] + done[1] + list(one)) == list(range(size))
    four = ResumableDistributedSampler(range(size), 4, 0, **settings)
    with pytest.raises(ValueError, match="not a whole number of steps of 4 x 4"):
        four.load_state_dict({"epoch": 0, "consumed": 4, "world_size": 2})


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
    assert state == {"epoch": 2, "consumed": 8, "world_size": 2}

    resumed = ResumableDistributedSampler(range(23), num_replicas=2, rank=1, seed=3)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # Lightning sets the same epoch again: the position is kept
    assert list(resumed) == full[8:]
    assert len(resumed) == len(full)


def test_rolls_over_to_the_next_epoch_once_consumed() -> None:
    sampler = ResumableDistributedSampler(range(10), num_replicas=2, rank=0, seed=5)
    sampler.load_state_dict({"epoch": 0, "consumed": 5})
    next_epoch = list(sampler)
    assert sampler.state_dict() == {"epoch": 1, "consumed": 0, "world_size": 2}
    assert next_epoch == rank_lists(10, 2, epoch=1, seed=5)[0]
    sampler.consumed = 3
    sampler.set_epoch(1)  # Lightning's set_epoch after the rollover changes nothing
    assert sampler.consumed == 3
    sampler.set_epoch(2)
    assert sampler.state_dict() == {"epoch": 2, "consumed": 0, "world_size": 2}


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
    assert state == {"epoch": 1, "consumed": 12, "world_size": 1}
    assert len(first) == 7

    second = loader()
    second.load_state_dict(state)
    second.sampler.set_epoch(1)
    assert [batch.tolist() for batch in second] == batches[3:]


def test_loader_needs_a_resumable_sampler() -> None:
    with pytest.raises(ValueError, match="RandomSampler"):
        ResumableDataLoader(range(4), sampler=torch.utils.data.RandomSampler(range(4)))
