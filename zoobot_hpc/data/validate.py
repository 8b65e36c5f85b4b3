"""Check a shard dataset against its manifest and summarise it (`zoobot-hpc inspect`, launch-time checks).

By default the structure, counts, ids, labels and a sample of each shard's pixels are read (seconds at ~10M
images): cheap enough for a login node. A shard whose checks found nothing is remembered with its stat, label
statistics and id hashes, and not read again while it is unchanged (size, mtime, inode, manifest entry). The
duplicate-id check keeps a 64-bit hash per image (at most 16 bytes per image while it sorts). With checksums
every shard is hashed, in parallel, and only once while it stays unchanged. What is remembered lives next to the
dataset, or in the user's cache when the dataset is read-only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from zoobot_hpc.core.atomic import write_text
from zoobot_hpc.core.config import DataSettings
from zoobot_hpc.data.handle_budget import thrash_warning
from zoobot_hpc.data.id_hashing import fast_hash64, repeated_hashes
from zoobot_hpc.data.shard_format import (
    FORMAT_VERSION,
    IDS_KEY,
    IMAGES_KEY,
    LABELS_GROUP,
    STATE_DIR,
    DatasetError,
    Manifest,
    ShardInfo,
    file_sha256,
    open_shard,
    read_manifest,
)

_MAX_DUPLICATES_LISTED = 5
VERIFIED_NAME = "verified.json"
CHECKED_DIR = "checked"
_SAMPLED_PER_SHARD = 3


def default_workers() -> int:
    """Parallel checksum threads: hashlib releases the GIL on large blocks, so threads hash in parallel."""
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def check_state_dir(dataset_dir: Path) -> Path:
    """Where checks remember shards: in the dataset when it is writable, else in the user's cache."""
    own = dataset_dir / STATE_DIR
    if os.access(dataset_dir, os.W_OK) and (not own.exists() or os.access(own, os.W_OK)):
        return own
    key = hashlib.sha256(str(dataset_dir.resolve()).encode()).hexdigest()[:24]
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "zoobot-hpc" / "datasets" / key


def verified_cache_path(dataset_dir: Path) -> Path:
    return check_state_dir(dataset_dir) / VERIFIED_NAME


