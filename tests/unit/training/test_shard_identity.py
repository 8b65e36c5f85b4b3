"""Shards that change underfoot: a shard truncated before the start, or while the job trains, stops the job with one
line naming the shard; the newest checkpoint stands and no batch of the cut shard is trained on."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from tests.support.jobs import write_test_config
from zoobot_hpc.cli import main
from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.data.demo import write_demo_dataset
from zoobot_hpc.training.checkpoint_digest import read_digest
from zoobot_hpc.training.checkpointing import checkpoint_problem, newest_valid_checkpoint

SIZE = 32


@pytest.fixture
def dataset(tmp_path):
    """A small dataset of several train shards of 30 images, writable by the test."""
    path = tmp_path / "dataset"
    write_demo_dataset(path, n_galaxies=160, image_size=SIZE, seed=1, shard_size_bytes=SIZE * SIZE * 3 * 30)
    return path


def error_lines(output: str) -> list[str]:
    """The lines of a command's output that are not its progress log."""
    return [line for line in output.splitlines() if line.strip() and " INFO " not in line and "wandb:" not in line]


def test_a_shard_truncated_before_the_start_stops_the_job_in_one_line(tmp_path, dataset):
    config = write_test_config(tmp_path, dataset, name="cut", trainer__max_epochs=1, data__num_workers=0)
    shard = sorted(dataset.glob("train-*.h5"))[1]
    os.truncate(shard, shard.stat().st_size // 2)
    result = CliRunner().invoke(main, ["train", str(config)])
    assert result.exit_code != 0
    [line] = error_lines(result.output)
    assert str(shard) in line and "manifest" in line
    assert not list((tmp_path / "runs" / "cut" / layout.CHECKPOINTS).glob("*.ckpt"))


@pytest.mark.timeout(300)
def test_a_shard_truncated_during_training_stops_at_the_next_read_and_the_newest_checkpoint_stands(tmp_path, dataset):
    damage = {"class_path": "tests.support.shard_damage.TruncateTrainShardsAt", "init_args": {"step": 2}}
    config = write_test_config(
        tmp_path,
        dataset,
        name="cut",
        trainer__max_epochs=3,
        trainer__checkpoint_every_n_steps=1,
        trainer__callbacks=[{**damage, "init_args": {"dataset_dir": str(dataset), "step": 2}}],
        data__num_workers=0,  # no batch read ahead of the cut: the next read is the first after it
    )
    result = CliRunner().invoke(main, ["train", str(config)])
    assert result.exit_code != 0
    [line] = error_lines(result.output)
    assert "shard " in line and "train-" in line and "changed under the job" in line
    run_dir = tmp_path / "runs" / "cut"
    newest = newest_valid_checkpoint(run_dir / layout.CHECKPOINTS)
    assert newest is not None and checkpoint_problem(newest) is None
    assert read_digest(newest).global_step == 2, "nothing was saved after the shards were cut"
    assert not (run_dir / layout.SUMMARY).exists(), "the run did not end as if completed"
