"""Build a shard dataset from a CSV/parquet catalog: parallel over shards, resumable, with an error report."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from zoobot_hpc.core.atomic import write_text
from zoobot_hpc.core.disk_space import out_of_space, says_out_of_space, space_warning
from zoobot_hpc.data.build_planning import plan_build
from zoobot_hpc.data.build_state import (
    PLAN_ATTR,
    WriterRecord,
    label_values,
    plan_digest,
    read_record,
    stamp_record,
    write_record,
)
from zoobot_hpc.data.build_units import read_unit, remove_units
from zoobot_hpc.data.catalog_scan import ID, PATH, CatalogScan, open_catalog
from zoobot_hpc.data.fits_images import is_fits, read_fits_planes
from zoobot_hpc.data.hf_tables import is_table_source, read_embedded_images, read_table_source
from zoobot_hpc.data.id_hashing import HASH_SPLITS, sha256_hash64, splits_from_hash
from zoobot_hpc.data.shard_format import (
    DEFAULT_SHARD_SIZE_BYTES,
    FORMAT_VERSION,
    IDS_KEY,
    IMAGE_CHANNELS,
    IMAGES_KEY,
    LABELS_GROUP,
    MANIFEST_NAME,
    SAMPLE_KEYS,
    DatasetError,
    Manifest,
    ShardInfo,
    ShardWriter,
    file_sha256,
    write_manifest,
)
from zoobot_hpc.data.stretch import ImageScaling

log = logging.getLogger(__name__)

REPORT_NAME = "build_report.json"
ON_ERROR_CHOICES = ("fail", "skip")
SOURCES_ATTR = "sources_sha256"  # shard attribute: sha256 of its images' source paths, in order
_WRITE_BLOCK = 64


def hash_split(ids: Sequence[str], fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> np.ndarray:
    """Assign each id to train/val/test by a deterministic sha256 hash of the id (stable across runs)."""
    codes = splits_from_hash(sha256_hash64(ids), fractions)
    return np.array(HASH_SPLITS, dtype=object)[codes]


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
class UnitTask:
    """Everything a worker process needs to write (or reuse) one shard: its work unit and how to decode."""

    unit: Path
    out_dir: Path
    shard: str
    split: str
    size: int
    channels: int
    on_error: str
    label_dtypes: dict[str, str]
    scaling: ImageScaling | None = None
    embedded_col: str | None = None  # paths are FILE#ROW references into this column of parquet/Arrow files

    @property
    def path(self) -> Path:
        return self.out_dir / self.shard

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.size, self.size, self.channels)


@dataclass
class ShardResult:
    """A finished shard (None when none of its images could be read), its failed images and what it cost."""

    info: ShardInfo | None
    failures: list[dict[str, str]] = field(default_factory=list)
    reused: bool = False
    decoded: int = 0  # images decoded successfully by this run
    copied: int = 0  # images copied from an earlier version of the shard instead of decoded again


@dataclass
class _Rows:
    """A unit's rows as plain Python/numpy values (a few MB for a 2 GiB shard)."""

    ids: list[str]
    paths: list[str]
    labels: dict[str, np.ndarray]
    digest: str


def _read_rows(task: UnitTask) -> _Rows:
    table = read_unit(task.unit)
    scaling = task.scaling.to_dict() if task.scaling is not None else None
    return _Rows(
        ids=table.column(ID).to_pylist(),
        paths=table.column(PATH).to_pylist(),
        labels={name: label_values(table, name, dtype) for name, dtype in task.label_dtypes.items()},
        digest=plan_digest(table, task.label_dtypes, task.image_shape, scaling),
    )


