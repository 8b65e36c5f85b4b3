"""Build a shard dataset from a CSV/parquet catalog: parallel over shards, resumable, with an error report."""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from zoobot_hpc.atomic import write_text
from zoobot_hpc.data.fits_images import is_fits, read_fits_planes
from zoobot_hpc.data.hf_tables import is_table_source, read_embedded_images, read_table_source
from zoobot_hpc.data.shard_format import (
    DEFAULT_SHARD_SIZE_BYTES,
    FORMAT_VERSION,
    IDS_KEY,
    IMAGE_CHANNELS,
    LABELS_GROUP,
    MANIFEST_NAME,
    SAMPLE_KEYS,
    SPLITS,
    DatasetError,
    Manifest,
    ShardInfo,
    ShardWriter,
    file_sha256,
    images_per_shard,
    label_dtype_name,
    shard_file_name,
    write_manifest,
)
from zoobot_hpc.data.stretch import ImageScaling

REPORT_NAME = "build_report.json"
HASH_SPLITS = ("train", "val", "test")
ON_ERROR_CHOICES = ("fail", "skip")
SOURCES_ATTR = "sources_sha256"  # shard attribute: sha256 of its images' source paths, in order
_WRITE_BLOCK = 64


def hash_split(ids: Sequence[str], fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> np.ndarray:
    """Assign each id to train/val/test by a deterministic sha256 hash of the id (stable across runs)."""
    fractions = np.asarray(fractions, dtype=np.float64)
    if fractions.shape != (3,) or (fractions < 0).any() or not np.isclose(fractions.sum(), 1.0):
        raise ValueError(f"split_fractions must be three non-negative numbers summing to 1, got {fractions.tolist()}")
    position = np.array(
        [int.from_bytes(hashlib.sha256(str(i).encode()).digest()[:8], "big") / 2**64 for i in ids],
        dtype=np.float64,
    )
    bucket = np.searchsorted(np.cumsum(fractions)[:2], position, side="right")
    return np.array(HASH_SPLITS, dtype=object)[bucket]


# PIL modes whose pixels do not fit 8 bits (PIL's own conversion to "L" clips them)
HIGH_DEPTH_MODES = {"I;16": "16-bit", "I;16B": "16-bit", "I;16L": "16-bit", "I": "32-bit integer", "F": "32-bit float"}


def load_image(
    path: str | os.PathLike,
    size: int,
    channels: int,
    scaling: ImageScaling | None = None,
    data: bytes | None = None,
) -> np.ndarray:
    """Load an image as uint8 (size, size, channels): centre-cropped square, resized.

    JPEG/PNG/TIFF (PIL), `.npy` arrays ((H, W) or (H, W, C) with C in 1, 3, 4) or FITS (astropy). uint8 pixels
    are used as they are; FITS and 16-bit, 32-bit or float pixels are scaled with `scaling`'s stretch and refused
    without one (8 bits cannot hold them as they are). `.npy` floats in [0, 1] need no stretch. `data` holds the
    encoded file when it is not on disk (then `path` only names it).
    """
    if not str(path):
        raise ValueError("image path is empty")
    path = Path(path)
    source = io.BytesIO(data) if data is not None else path
    if is_fits(path):
        if scaling is None:
            raise ValueError(
                f"{path}: FITS pixels need a stretch to become 8-bit: choose --stretch asinh or percentile"
            )
        image = _planes_to_image(read_fits_planes(source, scaling.bands), path, scaling)
    elif path.suffix.lower() == ".npy":
        image = _array_to_image(np.load(source), path, scaling)
    else:
        with Image.open(source) as opened:
            _refuse_truncated_colour(opened, path)
            opened.load()
            image = _deep_image_to_8bit(opened.copy(), path, scaling)
    image = image.convert("RGB" if channels == 3 else "L")
    if image.size != (size, size):
        image = ImageOps.fit(image, (size, size), method=Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8).reshape(size, size, channels)


def _refuse_truncated_colour(image: Image.Image, path: Path) -> None:
    """PIL decodes 16-bit colour images (e.g. 48-bit PNG) to their top 8 bits: refuse them rather than lose the rest."""
    args = image.tile[0].args if image.tile else None
    rawmode = args if isinstance(args, str) else (args[0] if isinstance(args, tuple) and args else None)
    if image.mode in ("RGB", "RGBA") and isinstance(rawmode, str) and ";16" in rawmode:
        raise ValueError(
            f"{path}: 16-bit colour pixels ({rawmode}) are decoded by PIL to their top 8 bits only: save the cutout "
            "as FITS or .npy, which --stretch scales"
        )


def _deep_image_to_8bit(image: Image.Image, path: Path, scaling: ImageScaling | None) -> Image.Image:
    depth = HIGH_DEPTH_MODES.get(image.mode)
    if depth is None:
        return image
    if scaling is None:
        raise ValueError(
            f"{path}: {depth} pixels (PIL mode {image.mode}) would lose their range as 8-bit: choose --stretch "
            "asinh or percentile"
        )
    return _planes_to_image(np.asarray(image)[..., None], path, scaling)


def _planes_to_image(planes: np.ndarray, path: Path, scaling: ImageScaling) -> Image.Image:
    """Stretch float (H, W, C) planes with C in 1 or 3 to an 8-bit PIL image."""
    if planes.shape[-1] not in (1, 3):
        raise ValueError(f"{path}: {planes.shape[-1]} image planes; choose 1 or 3 of them with --bands")
    try:
        pixels = scaling.to_uint8(planes)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)


