"""Hugging Face datasets as shard sources: parquet files or folders (as on the Hub) and `datasets.save_to_disk`
folders (Arrow stream files), whose image column holds encoded image bytes (the `datasets.Image` feature).

Only pyarrow is needed. The catalog is every other column; images stay in their files, referenced as `FILE#ROW`,
and each shard-building process reads only the files of its own shard.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from zoobot_hpc.data.shard_format import DatasetError, file_sha256

HF_SPLIT_COLUMN = "hf_split"
HF_SPLIT_NAMES = {"train": "train", "validation": "val", "valid": "val", "val": "val", "test": "test"}
_REF_SEPARATOR = "#"
_HUB_SNAPSHOT = re.compile(r"datasets--(?P<owner>[^/]+?)--(?P<name>[^/]+)/snapshots/(?P<revision>[0-9a-f]{40})/")


@dataclass(frozen=True)
class TableSource:
    """A dataset of embedded images: its catalog (image column removed), one `FILE#ROW` reference per row and the
    provenance recorded in the manifest (files with sha256, Hub repository and revision, `datasets` fingerprint)."""

    catalog: pd.DataFrame
    image_refs: list[str]
    provenance: dict[str, Any]


def table_files(path: Path) -> list[Path]:
    """The parquet or Arrow files of a dataset path (a file or a folder searched recursively), in name order."""
    if path.is_file():
        return [path]
    files = sorted(path.rglob("*.parquet"))
    return files or sorted(p for p in path.rglob("*.arrow") if not p.name.startswith("cache-"))


def is_table_source(path: str | Path, image_col: str) -> bool:
    """Whether `path` is a parquet file/folder or a `save_to_disk` folder whose `image_col` holds image bytes."""
    path = Path(path)
    if not (path.is_dir() or path.suffix.lower() in (".parquet", ".pq", ".arrow")):
        return False
    files = table_files(path)
    if not files:
        return False
    field = _schema(files[0]).field(image_col) if image_col in _schema(files[0]).names else None
    return field is not None and _holds_bytes(field.type)


def _holds_bytes(kind: pa.DataType) -> bool:
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return True
    return pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0


def _schema(file: Path) -> pa.Schema:
    if file.suffix == ".arrow":
        with pa.memory_map(str(file)) as source:
            return pa.ipc.open_stream(source).schema
    return pq.read_schema(file)


def _read(file: Path, columns: Sequence[str] | None = None) -> pa.Table:
    if file.suffix == ".arrow":
        with pa.memory_map(str(file)) as source:
            table = pa.ipc.open_stream(source).read_all()
        return table.select(list(columns)) if columns is not None else table
    return pq.read_table(file, columns=list(columns) if columns is not None else None)


def _split_of(file: Path, root: Path) -> str | None:
    """The Hub split a file belongs to: a `train-00000-of-00004.parquet` name or a `train/` folder."""
    candidates = [file.name.split("-")[0].split(".")[0], *(part for part in file.relative_to(root).parts[:-1])]
    for candidate in candidates:
        if candidate.lower() in HF_SPLIT_NAMES:
            return HF_SPLIT_NAMES[candidate.lower()]
    return None


def read_table_source(path: str | Path, image_col: str) -> TableSource:
    """Read every non-image column of the dataset at `path`; images are left in their files."""
    path = Path(path)
    files = table_files(path)
    if not files:
        raise DatasetError(f"{path}: no .parquet or .arrow files")
    root = path if path.is_dir() else path.parent
    frames, refs = [], []
    for file in files:
        names = _schema(file).names
        if image_col not in names:
            raise DatasetError(f"{file}: no image column {image_col!r} (columns: {names})")
        frame = _read(file, [name for name in names if name != image_col]).to_pandas()
        split = _split_of(file, root)
        if split is not None:
            frame[HF_SPLIT_COLUMN] = split
        frames.append(frame)
        refs += [f"{file.resolve()}{_REF_SEPARATOR}{row}" for row in range(len(frame))]
    catalog = pd.concat(frames, ignore_index=True)
    return TableSource(catalog, refs, _provenance(path, files))


def _provenance(path: Path, files: list[Path]) -> dict[str, Any]:
    provenance: dict[str, Any] = {
        "kind": "huggingface-table",
        "files": [
            {"file": str(file.relative_to(path) if path.is_dir() else file.name), "sha256": file_sha256(file)}
            for file in files
        ],
    }
    match = _HUB_SNAPSHOT.search(str(path.resolve()) + "/")
    if match:
        provenance["hub_repo"] = f"{match['owner']}/{match['name']}"
        provenance["revision"] = match["revision"]
    fingerprints = sorted(
        {
            json.loads(state.read_text()).get("_fingerprint")
            for state in (path.rglob("state.json") if path.is_dir() else [])
        }
        - {None}
    )
    if fingerprints:
        provenance["datasets_fingerprint"] = fingerprints
    return provenance


def split_ref(ref: str) -> tuple[str, int]:
    """(file, row) of a `FILE#ROW` reference."""
    file, _, row = ref.rpartition(_REF_SEPARATOR)
    return file, int(row)


def read_embedded_images(refs: Sequence[str], image_col: str) -> list[tuple[str, bytes | None]]:
    """(name, encoded bytes) of each `FILE#ROW` reference, reading each file's image column once.

    The name is the stored file name when the dataset kept one (its suffix says how to decode), else the reference.
    """
    wanted: dict[str, list[int]] = {}
    for ref in refs:
        file, row = split_ref(ref)
        wanted.setdefault(file, []).append(row)
    found: dict[str, tuple[str, bytes | None]] = {}
    for file, rows in wanted.items():
        column = _read(Path(file), [image_col]).column(image_col).take(pa.array(rows)).to_pylist()
        for row, value in zip(rows, column, strict=True):
            ref = f"{file}{_REF_SEPARATOR}{row}"
            if isinstance(value, dict):
                found[ref] = (value.get("path") or ref, value.get("bytes"))
            else:
                found[ref] = (ref, value)
    return [found[ref] for ref in refs]
