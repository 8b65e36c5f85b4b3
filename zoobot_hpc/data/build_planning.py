"""Plan a build in one streaming pass over the catalog: check it, assign splits and shards, write the work units.

Per row the planner keeps 8 bytes (a 64-bit hash of the id, for the duplicate check); everything else is done a
batch at a time with Arrow/numpy column operations and written straight to the units (`build_units`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from zoobot_hpc.data.build_units import SplitUnits, Unit, fresh_units_dir
from zoobot_hpc.data.catalog_scan import ID, SPLIT, CatalogRetyped, CatalogScan, is_number_type
from zoobot_hpc.data.id_hashing import HASH_SPLITS, fast_hash64, sha256_hash64, splits_from_hash
from zoobot_hpc.data.shard_format import SPLITS, DatasetError, images_per_shard

_MAX_RETYPES = 64


@dataclass
class BuildPlan:
    """The planned shards (in manifest order) and the label columns' stored dtypes."""

    units: list[Unit]
    label_dtypes: dict[str, str]
    rows: int


@dataclass
class _LabelCheck:
    """Running checks of one label column: its stored dtype and its non-finite values."""

    name: str
    nan_allowed: bool
    is_float: bool = False
    bad: int = 0
    first_bad: tuple[float, str] | None = None

    def update(self, catalog: Path, column: pa.Array, ids: pa.Array) -> None:
        if not is_number_type(column.type):
            kind = "object" if pa.types.is_string(column.type) or pa.types.is_large_string(column.type) else column.type
            raise DatasetError(f"{catalog}: label column {self.name!r} is {kind}, expected numbers")
        floating = pa.types.is_floating(column.type) or column.null_count > 0
        self.is_float |= floating
        if not floating:
            return
        values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
        bad = ~np.isfinite(values) & ~(np.isnan(values) if self.nan_allowed else False)
        if bad.any():
            self.bad += int(bad.sum())
            if self.first_bad is None:
                first = int(np.argmax(bad))
                self.first_bad = (float(values[first]), ids[first].as_py())

    @property
    def dtype(self) -> str:
        return "float32" if self.is_float else "int64"


@dataclass
class _Planner:
    scan: CatalogScan
    out_dir: Path
    allow_nan: Sequence[str]
    split_fractions: Sequence[float]
    per_shard: int
    hashes: list[np.ndarray] = field(default_factory=list)
    rows: int = 0

    @property
    def labelled(self) -> bool:
        return bool(self.scan.label_cols)

    def run(self) -> BuildPlan:
        folder = fresh_units_dir(self.out_dir)
        writers = {split: SplitUnits(folder, split, self.per_shard) for split in SPLITS}
        checks = {name: _LabelCheck(name, name in self.allow_nan) for name in self.scan.label_cols}
        for batch in self.scan.batches():
            self._plan_batch(batch, writers, checks)
        if self.rows == 0:
            raise DatasetError(f"{self.scan.catalog}: catalog has no rows")
        self._check_unique_ids()
        for check in checks.values():
            if check.bad:
                value, id_ = check.first_bad
                raise DatasetError(
                    f"{self.scan.catalog}: label column {check.name!r} has {check.bad} non-finite values "
                    f"(first {value} at id {id_!r}); pass it in allow_nan if missing labels are expected"
                )
        units = [unit for split in SPLITS for unit in writers[split].finish()]
        return BuildPlan(units, {name: check.dtype for name, check in checks.items()}, self.rows)

    def _split_codes(self, batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray | None]:
        """Index into SPLITS of each row, and the split hash when it was computed."""
        if self.scan.split_col is not None:
            values = batch.column(SPLIT)
            codes = pc.index_in(values, value_set=pa.array(SPLITS))
            if codes.null_count:
                unknown = sorted(set(pc.unique(pc.filter(values, pc.is_null(codes))).to_pylist()))
                raise DatasetError(
                    f"{self.scan.catalog}: split column {self.scan.split_col!r} has values {unknown[:5]} "
                    f"(allowed: {SPLITS})"
                )
            return codes.to_numpy(zero_copy_only=False).astype(np.uint8), None
        if not self.labelled:
            return np.full(batch.num_rows, SPLITS.index("predict"), dtype=np.uint8), None
        hashes = sha256_hash64(batch.column(ID))
        codes = np.array([SPLITS.index(s) for s in HASH_SPLITS], dtype=np.uint8)[
            splits_from_hash(hashes, self.split_fractions)
        ]
        return codes, hashes

    def _plan_batch(self, batch: pa.RecordBatch, writers: dict[str, SplitUnits], checks: dict) -> None:
        ids = batch.column(ID)
        for name, check in checks.items():
            check.update(self.scan.catalog, batch.column(name), ids)
        codes, hashes = self._split_codes(batch)
        self.hashes.append(fast_hash64(ids) if hashes is None else hashes)
        self.rows += batch.num_rows
        table = pa.Table.from_batches([batch])
        if SPLIT in table.column_names:
            table = table.drop_columns([SPLIT])
        counts = np.bincount(codes, minlength=len(SPLITS))
        if counts.max() == len(codes):
            writers[SPLITS[int(np.argmax(counts))]].append(table)
            return
        grouped = table.take(np.argsort(codes, kind="stable"))  # one copy: each split's rows, in catalog order
        start = 0
        for code, count in enumerate(counts):
            if count:
                writers[SPLITS[code]].append(grouped.slice(start, int(count)))
                start += int(count)

    def _hash_ids(self, ids: pa.Array) -> np.ndarray:
        sha = self.scan.split_col is None and self.labelled
        return sha256_hash64(ids) if sha else fast_hash64(ids)

    def _check_unique_ids(self) -> None:
        hashes = np.concatenate(self.hashes)
        self.hashes = []
        hashes.sort()  # in place: 8 bytes per row in all
        suspects = np.unique(hashes[1:][hashes[1:] == hashes[:-1]])
        del hashes
        if not len(suspects):
            return
        # A second pass over the id column only, for the rows whose hash repeats: their ids decide.
        candidates = []
        for batch in self.scan.batches():
            ids = batch.column(ID)
            hit = np.isin(self._hash_ids(ids), suspects)
            if hit.any():
                candidates.extend(pc.filter(ids, pa.array(hit)).to_pylist())
        index = pd.Index(candidates)
        repeated = index[index.duplicated()].unique()
        if len(repeated):
            raise DatasetError(
                f"{self.scan.catalog}: {len(repeated)} ids repeat in column {self.scan.id_col!r}, "
                f"e.g. {list(repeated[:5])}"
            )


def plan_build(
    scan: CatalogScan,
    out_dir: Path,
    image_shape: tuple[int, int, int],
    shard_size_bytes: int,
    split_fractions: Sequence[float],
    allow_nan: Sequence[str],
) -> BuildPlan:
    """Stream the catalog once (again from the start when a CSV label column turns out to hold decimals)."""
    per_shard = images_per_shard(image_shape, shard_size_bytes)
    splits_from_hash(np.zeros(0, dtype=np.uint64), split_fractions)  # checks the fractions
    for _ in range(_MAX_RETYPES):
        try:
            return _Planner(scan, Path(out_dir), allow_nan, split_fractions, per_shard).run()
        except CatalogRetyped:
            continue
    raise DatasetError(f"{scan.catalog}: label columns keep changing type while reading")