def _array_to_image(array: np.ndarray, path: Path, scaling: ImageScaling | None) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(f"{path}: array shape {array.shape} is not (H, W) or (H, W, C) with C in 1, 3, 4")
    if array.dtype != np.uint8 and scaling is not None and array.dtype.kind in "fiu":
        planes = array[..., :3] if array.ndim == 3 else array[..., None]
        return _planes_to_image(planes, path, scaling)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ValueError(f"{path}: float arrays must be finite and within [0, 1], or choose --stretch")
        array = np.round(array * 255)
    elif array.dtype != np.uint8:
        raise ValueError(f"{path}: array dtype {array.dtype} is not uint8 or float; choose --stretch to scale it")
    return Image.fromarray(array.astype(np.uint8))


@dataclass(frozen=True)
class ShardTask:
    """Everything a worker process needs to write (or reuse) one shard."""

    path: Path
    split: str
    ids: tuple[str, ...]
    image_paths: tuple[str, ...]
    labels: dict[str, np.ndarray]
    size: int
    channels: int
    on_error: str
    scaling: ImageScaling | None = None
    embedded_col: str | None = None  # image_paths are FILE#ROW references into this column of parquet/Arrow files


@dataclass
class ShardResult:
    """A finished shard (None when every image failed or the build must fail) and its failed images."""

    info: ShardInfo | None
    failures: list[dict[str, str]] = field(default_factory=list)
    reused: bool = False


def _load_rows(task: ShardTask, rows: Sequence[int]) -> tuple[dict[int, np.ndarray], list[dict[str, str]]]:
    images, failures = {}, []
    rows = list(rows)
    if task.embedded_col is not None:
        encoded = read_embedded_images([task.image_paths[row] for row in rows], task.embedded_col)
    else:
        encoded = [(task.image_paths[row], None) for row in rows]
    for row, (name, data) in zip(rows, encoded, strict=True):
        try:
            if task.embedded_col is not None and data is None:
                raise ValueError(f"{task.image_paths[row]}: no image bytes")
            images[row] = load_image(name, task.size, task.channels, task.scaling, data)
        except Exception as error:
            message = " ".join(str(error).split()) or type(error).__name__
            failures.append({"id": task.ids[row], "path": task.image_paths[row], "error": message})
    return images, failures


def _sources_digest(task: ShardTask, rows: Sequence[int]) -> str:
    """A fingerprint of where a shard's images (`rows` of `task`) came from: their paths, in shard order, and the
    stretch that scaled them."""
    parts = [task.image_paths[row] for row in rows]
    if task.scaling is not None:
        parts.append(json.dumps(task.scaling.to_dict(), sort_keys=True))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _existing_shard(task: ShardTask) -> ShardResult | None:
    """Reuse a finished shard from an earlier run when it holds exactly what this build would write: the same
    ids in order, image shape, label columns and values, and images from the same paths."""
    if not task.path.is_file():
        return None
    expected_columns = {name: label_dtype_name(values) for name, values in task.labels.items()}
    try:
        with h5py.File(task.path, "r") as handle:
            stored_ids = tuple(handle[IDS_KEY].asstr()[:])
            stored_shape = tuple(int(n) for n in handle.attrs["image_shape"])
            stored_columns = json.loads(handle.attrs["label_columns"])
            stored_sources = handle.attrs.get(SOURCES_ATTR)
            stored_labels = {name: handle[LABELS_GROUP][name][:] for name in expected_columns}
    except (OSError, KeyError, ValueError):
        return None
    if stored_shape != (task.size, task.size, task.channels) or stored_columns != expected_columns:
        return None
    stored = set(stored_ids)
    kept_rows = [row for row, id_ in enumerate(task.ids) if id_ in stored]
    missing = [row for row, id_ in enumerate(task.ids) if id_ not in stored]
    if tuple(task.ids[row] for row in kept_rows) != stored_ids or (missing and task.on_error != "skip"):
        return None
    if stored_sources != _sources_digest(task, kept_rows) or not all(
        np.array_equal(stored_labels[name], values[kept_rows], equal_nan=True) for name, values in task.labels.items()
    ):
        return None
    retried, failures = _load_rows(task, missing)
    if retried:
        return None
    info = ShardInfo(task.path.name, len(stored_ids), task.path.stat().st_size, file_sha256(task.path))
    return ShardResult(info, failures, reused=True)


