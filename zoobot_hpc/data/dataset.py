"""ShardDataset: a map-style dataset over one split of an HDF5 shard dataset (uint8 samples).

HDF5 files are opened lazily by the process that reads them and reopened after a fork (h5py
handles must never cross a process boundary), at most ``max_open_files`` at a time (``data.max_open_shards``;
each costs a few MB of HDF5 metadata and the shard's label columns). Batches are read shard by shard in sorted
order through ``__getitems__`` (used by ``DataLoader`` when batching): images by direct chunk reads (one image per
uncompressed chunk). A shard's ids and the label columns the dataset was asked for are read once, whole, when the
shard is opened (they are small), and batches take their rows from memory: with the block-shuffled training
order (:mod:`zoobot_hpc.data.block_order`) a worker opens each shard about once per epoch. A worker's memory is
bounded by its open shards, not by the dataset's size.
"""

from __future__ import annotations

import functools
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from zoobot_hpc.data.batch_memory import PooledBatch, worker_pool
from zoobot_hpc.data.shard_format import (
    IDS_KEY,
    IMAGES_KEY,
    LABELS_GROUP,
    SAMPLE_KEYS,
    DatasetError,
    Manifest,
    open_shard,
    read_manifest,
)
from zoobot_hpc.data.shard_identity import check_open_shard, read_checked

_TORCH_LABEL_DTYPES = {"int64": torch.int64, "float32": torch.float32}
WORKER_BATCH_BLOCKS = 8  # per worker: prefetched batches, plus those the main process still holds
_ALIGN_BYTES = 8


@dataclass
class _OpenShard:
    file: h5py.File
    images: h5py.Dataset
    ids: np.ndarray
    labels: dict[str, np.ndarray]
    direct_chunks: bool


def _reads_whole_chunks(images: h5py.Dataset) -> bool:
    """True when each image is one unfiltered chunk, so raw chunk bytes are the pixels."""
    return images.chunks == (1, *images.shape[1:]) and images.id.get_create_plist().get_nfilters() == 0


def _new_storage(nbytes: int, batch_pool: bool) -> torch.UntypedStorage:
    """Uninitialised bytes. In a DataLoader worker they are shared memory, so that the batch reaches the main
    process without a copy: a fresh block, as ``default_collate`` allocates it, or with ``batch_pool`` a block
    reused once the main process is done with the batch it held (see :mod:`zoobot_hpc.data.batch_memory`)."""
    if torch.utils.data.get_worker_info() is None:
        return torch.UntypedStorage(nbytes)
    if batch_pool:
        return worker_pool(WORKER_BATCH_BLOCKS).allocate(nbytes)
    return torch.UntypedStorage._new_shared(max(nbytes, 1))  # what default_collate does in a worker


