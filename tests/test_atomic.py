"""zoobot_hpc.atomic: a target is replaced whole or not at all, and no temporary file is left behind."""

from __future__ import annotations

import pytest

from zoobot_hpc import atomic


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
