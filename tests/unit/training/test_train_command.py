"""`zoobot-hpc train`: the same job in the current process (salloc, workstation, a user's own sbatch script)."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from click.testing import CliRunner

from tests.support.jobs import assert_same_weights, final_weights, write_test_config
from zoobot_hpc.cli import main
from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.training.checkpointing import newest_valid_checkpoint, stored_step


def test_train_runs_in_process_and_a_second_call_resumes_the_same_run(tmp_path, demo_dataset):
    config = write_test_config(
        tmp_path, demo_dataset, name="here", trainer__max_epochs=1, trainer__limit_train_batches=4, data__num_workers=0
    )
    runner = CliRunner()
    first = runner.invoke(main, ["train", str(config)])
    assert first.exit_code == 0, first.output
    run_dir = tmp_path / "runs" / "here"
    assert "validation: validation/accuracy=" in first.output
    assert (run_dir / layout.CHECKPOINTS / "last.ckpt").exists()
    run_id = (run_dir / layout.WANDB_RUN_ID).read_text()

    second = runner.invoke(main, ["train", str(config), "trainer.max_epochs=2"])
    assert second.exit_code == 0, second.output
    starts = layout.read_segments(run_dir)
    assert len(starts) == 2
    assert starts[1]["resumed_from"].endswith("last.ckpt")
    assert starts[0]["reached_step"] == starts[1]["resumed_step"] == 4  # the heartbeat at the end of training
    assert layout.read_json(run_dir / layout.SUMMARY)["epochs"] == 2
    assert (run_dir / layout.WANDB_RUN_ID).read_text() == run_id


def test_train_refuses_to_resume_a_run_dir_with_a_different_model(tmp_path, demo_dataset):
    config = write_test_config(
        tmp_path, demo_dataset, name="here", trainer__max_epochs=1, trainer__limit_train_batches=2, data__num_workers=0
    )
    runner = CliRunner()
    assert runner.invoke(main, ["train", str(config)]).exit_code == 0
    summary = (tmp_path / "runs" / "here" / layout.SUMMARY).read_text()
    changed = runner.invoke(main, ["train", str(config), "model.learning_rate=0.01"])
    assert changed.exit_code != 0
    [line] = [line for line in changed.output.splitlines() if line.strip()]
    assert "model.learning_rate=0.001" in line and "0.01" in line
    assert (tmp_path / "runs" / "here" / layout.SUMMARY).read_text() == summary


def test_last_checkpoint_is_the_final_state_when_the_best_epoch_is_earlier(tmp_path, demo_dataset):
    config = write_test_config(
        tmp_path,
        demo_dataset,
        name="worse",
        trainer__max_epochs=2,
        trainer__limit_train_batches=4,
        data__num_workers=0,
        model__learning_rate=0.05,
        model__scheduler_kwargs=None,
    )
    result = CliRunner().invoke(main, ["train", str(config)])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "worse"
    best = torch.load(run_dir / layout.CHECKPOINTS / "best.ckpt", weights_only=True)
    assert best["global_step"] == 4, "this seed and rate's validation loss is best after the first epoch"
    final_weights(run_dir)
    assert newest_valid_checkpoint(run_dir / layout.CHECKPOINTS).name == "last.ckpt"


def test_last_checkpoint_follows_the_periodic_checkpoint_when_a_run_dies(tmp_path, demo_dataset):
    crash = {"class_path": "tests.support.probes.CrashOnRank", "init_args": {"rank": 0, "step": 7}}
    config = write_test_config(
        tmp_path,
        demo_dataset,
        name="dies",
        trainer__max_epochs=2,
        trainer__limit_train_batches=4,
        trainer__checkpoint_every_n_steps=3,
        trainer__callbacks=[crash],
        data__num_workers=0,
        model__learning_rate=0.03,
        model__scheduler_kwargs=None,
    )
    result = CliRunner().invoke(main, ["train", str(config)])
    assert result.exit_code != 0
    checkpoints = tmp_path / "runs" / "dies" / layout.CHECKPOINTS
    assert stored_step(checkpoints / "best.ckpt") == 4
    assert stored_step(checkpoints / "resume.ckpt") == 6
    assert stored_step(checkpoints / "last.ckpt") == 6


def train_in_subprocess(config) -> subprocess.CompletedProcess[str]:
    """`zoobot-hpc train` as a user runs it: a process of its own, with its own W&B service (not the one this
    test process may have started for in-process runs, which would still hold a crashed run's id)."""
    command = [sys.executable, "-m", "zoobot_hpc.cli", "train", str(config)]
    env = {name: value for name, value in os.environ.items() if name != "WANDB_SERVICE"}
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=False, env=env)


def test_resuming_from_the_checkpoint_of_an_epochs_end_with_loader_workers_is_exact(tmp_path, demo_dataset):
    """A run that dies early in an epoch resumes from `last.ckpt` of the previous epoch's end (a lost node without
    a periodic checkpoint since). Lightning does not restore the train loader's state from such a checkpoint, and
    loader workers prefetch before Lightning sets the new epoch: the datamodule's own copy of the sampler position
    keeps the resumed epoch's sample order (also when a per-step scheduler counts the epoch's batches first)."""
    per_step = {"sched": "cosine", "num_epochs": 2, "warmup_epochs": 0, "step_on_epochs": False}
    settings = dict(
        trainer__max_epochs=2, trainer__limit_train_batches=6, data__num_workers=2, model__scheduler_kwargs=per_step
    )
    reference = write_test_config(tmp_path / "reference", demo_dataset, name="reference", **settings)
    assert train_in_subprocess(reference).returncode == 0
    crash = {"class_path": "tests.support.probes.CrashOnRank", "init_args": {"rank": 0, "step": 8}}
    dies = write_test_config(tmp_path / "dies", demo_dataset, name="dies", trainer__callbacks=[crash], **settings)
    assert train_in_subprocess(dies).returncode != 0
    run_dir = tmp_path / "dies" / "runs" / "dies"
    assert newest_valid_checkpoint(run_dir / layout.CHECKPOINTS).name == "last.ckpt"
    assert stored_step(run_dir / layout.CHECKPOINTS / "last.ckpt") == 6

    resumed = write_test_config(tmp_path / "dies", demo_dataset, name="dies", **settings)
    finished = train_in_subprocess(resumed)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert layout.read_segments(run_dir)[-1]["resumed_step"] == 6
    assert_same_weights(final_weights(run_dir), final_weights(tmp_path / "reference" / "runs" / "reference"))
