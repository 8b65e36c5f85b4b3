"""Part files (one per rank per chunk), the merge into one HDF5 file in manifest order, and the table export.

A part file holds `positions` (global positions of its galaxies in the planned splits), `ids`, and one dataset per
output (e.g. `probabilities`). Every file here is written to `NAME.tmp`, fsynced and renamed, so a file under its
final name is always complete.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from zoobot_hpc.core.atomic import atomic_path
from zoobot_hpc.inference.request import InferenceError, InferencePlan

POSITIONS_KEY = "positions"
IDS_KEY = "ids"
SPLIT_KEY = "split"
COLUMNS_ATTR = "columns"
ID_WIDTH_ATTR = "id_width"  # part attribute: the longest id's UTF-8 length
EXPORT_ROWS = 65536


def fixed_width(values, width: int | None = None) -> np.ndarray:
    """UTF-8 strings as a fixed-width bytes array (`width` bytes, or the longest value's; at least 1)."""
    if isinstance(values, np.ndarray) and values.dtype.kind == "S":
        encoded = values
    else:
        encoded = np.array([v if isinstance(v, bytes) else str(v).encode() for v in values], dtype=object)
        encoded = encoded.astype(bytes) if len(encoded) else np.zeros(0, dtype="S1")
    width = width or max(1, encoded.dtype.itemsize)
    return encoded.astype(string_dtype(width))


def string_dtype(width: int):
    """A fixed-width UTF-8 HDF5 string type (`.asstr()` reads it as str): no heap, one width for all rows."""
    return h5py.string_dtype("utf-8", max(1, int(width)))


def part_path(parts_dir: Path, rank: int, chunk: int) -> Path:
    return Path(parts_dir) / f"rank{rank}-chunk{chunk}.h5"


@contextmanager
def atomic_hdf5(path: Path) -> Iterator[h5py.File]:
    """An HDF5 file written as `path.tmp` that replaces `path` only when the block completes."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
        yield handle


def write_part(path: Path, positions: np.ndarray, ids: list[str], outputs: Mapping[str, np.ndarray]) -> None:
    """Write one part file atomically."""
    encoded = fixed_width(ids)
    with atomic_hdf5(path) as handle:
        handle.create_dataset(POSITIONS_KEY, data=np.asarray(positions, dtype=np.int64))
        handle.create_dataset(IDS_KEY, data=encoded, dtype=string_dtype(encoded.dtype.itemsize))
        handle.attrs[ID_WIDTH_ATTR] = int(encoded.dtype.itemsize) if len(encoded) else 0
        for name, values in outputs.items():
            handle.create_dataset(name, data=values)


def missing_parts(plan: InferencePlan, parts_dir: Path) -> list[Path]:
    """The part files not written yet, in chunk then rank order."""
    return [
        part_path(parts_dir, rank, chunk)
        for chunk in range(plan.num_chunks)
        for rank in range(plan.world_size)
        if not part_path(parts_dir, rank, chunk).exists()
    ]


def split_names(plan: InferencePlan) -> np.ndarray:
    """The split of every planned position."""
    return np.repeat(np.array(plan.splits, dtype=object), plan.split_counts)


def merge_parts(
    plan: InferencePlan, parts_dir: Path, out: Path, columns: Mapping[str, list[str]], attrs: Mapping[str, str]
) -> None:
    """Write every part into one HDF5 file ordered like the input; each position must be covered exactly once.

    `columns` names the last axis of an output (class names, answers, ...), stored as the dataset's `columns` attr.
    """
    missing = missing_parts(plan, parts_dir)
    if missing:
        raise InferenceError(f"{parts_dir}: {len(missing)} part file(s) missing, e.g. {missing[0].name}")
    width = _id_width(plan, parts_dir)
    with atomic_hdf5(out) as merged:
        merged.create_dataset(IDS_KEY, shape=(plan.total,), dtype=string_dtype(width))
        split_width = max((len(split.encode()) for split in plan.splits), default=1)
        merged.create_dataset(SPLIT_KEY, shape=(plan.total,), dtype=string_dtype(split_width))
        start = 0
        for split, count in zip(plan.splits, plan.split_counts, strict=True):
            merged[SPLIT_KEY][start : start + count] = fixed_width([split], split_width)[0]
            start += count
        for chunk in range(plan.num_chunks):
            for rank in range(plan.world_size):
                _copy_part(part_path(parts_dir, rank, chunk), plan.rank_block(chunk, rank), merged, plan.total)
        for name, names in columns.items():
            if name in merged:
                merged[name].attrs[COLUMNS_ATTR] = json.dumps(list(names))
        merged.attrs.update(attrs)


def _id_width(plan: InferencePlan, parts_dir: Path) -> int:
    """The longest id over every part (from their attributes; parts of earlier versions are read)."""
    width = 1
    for chunk in range(plan.num_chunks):
        for rank in range(plan.world_size):
            with h5py.File(part_path(parts_dir, rank, chunk), "r") as part:
                recorded = part.attrs.get(ID_WIDTH_ATTR)
                if recorded is None:
                    recorded = fixed_width(part[IDS_KEY][()]).dtype.itemsize if part[IDS_KEY].shape[0] else 0
                width = max(width, int(recorded))
    return width


def _copy_part(path: Path, block: tuple[int, int], merged: h5py.File, total: int) -> None:
    start, stop = block
    with h5py.File(path, "r") as part:
        positions = part[POSITIONS_KEY][()]
        if not np.array_equal(positions, np.arange(start, stop)):
            raise InferenceError(f"{path}: holds positions {positions[:3]}... but its block is [{start}, {stop})")
        if start == stop:
            return
        merged[IDS_KEY][start:stop] = fixed_width(part[IDS_KEY][()], merged[IDS_KEY].dtype.itemsize)
        for name, dataset in part.items():
            if name in (POSITIONS_KEY, IDS_KEY):
                continue
            if name not in merged:
                merged.create_dataset(name, shape=(total, *dataset.shape[1:]), dtype=dataset.dtype)
            merged[name][start:stop] = dataset[()]


def table_columns(name: str, row_shape: tuple[int, ...], names: list[str] | None) -> list[str]:
    """Flat-table column names of one output whose rows have `row_shape`; `names` name its last axis.

    `name` (one value), `name_<col>` (one per column), `name_sample<k>` (one value per MC sample) or
    `name_<col>_sample<k>` (columns per MC sample).
    """
    if not row_shape:
        return [name]
    if names is None:
        return [f"{name}_sample{k}" for k in range(row_shape[0])]
    if len(row_shape) == 1:
        return [f"{name}_{col}" for col in names]
    return [f"{name}_{col}_sample{k}" for k in range(row_shape[0]) for col in names]


def _output_names(handle: h5py.File) -> list[str]:
    return [name for name in handle if name not in (IDS_KEY, SPLIT_KEY)]


def read_table_block(handle: h5py.File, start: int, stop: int):
    """Rows [start, stop) of the merged file as a pandas DataFrame (id, split, then one column per value)."""
    import pandas as pd

    frame = {
        "id": handle[IDS_KEY].asstr()[start:stop],
        "split": handle[SPLIT_KEY].asstr()[start:stop],
    }
    for name in _output_names(handle):
        dataset = handle[name]
        names = json.loads(dataset.attrs[COLUMNS_ATTR]) if COLUMNS_ATTR in dataset.attrs else None
        values = dataset[start:stop]
        labels = table_columns(name, dataset.shape[1:], names)
        flat = values.reshape(len(values), -1) if values.ndim > 1 else values[:, None]
        frame.update(dict(zip(labels, flat.T, strict=True)))
    return pd.DataFrame(frame)


ZOOBOT_ID_COLUMN = "id_str"
ZOOBOT_OUTPUTS = ("concentrations", "probabilities", "values")  # what Zoobot's models predict, by task


def read_zoobot_block(handle: h5py.File, start: int, stop: int):
    """Rows [start, stop) in the columns of Zoobot's `predict_on_catalog` CSV: `id_str`, then `{label}_pred` per
    output (Dirichlet concentrations for a tree, class probabilities, regression values); with several MC samples
    each cell is a JSON list of the samples, as Zoobot writes them (read back with `json.loads`)."""
    import pandas as pd

    name = next(name for name in ZOOBOT_OUTPUTS if name in handle)
    dataset = handle[name]
    if COLUMNS_ATTR in dataset.attrs:
        labels = json.loads(dataset.attrs[COLUMNS_ATTR])
    else:
        labels = json.loads(handle.attrs["label_cols"])
    values = dataset[start:stop]
    mc_samples = json.loads(handle.attrs["mc_samples"]) if "mc_samples" in handle.attrs else None
    if mc_samples is None:
        values = values[:, None]  # (N, 1, ...): one sample
    values = values.reshape(len(values), values.shape[1], len(labels))  # (N, samples, outputs)
    frame = {ZOOBOT_ID_COLUMN: handle[IDS_KEY].asstr()[start:stop]}
    for k, label in enumerate(labels):
        column = values[:, :, k].astype(float)
        frame[f"{label}_pred"] = column[:, 0] if mc_samples is None else [json.dumps(list(row)) for row in column]
    return pd.DataFrame(frame)


def export_table(merged_path: Path, table_path: Path, export_format: str) -> None:
    """Write the merged HDF5 file as a CSV or parquet table (or Zoobot's CSV, `zoobot-csv`), in blocks of rows,
    atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_path(table_path) as tmp, h5py.File(merged_path, "r") as handle:
        total = handle[IDS_KEY].shape[0]
        writer = None
        read_block = read_zoobot_block if export_format == "zoobot-csv" else read_table_block
        for start in range(0, max(total, 1), EXPORT_ROWS):
            block = read_block(handle, start, min(start + EXPORT_ROWS, total))
            if export_format in ("csv", "zoobot-csv"):
                block.to_csv(tmp, mode="w" if start == 0 else "a", header=start == 0, index=False)
            else:
                table = pa.Table.from_pandas(block, preserve_index=False)
                writer = writer or pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
        if writer is not None:
            writer.close()
