"""Reused worker batch blocks: a block is reused only after every tensor of its batch is gone, never before."""

from __future__ import annotations

import gc
import os
import pickle
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing
from torch.utils.data import DataLoader

from zoobot_hpc.data import batch_memory
from zoobot_hpc.data.batch_memory import BlockPool, PooledBatch, worker_pool
from zoobot_hpc.data.dataset import WORKER_BATCH_BLOCKS, ShardDataset, collate_samples

from .test_dataset import assert_batch_matches, write_dataset


@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch) -> BlockPool:
    """This process acts as a worker with a 2-block pool."""
    fresh = BlockPool(capacity=2)
    monkeypatch.setattr(batch_memory, "_pool", fresh)
    monkeypatch.setattr(batch_memory, "_pool_pid", os.getpid())
    return fresh


def _filled_batch(pool: BlockPool, value: int) -> PooledBatch:
    block = pool.allocate(16 + 4 * 8)
    images = torch.empty(0, dtype=torch.uint8).set_(block, 0, (4, 3)).fill_(value)
    index = torch.empty(0, dtype=torch.int64).set_(block, 2, (4,)).copy_(torch.arange(4) + value)
    return PooledBatch({"image": images, "id": [f"g{value}"] * 4, "index": index})


def _send(batch: PooledBatch) -> dict:
    """What the main process gets when a worker puts `batch` on its result queue."""
    return pickle.loads(ForkingPickler.dumps(batch))


def test_a_block_is_reused_only_after_every_view_of_its_batch_is_gone(pool: BlockPool) -> None:
    received = _send(_filled_batch(pool, 7))
    assert type(received) is dict and list(received) == ["image", "id", "index"]
    assert received["image"].tolist() == [[7] * 3] * 4 and received["index"].tolist() == [7, 8, 9, 10]
    assert received["id"] == ["g7"] * 4
    kept_view = received["image"][1:].t()
    del received
    gc.collect()
    second = _send(_filled_batch(pool, 1))  # the first block is still held through `kept_view`
    assert pool.reused == 0 and pool.allocated == 2
    assert kept_view.tolist() == [[7] * 3] * 3
    del kept_view, second
    gc.collect()
    third = _send(_filled_batch(pool, 3))
    assert pool.reused == 1 and pool.allocated == 2
    assert third["index"].tolist() == [3, 4, 5, 6]


def test_a_full_pool_falls_back_to_fresh_blocks(pool: BlockPool) -> None:
    held = [_send(_filled_batch(pool, value)) for value in range(5)]
    assert pool.allocated == 5 and pool.reused == 0 and len(pool._blocks) == 2
    assert [batch["index"].tolist()[0] for batch in held] == list(range(5))
    assert [batch["image"][0, 0].item() for batch in held] == list(range(5))
    del held
    gc.collect()
    assert not pool.owns(pool.allocate(10_000)), "no free block is big enough and the pool is full"
    assert pool.owns(pool.allocate(48))


def test_outside_a_worker_batches_are_plain_dicts(dataset_dir: tuple[Path, dict]) -> None:
    root, written = dataset_dir
    batch = collate_samples(ShardDataset(root, "train").__getitems__([3, 1]))
    assert type(batch) is dict
    assert_batch_matches(batch, written["train"])


class _PoolReportingDataset(ShardDataset):
    """Adds the worker pool's reuse count and the worker's pid to every sample."""

    def __getitems__(self, indices):
        samples = super().__getitems__(indices)
        pool = worker_pool(WORKER_BATCH_BLOCKS)
        return [{**sample, "reused": pool.reused, "worker": os.getpid()} for sample in samples]


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("pooled")
    return root, write_dataset(root, {"train": [13, 7, 20], "val": [5]})


def _loader(root: Path, persistent: bool = True) -> DataLoader:
    return DataLoader(
        _PoolReportingDataset(root, "train", batch_pool=True),
        batch_size=2,
        shuffle=True,
        num_workers=1,
        persistent_workers=persistent,
        collate_fn=collate_samples,
        generator=torch.Generator().manual_seed(0),
    )


