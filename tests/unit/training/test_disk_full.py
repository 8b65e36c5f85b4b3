"""A full disk while a checkpoint is written: one line naming the file and the space, the previous checkpoint kept
whole, no temp file left, and once space is freed the same command resumes to the weights of an uninterrupted run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from tests.support.jobs import assert_same_weights, final_weights, write_test_config
from zoobot_hpc.cli import main
from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.training.checkpointing import stored_step

FULL_AT_STEP = 3  # the periodic checkpoint of step 2 fits; the one of step 4 does not


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MB tmpfs: a real filesystem that fills up (needs root, as the SLURM tests do)."""
    mount_point = tmp_path / "scratch"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount_point)], check=False)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def config_for(tmp_path: Path, dataset: Path, output_dir: Path, callbacks: list) -> Path:
    config = write_test_config(
        tmp_path,
        dataset,
        name="full",
        data__num_workers=0,
        trainer__max_epochs=2,
        trainer__limit_train_batches=6,
        trainer__checkpoint_every_n_steps=2,
        trainer__callbacks=callbacks,
        tracking__mode="disabled",
    )
    text = config.read_text().replace(str(tmp_path / "runs"), str(output_dir))
    config.write_text(text)
    return config


@pytest.mark.timeout(300)
def test_full_disk_during_a_checkpoint_is_one_line_and_the_rerun_after_freeing_space_resumes_exactly(
    tmp_path, demo_dataset, small_disk
):
    filler = small_disk / "filler"
    fill = {
        "class_path": "tests.support.probes.FillDiskAtStep",
        "init_args": {"step": FULL_AT_STEP, "filler": str(filler), "marker": str(tmp_path / "filled")},
    }
    config = config_for(tmp_path / "full", demo_dataset, small_disk / "runs", [fill])
    failed = CliRunner().invoke(main, ["train", str(config)])
    assert failed.exit_code != 0
    assert "Traceback" not in failed.output, failed.output[-3000:]
    run_dir = small_disk / "runs" / "full"
    line = f"Error: out of disk space writing the checkpoint {run_dir / layout.CHECKPOINTS / 'resume.ckpt'} (about "
    assert line in failed.output, failed.output[-3000:]

    checkpoints = run_dir / layout.CHECKPOINTS
    assert not list(checkpoints.glob("*.tmp*")), "a temp file was left behind"
    for checkpoint in checkpoints.glob("*.ckpt"):
        torch.load(checkpoint, map_location="cpu", weights_only=True)  # whole: loads
    assert stored_step(checkpoints / "resume.ckpt") == FULL_AT_STEP - 1

    filler.unlink()
    resumed = CliRunner().invoke(main, ["train", str(config)])
    assert resumed.exit_code == 0, resumed.output[-3000:]
    starts = layout.read_segments(run_dir)
    assert starts[1]["resumed_step"] == FULL_AT_STEP - 1, starts

    reference = config_for(tmp_path / "reference", demo_dataset, tmp_path / "reference" / "runs", [])
    assert CliRunner().invoke(main, ["train", str(reference)]).exit_code == 0
    assert_same_weights(final_weights(run_dir), final_weights(tmp_path / "reference" / "runs" / "full"))