def build_shard(task: ShardTask) -> ShardResult:
    """Write one shard from its catalog rows (or reuse a finished one); runs in a worker process."""
    existing = _existing_shard(task)
    if existing is not None:
        return existing
    failures = []
    kept_rows: list[int] = []
    with ShardWriter(task.path, (task.size, task.size, task.channels), task.split) as writer:
        for start in range(0, len(task.ids), _WRITE_BLOCK):
            rows = range(start, min(start + _WRITE_BLOCK, len(task.ids)))
            images, block_failures = _load_rows(task, rows)
            failures += block_failures
            if block_failures and task.on_error == "fail":
                continue
            if images:
                writer.append(np.stack(list(images.values())), [task.ids[row] for row in images])
                kept_rows += list(images)
        if (failures and task.on_error == "fail") or not kept_rows:
            return ShardResult(None, failures)
        info = writer.finish(
            {name: values[kept_rows] for name, values in task.labels.items()},
            attrs={SOURCES_ATTR: _sources_digest(task, kept_rows)},
        )
    return ShardResult(info, failures)


def read_catalog(catalog: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV or parquet catalog with pandas."""
    catalog = Path(catalog)
    if catalog.is_dir():
        raise DatasetError(f"{catalog}: a folder is read only as a Hugging Face dataset with an image-bytes column")
    if not catalog.is_file():
        raise DatasetError(f"{catalog}: catalog file does not exist")
    suffix = catalog.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(catalog)
    if suffix in (".csv", ".gz", ".txt"):
        return pd.read_csv(catalog)
    raise DatasetError(f"{catalog}: catalog must be .csv or .parquet, got {suffix!r}")


def _label_arrays(
    catalog: Path, frame: pd.DataFrame, id_col: str, label_cols: Sequence[str], allow_nan: Sequence[str]
) -> dict[str, np.ndarray]:
    labels = {}
    for name in label_cols:
        column = frame[name]
        if not (pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column)):
            raise DatasetError(f"{catalog}: label column {name!r} is {column.dtype}, expected numbers")
        values = column.to_numpy()
        values = values.astype(label_dtype_name(values))
        if values.dtype.kind == "f":
            bad = ~np.isfinite(values) & ~(np.isnan(values) if name in allow_nan else False)
            if bad.any():
                first = int(np.argmax(bad))
                raise DatasetError(
                    f"{catalog}: label column {name!r} has {int(bad.sum())} non-finite values "
                    f"(first {values[first]} at id {frame[id_col].iloc[first]!r}); pass it in allow_nan if "
                    "missing labels are expected"
                )
        labels[name] = values
    return labels


def _check_build_args(
    catalog: Path,
    frame: pd.DataFrame,
    columns: dict[str, str | None],
    label_cols: Sequence[str],
    allow_nan: Sequence[str],
    channels: int,
    size: int,
    on_error: str,
) -> None:
    for role, name in columns.items():
        if name is not None and name not in frame.columns:
            raise DatasetError(f"{catalog}: no {role} column {name!r} (columns: {list(frame.columns)})")
    for name in label_cols:
        if name not in frame.columns:
            raise DatasetError(f"{catalog}: no label column {name!r} (columns: {list(frame.columns)})")
        if name in SAMPLE_KEYS:
            raise DatasetError(f"{catalog}: label column {name!r} clashes with a sample key {SAMPLE_KEYS}; rename it")
    unknown_nan = [name for name in allow_nan if name not in label_cols]
    if unknown_nan:
        raise ValueError(f"allow_nan names columns that are not label columns: {unknown_nan}")
    if channels not in IMAGE_CHANNELS:
        raise ValueError(f"channels must be one of {IMAGE_CHANNELS}, got {channels}")
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
    if frame.empty:
        raise DatasetError(f"{catalog}: catalog has no rows")


def _assign_splits(
    catalog: Path,
    frame: pd.DataFrame,
    ids: np.ndarray,
    split_col: str | None,
    split_fractions: Sequence[float],
    labelled: bool,
) -> np.ndarray:
    if split_col is None:
        return hash_split(ids, split_fractions) if labelled else np.full(len(ids), "predict", dtype=object)
    splits = frame[split_col].astype(str).to_numpy(dtype=object)
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise DatasetError(f"{catalog}: split column {split_col!r} has values {unknown[:5]} (allowed: {SPLITS})")
    return splits


def _image_paths(catalog: Path, frame: pd.DataFrame, image_col: str) -> np.ndarray:
    """Image paths of a catalog, relative to its folder unless absolute ("" where missing)."""
    return np.array(
        [str(catalog.parent / str(p)) if pd.notna(p) and str(p) else "" for p in frame[image_col]],
        dtype=object,
    )


def _plan_tasks(
    out_dir: Path,
    catalog: Path,
    frame: pd.DataFrame,
    ids: np.ndarray,
    splits: np.ndarray,
    labels: dict[str, np.ndarray],
    image_paths: np.ndarray,
    size: int,
    channels: int,
    shard_size_bytes: int,
    on_error: str,
    scaling: ImageScaling | None,
    embedded_col: str | None,
) -> list[ShardTask]:
    per_shard = images_per_shard((size, size, channels), shard_size_bytes)
    tasks = []
    for split in SPLITS:
        rows = np.flatnonzero(splits == split)
        for index, start in enumerate(range(0, len(rows), per_shard)):
            chunk = rows[start : start + per_shard]
            tasks.append(
                ShardTask(
                    path=out_dir / shard_file_name(split, index),
                    split=split,
                    ids=tuple(ids[chunk]),
                    image_paths=tuple(image_paths[chunk]),
                    labels={name: values[chunk] for name, values in labels.items()},
                    size=size,
                    channels=channels,
                    on_error=on_error,
                    scaling=scaling,
                    embedded_col=embedded_col,
                )
            )
    return tasks


def _run_tasks(tasks: list[ShardTask], num_workers: int, progress: bool) -> list[ShardResult]:
    bar = tqdm(total=sum(len(t.ids) for t in tasks), unit="img", desc="building shards", disable=not progress)
    results = []
    with bar:
        if num_workers <= 1:
            for task in tasks:
                results.append(build_shard(task))
                bar.update(len(task.ids))
        else:
            with ProcessPoolExecutor(max_workers=num_workers) as pool:
                for task, result in zip(tasks, pool.map(build_shard, tasks), strict=True):
                    results.append(result)
                    bar.update(len(task.ids))
    return results


def _write_report(out_dir: Path, catalog: Path, on_error: str, results: list[ShardResult]) -> Path:
    failures = [failure for result in results for failure in result.failures]
    report = {
        "catalog": str(catalog),
        "on_error": on_error,
        "failed_count": len(failures),
        "failed": failures,
        "shards_written": sum(r.info is not None and not r.reused for r in results),
        "shards_reused": sum(r.reused for r in results),
    }
    path = out_dir / REPORT_NAME
    write_text(path, json.dumps(report, indent=2) + "\n")
    return path


@dataclass
class _Source:
    """A catalog as read: its rows, the image references of an embedded-image table, and provenance."""

    frame: pd.DataFrame
    embedded_col: str | None
    image_refs: np.ndarray | None
    provenance: dict[str, Any]


def _read_source(catalog: Path, image_col: str, scaling: ImageScaling | None) -> _Source:
    """A CSV/parquet catalog of image paths, or a Hugging Face table whose `image_col` holds image bytes."""
    if is_table_source(catalog, image_col):
        table = read_table_source(catalog, image_col)
        source = _Source(table.catalog, image_col, np.array(table.image_refs, dtype=object), dict(table.provenance))
    else:
        source = _Source(read_catalog(catalog), None, None, {})
    if scaling is not None:
        source.provenance["image_scaling"] = scaling.to_dict()
    return source


def _unique_ids(catalog: Path, frame: pd.DataFrame, id_col: str) -> np.ndarray:
    """The catalog's ids as strings; a one-line DatasetError when any repeats."""
    ids = frame[id_col].astype(str).to_numpy(dtype=object)
    repeated = pd.Index(ids)[pd.Index(ids).duplicated()].unique()
    if len(repeated):
        raise DatasetError(f"{catalog}: {len(repeated)} ids repeat in column {id_col!r}, e.g. {list(repeated[:5])}")
    return ids


def build_dataset(
    catalog: str | os.PathLike,
    out_dir: str | os.PathLike,
    image_col: str = "file_loc",
    id_col: str = "id_str",
    label_cols: Sequence[str] = (),
    size: int = 224,
    channels: int = 3,
    split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
    split_col: str | None = None,
    num_workers: int = 1,
    shard_size_bytes: int = DEFAULT_SHARD_SIZE_BYTES,
    on_error: str = "fail",
    progress: bool = True,
    allow_nan: Sequence[str] = (),
    scaling: ImageScaling | None = None,
) -> Manifest:
    """Build a shard dataset in `out_dir` from a CSV/parquet catalog and return its manifest.

    Image paths are relative to the catalog's folder unless absolute. `catalog` may instead be a Hugging Face
    dataset (parquet file or folder, or a `datasets.save_to_disk` folder) whose `image_col` holds encoded image
    bytes: the other columns are the catalog, a `hf_split` column names the Hub split where the files say it, and
    the files' sha256 (and the Hub revision) go into the manifest's provenance. FITS and images deeper than 8 bits
    are scaled with `scaling` (recorded in the manifest) and refused without it. Rows are split by a hash of the id
    (`split_fractions` for train/val/test) or by `split_col`; with no label columns and no `split_col` every
    row goes to `predict`. Unreadable images are listed in `build_report.json` and either skipped
    (`on_error='skip'`) or fail the build after all other shards are written. Re-running resumes: finished
    shards are reused. The manifest is written last.
    """
    catalog, out_dir = Path(catalog), Path(out_dir)
    source = _read_source(catalog, image_col, scaling)
    frame, embedded_col = source.frame, source.embedded_col
    columns = ({"image": image_col} if embedded_col is None else {}) | {"id": id_col, "split": split_col}
    _check_build_args(catalog, frame, columns, label_cols, allow_nan, channels, size, on_error)
    ids = _unique_ids(catalog, frame, id_col)
    labels = _label_arrays(catalog, frame, id_col, label_cols, allow_nan)
    splits = _assign_splits(catalog, frame, ids, split_col, split_fractions, labelled=bool(label_cols))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
    image_paths = source.image_refs if embedded_col else _image_paths(catalog, frame, image_col)
    tasks = _plan_tasks(
        out_dir,
        catalog,
        frame,
        ids,
        splits,
        labels,
        image_paths,
        size,
        channels,
        shard_size_bytes,
        on_error,
        scaling,
        embedded_col,
    )
    results = _run_tasks(tasks, num_workers, progress)
    image_shape = (size, size, channels)
    return _finish_dataset(
        out_dir, catalog, on_error, tasks, results, labels, image_shape, allow_nan, id_col, source.provenance
    )


def _finish_dataset(
    out_dir: Path,
    catalog: Path,
    on_error: str,
    tasks: Sequence[ShardTask],
    results: Sequence[ShardResult],
    labels: dict[str, np.ndarray],
    image_shape: tuple[int, int, int],
    allow_nan: Sequence[str],
    id_col: str,
    provenance: dict[str, Any],
) -> Manifest:
    """Write the build report; unless images failed (with on_error='fail') or none was read, the manifest."""
    report = _write_report(out_dir, catalog, on_error, results)
    failures = [failure for result in results for failure in result.failures]
    if failures and on_error == "fail":
        first = failures[0]
        raise DatasetError(
            f"{catalog}: {len(failures)} unreadable images (first {first['path']}: {first['error']}); "
            f"all listed in {report}; fix them or use on_error='skip'"
        )
    shard_splits: dict[str, list[ShardInfo]] = {}
    for task, result in zip(tasks, results, strict=True):
        if result.info is not None:
            shard_splits.setdefault(task.split, []).append(result.info)
    if not shard_splits:
        raise DatasetError(f"{catalog}: no image could be read; see {report}")
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        image_shape=image_shape,
        label_columns={name: label_dtype_name(values) for name, values in labels.items()},
        allow_nan=tuple(allow_nan),
        splits={split: tuple(infos) for split, infos in shard_splits.items()},
        id_column=id_col,
        source=str(catalog.resolve()),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        provenance=provenance,
    )
    write_manifest(out_dir, manifest)
    return manifest