def _decode_rows(
    task: UnitTask, rows: _Rows, which: Sequence[int]
) -> tuple[dict[int, np.ndarray], list[dict[str, str]]]:
    """Decode `which` rows: the images that could be read, and one failure (id, path, reason) per other row."""
    images, failures = {}, []
    which = list(which)
    if not which:
        return images, failures
    if task.embedded_col is not None:
        encoded = read_embedded_images([rows.paths[row] for row in which], task.embedded_col)
    else:
        encoded = [(rows.paths[row], None) for row in which]
    for row, (name, data) in zip(which, encoded, strict=True):
        try:
            if task.embedded_col is not None and data is None:
                raise ValueError(f"{rows.paths[row]}: no image bytes")
            images[row] = load_image(name, task.size, task.channels, task.scaling, data)
        except Exception as error:
            message = " ".join(str(error).split()) or type(error).__name__
            failures.append({"id": rows.ids[row], "path": rows.paths[row], "error": message})
    return images, failures


def _sources_digest(task: UnitTask, rows: _Rows, kept: Sequence[int]) -> str:
    """A fingerprint of where a shard's images (`kept` rows) came from: their paths, in shard order, and the
    stretch that scaled them (shards of earlier versions carry only this)."""
    parts = [rows.paths[row] for row in kept]
    if task.scaling is not None:
        parts.append(json.dumps(task.scaling.to_dict(), sort_keys=True))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _verified_rows(task: UnitTask, rows: _Rows) -> list[int] | None:
    """Without a trusted writer record: the rows an existing shard holds when it holds exactly what this build
    would write for them (the same ids in order, image shape, label columns and values, image sources)."""
    path = task.path
    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as handle:
            stored_ids = list(handle[IDS_KEY].asstr()[:])
            stored_shape = tuple(int(n) for n in handle.attrs["image_shape"])
            stored_columns = json.loads(handle.attrs["label_columns"])
            stored_sources = handle.attrs.get(SOURCES_ATTR)
            stored_labels = {name: handle[LABELS_GROUP][name][:] for name in task.label_dtypes}
    except (OSError, KeyError, ValueError):
        return None
    if stored_shape != task.image_shape or stored_columns != task.label_dtypes:
        return None
    stored = set(stored_ids)
    kept = [row for row, id_ in enumerate(rows.ids) if id_ in stored]
    if [rows.ids[row] for row in kept] != stored_ids or stored_sources != _sources_digest(task, rows, kept):
        return None
    same = (np.array_equal(stored_labels[name], values[kept], equal_nan=True) for name, values in rows.labels.items())
    if not all(same):
        return None
    return kept


def build_unit(task: UnitTask) -> ShardResult:
    """Write one shard from its work unit, or reuse what an earlier run wrote; runs in a worker process.

    A shard an earlier run finished is trusted by its writer record (no re-hash). Images it could not read are
    tried again; when one can be read now the shard is written again, its other images copied from the old file
    rather than decoded again. Bad images never stop the good ones around them from being written.
    """
    rows = _read_rows(task)
    record = read_record(task.out_dir, task.shard)
    trusted = record is not None and record.plan_sha256 == rows.digest and record.matches_file(task.path)
    if trusted:
        failed_ids = {failure["id"] for failure in record.failed}
        kept = [row for row, id_ in enumerate(rows.ids) if id_ not in failed_ids]
    else:
        kept = _verified_rows(task, rows)
    if kept is None:
        return _write_shard(task, rows)
    kept_set = set(kept)
    failures: list[dict[str, str]] = []
    readable: dict[int, np.ndarray] = {}
    for row in (row for row in range(len(rows.ids)) if row not in kept_set):
        images, row_failures = _decode_rows(task, rows, [row])
        failures += row_failures
        if images:
            readable = images
            break
    if readable:
        old_rows = {row: index for index, row in enumerate(kept)}
        known = {failure["id"]: failure for failure in failures}
        return _write_shard(task, rows, old_rows=old_rows, readable=readable, known_failures=known)
    if trusted:
        return ShardResult(record.info(), failures, reused=True)
    info = ShardInfo(task.shard, len(kept), task.path.stat().st_size, file_sha256(task.path)) if kept else None
    _record(task, rows, info, failures)
    return ShardResult(info, failures, reused=True)


def _record(task: UnitTask, rows: _Rows, info: ShardInfo | None, failures: list[dict[str, str]]) -> None:
    record = WriterRecord(task.shard, rows.digest, 0, failed=failures)
    if info is not None:
        record.count, record.size_bytes, record.sha256 = info.count, info.size_bytes, info.sha256
    write_record(task.out_dir, stamp_record(record, task.path))


