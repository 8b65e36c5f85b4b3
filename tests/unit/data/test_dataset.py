"""ShardDataset: correct samples in and out of worker processes, fork safety, bounded worker memory."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from zoobot_hpc.data.dataset import ShardDataset, collate_samples
from zoobot_hpc.data.shard_format import (
    FORMAT_VERSION,
    DatasetError,
    Manifest,
    read_manifest,
    shard_file_name,
    write_manifest,
    write_shard,
)


def write_dataset(
    root: Path, shard_counts: dict[str, list[int]], image_size: int = 16, seed: int = 0
) -> dict[str, dict[str, np.ndarray]]:
    """Write a random shard dataset; returns per split the arrays written (images, ids, labels)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    written: dict[str, dict[str, np.ndarray]] = {}
    splits = {}
    for split, counts in shard_counts.items():
        total = sum(counts)
        arrays = {
            "images": rng.integers(0, 256, (total, image_size, image_size, 3), dtype=np.uint8),
            "ids": np.array([f"{split}-galaxy-{i}" for i in range(total)]),
            "smooth_fraction": rng.random(total).astype(np.float32),
            "label": rng.integers(0, 3, total).astype(np.int64),
        }
        infos, start = [], 0
        for shard_index, count in enumerate(counts):
            rows = slice(start, start + count)
            labels = {"smooth_fraction": arrays["smooth_fraction"][rows], "label": arrays["label"][rows]}
            path = root / shard_file_name(split, shard_index)
            infos.append(write_shard(path, arrays["images"][rows], list(arrays["ids"][rows]), labels, split))
            start += count
        splits[split] = tuple(infos)
        written[split] = arrays
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        image_shape=(image_size, image_size, 3),
        label_columns={"smooth_fraction": "float32", "label": "int64"},
        allow_nan=(),
        splits=splits,
        id_column="id",
        source="tests",
        created="2026-01-01T00:00:00+00:00",
    )
    write_manifest(root, manifest)
    return written


def assert_batch_matches(batch: dict, arrays: dict[str, np.ndarray]) -> None:
    index = batch["index"].numpy()
    np.testing.assert_array_equal(batch["image"].numpy(), arrays["images"][index])
    assert list(batch["id"]) == list(arrays["ids"][index])
    np.testing.assert_array_equal(batch["smooth_fraction"].numpy(), arrays["smooth_fraction"][index])
    np.testing.assert_array_equal(batch["label"].numpy(), arrays["label"][index])
    assert batch["smooth_fraction"].dtype == torch.float32
    assert batch["label"].dtype == torch.int64
    assert batch["image"].dtype == torch.uint8


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("shards")
    written = write_dataset(root, {"train": [13, 7, 20], "val": [5]})
    return root, written


def test_single_samples_match_written_arrays(dataset_dir: tuple[Path, dict]) -> None:
    root, written = dataset_dir
    dataset = ShardDataset(root, "train")
    assert len(dataset) == 40
    for index in (0, 12, 13, 19, 20, 39):
        sample = dataset[index]
        assert sample["index"] == index
        assert sample["id"] == written["train"]["ids"][index]
        assert sample["image"].shape == (16, 16, 3)
        np.testing.assert_array_equal(sample["image"].numpy(), written["train"]["images"][index])
        assert sample["label"].item() == written["train"]["label"][index]
        assert sample["smooth_fraction"].item() == written["train"]["smooth_fraction"][index]


def test_batched_read_keeps_request_order_and_repeats(dataset_dir: tuple[Path, dict]) -> None:
    root, written = dataset_dir
    dataset = ShardDataset(root, "train", label_cols=["label"])
    indices = [39, 0, 25, 13, 0, 7, 39]
    batch = collate_samples(dataset.__getitems__(indices))
    assert batch["index"].tolist() == indices
    np.testing.assert_array_equal(batch["image"].numpy(), written["train"]["images"][indices])
    np.testing.assert_array_equal(batch["label"].numpy(), written["train"]["label"][indices])
    assert "smooth_fraction" not in batch
    # images and labels of a batch come back as views of one block, not copies
    assert batch["image"].untyped_storage().data_ptr() == batch["label"].untyped_storage().data_ptr()


@pytest.mark.parametrize("collate_fn", [collate_samples, None])
def test_workers_return_correct_samples(dataset_dir: tuple[Path, dict], collate_fn) -> None:
    root, written = dataset_dir
    dataset = ShardDataset(root, "train")
    loader = DataLoader(
        dataset,
        batch_size=6,
        shuffle=True,
        num_workers=2,
        collate_fn=collate_fn,
        generator=torch.Generator().manual_seed(0),
    )
    seen = []
    for batch in loader:
        assert_batch_matches(batch, written["train"])
        seen.extend(batch["index"].tolist())
    assert sorted(seen) == list(range(40))


