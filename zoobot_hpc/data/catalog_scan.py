"""Read a catalog as a stream of Arrow record batches holding only the columns a build needs.

CSV (pyarrow's streaming reader), parquet (row groups in batches) or a Hugging Face table of embedded images.
Every batch has the columns `id` (string), `path` (string: the image path joined to the catalog's folder, or a
`FILE#ROW` reference into an image-bytes table), `split` (string, only with a split column) and the label columns
as the catalog types them. Nothing per row runs in Python.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from zoobot_hpc.data.shard_format import DatasetError

ID, PATH, SPLIT = "__id__", "__path__", "__split__"  # never a label column's name
BATCH_ROWS = 1 << 19
_CSV_BLOCK_BYTES = 32 << 20
_CSV_SUFFIXES = (".csv", ".gz", ".txt")
_PARQUET_SUFFIXES = (".parquet", ".pq")
_CONVERSION_ERROR = re.compile(r"In CSV column #(\d+): .*CSV conversion error to (\w+)")


class CatalogRetyped(Exception):
    """A CSV label column changed type after the first block (integers, then a decimal): the scan must restart,
    now reading that column as float64."""


def is_number_type(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)


@dataclass
class CatalogScan:
    """How to stream one catalog; `batches()` may be called more than once (each call reads from the start)."""

    catalog: Path
    image_col: str | None
    id_col: str
    split_col: str | None
    label_cols: Sequence[str]
    columns: list[str] = field(default_factory=list)  # every column of the catalog (for error messages)
    types: dict[str, pa.DataType] = field(default_factory=dict)
    embedded: pa.Table | None = None  # a Hugging Face table: id/path/split/label columns, image refs as `path`
    provenance: dict[str, Any] = field(default_factory=dict)
    _forced_float: set[str] = field(default_factory=set)

    @property
    def kind(self) -> str:
        if self.embedded is not None:
            return "table"
        return "parquet" if self.catalog.suffix.lower() in _PARQUET_SUFFIXES else "csv"

    def _needed(self) -> list[str]:
        names = [self.id_col, *self.label_cols]
        if self.image_col is not None:
            names.append(self.image_col)
        if self.split_col is not None:
            names.append(self.split_col)
        return list(dict.fromkeys(names))

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The catalog's rows in order, in batches of the build's columns."""
        if self.embedded is not None:
            yield from (self._normalise(batch) for batch in self.embedded.to_batches(BATCH_ROWS))
        elif self.kind == "parquet":
            handle = pq.ParquetFile(self.catalog)
            for batch in handle.iter_batches(batch_size=BATCH_ROWS, columns=self._needed()):
                yield self._normalise(batch)
        else:
            yield from self._csv_batches()

    def _csv_batches(self) -> Iterator[pa.RecordBatch]:
        text = {name: pa.string() for name in (self.id_col, self.image_col, self.split_col) if name is not None}
        forced = {name: pa.float64() for name in self._forced_float}
        convert = pacsv.ConvertOptions(include_columns=self._needed(), column_types={**text, **forced})
        reader = pacsv.open_csv(
            self.catalog, read_options=pacsv.ReadOptions(block_size=_CSV_BLOCK_BYTES), convert_options=convert
        )
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except pa.ArrowInvalid as error:
                self._retype(error)
                raise
            yield self._normalise(batch)

    def _retype(self, error: pa.ArrowInvalid) -> None:
        match = _CONVERSION_ERROR.search(str(error))
        if match is None:
            raise DatasetError(f"{self.catalog}: cannot read the catalog ({error})") from None
        name = self.columns[int(match.group(1))] if int(match.group(1)) < len(self.columns) else None
        if name in self.label_cols and name not in self._forced_float:
            self._forced_float.add(name)
            self.types[name] = pa.float64()
            raise CatalogRetyped(name) from None
        raise DatasetError(f"{self.catalog}: column {name!r} cannot be read ({' '.join(str(error).split())})")

    def _normalise(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        ids = _as_text(batch.column(self.id_col), "")
        arrays, names = [ids], [ID]
        if self.embedded is not None:
            arrays.append(batch.column(PATH))
            names.append(PATH)
        elif self.image_col is not None:
            arrays.append(_joined_paths(self.catalog, _as_text(batch.column(self.image_col), "")))
            names.append(PATH)
        if self.split_col is not None:
            arrays.append(_as_text(batch.column(self.split_col), "nan"))
            names.append(SPLIT)
        for name in self.label_cols:
            arrays.append(batch.column(name))
            names.append(name)
        return pa.RecordBatch.from_arrays(arrays, names=names)


def _as_text(column: pa.Array, missing: str) -> pa.Array:
    if not pa.types.is_string(column.type):
        column = column.cast(pa.string())
    return pc.fill_null(column, missing) if column.null_count else column


def _joined_paths(catalog: Path, paths: pa.Array) -> pa.Array:
    """Image paths relative to the catalog's folder unless absolute ("" stays "": a missing path)."""
    folder = str(catalog.parent)
    if folder in ("", "."):
        return paths
    keep = pc.or_(pc.starts_with(paths, "/"), pc.equal(paths, ""))
    return pc.if_else(keep, paths, pc.binary_join_element_wise(folder + "/", paths, ""))


def open_catalog(
    catalog: Path,
    image_col: str,
    id_col: str,
    split_col: str | None,
    label_cols: Sequence[str],
    embedded_table: Any = None,
) -> CatalogScan:
    """A scan of a CSV/parquet catalog (`embedded_table`: a Hugging Face `TableSource` already read instead)."""
    if embedded_table is not None:
        frame = embedded_table.catalog
        table = pa.Table.from_pandas(frame, preserve_index=False)
        table = table.append_column(PATH, pa.array(embedded_table.image_refs, type=pa.string()))
        scan = CatalogScan(catalog, None, id_col, split_col, label_cols, columns=list(frame.columns))
        scan.types = {name: table.schema.field(name).type for name in frame.columns}
        _check_columns(scan)
        scan.embedded = table
        return scan
    if catalog.is_dir():
        raise DatasetError(f"{catalog}: a folder is read only as a Hugging Face dataset with an image-bytes column")
    if not catalog.is_file():
        raise DatasetError(f"{catalog}: catalog file does not exist")
    suffix = catalog.suffix.lower()
    scan = CatalogScan(catalog, image_col, id_col, split_col, label_cols)
    if suffix in _PARQUET_SUFFIXES:
        schema = pq.read_schema(catalog)
    elif suffix in _CSV_SUFFIXES:
        try:
            schema = pacsv.open_csv(catalog, read_options=pacsv.ReadOptions(block_size=1 << 20)).schema
        except pa.ArrowInvalid as error:
            if "Empty CSV file" in str(error):
                raise DatasetError(f"{catalog}: catalog has no rows") from None
            raise DatasetError(f"{catalog}: cannot read the catalog ({' '.join(str(error).split())})") from None
    else:
        raise DatasetError(f"{catalog}: catalog must be .csv or .parquet, got {suffix!r}")
    scan.columns = list(schema.names)
    scan.types = {name: schema.field(name).type for name in schema.names}
    _check_columns(scan)
    return scan


def _check_columns(scan: CatalogScan) -> None:
    roles = {"image": scan.image_col, "id": scan.id_col, "split": scan.split_col}
    for role, name in roles.items():
        if name is not None and name not in scan.columns:
            raise DatasetError(f"{scan.catalog}: no {role} column {name!r} (columns: {scan.columns})")
    for name in scan.label_cols:
        if name not in scan.columns:
            raise DatasetError(f"{scan.catalog}: no label column {name!r} (columns: {scan.columns})")
