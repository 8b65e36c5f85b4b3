"""Which dataset a run trains on, and whether its shards are still the ones the manifest describes.

The manifest's checksum names a dataset: checkpoints record it, and a resume onto another one is refused. Every job
start checks each shard's size against the manifest (`check_shard_sizes`), each open of a shard its image count
(`check_open_shard`), each epoch start the sizes again: HDF5 zero-fills reads past a truncated file's end, so a
shard cut short under a running job would otherwise read as black images with their labels.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


TRANSIENT_ERRNOS = (errno.EIO, errno.ESTALE)
READ_RETRIES = 3
RETRY_DELAY_S = 0.5


def _is_transient(error: OSError) -> bool:
    """EIO or ESTALE, as the OS raises them or as HDF5 words them inside its message."""
    if error.errno in TRANSIENT_ERRNOS:
        return True
    text = str(error)
    return any(f"errno = {number}," in text for number in TRANSIENT_ERRNOS)


def read_checked(dataset: Any, shard_index: int, read: Callable[[], None]) -> None:
    """Run `read` (one shard's part of a batch) for `dataset` (a ShardDataset), then check that the shard still has
    the size its manifest records: a shard truncated under the job raises ShardChanged instead of handing zeros on.
    A transient read error (EIO, ESTALE) is retried up to READ_RETRIES times, each after reopening the shard."""
    path = dataset.shard_paths[shard_index]
    expected = dataset.manifest.splits[dataset.split][shard_index].size_bytes
    for attempt in range(READ_RETRIES + 1):
        try:
            read()
            break
        except OSError as error:
            if not _is_transient(error) or attempt == READ_RETRIES:
                raise
            log.warning("%s: transient read error (%s); reopening it (retry %d)", path, error, attempt + 1)
            _forget_handle(dataset, shard_index)
            time.sleep(RETRY_DELAY_S * 2**attempt)
    try:
        size = _open_size(dataset, shard_index, path)
    except FileNotFoundError:
        raise ShardChanged(f"shard {path} is gone (removed while the job read it)") from None
    if size != expected:
        raise ShardChanged(f"shard {path} is {size} bytes, the manifest says {expected}: it changed under the job")


def _open_size(dataset: Any, shard_index: int, path: str | os.PathLike) -> int:
    """The shard's size through the descriptor the read used (`fstat`: no path lookup on the metadata server in
    the loader's hot path), else through its path."""
    shard = dataset._handles.get(shard_index)
    try:
        return os.fstat(shard.file.id.get_vfd_handle()).st_size
    except (AttributeError, OSError, ValueError, TypeError):
        return os.stat(path).st_size


def _forget_handle(dataset: Any, shard_index: int) -> None:
    """Close a ShardDataset's handle of one shard, so that the next read opens the file again."""
    shard = dataset._handles.pop(shard_index, None)
    if shard is not None:
        try:
            shard.file.close()
        except Exception:  # a handle on a stale file may not close cleanly; it is dropped either way
            log.debug("closing %s failed", dataset.shard_paths[shard_index], exc_info=True)


def one_line(error: BaseException) -> str:
    """The message of a ShardChanged re-raised from a loader worker (PyTorch prefixes the worker's traceback)."""
    last = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
    return last.split("ShardChanged: ", 1)[-1]
