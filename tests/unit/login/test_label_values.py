"""`submit` refuses label values the model cannot train on, in one line naming the column, the shard and an id."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from tests.support.jobs import write_test_config
from tests.unit.login.test_fail_fast import assert_nothing_submitted, assert_one_line_error, run_submit
from zoobot_hpc.data.demo import DEMO_TREE_SCHEMA, VOTE_COLUMNS
from zoobot_hpc.data.label_checks import LabelRule, check_labels
from zoobot_hpc.data.shard_format import IDS_KEY, LABELS_GROUP, MANIFEST_NAME, Manifest, ShardInfo, write_manifest

TREE = {"kind": "tree", **DEMO_TREE_SCHEMA}


@pytest.fixture
def dataset(tmp_path, demo_dataset) -> Path:
    return Path(shutil.copytree(demo_dataset, tmp_path / "dataset"))


def set_label(dataset: Path, column: str, value: float, row: int = 3, allow_nan: bool = False) -> str:
    """Write `value` into `column` at `row` of the second train shard (the manifest allows NaN there if asked);
    returns that row's id."""
    shard = sorted(dataset.glob("train-*.h5"))[-1]
    with h5py.File(shard, "r+") as handle:
        handle[LABELS_GROUP][column][row] = value
        galaxy_id = handle[IDS_KEY].asstr()[row]
    if allow_nan:
        manifest = json.loads((dataset / MANIFEST_NAME).read_text())
        manifest["allow_nan"] = sorted({*manifest["allow_nan"], column})
        (dataset / MANIFEST_NAME).write_text(json.dumps(manifest))
    return str(galaxy_id)


def local_config(tmp_path: Path, dataset: Path, model: dict | None = None) -> Path:
    """The test config on the local executor; `model` replaces the classifier's kind-specific keys."""
    path = write_test_config(tmp_path, dataset, resources__executor="local")
    if model:
        raw = yaml.safe_load(path.read_text())
        for key in ("num_classes", "class_names", "label_col"):
            raw["model"].pop(key)
        raw["model"].update(model)
        path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    ("value", "what"), [(-3.0, "negative or infinite vote counts"), (-0.5, "split train"), (np.inf, "non-finite")]
)
def test_a_negative_or_infinite_vote_count_is_refused(tmp_path, dataset, value, what):
    galaxy_id = set_label(dataset, VOTE_COLUMNS[2], value)
    result = run_submit(local_config(tmp_path, dataset, TREE), "--dry-run")
    assert_one_line_error(result, "data.dataset_dir", VOTE_COLUMNS[2], galaxy_id, what)
    assert_nothing_submitted(tmp_path)


def test_a_classifier_label_outside_its_classes_is_refused(tmp_path, dataset):
    galaxy_id = set_label(dataset, "label", 3)
    result = run_submit(local_config(tmp_path, dataset))
    assert_one_line_error(result, "'label'", galaxy_id, "[0, 3)", "model.num_classes", "train-")
    assert_nothing_submitted(tmp_path)


def test_a_nan_regressor_label_is_refused_unless_allowed(tmp_path, dataset):
    galaxy_id = set_label(dataset, "axis_ratio", float("nan"), allow_nan=True)
    config = local_config(tmp_path, dataset, {"kind": "regressor", "label_col": "axis_ratio"})
    refused = run_submit(config, "--dry-run")
    assert_one_line_error(refused, "'axis_ratio'", galaxy_id, "data.allow_missing_labels")
    allowed = run_submit(config, "--dry-run", "data.allow_missing_labels=true")
    assert allowed.exit_code == 0, allowed.output
    assert "warning: data.allow_missing_labels=true with trainer.nonfinite=stop" in allowed.output, allowed.output
    skipped = run_submit(config, "--dry-run", "data.allow_missing_labels=true", "trainer.nonfinite=skip")
    assert skipped.exit_code == 0 and "warning: data.allow_missing_labels" not in skipped.output, skipped.output


def test_many_tree_rows_without_votes_warn(tmp_path, dataset):
    shard = sorted(dataset.glob("train-*.h5"))[0]
    with h5py.File(shard, "r+") as handle:
        for column in VOTE_COLUMNS:
            handle[LABELS_GROUP][column][:] = 0.0
    result = run_submit(local_config(tmp_path, dataset, TREE), "--dry-run")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:") and "no votes" in line]
    assert len(warnings) == 1, result.output


def test_an_unchanged_dataset_is_not_read_again(dataset):
    rule = LabelRule("votes", VOTE_COLUMNS)
    first = check_labels(dataset, rule)
    assert first.problem is None and first.rows > 0
    shard = sorted(dataset.glob("train-*.h5"))[0]
    with h5py.File(shard, "r+") as handle:
        handle[LABELS_GROUP][VOTE_COLUMNS[0]][0] = -1.0  # changes the shard's stat: read again
    assert "vote counts" in (check_labels(dataset, rule).problem or "")


def test_checks_cost_little_per_million_labels(tmp_path):
    """A benchmark: one float32 vote column of 1M rows in 4 shards, checked uncached (the shards hold no ids: an
    id is read only to name a problem)."""
    rows, shards = 1_000_000, 4
    infos = []
    rng = np.random.default_rng(0)
    for index in range(shards):
        path = tmp_path / f"train-{index:05d}.h5"
        with h5py.File(path, "w") as handle:
            handle.create_group(LABELS_GROUP)["votes"] = rng.integers(0, 40, rows // shards).astype(np.float32)
        infos.append(ShardInfo(path.name, rows // shards, path.stat().st_size, ""))
    manifest = Manifest(1, (8, 8, 3), {"votes": "float32"}, (), {"train": tuple(infos)}, "id", "bench", "now")
    write_manifest(tmp_path, manifest)
    start = time.perf_counter()
    report = check_labels(tmp_path, LabelRule("votes", ("votes",)))
    seconds = time.perf_counter() - start
    assert report.problem is None and report.rows == rows
    print(f"label checks: {seconds:.3f} s per million labels (uncached)")
    assert seconds < 5
