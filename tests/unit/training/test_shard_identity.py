"""Shards that change underfoot: a shard truncated before the start, or while the job trains, stops the job with one
line naming the shard; the newest checkpoint stands and no batch of the cut shard is trained on."""

from __future__ import annotations

import errno
import logging
import os

import pytest
import torch
from click.testing import CliRunner

from tests.support.jobs import write_test_config
from zoobot_hpc.cli import main
from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.data import shard_identity
from zoobot_hpc.data.dataset import ShardDataset, collate_samples
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


class FlakyShards(ShardDataset):
    """A ShardDataset whose first `failures` reads of each shard fail as a lost NFS/Lustre server does (EIO in
    HDF5's words), before reading the real file."""

    def __init__(self, *args, failures: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.failures = failures
        self.failed: dict[int, int] = {}
        self.handles_seen: dict[int, set[int]] = {}

    def _read_shard(self, shard_index, *args) -> None:
        handle = self._open(shard_index)
        self.handles_seen.setdefault(shard_index, set()).add(id(handle.file))
        if self.failed.get(shard_index, 0) < self.failures:
            self.failed[shard_index] = self.failed.get(shard_index, 0) + 1
            raise OSError(
                f"Can't synchronously read data (file read failed: errno = {errno.EIO}, error message = "
                "'Input/output error')"
            )
        super()._read_shard(shard_index, *args)


def test_a_transient_read_error_is_retried_after_a_reopen_and_returns_the_same_images(dataset, caplog, monkeypatch):
    monkeypatch.setattr(shard_identity, "RETRY_DELAY_S", 0.01)
    indices = [0, 5, 40, 95, 130]
    clean = collate_samples(ShardDataset(dataset, "train").__getitems__(indices))
    flaky = FlakyShards(dataset, "train", failures=shard_identity.READ_RETRIES)
    with caplog.at_level(logging.WARNING, logger=shard_identity.__name__):
        batch = collate_samples(flaky.__getitems__(indices))
    assert torch.equal(batch["image"], clean["image"]) and torch.equal(batch["index"], clean["index"])
    assert flaky.failed and all(count == shard_identity.READ_RETRIES for count in flaky.failed.values())
    assert all(len(handles) > 1 for handles in flaky.handles_seen.values()), "the shard was not reopened"
    assert sum("transient read error" in message for message in caplog.messages) == sum(flaky.failed.values())


def test_a_read_error_that_persists_past_the_retries_or_is_not_transient_is_raised(dataset, monkeypatch):
    monkeypatch.setattr(shard_identity, "RETRY_DELAY_S", 0.01)
    with pytest.raises(OSError, match=f"errno = {errno.EIO}"):
        FlakyShards(dataset, "train", failures=shard_identity.READ_RETRIES + 1).__getitems__([0])
    reads = []

    class Unreadable(ShardDataset):
        def _read_shard(self, shard_index, *args) -> None:
            reads.append(shard_index)
            raise OSError(errno.EACCES, "Permission denied")

    with pytest.raises(PermissionError):
        Unreadable(dataset, "train").__getitems__([0])
    assert reads == [0], "a permanent error was retried"