def _write_shard(
    task: UnitTask,
    rows: _Rows,
    old_rows: dict[int, int] | None = None,
    readable: dict[int, np.ndarray] | None = None,
    known_failures: dict[str, dict[str, str]] | None = None,
) -> ShardResult:
    """Write the shard block by block: images from the old shard (`old_rows`: unit row -> its row there) are
    copied, `readable` ones were decoded already, `known_failures` are not tried again, the rest are decoded."""
    readable, known_failures = dict(readable or {}), known_failures or {}
    result = ShardResult(None)
    kept: list[int] = []
    old_handle = h5py.File(task.path, "r") if old_rows else None
    writer = ShardWriter(task.path, task.image_shape, task.split)
    try:
        for start in range(0, len(rows.ids), _WRITE_BLOCK):
            block = range(start, min(start + _WRITE_BLOCK, len(rows.ids)))
            images = _block_images(task, rows, block, old_handle, old_rows or {}, readable, known_failures, result)
            if images:
                writer.append(np.stack(list(images.values())), [rows.ids[row] for row in images])
                kept += list(images)
        if old_handle is not None:
            old_handle.close()
        if kept:
            result.info = writer.finish(
                {name: values[kept] for name, values in rows.labels.items()},
                attrs={SOURCES_ATTR: _sources_digest(task, rows, kept), PLAN_ATTR: rows.digest},
            )
        else:
            task.path.unlink(missing_ok=True)
    finally:
        if old_handle is not None and old_handle.id.valid:
            old_handle.close()
        writer.abort()
    _record(task, rows, result.info, result.failures)
    return result


def _block_images(
    task: UnitTask,
    rows: _Rows,
    block: range,
    old_handle: h5py.File | None,
    old_rows: dict[int, int],
    readable: dict[int, np.ndarray],
    known_failures: dict[str, dict[str, str]],
    result: ShardResult,
) -> dict[int, np.ndarray]:
    copy = [row for row in block if row in old_rows]
    pixels = old_handle[IMAGES_KEY][[old_rows[row] for row in copy]] if copy else ()
    copied = dict(zip(copy, pixels, strict=True))
    result.copied += len(copied)
    todo = [row for row in block if row not in copied and row not in readable and rows.ids[row] not in known_failures]
    decoded, failures = _decode_rows(task, rows, todo)
    result.decoded += len(decoded) + sum(row in readable for row in block)
    result.failures += failures + [known_failures[rows.ids[row]] for row in block if rows.ids[row] in known_failures]
    images = {}
    for row in block:
        image = copied.get(row, decoded.get(row, readable.pop(row, None)))
        if image is not None:
            images[row] = image
    return images


def _run_tasks(tasks: list[UnitTask], counts: list[int], num_workers: int, progress: bool) -> list[ShardResult]:
    bar = tqdm(total=sum(counts), unit="img", desc="building shards", disable=not progress)
    results = []
    with bar:
        if num_workers <= 1:
            for task, count in zip(tasks, counts, strict=True):
                results.append(build_unit(task))
                bar.update(count)
        else:
            with ProcessPoolExecutor(max_workers=num_workers) as pool:
                for count, result in zip(counts, pool.map(build_unit, tasks), strict=True):
                    results.append(result)
                    bar.update(count)
    return results


def _write_report(out_dir: Path, catalog: Path, on_error: str, results: list[ShardResult]) -> Path:
    failures = [failure for result in results for failure in result.failures]
    report = {
        "catalog": str(catalog),
        "on_error": on_error,
        "failed_count": len(failures),
        "failed": failures,
        "shards_written": sum(r.info is not None and not r.reused for r in results),
        "shards_reused": sum(r.reused and r.info is not None for r in results),
        "images_decoded": sum(r.decoded for r in results),
        "images_copied": sum(r.copied for r in results),
    }
    path = out_dir / REPORT_NAME
    write_text(path, json.dumps(report, indent=2) + "\n")
    return path