def test_batches_the_consumer_keeps_are_never_overwritten(dataset_dir: tuple[Path, dict]) -> None:
    root, written = dataset_dir
    kept = list(_loader(root))
    assert len(kept) == 20 > WORKER_BATCH_BLOCKS
    assert max(int(batch["reused"][0]) for batch in kept) == 0
    for batch in kept:
        assert_batch_matches(batch, written["train"])


def test_a_worker_reuses_blocks_of_batches_the_consumer_dropped(dataset_dir: tuple[Path, dict]) -> None:
    root, written = dataset_dir
    loader = _loader(root)
    seen, reused = [], 0
    for _ in range(2):
        for batch in loader:
            assert_batch_matches(batch, written["train"])
            seen.extend(batch["index"].tolist())
            reused = int(batch["reused"][0])
    assert sorted(seen) == sorted(list(range(40)) * 2)
    assert reused >= 40 - WORKER_BATCH_BLOCKS - 1, f"only {reused} of 40 batches reused a block"


def test_the_main_process_drops_mappings_of_exited_workers(dataset_dir: tuple[Path, dict]) -> None:
    root, written = dataset_dir
    loader = _loader(root, persistent=False)
    workers = []
    for _ in range(2):
        for batch in loader:
            assert_batch_matches(batch, written["train"])
            workers.append(int(batch["worker"][0]))
        del batch
    first, last = workers[0], workers[-1]
    assert first != last
    mapped_workers = {pid for pid, _ in batch_memory._mapped_blocks}
    assert first not in mapped_workers and last in mapped_workers
    assert np.unique(workers).size == 2


def _channels_first_collate(samples: list[dict]) -> dict:
    """A user's collate_fn around ours: a strided view of the images, and views nested in a list."""
    batch = collate_samples(samples)
    batch["image"] = batch["image"].permute(0, 3, 1, 2)
    batch["corners"] = [batch["image"][:, :, :4, :4], batch["label"][:1]]
    return batch


def test_strided_and_nested_views_of_a_batch_keep_their_pixels(dataset_dir: tuple[Path, dict]) -> None:
    root, written = dataset_dir
    loader = DataLoader(
        ShardDataset(root, "train", batch_pool=True), batch_size=2, num_workers=1, persistent_workers=True,
        collate_fn=_channels_first_collate,
    )  # fmt: skip
    kept = []
    for batch in loader:
        kept.append((batch["index"].numpy().copy(), batch["image"], batch["corners"][0]))
        del batch
    assert len(kept) == 20
    for index, image, corner in kept:
        expected = torch.from_numpy(written["train"]["images"][index]).permute(0, 3, 1, 2)
        assert torch.equal(image, expected) and torch.equal(corner, expected[:, :, :4, :4])


def _collect_garbage(worker_id: int) -> None:
    gc.collect()


def test_a_forked_child_collecting_an_inherited_batch_does_not_free_its_block(dataset_dir: tuple[Path, dict]) -> None:
    """A batch in an uncollected reference cycle at fork time: the child's gc must not free the parent's block."""
    root, _ = dataset_dir

    def loader(init=None) -> DataLoader:
        return DataLoader(
            ShardDataset(root, "train", batch_pool=True), batch_size=2, num_workers=1, collate_fn=collate_samples,
            persistent_workers=True, prefetch_factor=1, worker_init_fn=init, multiprocessing_context="fork",
        )  # fmt: skip

    gc.disable()
    try:
        batches = iter(loader())
        cycle = [next(batches)]
        cycle.append(cycle)
        del cycle
        next(iter(loader(_collect_garbage)))  # a forked worker collects the inherited cycle
        held = [next(batches) for _ in range(4)]
        copies = [batch["image"].clone() for batch in held]
        gc.collect()  # now the parent frees the cycle's block
        for _ in range(6):
            next(batches)
        assert all(torch.equal(batch["image"], copy) for batch, copy in zip(held, copies, strict=True))
    finally:
        gc.enable()
