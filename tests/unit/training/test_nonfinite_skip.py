"""`trainer.nonfinite: skip`: a batch with a NaN label moves no weight, is counted, and the run trains on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from tests.support.jobs import write_test_config
from tests.unit.training.test_nonfinite import tensors_of
from zoobot_hpc.cli import main
from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.data.shard_format import IDS_KEY, LABELS_GROUP, MANIFEST_NAME
from zoobot_hpc.training.nonfinite import SKIPPED_METRIC


@pytest.mark.timeout(180)
@pytest.mark.parametrize("accumulate", [1, 2])
def test_a_nan_label_batch_is_skipped_and_counted_every_epoch(tmp_path, demo_dataset, accumulate):
    dataset = Path(shutil.copytree(demo_dataset, tmp_path / "nan-data"))
    manifest = json.loads((dataset / MANIFEST_NAME).read_text())
    (dataset / MANIFEST_NAME).write_text(json.dumps({**manifest, "allow_nan": ["axis_ratio"]}))
    [shard] = sorted(dataset.glob("train-*.h5"))
    with h5py.File(shard, "r+") as handle:
        handle[f"{LABELS_GROUP}/axis_ratio"][len(handle[IDS_KEY]) // 2] = np.nan
    config = write_test_config(
        tmp_path,
        dataset,
        name="skip",
        data__num_workers=0,
        data__allow_missing_labels=True,
        trainer__nonfinite="skip",
        trainer__accumulate_grad_batches=accumulate,
        trainer__checkpoint_every_n_steps=3,
        tracking__mode="disabled",
    )
    raw = yaml.safe_load(config.read_text())
    for key in ("num_classes", "class_names"):
        raw["model"].pop(key)
    raw["model"].update(kind="regressor", label_col="axis_ratio", unit_interval=True)
    config.write_text(yaml.safe_dump(raw))

    result = CliRunner().invoke(main, ["train", str(config)])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "skip"
    summary = layout.read_json(run_dir / layout.SUMMARY)
    assert summary["skipped_nonfinite_batches"] == 2, summary  # the NaN row's step, once in each of the 2 epochs
    assert summary["metrics"][SKIPPED_METRIC] == 2, summary["metrics"]
    assert np.isfinite(summary["best"]), summary
    checkpoints = sorted((run_dir / layout.CHECKPOINTS).glob("*.ckpt"))
    assert {path.name for path in checkpoints} == {"best.ckpt", "last.ckpt", "resume.ckpt"}  # none beyond these
    for checkpoint in checkpoints:
        bad = [name for name, tensor in tensors_of(checkpoint).items() if not torch.isfinite(tensor).all()]
        assert not bad, f"{checkpoint.name} holds non-finite tensors: {bad[:3]}"