def failure_lines(out_dir: str | os.PathLike, limit: int = 5) -> list[str]:
    """For the terminal: how many images could not be read and the first `limit` of them, with reasons."""
    path = Path(out_dir) / REPORT_NAME
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    failed = report.get("failed") or []
    if not failed:
        return []
    verb = "skipped" if report.get("on_error") == "skip" else "could not read"
    lines = [f"{verb} {len(failed)} unreadable image(s) (all listed in {path}):"]
    lines += [f"  {failure['path'] or '(no path)'} [{failure['id']}]: {failure['error']}" for failure in failed[:limit]]
    if len(failed) > limit:
        lines.append(f"  ... and {len(failed) - limit} more")
    return lines


def _check_build_args(
    label_cols: Sequence[str], allow_nan: Sequence[str], channels: int, size: int, on_error: str
) -> None:
    unknown_nan = [name for name in allow_nan if name not in label_cols]
    if unknown_nan:
        raise ValueError(f"allow_nan names columns that are not label columns: {unknown_nan}")
    if channels not in IMAGE_CHANNELS:
        raise ValueError(f"channels must be one of {IMAGE_CHANNELS}, got {channels}")
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")


def _open_source(
    catalog: Path, image_col: str, id_col: str, split_col: str | None, label_cols: Sequence[str]
) -> CatalogScan:
    """A CSV/parquet catalog of image paths, or a Hugging Face table whose `image_col` holds image bytes."""
    if is_table_source(catalog, image_col):
        table = read_table_source(catalog, image_col)
        scan = open_catalog(catalog, image_col, id_col, split_col, label_cols, embedded_table=table)
        scan.provenance = dict(table.provenance)
        return scan
    return open_catalog(catalog, image_col, id_col, split_col, label_cols)


@dataclass
class PreparedBuild:
    """A planned build: its work units as tasks, and what the manifest needs once every shard is written."""

    out_dir: Path
    catalog: Path
    on_error: str
    tasks: list[UnitTask]
    counts: list[int]  # images planned for each task's shard
    label_dtypes: dict[str, str]
    image_shape: tuple[int, int, int]
    allow_nan: tuple[str, ...]
    id_col: str
    provenance: dict[str, Any]


def prepare_build(  # noqa: PLR0913 (the `shard` command's options; a BuildRequest dataclass would be the next step)
    catalog: str | os.PathLike,
    out_dir: str | os.PathLike,
    image_col: str = "file_loc",
    id_col: str = "id_str",
    label_cols: Sequence[str] = (),
    size: int = 224,
    channels: int = 3,
    split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
    split_col: str | None = None,
    shard_size_bytes: int = DEFAULT_SHARD_SIZE_BYTES,
    on_error: str = "fail",
    allow_nan: Sequence[str] = (),
    scaling: ImageScaling | None = None,
) -> PreparedBuild:
    """Check the catalog and plan the build in one streaming pass (`build_planning`): one work unit per shard,
    written under `out_dir`. An old manifest is removed: it is written again only when every shard is done."""
    catalog, out_dir = Path(catalog), Path(out_dir)
    _check_build_args(label_cols, allow_nan, channels, size, on_error)
    scan = _open_source(catalog, image_col, id_col, split_col, label_cols)
    for name in label_cols:
        if name in SAMPLE_KEYS:
            raise DatasetError(f"{catalog}: label column {name!r} clashes with a sample key {SAMPLE_KEYS}; rename it")
    provenance = dict(scan.provenance)
    if scaling is not None:
        provenance["image_scaling"] = scaling.to_dict()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
    image_shape = (size, size, channels)
    plan = plan_build(scan, out_dir, image_shape, shard_size_bytes, split_fractions, allow_nan)
    warn_of_space(out_dir, plan.rows, image_shape, len(plan.label_dtypes), len(plan.units))
    embedded_col = image_col if scan.embedded is not None else None
    tasks = [
        UnitTask(
            unit.path,
            out_dir,
            unit.shard,
            unit.split,
            size,
            channels,
            on_error,
            plan.label_dtypes,
            scaling,
            embedded_col,
        )
        for unit in plan.units
    ]
    counts = [unit.count for unit in plan.units]
    return PreparedBuild(
        out_dir, catalog, on_error, tasks, counts, plan.label_dtypes, image_shape, tuple(allow_nan), id_col, provenance
    )


