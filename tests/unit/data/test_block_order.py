"""The block-shuffled training order: a permutation, local to a few shards at a time, a function of (seed, epoch)."""

from __future__ import annotations

import numpy as np
import pytest

from zoobot_hpc.data.block_order import block_shuffled_order, pad_order, rank_slice


def shard_of(order: np.ndarray, sizes: list[int]) -> np.ndarray:
    return np.searchsorted(np.cumsum(sizes), order, side="right")


@pytest.mark.parametrize("window", [1, 3, 100])
def test_every_sample_once(window: int) -> None:
    sizes = [50, 17, 33, 50, 1, 49]
    order = block_shuffled_order(sizes, seed=1, epoch=2, window=window)
    assert sorted(order.tolist()) == list(range(sum(sizes)))


def test_a_block_holds_window_shards_and_each_shard_is_in_one_block() -> None:
    sizes = [40] * 12
    order = block_shuffled_order(sizes, seed=0, epoch=0, window=3)
    shards = shard_of(order, sizes).reshape(4, 120)
    assert all(len(set(block.tolist())) == 3 for block in shards)
    assert sorted(np.unique(shards).tolist()) == list(range(12))
    assert len({frozenset(block.tolist()) for block in shards}) == 4


def test_seeded_per_epoch() -> None:
    sizes = [30] * 8
    same = block_shuffled_order(sizes, 5, 1, 2), block_shuffled_order(sizes, 5, 1, 2)
    assert np.array_equal(*same)
    assert not np.array_equal(block_shuffled_order(sizes, 5, 1, 2), block_shuffled_order(sizes, 5, 2, 2))
    assert not np.array_equal(block_shuffled_order(sizes, 5, 1, 2), block_shuffled_order(sizes, 6, 1, 2))


def test_padding_and_rank_slices() -> None:
    order = np.arange(10)
    assert pad_order(order, 12).tolist() == [*range(10), 0, 1]
    padded = pad_order(order, 12)
    assert rank_slice(padded, 3, 2, 2).tolist() == [4, 5, 0, 1]
    with pytest.raises(ValueError, match="does not split over 4 ranks"):
        rank_slice(np.arange(10), 4, 0, 2)
    with pytest.raises(ValueError, match="window"):
        block_shuffled_order([3], 0, 0, 0)
