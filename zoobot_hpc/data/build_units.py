"""Work units of a build: one small Arrow IPC file per planned shard (its rows' ids, image paths and labels).

The planner appends each catalog batch's rows to the open unit of their split (at most one per split is open)
and closes it when the shard is full, so planning holds a batch, not the catalog. A worker reads its unit in
blocks; nothing but the unit's own rows is ever in a worker's memory.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from zoobot_hpc.data.shard_format import STATE_DIR, shard_file_name

UNITS_DIR = "units"


def units_dir(out_dir: Path) -> Path:
    return Path(out_dir) / STATE_DIR / UNITS_DIR


@dataclass(frozen=True)
class Unit:
    """One planned shard: its file name, split, row count and unit file."""

    shard: str
    split: str
    count: int
    path: Path


class SplitUnits:
    """Appends one split's rows to units of `per_shard` rows each, in catalog order."""

    def __init__(self, folder: Path, split: str, per_shard: int) -> None:
        self.folder, self.split, self.per_shard = folder, split, per_shard
        self.units: list[Unit] = []
        self._writer: pa.ipc.RecordBatchFileWriter | None = None
        self._rows = 0

    def _path(self, index: int) -> Path:
        return self.folder / (shard_file_name(self.split, index).rsplit(".", 1)[0] + ".arrow")

    def append(self, table: pa.Table) -> None:
        while table.num_rows:
            if self._writer is None:
                self._writer = pa.ipc.new_file(str(self._path(len(self.units))), table.schema)
                self._rows = 0
            part = table.slice(0, self.per_shard - self._rows)
            self._writer.write_table(part)
            self._rows += part.num_rows
            table = table.slice(part.num_rows)
            if self._rows == self.per_shard:
                self._close()

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            index = len(self.units)
            self.units.append(Unit(shard_file_name(self.split, index), self.split, self._rows, self._path(index)))
            self._writer = None

    def finish(self) -> list[Unit]:
        self._close()
        return self.units


def fresh_units_dir(out_dir: Path) -> Path:
    folder = units_dir(out_dir)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def read_unit(path: Path) -> pa.Table:
    """A unit's rows (ids, paths, labels: a few MB for a 2 GiB shard of 224-px images)."""
    with pa.OSFile(str(path), "rb") as source:
        return pa.ipc.open_file(source).read_all()


def unit_blocks(table: pa.Table, rows: int) -> Iterator[tuple[int, pa.Table]]:
    """(first row, block) over a unit's rows."""
    for start in range(0, table.num_rows, rows):
        yield start, table.slice(start, rows)


def remove_units(out_dir: Path) -> None:
    shutil.rmtree(units_dir(out_dir), ignore_errors=True)
