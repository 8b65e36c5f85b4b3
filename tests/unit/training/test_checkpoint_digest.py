"""Checkpoints prove themselves: a digest beside each one, verified at resume, with a fallback to the next valid one;
concurrent writers never leave a file under the final name that fails a full load; a resume onto another dataset
is refused."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from tests.support.jobs import write_test_config
from zoobot_hpc.cli import main
from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.login.submit import plan_runs, submit_plan
from zoobot_hpc.training.checkpoint_digest import digest_path, read_digest
from zoobot_hpc.training.checkpointing import (
    AtomicCheckpointIO,
    checkpoint_problem,
    mirror_checkpoint,
    newest_valid_checkpoint,
)

WRITER = """
import sys, torch
from zoobot_hpc.training.checkpointing import AtomicCheckpointIO
io, fill = AtomicCheckpointIO(dataset="d"), float(sys.argv[2])
for step in range(int(sys.argv[3])):
    io.save_checkpoint({"global_step": step, "w": torch.full((int(sys.argv[4]),), fill)}, sys.argv[1])
"""


def save(io: AtomicCheckpointIO, path, step: int, numel: int = 4096) -> None:
    io.save_checkpoint({"global_step": step, "w": torch.full((numel,), float(step))}, path)


def damage_middle(path, nbytes: int) -> None:
    """Overwrite `nbytes` in the middle of a file, in place (what bad blocks or a stray writer leave)."""
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.seek(size // 2)
        handle.write(b"\xff" * nbytes)


def test_a_checkpoint_changed_in_its_middle_is_passed_over_for_the_previous_one(tmp_path, caplog):
    io = AtomicCheckpointIO(dataset="abc")
    save(io, tmp_path / "best.ckpt", 3)
    save(io, tmp_path / "resume.ckpt", 6)
    mirror_checkpoint(tmp_path / "resume.ckpt", tmp_path / "last.ckpt")
    assert read_digest(tmp_path / "last.ckpt") == read_digest(tmp_path / "resume.ckpt")
    assert read_digest(tmp_path / "best.ckpt").dataset == "abc"
    assert newest_valid_checkpoint(tmp_path).name == "resume.ckpt"

    damage_middle(tmp_path / "resume.ckpt", 64)  # a hard link: last.ckpt is damaged with it
    assert torch.load(tmp_path / "resume.ckpt", weights_only=True)["global_step"] == 6, "it still loads"
    with caplog.at_level(logging.WARNING):
        assert newest_valid_checkpoint(tmp_path).name == "best.ckpt"
    damaged = [r.getMessage() for r in caplog.records if "falling back" in r.getMessage()]
    assert len(damaged) == 2 and all("sha256" in line and "\n" not in line for line in damaged)
    assert newest_valid_checkpoint(tmp_path, verify=False).name == "resume.ckpt"

    io.remove_checkpoint(tmp_path / "best.ckpt")
    assert not digest_path(tmp_path / "best.ckpt").exists()
    assert newest_valid_checkpoint(tmp_path) is None


def test_a_checkpoint_without_a_digest_is_accepted_only_when_it_loads_whole(tmp_path):
    path = tmp_path / "last.ckpt"
    torch.save({"global_step": 2, "w": torch.zeros(100_000)}, path)
    assert checkpoint_problem(path) is None
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)
    assert "does not load" in checkpoint_problem(path)


def test_concurrent_writers_never_leave_a_checkpoint_that_fails_a_full_load(tmp_path):
    target = tmp_path / "resume.ckpt"
    numel, rounds = 500_000, 5
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(fill), str(rounds), str(numel)])
        for fill in (1.0, 2.0)
    ]
    for writer in writers:
        assert writer.wait() == 0  # two processes importing torch: on a busy machine, minutes (pytest's timeout)
    checkpoint = torch.load(target, map_location="cpu", weights_only=True)
    assert checkpoint["w"].numel() == numel
    assert torch.all(checkpoint["w"] == checkpoint["w"][0]), "one writer's state, whole"
    assert not list(tmp_path.glob("*.tmp*")), "no temp file left behind"
    problem = checkpoint_problem(target)
    assert problem is None or "sha256" in problem, "the digest matches, or names the other writer's file"


def test_resume_falls_back_past_a_damaged_checkpoint_and_refuses_another_dataset(tmp_path, demo_dataset):
    dataset = tmp_path / "dataset"
    shutil.copytree(demo_dataset, dataset)
    config = write_test_config(
        tmp_path,
        dataset,
        name="proof",
        trainer__max_epochs=1,
        trainer__limit_train_batches=4,
        trainer__checkpoint_every_n_steps=2,
        data__num_workers=0,
    )
    runner = CliRunner()
    assert runner.invoke(main, ["train", str(config)]).exit_code == 0
    checkpoints = tmp_path / "runs" / "proof" / layout.CHECKPOINTS
    assert read_digest(checkpoints / "resume.ckpt").global_step == 2
    for name in ("last.ckpt", "best.ckpt"):  # step 4, written at the epoch's end
        damage_middle(checkpoints / name, 64 * 1024)

    second = runner.invoke(main, ["train", str(config), "trainer.max_epochs=2"])
    assert second.exit_code == 0, second.output
    starts = layout.read_segments(tmp_path / "runs" / "proof")
    assert starts[1]["resumed_from"].endswith("resume.ckpt")
    assert starts[1]["resumed_step"] == 2

    manifest = dataset / "manifest.json"
    manifest.write_text(manifest.read_text() + "\n")  # a rebuilt dataset: another manifest checksum
    third = runner.invoke(main, ["train", str(config), "trainer.max_epochs=3"])
    assert third.exit_code != 0, third.output
    [line] = [line for line in third.output.splitlines() if line.strip() and "INFO" not in line]
    assert "another dataset" in line
    assert "allow_dataset_change" in line
    allowed = runner.invoke(main, ["train", str(config), "trainer.max_epochs=3", "trainer.allow_dataset_change=true"])
    assert allowed.exit_code == 0, allowed.output


@pytest.mark.timeout(300)
def test_every_rank_of_a_job_stops_at_once_when_no_checkpoint_is_valid(tmp_path, demo_dataset):
    """Only rank 0 verifies the checkpoints: its refusal reaches the other rank, which would otherwise wait for it in
    a collective until the process group's timeout."""
    config = write_test_config(
        tmp_path,
        demo_dataset,
        name="all-damaged",
        data__batch_size=4,
        trainer__accumulate_grad_batches=2,
        trainer__max_epochs=1,
        trainer__limit_train_batches=4,
        data__num_workers=0,
        tracking__mode="disabled",
    )
    assert CliRunner().invoke(main, ["train", str(config)]).exit_code == 0
    checkpoints = sorted((tmp_path / "runs" / "all-damaged" / layout.CHECKPOINTS).glob("*.ckpt"))
    assert checkpoints
    for checkpoint in checkpoints:
        damage_middle(checkpoint, 64 * 1024)

    overrides = ("resources.executor=local", "resources.tasks_per_node=2", "trainer.max_epochs=2")
    job = submit_plan(plan_runs(config, overrides)).jobs[0]
    with pytest.raises(Exception, match=r"no checkpoint in \S+ is valid"):
        job.result()
    for rank in (0, 1):
        err = Path(str(job.paths.stderr).replace("_0_log.err", f"_{rank}_log.err")).read_text()
        assert "NoValidCheckpoint: no checkpoint in" in err, f"rank {rank} did not stop on the verdict:\n{err[-2000:]}"
