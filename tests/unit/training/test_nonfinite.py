"""A non-finite loss (a NaN label) stops every rank of a DDP job at the same step with one line naming it, and no
checkpoint ever holds a non-finite tensor: the newest checkpoint stays the one to resume from."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from tests.support.jobs import write_test_config
from zoobot_hpc.cli import main
from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.data.block_order import block_shuffled_order
from zoobot_hpc.data.shard_format import IDS_KEY, LABELS_GROUP, MANIFEST_NAME
from zoobot_hpc.login.submit import plan_runs, submit_plan
from zoobot_hpc.training.checkpointing import newest_valid_checkpoint, stored_step

BAD_STEP = 5  # the NaN label is trained at this step (0-based), after the checkpoint of step 2


def bad_row(shard_count: int) -> int:
    """The train shard's row that the first sample of step BAD_STEP reads (2 ranks x batches of 8, seed 42)."""
    order = block_shuffled_order([shard_count], seed=42, epoch=0, window=4)
    return int(order[BAD_STEP * 2 * 8])


def dataset_with_a_nan_label(demo_dataset: Path, tmp_path: Path) -> tuple[Path, str]:
    """A copy of the demo dataset whose train shard holds one NaN `axis_ratio`, a column the manifest allows NaN in
    (a missing measurement); returns it and that galaxy's id."""
    copy = tmp_path / "nan-data"
    shutil.copytree(demo_dataset, copy)
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    manifest["allow_nan"] = ["axis_ratio"]
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    [shard] = sorted(copy.glob("train-*.h5"))
    with h5py.File(shard, "r+") as handle:
        row = bad_row(len(handle[IDS_KEY]))
        handle[f"{LABELS_GROUP}/axis_ratio"][row] = np.nan
        bad_id = handle[IDS_KEY].asstr()[row]
    return copy, bad_id


def regressor_config(tmp_path: Path, dataset: Path) -> Path:
    path = write_test_config(
        tmp_path,
        dataset,
        name="nan-label",
        resources__executor="local",
        resources__tasks_per_node=2,
        data__num_workers=0,
        trainer__max_epochs=3,
        trainer__checkpoint_every_n_steps=2,
        tracking__mode="disabled",
        data__allow_missing_labels=True,
    )
    raw = yaml.safe_load(path.read_text())
    for key in ("num_classes", "class_names"):
        raw["model"].pop(key)
    raw["model"].update(kind="regressor", label_col="axis_ratio", unit_interval=True)
    path.write_text(yaml.safe_dump(raw))
    return path


def read_rank_log(job, rank: int) -> str:
    """Everything rank `rank` of a local job wrote (stdout and stderr)."""
    out = Path(str(job.paths.stdout).replace("_0_log.out", f"_{rank}_log.out"))
    return out.read_text() + out.with_suffix(".err").read_text()


def tensors_of(checkpoint: Path) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    tensors = dict(state["state_dict"])
    for index, optimizer in enumerate(state.get("optimizer_states", [])):
        for param, moments in optimizer["state"].items():
            tensors.update({f"optimizer{index}.{param}.{k}": v for k, v in moments.items() if torch.is_tensor(v)})
    return tensors


@pytest.mark.timeout(300)
def test_nan_label_stops_every_rank_at_one_step_with_one_line_and_no_checkpoint_is_non_finite(tmp_path, demo_dataset):
    dataset, bad_id = dataset_with_a_nan_label(demo_dataset, tmp_path)
    submitted = submit_plan(plan_runs(regressor_config(tmp_path, dataset)))
    job = submitted.jobs[0]
    run_dir = submitted.plan.runs[0].run_dir
    with pytest.raises(Exception, match="non-finite loss or gradients at step"):
        job.result()

    logs = {rank: read_rank_log(job, rank) for rank in (0, 1)}
    [stop_line] = re.findall(r"ERROR zoobot_hpc[\w.]*: (non-finite loss or gradients at step .*)", logs[0])
    step = int(re.search(r"at step (\d+)", stop_line).group(1))
    named = [rank for rank, log in logs.items() if re.search(rf"non-finite labels at ids \['{bad_id}'\]", log)]
    assert len(named) == 1, f"not one rank named the galaxy {bad_id} with the NaN label: {logs}"
    assert f"at step {step} (epoch 0) on rank {named[0]}: stopped without saving" in stop_line, stop_line
    assert all(f"NonFiniteTraining: non-finite loss or gradients at step {step} " in log for log in logs.values())

    checkpoints = sorted((run_dir / layout.CHECKPOINTS).glob("*.ckpt"))
    assert checkpoints, "no checkpoint was saved before the NaN: the test proves nothing"
    for checkpoint in checkpoints:
        assert stored_step(checkpoint) < step, f"{checkpoint.name} was saved at or after the non-finite step"
        bad = [name for name, tensor in tensors_of(checkpoint).items() if not torch.isfinite(tensor).all()]
        assert not bad, f"{checkpoint.name} holds non-finite tensors: {bad[:3]}"
    newest = newest_valid_checkpoint(run_dir / layout.CHECKPOINTS)
    assert f"the newest checkpoint ({newest.name}) is finite" in stop_line, stop_line

    status = CliRunner().invoke(main, ["status", str(run_dir)]).output
    assert "FAILED" in status and f"non-finite loss or gradients at step {step}" in status, status