def _aligned(nbytes: int) -> int:
    return -(-nbytes // _ALIGN_BYTES) * _ALIGN_BYTES


class ReadBatch(Sequence[dict[str, Any]]):
    """The samples one ``__getitems__`` read, kept as the batch tensors they are rows of.

    It is a sequence of sample dicts for whoever iterates it; :func:`collate_samples` hands the batch on as it is,
    instead of building a dict per sample and checking every row again (for a 34-column tree, 36 tensors x 128
    samples per batch: most of the loader's time once the shard reads are local).
    """

    def __init__(self, images: torch.Tensor, ids: np.ndarray, columns: dict[str, torch.Tensor]) -> None:
        self.images, self.ids, self.columns = images, ids, columns

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        if not -len(self) <= k < len(self):
            raise IndexError(f"sample {k} of a batch of {len(self)}")
        return {
            "image": self.images[k],
            "id": self.ids[k],
            **{name: values[k] for name, values in self.columns.items()},
        }

    def batch(self) -> dict[str, Any]:
        """The collated batch: what ``default_collate`` would make of the samples, without copies."""
        return {"image": self.images, "id": self.ids.tolist(), **self.columns}


def collate_samples(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``default_collate``, except that tensors read as one batch by ``__getitems__`` are not copied.

    A worker then sends each batch's images and labels as one shared-memory block, reused for a later
    batch once the main process has dropped every tensor of this one.
    """
    if isinstance(samples, ReadBatch):
        batch = samples.batch()
        return batch if torch.utils.data.get_worker_info() is None else PooledBatch(batch)
    batch, others = {}, []
    for key, first in samples[0].items():
        rows = _rows_view([sample[key] for sample in samples]) if isinstance(first, torch.Tensor) else None
        if rows is None:
            others.append(key)
        else:
            batch[key] = rows
    collated = torch.utils.data.default_collate([{key: sample[key] for key in others} for sample in samples])
    batch = {key: batch[key] if key in batch else collated[key] for key in samples[0]}
    return batch if torch.utils.data.get_worker_info() is None else PooledBatch(batch)


def _rows_view(values: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """A (B, ...) view of the storage whose consecutive rows are exactly ``values``, or None."""
    first = values[0]
    storage, start, numel = first.untyped_storage(), first.storage_offset(), first.numel()
    for row, value in enumerate(values):
        if (
            value.untyped_storage().data_ptr() != storage.data_ptr()
            or value.dtype != first.dtype
            or value.storage_offset() != start + row * numel
            or not value.is_contiguous()
        ):
            return None
    return torch.empty(0, dtype=first.dtype).set_(storage, start, (len(values), *first.shape))


class ShardDataset(torch.utils.data.Dataset):
    """One split of a shard dataset: ``index -> dict(image, id, index, **labels)``.

    ``image`` is a uint8 tensor ``(H, W, C)``, ``id`` a str, ``index`` the position in the
    split as a 0-d int64 tensor, and each label a 0-d tensor (int64 for int columns, float32 for float columns).
    ``label_cols=None`` reads every label column of the manifest. ``locking`` is passed to
    ``h5py.File`` (``False`` for Lustre/GPFS/NFS; ``None``: HDF5's default / environment).
    ``batch_pool``: in loader workers, reuse shared-memory blocks for batches (:mod:`zoobot_hpc.data.batch_memory`;
    opt-in, see ``data.batch_pool`` in the README).
    """

    def __init__(
        self,
        dataset_dir: str | os.PathLike,
        split: str,
        label_cols: Sequence[str] | None = None,
        locking: bool | None = False,
        *,
        max_open_files: int = 16,
        batch_pool: bool = False,
    ) -> None:
        self.dataset_dir = Path(dataset_dir)
        self.manifest: Manifest = read_manifest(self.dataset_dir)
        if split not in self.manifest.splits or not self.manifest.splits[split]:
            raise DatasetError(
                f"{self.dataset_dir}: split {split!r} has no shards (splits: {sorted(self.manifest.splits)})"
            )
        if max_open_files < 1:
            raise ValueError(f"max_open_files must be >= 1, got {max_open_files}")
        self.split = split
        available = self.manifest.label_columns
        self.label_cols = tuple(available) if label_cols is None else tuple(label_cols)
        clashing = [name for name in self.label_cols if name in SAMPLE_KEYS]
        if clashing:
            raise DatasetError(f"{self.dataset_dir}: label columns {clashing} clash with sample keys {SAMPLE_KEYS}")
        unknown = [name for name in self.label_cols if name not in available]
        if unknown:
            raise DatasetError(
                f"{self.dataset_dir}: label columns {unknown} do not exist (available: {sorted(available)})"
            )
        self.label_dtypes = {name: _TORCH_LABEL_DTYPES[available[name]] for name in self.label_cols}
        self.locking = locking
        self.max_open_files = max_open_files
        self.batch_pool = batch_pool
        shards = self.manifest.splits[split]
        self.shard_paths = tuple(self.dataset_dir / shard.file for shard in shards)
        counts = np.array([shard.count for shard in shards], dtype=np.int64)
        self.shard_starts = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(counts)])
        self.image_shape = tuple(self.manifest.image_shape)
        self._reset_handles()

    def __len__(self) -> int:
        return int(self.shard_starts[-1])

    @property
    def shard_sizes(self) -> tuple[int, ...]:
        """Samples per shard, in the split's order (what the training order shuffles in blocks of)."""
        return tuple(np.diff(self.shard_starts).tolist())

    @property
    def opens(self) -> int:
        """How many shard files this process has opened (for the loader benchmark)."""
        return self._opens

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> ReadBatch:
        """Read several samples at once, shard by shard in sorted order (returned in request order)."""
        positions = np.asarray(indices, dtype=np.int64).reshape(-1)
        if positions.size and (positions.min() < 0 or positions.max() >= len(self)):
            bad = positions[(positions < 0) | (positions >= len(self))][0]
            raise IndexError(f"index {bad} out of range for split {self.split!r} of size {len(self)}")
        images, columns = self._allocate_batch(positions.size)
        labels = {name: columns[name] for name in self.label_cols}
        ids = np.empty(positions.size, dtype=object)
        shard_of = np.searchsorted(self.shard_starts, positions, side="right") - 1
        for shard_index in np.unique(shard_of):
            rows = np.flatnonzero(shard_of == shard_index)
            local = positions[rows] - self.shard_starts[shard_index]
            index = int(shard_index)
            read_checked(self, index, functools.partial(self._read_shard, index, local, rows, images, ids, labels))
        columns["index"].copy_(torch.from_numpy(positions))
        return ReadBatch(images, ids, columns)

    def _allocate_batch(self, count: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Uninitialised image, index and label tensors for ``count`` samples, all in one storage."""
        image_bytes = count * int(np.prod(self.image_shape))
        offsets, end = {}, _aligned(image_bytes)
        for name, dtype in {"index": torch.int64, **self.label_dtypes}.items():
            offsets[name] = (end, dtype)
            end = _aligned(end + count * dtype.itemsize)
        storage = _new_storage(end, self.batch_pool)
        images = torch.empty(0, dtype=torch.uint8).set_(storage, 0, (count, *self.image_shape))
        columns = {
            name: torch.empty(0, dtype=dtype).set_(storage, offset // dtype.itemsize, (count,))
            for name, (offset, dtype) in offsets.items()
        }
        return images, columns

    def _read_shard(
        self,
        shard_index: int,
        local: np.ndarray,
        rows: np.ndarray,
        images: torch.Tensor,
        ids: np.ndarray,
        labels: dict[str, torch.Tensor],
    ) -> None:
        shard = self._open(shard_index)
        image_bytes = images.numpy().reshape(images.shape[0], -1)
        for row, position in zip(rows.tolist(), local.tolist(), strict=True):
            if shard.direct_chunks:
                shard.images.id.read_direct_chunk((position, 0, 0, 0), out=image_bytes[row])
            else:
                shard.images.read_direct(images[row].numpy(), np.s_[position])
        ids[rows] = [value.decode() for value in shard.ids[local]]
        for name, values in labels.items():
            values[torch.from_numpy(rows)] = torch.from_numpy(shard.labels[name][local]).to(values.dtype)

    def _open(self, shard_index: int) -> _OpenShard:
        if os.getpid() != self._pid:
            self._reset_handles()
        shard = self._handles.get(shard_index)
        if shard is not None:
            self._handles.move_to_end(shard_index)
            return shard
        if len(self._handles) >= self.max_open_files:
            _, oldest = self._handles.popitem(last=False)
            oldest.file.close()
        path = self.shard_paths[shard_index]
        handle = open_shard(path, locking=self.locking)
        try:
            images = handle[IMAGES_KEY]
            if images.shape[1:] != self.image_shape:
                raise DatasetError(f"{path}: images have shape {images.shape[1:]}, manifest says {self.image_shape}")
            check_open_shard(path, images.shape[0], int(np.diff(self.shard_starts)[shard_index]))
            shard = _OpenShard(
                file=handle,
                images=images,
                ids=handle[IDS_KEY][()],
                labels={name: handle[LABELS_GROUP][name][()] for name in self.label_cols},
                direct_chunks=_reads_whole_chunks(images),
            )
        except KeyError as error:
            handle.close()
            raise DatasetError(f"{path}: shard lacks an expected dataset ({error})") from error
        except DatasetError:
            handle.close()
            raise
        self._handles[shard_index] = shard
        self._opens += 1
        return shard

    def _reset_handles(self) -> None:
        """Forget handles (inherited ones belong to another process) and remember who owns the new ones."""
        self._handles: OrderedDict[int, _OpenShard] = OrderedDict()
        self._pid = os.getpid()
        self._opens = 0

    def close(self) -> None:
        """Close the files this process opened."""
        if os.getpid() == self._pid:
            for shard in self._handles.values():
                shard.file.close()
        self._reset_handles()

    def __getstate__(self) -> dict[str, Any]:
        # A worker receives the dataset pickled, without handles: each process opens the files it reads itself,
        # because an HDF5 handle shared across fork or pickling corrupts reads (libhdf5 state is per process).
        state = self.__dict__.copy()
        state["_handles"] = OrderedDict()
        return state


class ManifestOrderDataset(torch.utils.data.Dataset):
    """Several splits of a shard dataset as one sequence (in the given order); `index` is the global position.

    The dataset of `predict` / `embed`. It lives here, next to `ShardDataset`, because loader workers unpickle it:
    this module is preloaded by their forkserver, while the inference loop's module imports Lightning.
    """

    def __init__(self, dataset_dir: Path, splits: Sequence[str], locking: bool | None) -> None:
        self.splits = [ShardDataset(dataset_dir, split, label_cols=(), locking=locking) for split in splits]
        self.starts = np.cumsum([0] + [len(split) for split in self.splits])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, position: int) -> dict[str, Any]:
        return self.__getitems__([position])[0]

    def __getitems__(self, positions: Sequence[int]) -> list[dict[str, Any]]:
        positions = np.asarray(positions, dtype=np.int64)
        which = np.searchsorted(self.starts, positions, side="right") - 1
        samples: list[dict[str, Any]] = [{} for _ in positions]
        for split_index in np.unique(which):
            rows = np.flatnonzero(which == split_index)
            local = (positions[rows] - self.starts[split_index]).tolist()
            for row, sample in zip(rows, self.splits[split_index].__getitems__(local), strict=True):
                samples[row] = {**sample, "index": int(positions[row])}
        return samples
