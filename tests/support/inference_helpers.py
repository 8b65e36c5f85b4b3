"""Helpers of the inference tests: requests run in this process, ids and images read from the shards."""

from __future__ import annotations

from pathlib import Path

import h5py
import torch

from zoobot_hpc.data.augment import AugmentConfig, augment_batch
from zoobot_hpc.data.dataset import ShardDataset, collate_samples
from zoobot_hpc.data.shard_format import IDS_KEY, read_manifest
from zoobot_hpc.inference.loop import run_inference
from zoobot_hpc.inference.request import InferenceRequest, inference_config, prepare_inference


def predict_here(request: InferenceRequest, overrides: tuple[str, ...] = ()) -> Path:
    """Prepare and run a request in this process (one rank, no loader workers); returns the output file."""
    config, trained = inference_config(request, overrides=("data.num_workers=0", *overrides))
    prepare_inference(request, config, trained)
    outcome = run_inference(request, config)
    assert not outcome.preempted
    return outcome.out


def manifest_ids(dataset_dir: Path) -> tuple[list[str], list[str]]:
    """(ids, split of each id) of every split, in manifest order, read straight from the shard files."""
    manifest = read_manifest(dataset_dir)
    ids, splits = [], []
    for split, shards in manifest.splits.items():
        for shard in shards:
            with h5py.File(dataset_dir / shard.file, "r") as handle:
                ids += list(handle[IDS_KEY].asstr()[()])
            splits += [split] * shard.count
    return ids, splits


def eval_view(dataset_dir: Path, split: str, indices: list[int], size: int) -> torch.Tensor:
    """The evaluation view (float, (B, C, size, size)) of some galaxies of a split."""
    batch = collate_samples(ShardDataset(dataset_dir, split, label_cols=()).__getitems__(indices))
    return augment_batch(
        batch["image"], batch["index"], epoch=0, seed=0, config=AugmentConfig(output_size=size), training=False
    )