class CheckedShards:
    """Shards whose default checks found nothing, with the stat they had then, their label statistics and their id
    hashes (`checked/SHARD.npy`): a shard unchanged since (size, mtime, inode, manifest entry) is not read again."""

    def __init__(self, dataset_dir: Path, manifest: Manifest) -> None:
        self.folder = check_state_dir(dataset_dir) / CHECKED_DIR
        context = [list(manifest.image_shape), manifest.label_columns, list(manifest.allow_nan), FORMAT_VERSION]
        self.context = hashlib.sha256(json.dumps(context, sort_keys=True).encode()).hexdigest()[:16]
        try:
            self.entries: dict[str, dict] = json.loads((self.folder / "index.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.entries = {}
        self.changed = False

    def _identity(self, path: Path, split: str, shard: ShardInfo) -> list:
        return [stat_key(path), split, shard.count, shard.size_bytes, shard.sha256, self.context]

    def load(self, path: Path, split: str, shard: ShardInfo) -> tuple[dict, np.ndarray] | None:
        entry = self.entries.get(shard.file)
        if entry is None or entry.get("identity") != self._identity(path, split, shard):
            return None
        try:
            hashes = np.load(self.folder / f"{shard.file}.npy")
        except (OSError, ValueError):
            return None
        return (entry, hashes) if hashes.shape == (shard.count,) else None

    def save(self, identity: list, shard: ShardInfo, labels: dict, pixels: int, hashes: np.ndarray) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            target = self.folder / f"{shard.file}.npy"
            with open(target.with_name(target.name + ".tmp"), "wb") as handle:
                np.save(handle, hashes)
            os.replace(target.with_name(target.name + ".tmp"), target)
        except OSError:
            return
        self.entries[shard.file] = {"identity": identity, "labels": labels, "pixels": pixels}
        self.changed = True

    def flush(self) -> None:
        if self.changed:
            with contextlib.suppress(OSError):  # a cache only
                write_text(self.folder / "index.json", json.dumps(self.entries) + "\n")


def stat_key(path: Path) -> list[int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino]


class VerifiedShards:
    """Shards whose sha256 was verified, with the stat they had then; unchanged ones are not hashed again."""

    def __init__(self, dataset_dir: Path) -> None:
        self.path = verified_cache_path(dataset_dir)
        try:
            self.entries: dict[str, dict] = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.entries = {}
        self.changed = False

    def is_verified(self, path: Path, sha256: str) -> bool:
        entry = self.entries.get(path.name)
        return entry is not None and entry.get("sha256") == sha256 and entry.get("stat") == stat_key(path)

    def add(self, path: Path, sha256: str, stat: list[int] | None) -> None:
        self.entries[path.name] = {"sha256": sha256, "stat": stat}
        self.changed = True

    def save(self) -> None:
        if not self.changed:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text(self.path, json.dumps(self.entries) + "\n")
        except OSError:
            pass  # a cache only: the next run hashes again


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

    def to_list(self) -> list:
        return [self.count, self.nan_count, self.finite_sum, self.finite_count, self.min, self.max]

    def merge(self, saved: list) -> None:
        """Add one shard's statistics (`to_list` of that shard alone)."""
        count, nan_count, finite_sum, finite_count, low, high = saved
        self.count += count
        self.nan_count += nan_count
        if finite_count:
            self.finite_sum += finite_sum
            self.finite_count += finite_count
            self.min = low if np.isnan(self.min) else min(self.min, low)
            self.max = high if np.isnan(self.max) else max(self.max, high)

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
    pixels_sampled: int = 0
    checksums_hashed: int = 0  # shards hashed by this run (the others were verified before and are unchanged)
    shards_reused: int = 0  # shards checked before and unchanged since: not read again

    @property
    def is_valid(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def handle_warning(self) -> str | None:
        """One line when the train shards would thrash the loader's HDF5 handle cache with the default `data.*`
        settings (`submit` checks the run's own)."""
        if "train" not in self.shard_counts:
            return None
        defaults = {name: spec.default for name, spec in DataSettings.model_fields.items()}
        sizes = list(self.shard_counts["train"].values())
        return thrash_warning(
            sizes, defaults["batch_size"], defaults["shuffle_window_shards"], defaults["max_open_shards"]
        )

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
        lines.append(f"pixels sampled: {self.pixels_sampled} images (reads the chunks they are stored in)")
        if self.shards_reused:
            lines.append(f"{self.shards_reused} shard(s) checked before and unchanged since (size, mtime, inode)")
        if self.checksums_verified:
            lines.append(f"checksums: {self.checksums_hashed} shard(s) hashed now, the others verified before")
            lines.append("checksums verified")
        else:
            lines.append("checksums not verified (run with --checksums)")
        warning = self.handle_warning()
        if warning:
            lines.append(f"warning: {warning}")
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
    """Accumulates id hashes, label statistics and problems over the shards of one dataset."""

    def __init__(self, dataset_dir: Path, manifest: Manifest, verify_checksums: bool, locking: bool | None):
        self.dataset_dir = dataset_dir
        self.manifest = manifest
        self.verify_checksums = verify_checksums
        self.locking = locking
        self.problems: list[str] = []
        self.label_stats = {name: LabelStats(dtype) for name, dtype in manifest.label_columns.items()}
        shards = [shard for shards in manifest.splits.values() for shard in shards]
        self.files = [shard.file for shard in shards]
        self.starts = np.concatenate([[0], np.cumsum([shard.count for shard in shards])]).astype(np.int64)
        self.id_hashes = np.zeros(int(self.starts[-1]), dtype=np.uint64)  # 8 bytes per image
        self.id_seen = np.zeros(len(shards), dtype=bool)
        self.checksum_failures: set[str] = set()
        self.pixels_sampled = 0
        self.hashed = 0
        self.checked = CheckedShards(dataset_dir, manifest)
        self.reused = 0

    def verify_all_checksums(self, workers: int, rehash: bool) -> None:
        """Hash every shard that was not verified before (or changed since), `workers` at a time."""
        cache = VerifiedShards(self.dataset_dir)
        todo = []
        for shards in self.manifest.splits.values():
            for shard in shards:
                path = self.dataset_dir / shard.file
                if not path.is_file() or path.stat().st_size != shard.size_bytes:
                    continue  # reported by check_shard
                if rehash or not cache.is_verified(path, shard.sha256):
                    todo.append((path, shard, stat_key(path)))
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            digests = list(pool.map(lambda item: _sha256_or_none(item[0]), todo))
        self.hashed = len(todo)
        for (path, shard, stat), digest in zip(todo, digests, strict=True):
            if digest == shard.sha256 and stat_key(path) == stat:
                cache.add(path, shard.sha256, stat)
            elif digest != shard.sha256:
                self.checksum_failures.add(shard.file)
        cache.save()

    def check_shard(self, index: int, split: str, shard: ShardInfo) -> None:
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
        if shard.file in self.checksum_failures:
            self.problems.append(f"{path}: sha256 checksum mismatch (file corrupted or replaced)")
            return
        if self._reuse_checked(index, path, split, shard):
            return
        try:
            with open_shard(path, locking=self.locking) as handle:
                self._check_contents(index, path, handle, split, shard)
        except DatasetError as error:
            self.problems.append(str(error))
        except (OSError, KeyError, ValueError, TypeError) as error:
            self.problems.append(f"{path}: shard is unreadable ({' '.join(str(error).split())})")

    def _reuse_checked(self, index: int, path: Path, split: str, shard: ShardInfo) -> bool:
        cached = self.checked.load(path, split, shard)
        if cached is None:
            return False
        entry, hashes = cached
        for name, saved in entry["labels"].items():
            self.label_stats[name].merge(saved)
        self.id_hashes[self.starts[index] : self.starts[index + 1]] = hashes
        self.id_seen[index] = True
        self.pixels_sampled += entry["pixels"]
        self.reused += 1
        return True

    def _check_contents(self, index: int, path: Path, handle: h5py.File, split: str, shard: ShardInfo) -> None:
        identity = self.checked._identity(path, split, shard)
        shared_stats, pixels_before = self.label_stats, self.pixels_sampled
        self.label_stats = {name: LabelStats(stats.dtype) for name, stats in shared_stats.items()}
        try:
            problems = self._shard_problems(index, path, handle, split, shard)
        finally:
            shard_stats, self.label_stats = self.label_stats, shared_stats
        for name, stats in shard_stats.items():
            self.label_stats[name].merge(stats.to_list())
        self.problems.extend(problems)
        if not problems and self.id_seen[index]:
            labels = {name: stats.to_list() for name, stats in shard_stats.items()}
            hashes = self.id_hashes[self.starts[index] : self.starts[index + 1]]
            self.checked.save(identity, shard, labels, self.pixels_sampled - pixels_before, hashes)

    def _shard_problems(self, index: int, path: Path, handle: h5py.File, split: str, shard: ShardInfo) -> list[str]:
        problems = _check_attrs(path, handle, split, shard, self.manifest)
        image_problems = _check_images(path, handle, shard, self.manifest)
        problems += image_problems or self._sample_pixels(path, handle, shard)
        if IDS_KEY not in handle:
            problems.append(f"{path}: no '{IDS_KEY}' dataset")
        else:
            ids = handle[IDS_KEY][:]
            if len(ids) != shard.count:
                problems.append(f"{path}: {len(ids)} ids but the manifest says {shard.count}")
            else:
                self.id_hashes[self.starts[index] : self.starts[index + 1]] = fast_hash64(ids.astype(bytes))
                self.id_seen[index] = True
        problems += self._check_labels(path, handle, shard)
        return problems

    def _sample_pixels(self, path: Path, handle: h5py.File, shard: ShardInfo) -> list[str]:
        """Read the first, middle and last images: the chunk index and their chunks must be readable."""
        images = handle[IMAGES_KEY]
        rows = sorted({0, images.shape[0] // 2, images.shape[0] - 1}) if images.shape[0] else []
        for row in rows[:_SAMPLED_PER_SHARD]:
            try:
                images[row]
            except (OSError, ValueError) as error:
                return [f"{path}: pixels of image {row} are unreadable ({' '.join(str(error).split())})"]
        self.pixels_sampled += len(rows)
        return []

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
        """Ids repeat when their hashes do; the ids of the few shards holding a repeated hash are read again."""
        seen = np.repeat(self.id_seen, np.diff(self.starts))
        suspects = repeated_hashes(self.id_hashes[seen])
        if not len(suspects):
            return
        holders: dict[bytes, list[str]] = {}
        for index, file in enumerate(self.files):
            if not self.id_seen[index]:
                continue
            hit = np.isin(self.id_hashes[self.starts[index] : self.starts[index + 1]], suspects)
            if not hit.any():
                continue
            with open_shard(self.dataset_dir / file, locking=self.locking) as handle:
                ids = handle[IDS_KEY][:]
            for value in ids[hit]:
                holders.setdefault(bytes(value), []).append(file)
        repeated = sorted(value for value, files in holders.items() if len(files) > 1)
        if not repeated:
            return
        listed = [
            f"{value.decode()!r} in {', '.join(sorted(set(holders[value])))}"
            for value in repeated[:_MAX_DUPLICATES_LISTED]
        ]
        self.problems.append(f"{self.dataset_dir}: {len(repeated)} ids repeat across shards, e.g. {'; '.join(listed)}")


def _sha256_or_none(path: Path) -> str | None:
    try:
        return file_sha256(path)
    except OSError:
        return None


def inspect_dataset(
    dataset_dir: str | os.PathLike,
    required_label_cols: Sequence[str] | None = None,
    image_shape: int | Sequence[int] | None = None,
    channels: int | None = None,
    verify_checksums: bool = False,
    locking: bool | None = None,
    workers: int | None = None,
    rehash: bool = False,
) -> DatasetSummary:
    """Check every shard against the manifest and collect all problems into the summary.

    Raises DatasetError only when the directory or manifest itself is missing or unreadable.
    `image_shape` may be a size S (square), (H, W) or (H, W, C); `channels` overrides C. With
    `verify_checksums`, shards are hashed `workers` at a time, except those verified before and unchanged
    since (`rehash=True` hashes them all).
    """
    dataset_dir = Path(dataset_dir)
    manifest = read_manifest(dataset_dir)
    checker = _DatasetChecker(dataset_dir, manifest, verify_checksums, locking)
    checker.problems += _check_request(
        dataset_dir / "manifest.json", manifest, required_label_cols, image_shape, channels
    )
    if verify_checksums:
        checker.verify_all_checksums(workers or default_workers(), rehash)
    index = 0
    for split, shards in manifest.splits.items():
        for shard in shards:
            checker.check_shard(index, split, shard)
            index += 1
    checker.check_unique_ids()
    checker.checked.flush()
    return DatasetSummary(
        dataset_dir=str(dataset_dir),
        image_shape=manifest.image_shape,
        split_counts={split: manifest.split_count(split) for split in manifest.splits},
        shard_counts={split: {s.file: s.count for s in shards} for split, shards in manifest.splits.items()},
        label_stats=checker.label_stats,
        allow_nan=manifest.allow_nan,
        checksums_verified=verify_checksums,
        problems=checker.problems,
        pixels_sampled=checker.pixels_sampled,
        checksums_hashed=checker.hashed,
        shards_reused=checker.reused,
    )


def validate_dataset(
    dataset_dir: str | os.PathLike,
    required_label_cols: Sequence[str] | None = None,
    image_shape: int | Sequence[int] | None = None,
    channels: int | None = None,
    verify_checksums: bool = False,
    locking: bool | None = None,
    workers: int | None = None,
) -> DatasetSummary:
    """Validate a dataset before use; raises DatasetError (one line) with the first problem found."""
    summary = inspect_dataset(
        dataset_dir, required_label_cols, image_shape, channels, verify_checksums, locking, workers
    )
    if summary.problems:
        more = len(summary.problems) - 1
        suffix = f" (and {more} more; run `zoobot-hpc inspect {dataset_dir}`)" if more else ""
        raise DatasetError(summary.problems[0] + suffix)
    return summary
