"""Which dataset a run trains on, and whether its shards are still the ones the manifest describes.

The manifest's checksum names a dataset: checkpoints record it, and a resume onto another one is refused. Every job
start checks each shard's size against the manifest (`check_shard_sizes`), each open of a shard its image count
(`check_open_shard`), each epoch start the sizes again: HDF5 zero-fills reads past a truncated file's end, so a
shard cut short under a running job would otherwise read as black images with their labels.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from zoobot_hpc.data.shard_format import MANIFEST_NAME, DatasetError, Manifest

log = logging.getLogger(__name__)


class ShardChanged(DatasetError):
    """A shard is no longer the file its manifest describes (truncated, rewritten, removed)."""


def manifest_checksum(dataset_dir: str | os.PathLike) -> str:
    """The sha256 of a dataset's manifest file: the dataset's identity."""
    return hashlib.sha256((Path(dataset_dir) / MANIFEST_NAME).read_bytes()).hexdigest()


def check_shard_sizes(dataset_dir: str | os.PathLike, manifest: Manifest, splits: list[str] | None = None) -> None:
    """Raise ShardChanged (one line naming the shard) when a shard of `splits` (all when None) is missing or not
    the size the manifest records."""
    for split, shards in manifest.splits.items():
        if splits is not None and split not in splits:
            continue
        for shard in shards:
            path = Path(dataset_dir) / shard.file
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                raise ShardChanged(f"shard {path} is missing (the manifest lists it)") from None
            if size != shard.size_bytes:
                raise ShardChanged(f"shard {path} is {size} bytes, the manifest says {shard.size_bytes}: it changed")


def check_open_shard(path: str | os.PathLike, images_in_file: int, expected: int) -> None:
    """Raise ShardChanged when an opened shard holds another number of images than the manifest lists."""
    if images_in_file != expected:
        raise ShardChanged(f"shard {path} holds {images_in_file} images, the manifest says {expected}: it changed")


def check_same_dataset(recorded: str | None, current: str, checkpoint: Path, allow: bool) -> None:
    """Refuse (one-line DatasetError) a resume from a checkpoint trained on another dataset, unless `allow`."""
    if recorded is None or recorded == current:
        return
    message = (
        f"{checkpoint} was trained on another dataset (manifest sha256 {recorded[:12]}, now {current[:12]}): "
        "resuming would continue with another order, length and labels"
    )
    if allow:
        log.warning("%s; resuming anyway (trainer.allow_dataset_change)", message)
        return
    raise DatasetError(f"{message}; set trainer.allow_dataset_change: true to resume anyway, or start a new run")
