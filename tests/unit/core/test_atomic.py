"""zoobot_hpc.core.atomic: a target is replaced whole or not at all, and no temporary file is left behind."""

from __future__ import annotations

import multiprocessing

import pytest

from zoobot_hpc.core import atomic


def test_a_completed_write_replaces_the_target_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "progress.json"
    target.write_text("old")
    atomic.write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["progress.json"]


def test_a_failed_write_keeps_the_old_target_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "part.h5"
    target.write_bytes(b"complete")
    with pytest.raises(RuntimeError), atomic.atomic_path(target, ".tmp.host.1") as tmp:
        tmp.write_bytes(b"half")
        assert tmp.parent == target.parent and tmp.name == "part.h5.tmp.host.1"
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"complete"
    assert [p.name for p in tmp_path.iterdir()] == ["part.h5"]


def test_processes_writing_the_same_small_file_at_once_never_fail_and_leave_it_whole(tmp_path):
    """Every rank of a job writes the run's W&B id (and `train` under srun its config): with one shared temp name,
    one rank's rename took the other's temp file away (FileNotFoundError on a 2-node job)."""
    target = tmp_path / "wandb_run_id"
    context = multiprocessing.get_context("fork")
    with context.Pool(4) as pool:
        pool.map(_write_many, [(str(target), f"writer{i}") for i in range(4)])
    assert target.read_text() in {f"writer{i}\n" for i in range(4)}
    assert [p.name for p in tmp_path.iterdir()] == ["wandb_run_id"]


def _write_many(args: tuple[str, str]) -> None:
    target, text = args
    for _ in range(300):
        atomic.write_text(target, text + "\n")