def test_fork_after_parent_reads_is_safe(dataset_dir: tuple[Path, dict]) -> None:
    root, written = dataset_dir
    dataset = ShardDataset(root, "train", max_open_files=2)
    parent_batch = collate_samples(dataset.__getitems__(list(range(40))))
    assert dataset._handles, "the parent must hold open files before the fork for this test to mean anything"
    loader = DataLoader(dataset, batch_size=5, num_workers=2, multiprocessing_context="fork")
    for _ in range(2):
        for batch in loader:
            assert_batch_matches(batch, written["train"])
    assert_batch_matches(parent_batch, written["train"])
    assert_batch_matches(collate_samples(dataset.__getitems__([3, 33])), written["train"])


def test_pickles_without_open_files(dataset_dir: tuple[Path, dict]) -> None:
    root, written = dataset_dir
    dataset = ShardDataset(root, "train")
    dataset[0]
    clone = pickle.loads(pickle.dumps(dataset))
    np.testing.assert_array_equal(clone[21]["image"].numpy(), written["train"]["images"][21])


def test_open_files_are_capped(dataset_dir: tuple[Path, dict]) -> None:
    root, written = dataset_dir
    dataset = ShardDataset(root, "train", max_open_files=1)
    batch = collate_samples(dataset.__getitems__([0, 15, 30, 1, 16]))
    assert_batch_matches(batch, written["train"])
    assert len(dataset._handles) == 1
    dataset.close()
    assert not dataset._handles


def test_reads_compressed_images_too(tmp_path: Path) -> None:
    written = write_dataset(tmp_path, {"train": [6, 5]})
    for shard in ("train-00000.h5", "train-00001.h5"):
        with h5py.File(tmp_path / shard, "r+") as handle:
            images = handle["images"][:]
            del handle["images"]
            handle.create_dataset("images", data=images, chunks=(2, 16, 16, 3), compression="gzip")
    manifest = read_manifest(tmp_path)
    resized = [dataclasses.replace(s, size_bytes=(tmp_path / s.file).stat().st_size) for s in manifest.splits["train"]]
    write_manifest(tmp_path, dataclasses.replace(manifest, splits={**manifest.splits, "train": resized}))
    dataset = ShardDataset(tmp_path, "train")
    assert_batch_matches(collate_samples(dataset.__getitems__([10, 0, 7, 3, 5])), written["train"])


def test_bad_requests_name_the_problem(dataset_dir: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = dataset_dir
    with pytest.raises(DatasetError, match="'nope'"):
        ShardDataset(root, "train", label_cols=["label", "nope"])
    with pytest.raises(DatasetError, match="'test'"):
        ShardDataset(root, "test")
    with pytest.raises(IndexError, match="40"):
        ShardDataset(root, "train")[40]
    broken = tmp_path / "broken"
    write_dataset(broken, {"train": [3, 3]})
    (broken / shard_file_name("train", 1)).unlink()
    dataset = ShardDataset(broken, "train")
    assert dataset[2]["index"] == 2
    with pytest.raises(DatasetError, match=r"train-00001\.h5"):
        dataset[4]


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class _RssReportingDataset(ShardDataset):
    """Adds the worker's resident memory (KiB) to every sample."""

    def __getitems__(self, indices):
        samples = super().__getitems__(indices)
        rss = _status_kib("VmRSS")
        return [{**sample, "rss_kib": rss} for sample in samples]


def _worker_rss_growth_kib(root: Path) -> int:
    """How much a worker's resident memory grows from its first batch while reading the split twice."""
    dataset = _RssReportingDataset(root, "train")
    loader = DataLoader(dataset, batch_size=64, num_workers=1, persistent_workers=True, collate_fn=collate_samples)
    readings = [int(batch["rss_kib"][0]) for _ in range(2) for batch in loader]
    return max(readings) - readings[0]


def test_worker_memory_does_not_grow_with_dataset_size(tmp_path: Path) -> None:
    small, large = tmp_path / "small", tmp_path / "large"
    write_dataset(small, {"train": [256]}, image_size=32)
    write_dataset(large, {"train": [1024] * 8}, image_size=32)  # 32x the images in 8 shards: 25 MB of pixels
    small_growth = _worker_rss_growth_kib(small)
    large_growth = _worker_rss_growth_kib(large)
    assert large_growth - small_growth < 8 * 1024, f"worker RSS growth {small_growth} KiB -> {large_growth} KiB"
