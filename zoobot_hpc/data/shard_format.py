"""The on-disk dataset format: HDF5 image shards plus a JSON manifest (see docs/shard-format.md)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from zoobot_hpc.core.atomic import commit, write_text

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val", "test", "predict")
LABEL_DTYPES = ("int64", "float32")
IMAGE_CHANNELS = (1, 3)
DEFAULT_SHARD_SIZE_BYTES = 2 * 1024**3
TMP_SUFFIX = ".tmp"
STATE_DIR = ".zoobot-build"  # inside a dataset directory: build work units, writer records, verified checksums

IMAGES_KEY = "images"
IDS_KEY = "ids"
LABELS_GROUP = "labels"
SAMPLE_KEYS = ("image", "id", "index")  # a sample's own keys; label columns may not reuse them

_HASH_BLOCK_BYTES = 8 * 1024**2


class DatasetError(ValueError):
    """A dataset problem; the message is one line naming the file and the problem."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).splitlines()))


@dataclass(frozen=True)
class ShardInfo:
    """One shard as listed in the manifest."""

    file: str
    count: int
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """The dataset manifest: what every shard holds and how to check it."""

    format_version: int
    image_shape: tuple[int, int, int]
    label_columns: dict[str, str]
    allow_nan: tuple[str, ...]
    splits: dict[str, tuple[ShardInfo, ...]]
    id_column: str
    source: str
    created: str
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)

    def split_count(self, split: str) -> int:
        """Number of images in `split` (0 when the dataset has no such split)."""
        return sum(shard.count for shard in self.splits.get(split, ()))

    def to_dict(self) -> dict:
        """JSON-ready dict in the manifest.json layout."""
        return {
            "format_version": self.format_version,
            "image_shape": list(self.image_shape),
            "label_columns": dict(self.label_columns),
            "allow_nan": list(self.allow_nan),
            "splits": {name: [dataclasses.asdict(s) for s in shards] for name, shards in self.splits.items()},
            "id_column": self.id_column,
            "source": self.source,
            "created": self.created,
            "provenance": dict(self.provenance),
        }


def shard_file_name(split: str, index: int) -> str:
    """File name of shard `index` of `split`, e.g. `train-00003.h5`."""
    return f"{split}-{index:05d}.h5"


