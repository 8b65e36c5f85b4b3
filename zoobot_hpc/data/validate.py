"""Check a shard dataset against its manifest and summarise it (`zoobot-hpc inspect`, launch-time checks).

Without checksums only ids, labels and metadata are read (never the images), so it is cheap enough for a
login node on large datasets.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from zoobot_hpc.data.shard_format import (
    FORMAT_VERSION,
    IDS_KEY,
    IMAGES_KEY,
    LABELS_GROUP,
    DatasetError,
    Manifest,
    ShardInfo,
    file_sha256,
    open_shard,
    read_manifest,
)

_MAX_DUPLICATES_LISTED = 5


@dataclass
class LabelStats:
    """Running statistics of one label column over all shards."""

    dtype: str
    count: int = 0
    nan_count: int = 0
    finite_sum: float = 0.0
    finite_count: int = 0
    min: float = float("nan")
    max: float = float("nan")

    @property
    def mean(self) -> float:
        """Mean of the finite values (NaN when there are none)."""
        return self.finite_sum / self.finite_count if self.finite_count else float("nan")

    def update(self, values: np.ndarray) -> None:
        """Add one shard's values."""
        values = np.asarray(values, dtype=np.float64)
        finite = values[np.isfinite(values)]
        self.count += len(values)
        self.nan_count += int(np.isnan(values).sum())
        if len(finite):
            self.finite_sum += float(finite.sum())
            self.finite_count += len(finite)
            self.min = float(finite.min()) if np.isnan(self.min) else min(self.min, float(finite.min()))
            self.max = float(finite.max()) if np.isnan(self.max) else max(self.max, float(finite.max()))