def build_dataset(  # noqa: PLR0913 (the `shard` command's options; a BuildRequest dataclass would be the next step)
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
    row goes to `predict`.

    The catalog is planned in one streaming pass (`build_planning`) into one work unit per shard; workers write
    the shards. Unreadable images are found while decoding and listed in `build_report.json`; the images around
    them are written all the same. With `on_error='skip'` the dataset is finished without them; with 'fail' the
    build raises after every shard is done and keeps them, so a rerun (with 'skip', or after the files are fixed)
    decodes only what is missing. Re-running resumes: finished shards are trusted by their writer records. The
    manifest is written last. (`zoobot_hpc.login.shard_submit` runs the same build as a job array.)
    """
    prepared = prepare_build(
        catalog,
        out_dir,
        image_col,
        id_col,
        label_cols,
        size,
        channels,
        split_fractions,
        split_col,
        shard_size_bytes,
        on_error,
        allow_nan,
        scaling,
    )
    try:
        results = _run_tasks(prepared.tasks, prepared.counts, num_workers, progress)
    except OSError as error:  # a shard that ran out of room: the one line of core.disk_space, not HDF5's words
        if not says_out_of_space(error):
            raise
        raise (out_of_space(error, prepared.out_dir, "the shards into", 0) or error) from None
    return finish_build(prepared, results)


def warn_of_space(out_dir: Path, rows: int, image_shape: tuple[int, int, int], labels: int, shards: int) -> None:
    """Log one line when `out_dir`'s filesystem holds less space or fewer inodes than the shards will take
    (uint8 pixels, ids and labels; HDF5's own overhead is small)."""
    needed = rows * (int(np.prod(image_shape)) + 8 * labels + 64)
    what = f"{rows} images of {'x'.join(map(str, image_shape))} in {shards} shards"
    warning = space_warning(out_dir, needed, 2 * shards + 8, what)
    if warning:
        log.warning("%s", warning)


def recorded_result(task: UnitTask) -> ShardResult | None:
    """What the writer of a task's shard recorded, while the record is trusted (the same plan, the file it
    finished); None when the shard is not done."""
    rows = _read_rows(task)
    record = read_record(task.out_dir, task.shard)
    if record is None or record.plan_sha256 != rows.digest or not record.matches_file(task.path):
        return None
    return ShardResult(record.info(), list(record.failed), reused=True)


def finish_build(prepared: PreparedBuild, results: Sequence[ShardResult]) -> Manifest:
    """Write the build report; unless images failed (with on_error='fail') or none was read, the manifest; then
    remove the work units."""
    report = _write_report(prepared.out_dir, prepared.catalog, prepared.on_error, list(results))
    failures = [failure for result in results for failure in result.failures]
    catalog = prepared.catalog
    if failures and prepared.on_error == "fail":
        first = failures[0]
        raise DatasetError(
            f"{catalog}: {len(failures)} unreadable images (first {first['path']}: {first['error']}); "
            f"all listed in {report}; the readable images are kept: fix the files and run again, or rerun with "
            "on_error='skip'"
        )
    shard_splits: dict[str, list[ShardInfo]] = {}
    for task, result in zip(prepared.tasks, results, strict=True):
        if result.info is not None:
            shard_splits.setdefault(task.split, []).append(result.info)
    if not shard_splits:
        raise DatasetError(f"{catalog}: no image could be read; see {report}")
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        image_shape=prepared.image_shape,
        label_columns=dict(prepared.label_dtypes),
        allow_nan=prepared.allow_nan,
        splits={split: tuple(infos) for split, infos in shard_splits.items()},
        id_column=prepared.id_col,
        source=str(catalog.resolve()),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        provenance=prepared.provenance,
    )
    write_manifest(prepared.out_dir, manifest)
    remove_units(prepared.out_dir)
    return manifest