def images_per_shard(image_shape: Sequence[int], shard_size_bytes: int = DEFAULT_SHARD_SIZE_BYTES) -> int:
    """How many (H, W, C) uint8 images fit in a shard of at most `shard_size_bytes` (at least 1)."""
    if shard_size_bytes <= 0:
        raise ValueError(f"shard_size_bytes must be positive, got {shard_size_bytes}")
    return max(1, shard_size_bytes // int(np.prod(image_shape)))


def label_dtype_name(values: np.ndarray) -> str:
    """The stored dtype for a label array: `int64` for integers/booleans, `float32` for floats."""
    kind = np.asarray(values).dtype.kind
    if kind in "biu":
        return "int64"
    if kind == "f":
        return "float32"
    raise ValueError(f"label dtype must be integer or float, got {np.asarray(values).dtype}")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


class ShardWriter:
    """Stream images into one shard; it appears under its final name only when `finish` succeeds.

    Use as a context manager: leaving the block without `finish` (e.g. on an error) deletes the
    temporary file, so an interrupted write never leaves a shard that looks whole.
    """

    def __init__(self, path: str | os.PathLike, image_shape: Sequence[int], split: str) -> None:
        self.path = Path(path)
        self.tmp_path = self.path.with_name(self.path.name + TMP_SUFFIX)
        self.image_shape = tuple(int(n) for n in image_shape)
        if split not in SPLITS:
            raise ValueError(f"{self.path.name}: split must be one of {SPLITS}, got {split!r}")
        if len(self.image_shape) != 3 or self.image_shape[2] not in IMAGE_CHANNELS:
            raise ValueError(
                f"{self.path.name}: image_shape must be (H, W, C) with C in {IMAGE_CHANNELS}, got {self.image_shape}"
            )
        self.split = split
        self.ids: list[str] = []
        self._file = h5py.File(self.tmp_path, "w", rdcc_nbytes=0)  # whole-image chunks: nothing to cache
        self._images = self._file.create_dataset(
            IMAGES_KEY,
            shape=(0, *self.image_shape),
            maxshape=(None, *self.image_shape),
            chunks=(1, *self.image_shape),
            dtype=np.uint8,
        )

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.abort()

    def append(self, images: np.ndarray, ids: Sequence[str]) -> None:
        """Append a uint8 block of images (N, H, W, C) and their ids."""
        if images.dtype != np.uint8 or images.shape[1:] != self.image_shape:
            raise ValueError(
                f"{self.path.name}: images must be uint8 (N, H, W, C) with (H, W, C) = {self.image_shape}, "
                f"got {images.dtype} {images.shape}"
            )
        if len(ids) != len(images):
            raise ValueError(f"{self.path.name}: {len(ids)} ids for {len(images)} images")
        start = len(self.ids)
        self._images.resize(start + len(images), axis=0)
        self._images[start:] = images
        self.ids.extend(str(i) for i in ids)

    def finish(self, labels: Mapping[str, np.ndarray], attrs: Mapping[str, str] | None = None) -> ShardInfo:
        """Write ids, labels and attributes (plus `attrs`), fsync, rename to the final name and describe the shard."""
        count = len(self.ids)
        if count == 0:
            raise ValueError(f"{self.path.name}: a shard needs at least one image")
        label_columns = {name: label_dtype_name(values) for name, values in labels.items()}
        for name, values in labels.items():
            shape = np.asarray(values).shape
            if shape != (count,):
                raise ValueError(f"{self.path.name}: label {name!r} must have shape ({count},), got {shape}")
        handle = self._file
        handle.create_dataset(IDS_KEY, data=self.ids, dtype=h5py.string_dtype("utf-8"))
        group = handle.create_group(LABELS_GROUP)
        for name, values in labels.items():
            group.create_dataset(name, data=np.asarray(values, dtype=label_columns[name]))
        handle.attrs["format_version"] = FORMAT_VERSION
        handle.attrs["split"] = self.split
        handle.attrs["image_shape"] = np.array(self.image_shape, dtype=np.int64)
        handle.attrs["count"] = count
        handle.attrs["label_columns"] = json.dumps(label_columns, sort_keys=True)
        for name, value in (attrs or {}).items():
            handle.attrs[name] = value
        handle.close()
        info = ShardInfo(
            file=self.path.name,
            count=count,
            size_bytes=self.tmp_path.stat().st_size,
            sha256=file_sha256(self.tmp_path),
        )
        commit(self.tmp_path, self.path)
        return info

    def abort(self) -> None:
        """Close and delete the temporary file unless the shard was finished. Its data is given up first (truncated):
        on a full disk the close then finds room for its last metadata; HDF5 crashes on a file whose close failed."""
        try:
            if self._file.id.valid:
                with contextlib.suppress(OSError, RuntimeError):
                    os.ftruncate(self._file.id.get_vfd_handle(), 0)
                self._file.close()
        finally:
            self.tmp_path.unlink(missing_ok=True)


def write_shard(
    path: str | os.PathLike,
    images: np.ndarray,
    ids: Sequence[str],
    labels: Mapping[str, np.ndarray],
    split: str,
) -> ShardInfo:
    """Write one complete shard atomically (to `path.tmp`, fsynced, then renamed) and describe it."""
    if images.ndim != 4:
        raise ValueError(f"{Path(path).name}: images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
    with ShardWriter(path, images.shape[1:], split) as writer:
        writer.append(images, ids)
        return writer.finish(labels)


def open_shard(path: str | os.PathLike, locking: bool | None = None) -> h5py.File:
    """Open a shard read-only; `locking=False` disables HDF5 file locking (Lustre/GPFS/NFS).

    Raises DatasetError when the file is missing or not a readable HDF5 file.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: shard file is missing")
    try:
        return h5py.File(path, "r", locking=locking)
    except OSError as error:
        raise DatasetError(f"{path}: shard is not a readable HDF5 file ({error})") from error


def write_manifest(dataset_dir: str | os.PathLike, manifest: Manifest) -> None:
    """Write `manifest.json` atomically and durably (`zoobot_hpc.core.atomic`)."""
    write_text(Path(dataset_dir) / MANIFEST_NAME, json.dumps(manifest.to_dict(), indent=2) + "\n")


def _parse_manifest(path: Path, raw: dict) -> Manifest:
    optional = ("provenance",)
    missing = [f.name for f in dataclasses.fields(Manifest) if f.name not in raw and f.name not in optional]
    if missing:
        raise DatasetError(f"{path}: manifest is missing keys {missing}")
    if raw["format_version"] != FORMAT_VERSION:
        raise DatasetError(f"{path}: unsupported format_version {raw['format_version']!r} (expected {FORMAT_VERSION})")
    image_shape = tuple(raw["image_shape"])
    if len(image_shape) != 3 or not all(isinstance(n, int) and n > 0 for n in image_shape):
        raise DatasetError(f"{path}: image_shape must be [H, W, C] positive ints, got {raw['image_shape']}")
    if image_shape[2] not in IMAGE_CHANNELS:
        raise DatasetError(f"{path}: image channels must be one of {IMAGE_CHANNELS}, got {image_shape[2]}")
    label_columns = dict(raw["label_columns"])
    bad_dtypes = {name: dtype for name, dtype in label_columns.items() if dtype not in LABEL_DTYPES}
    if bad_dtypes:
        raise DatasetError(f"{path}: label_columns dtypes must be one of {LABEL_DTYPES}, got {bad_dtypes}")
    unknown_nan = [name for name in raw["allow_nan"] if name not in label_columns]
    if unknown_nan:
        raise DatasetError(f"{path}: allow_nan names unknown label columns {unknown_nan}")
    unknown_splits = [split for split in raw["splits"] if split not in SPLITS]
    if unknown_splits:
        raise DatasetError(f"{path}: unknown splits {unknown_splits} (expected some of {list(SPLITS)})")
    try:
        splits = {split: tuple(ShardInfo(**shard) for shard in shards) for split, shards in raw["splits"].items()}
    except TypeError as error:
        raise DatasetError(f"{path}: malformed shard entry ({error})") from error
    return Manifest(
        format_version=raw["format_version"],
        image_shape=image_shape,
        label_columns=label_columns,
        allow_nan=tuple(raw["allow_nan"]),
        splits=splits,
        id_column=raw["id_column"],
        source=raw["source"],
        created=raw["created"],
        provenance=dict(raw.get("provenance") or {}),
    )


def read_manifest(dataset_dir: str | os.PathLike) -> Manifest:
    """Read and check `dataset_dir/manifest.json`; raises DatasetError when missing or malformed."""
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise DatasetError(f"{dataset_dir}: dataset directory does not exist")
    path = dataset_dir / MANIFEST_NAME
    if not path.is_file():
        raise DatasetError(f"{path}: manifest is missing (build the dataset with `zoobot-hpc shard`)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: manifest is not valid JSON ({error})") from error
    if not isinstance(raw, dict):
        raise DatasetError(f"{path}: manifest must be a JSON object")
    return _parse_manifest(path, raw)