@dataclass
class DatasetSummary:
    """What `validate_dataset` found: counts, shapes, label statistics and every problem."""

    dataset_dir: str
    image_shape: tuple[int, int, int]
    split_counts: dict[str, int]
    shard_counts: dict[str, dict[str, int]]
    label_stats: dict[str, LabelStats]
    allow_nan: tuple[str, ...]
    checksums_verified: bool
    problems: list[str] = field(default_factory=list)

    @property
    def is_valid(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def format(self) -> str:
        """Human-readable multi-line report for `zoobot-hpc inspect`."""
        height, width, channels = self.image_shape
        lines = [f"dataset {self.dataset_dir}", f"image shape {height}x{width}x{channels} (uint8, H x W x C)"]
        for split, count in self.split_counts.items():
            shards = self.shard_counts[split]
            lines.append(f"split {split}: {count} images in {len(shards)} shards")
            lines.extend(f"  {file}: {shard_count}" for file, shard_count in shards.items())
        if self.label_stats:
            lines.append(f"{'label':<40} {'dtype':<8} {'min':>10} {'max':>10} {'mean':>10} {'NaN':>8}")
        for name, stats in self.label_stats.items():
            nan_note = "" if name in self.allow_nan else " (NaN not allowed)"
            lines.append(
                f"{name:<40} {stats.dtype:<8} {stats.min:>10.4g} {stats.max:>10.4g} {stats.mean:>10.4g} "
                f"{stats.nan_count:>8}{nan_note}"
            )
        lines.append("checksums verified" if self.checksums_verified else "checksums not verified")
        if self.problems:
            lines.append(f"INVALID: {len(self.problems)} problem(s)")
            lines.extend(f"  {problem}" for problem in self.problems)
        else:
            lines.append("VALID")
        return "\n".join(lines)


def _expected_image_shape(
    image_shape: int | Sequence[int] | None, channels: int | None, manifest_shape: tuple[int, int, int]
) -> tuple[int, int, int]:
    """The (H, W, C) the caller requires, filling what it did not ask for from the manifest."""
    height, width, depth = manifest_shape
    if isinstance(image_shape, int):
        height = width = image_shape
    elif image_shape is not None:
        height, width, *rest = image_shape
        depth = rest[0] if rest else depth
    return int(height), int(width), int(depth if channels is None else channels)


def _check_request(
    manifest_path: Path,
    manifest: Manifest,
    required_label_cols: Sequence[str] | None,
    image_shape: int | Sequence[int] | None,
    channels: int | None,
) -> list[str]:
    problems = [
        f"{manifest_path}: label column {name!r} does not exist (available: {sorted(manifest.label_columns)})"
        for name in required_label_cols or ()
        if name not in manifest.label_columns
    ]
    expected = _expected_image_shape(image_shape, channels, manifest.image_shape)
    if expected != manifest.image_shape:
        problems.append(
            f"{manifest_path}: images are {'x'.join(map(str, manifest.image_shape))} (H x W x C) "
            f"but {'x'.join(map(str, expected))} was requested"
        )
    return problems


def _check_attrs(path: Path, handle: h5py.File, split: str, shard: ShardInfo, manifest: Manifest) -> list[str]:
    attrs = handle.attrs
    problems = []
    if attrs.get("format_version") != FORMAT_VERSION:
        problems.append(f"{path}: format_version {attrs.get('format_version')} (expected {FORMAT_VERSION})")
    if attrs.get("split") != split:
        problems.append(f"{path}: shard says split {attrs.get('split')!r} but the manifest lists it under {split!r}")
    if attrs.get("count") != shard.count:
        problems.append(f"{path}: count attribute {attrs.get('count')} disagrees with manifest count {shard.count}")
    return problems


def _check_images(path: Path, handle: h5py.File, shard: ShardInfo, manifest: Manifest) -> list[str]:
    if IMAGES_KEY not in handle:
        return [f"{path}: no '{IMAGES_KEY}' dataset"]
    images = handle[IMAGES_KEY]
    problems = []
    if images.dtype != np.uint8:
        problems.append(f"{path}: images are {images.dtype}, expected uint8")
    if images.ndim != 4 or tuple(images.shape[1:]) != manifest.image_shape:
        problems.append(
            f"{path}: images have shape {images.shape[1:]} but the dataset's image_shape is "
            f"{manifest.image_shape} (mixed image sizes)"
        )
    if images.shape[0] != shard.count:
        problems.append(f"{path}: {images.shape[0]} images but the manifest says {shard.count}")
    return problems


class _DatasetChecker:
    """Accumulates ids, label statistics and problems over the shards of one dataset."""

    def __init__(self, dataset_dir: Path, manifest: Manifest, verify_checksums: bool, locking: bool | None):
        self.dataset_dir = dataset_dir
        self.manifest = manifest
        self.verify_checksums = verify_checksums
        self.locking = locking
        self.problems: list[str] = []
        self.label_stats = {name: LabelStats(dtype) for name, dtype in manifest.label_columns.items()}
        self.id_blocks: list[np.ndarray] = []
        self.id_files: list[str] = []

    def check_shard(self, split: str, shard: ShardInfo) -> None:
        path = self.dataset_dir / shard.file
        if not path.is_file():
            self.problems.append(f"{path}: shard file is missing")
            return
        size = path.stat().st_size
        if size != shard.size_bytes:
            self.problems.append(
                f"{path}: file is {size} bytes but the manifest says {shard.size_bytes} (truncated/replaced)"
            )
            return
        if self.verify_checksums and file_sha256(path) != shard.sha256:
            self.problems.append(f"{path}: sha256 checksum mismatch (file corrupted or replaced)")
            return
        try:
            with open_shard(path, locking=self.locking) as handle:
                self._check_contents(path, handle, split, shard)
        except DatasetError as error:
            self.problems.append(str(error))
        except (OSError, KeyError, ValueError, TypeError) as error:
            self.problems.append(f"{path}: shard is unreadable ({' '.join(str(error).split())})")

    def _check_contents(self, path: Path, handle: h5py.File, split: str, shard: ShardInfo) -> None:
        problems = _check_attrs(path, handle, split, shard, self.manifest)
        problems += _check_images(path, handle, shard, self.manifest)
        if IDS_KEY not in handle:
            problems.append(f"{path}: no '{IDS_KEY}' dataset")
        else:
            ids = handle[IDS_KEY][:].astype(bytes)
            if len(ids) != shard.count:
                problems.append(f"{path}: {len(ids)} ids but the manifest says {shard.count}")
            self.id_blocks.append(ids)
            self.id_files.append(shard.file)
        problems += self._check_labels(path, handle, shard)
        self.problems.extend(problems)

    def _check_labels(self, path: Path, handle: h5py.File, shard: ShardInfo) -> list[str]:
        group = handle.get(LABELS_GROUP)
        stored = set(group.keys()) if isinstance(group, h5py.Group) else set()
        problems = []
        missing = sorted(set(self.manifest.label_columns) - stored)
        extra = sorted(stored - set(self.manifest.label_columns))
        if missing:
            problems.append(f"{path}: label columns {missing} listed in the manifest are missing")
        if extra:
            problems.append(f"{path}: label columns {extra} are not listed in the manifest")
        attr_columns = json.loads(handle.attrs.get("label_columns", "{}"))
        if not (missing or extra) and attr_columns != self.manifest.label_columns:
            problems.append(f"{path}: label_columns attribute {attr_columns} disagrees with the manifest")
        for name, dtype in self.manifest.label_columns.items():
            if name not in stored:
                continue
            values = group[name][:]
            if values.dtype != np.dtype(dtype) or values.shape != (shard.count,):
                problems.append(
                    f"{path}: label {name!r} is {values.dtype} {values.shape}; expected {dtype} of length {shard.count}"
                )
                continue
            self.label_stats[name].update(values)
            problems += self._check_finite(path, name, values, handle)
        return problems

    def _check_finite(self, path: Path, name: str, values: np.ndarray, handle: h5py.File) -> list[str]:
        if values.dtype.kind != "f":
            return []
        allowed = np.isnan(values) if name in self.manifest.allow_nan else np.zeros(len(values), dtype=bool)
        bad = ~np.isfinite(values) & ~allowed
        if not bad.any():
            return []
        first = int(np.argmax(bad))
        first_id = handle[IDS_KEY].asstr()[first] if IDS_KEY in handle else f"row {first}"
        allowed_note = "only NaN is allowed" if name in self.manifest.allow_nan else "NaN is not allowed"
        return [
            f"{path}: label {name!r} has {int(bad.sum())} non-finite values ({allowed_note}), "
            f"first {values[first]} at id {first_id!r}"
        ]

    def check_unique_ids(self) -> None:
        if not self.id_blocks:
            return
        ids = np.concatenate(self.id_blocks)
        files = np.repeat(np.arange(len(self.id_files)), [len(block) for block in self.id_blocks])
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        repeated = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
        if not len(repeated):
            return
        duplicate_values = np.unique(sorted_ids[repeated + 1])
        listed = []
        for value in duplicate_values[:_MAX_DUPLICATES_LISTED]:
            where = sorted({self.id_files[i] for i in files[ids == value]})
            listed.append(f"{value.decode()!r} in {', '.join(where)}")
        self.problems.append(
            f"{self.dataset_dir}: {len(duplicate_values)} ids repeat across shards, e.g. {'; '.join(listed)}"
        )


def inspect_dataset(
    dataset_dir: str | os.PathLike,
    required_label_cols: Sequence[str] | None = None,
    image_shape: int | Sequence[int] | None = None,
    channels: int | None = None,
    verify_checksums: bool = False,
    locking: bool | None = None,
) -> DatasetSummary:
    """Check every shard against the manifest and collect all problems into the summary.

    Raises DatasetError only when the directory or manifest itself is missing or unreadable.
    `image_shape` may be a size S (square), (H, W) or (H, W, C); `channels` overrides C.
    """
    dataset_dir = Path(dataset_dir)
    manifest = read_manifest(dataset_dir)
    checker = _DatasetChecker(dataset_dir, manifest, verify_checksums, locking)
    checker.problems += _check_request(
        dataset_dir / "manifest.json", manifest, required_label_cols, image_shape, channels
    )
    for split, shards in manifest.splits.items():
        for shard in shards:
            checker.check_shard(split, shard)
    checker.check_unique_ids()
    return DatasetSummary(
        dataset_dir=str(dataset_dir),
        image_shape=manifest.image_shape,
        split_counts={split: manifest.split_count(split) for split in manifest.splits},
        shard_counts={split: {s.file: s.count for s in shards} for split, shards in manifest.splits.items()},
        label_stats=checker.label_stats,
        allow_nan=manifest.allow_nan,
        checksums_verified=verify_checksums,
        problems=checker.problems,
    )


def validate_dataset(
    dataset_dir: str | os.PathLike,
    required_label_cols: Sequence[str] | None = None,
    image_shape: int | Sequence[int] | None = None,
    channels: int | None = None,
    verify_checksums: bool = False,
    locking: bool | None = None,
) -> DatasetSummary:
    """Validate a dataset before use; raises DatasetError (one line) with the first problem found."""
    summary = inspect_dataset(dataset_dir, required_label_cols, image_shape, channels, verify_checksums, locking)
    if summary.problems:
        more = len(summary.problems) - 1
        suffix = f" (and {more} more; run `zoobot-hpc inspect {dataset_dir}`)" if more else ""
        raise DatasetError(summary.problems[0] + suffix)
    return summary
