"""`zoobot-hpc train`: the same job in the current process (salloc, workstation, a user's own sbatch script)."""

from __future__ import annotations

import torch
from click.testing import CliRunner

from tests.launch.conftest import final_weights, write_test_config
from zoobot_hpc import run_dir as layout
from zoobot_hpc.checkpointing import newest_valid_checkpoint, stored_step
from zoobot_hpc.cli import main


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
        model__learning_rate=0.03,
        model__scheduler_kwargs=None,
    )
    result = CliRunner().invoke(main, ["train", str(config)])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "worse"
    best = torch.load(run_dir / layout.CHECKPOINTS / "best.ckpt", weights_only=True)
    assert best["global_step"] == 4, "this seed's validation loss is best after the first epoch"
    final_weights(run_dir)
    assert newest_valid_checkpoint(run_dir / layout.CHECKPOINTS).name == "last.ckpt"


def test_last_checkpoint_follows_the_periodic_checkpoint_when_a_run_dies(tmp_path, demo_dataset):
    crash = {"class_path": "tests.launch.probes.CrashOnRank", "init_args": {"rank": 0, "step": 7}}
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
