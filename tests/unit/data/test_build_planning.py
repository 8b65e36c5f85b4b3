"""Streaming planning over catalogs larger than one batch: splits as before, types across blocks, duplicates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from zoobot_hpc.data.build import hash_split
from zoobot_hpc.data.build_planning import plan_build
from zoobot_hpc.data.build_units import read_unit
from zoobot_hpc.data.catalog_scan import BATCH_ROWS, ID, PATH, open_catalog
from zoobot_hpc.data.shard_format import DatasetError

ROWS = BATCH_ROWS + 1000  # two batches


def _catalog(tmp_path: Path, votes: np.ndarray, ids: np.ndarray | None = None, suffix: str = ".parquet") -> Path:
    ids = np.char.mod("J%09d", np.arange(len(votes))) if ids is None else ids
    table = pa.table({"id_str": ids.astype(object), "file_loc": np.char.add(ids, ".jpg").astype(object), "v": votes})
    path = tmp_path / f"catalog{suffix}"
    if suffix == ".parquet":
        pq.write_table(table, path)
    else:
        table.to_pandas().to_csv(path, index=False)
    return path


def _plan(catalog: Path, tmp_path: Path):
    scan = open_catalog(catalog, "file_loc", "id_str", None, ["v"])
    return plan_build(scan, tmp_path / "out", (8, 8, 3), 8 * 8 * 3 * 50_000, (0.8, 0.1, 0.1), ())


def test_a_plan_over_several_batches_splits_and_orders_rows_as_before(tmp_path: Path) -> None:
    votes = np.arange(ROWS, dtype=np.int64) % 40
    catalog = _catalog(tmp_path, votes)
    plan = _plan(catalog, tmp_path)
    assert plan.rows == ROWS and plan.label_dtypes == {"v": "int64"}
    ids = np.char.mod("J%09d", np.arange(ROWS)).astype(object)
    expected = hash_split(ids)
    for split in ("train", "val", "test"):
        units = [unit for unit in plan.units if unit.split == split]
        assert all(unit.count == 50_000 for unit in units[:-1])
        planned = np.concatenate([read_unit(unit.path).column(ID).to_numpy(zero_copy_only=False) for unit in units])
        np.testing.assert_array_equal(planned, ids[expected == split])  # catalog order within each split
    first = read_unit(plan.units[0].path)
    assert first.column(PATH)[0].as_py() == str(tmp_path / f"{first.column(ID)[0].as_py()}.jpg")


def test_a_csv_label_column_that_turns_decimal_after_the_first_block_is_read_as_float(tmp_path: Path) -> None:
    votes = np.arange(ROWS * 3, dtype=np.float64) % 40
    votes[-1] = 0.5  # the reader's first blocks hold only integers
    catalog = _catalog(tmp_path, votes, suffix=".csv")
    assert pd.read_csv(catalog)["v"].dtype == np.float64
    plan = _plan(catalog, tmp_path)
    assert plan.label_dtypes == {"v": "float32"} and plan.rows == len(votes)


def test_ids_repeated_in_different_batches_are_one_line_errors(tmp_path: Path) -> None:
    ids = np.char.mod("J%09d", np.arange(ROWS)).astype(object)
    ids[-1], ids[-2] = ids[3], ids[7]
    catalog = _catalog(tmp_path, np.zeros(ROWS), ids=ids)
    with pytest.raises(DatasetError, match=r"2 ids repeat in column 'id_str', e\.g\. \['J000000007', 'J000000003'\]"):
        _plan(catalog, tmp_path)
