"""A write of any run file into a full filesystem (progress JSON, a segment record, an HDF5 prediction part) ends
with the one line of `core.disk_space`, and the previous file stays whole."""

from __future__ import annotations

import os
import subprocess

import h5py
import numpy as np
import pytest

from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.core.atomic import atomic_path
from zoobot_hpc.core.disk_space import OutOfSpace


@pytest.fixture
def full_disk(tmp_path):
    """A 2 MB tmpfs filled to the last byte (needs root, as the SLURM tests do); holds a `progress.json`."""
    mount_point = tmp_path / "full"
    mount_point.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)], check=False).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        layout.write_json(mount_point / layout.PROGRESS, {"epoch": 1})
        fill(mount_point / "filler")
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(path) -> None:
    """Write zeros to `path` until the filesystem has no byte left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


def assert_one_line(error: OutOfSpace, *fragments: str) -> None:
    text = str(error)
    assert "\n" not in text and "out of disk space writing" in text and "MB free there" in text, text
    for fragment in fragments:
        assert fragment in text, text


def test_run_dir_json_into_a_full_disk(full_disk):
    with pytest.raises(OutOfSpace) as raised:
        layout.write_json(full_disk / layout.PROGRESS, {"epoch": 2, "padding": "x" * 200_000})
    assert_one_line(raised.value, str(full_disk / layout.PROGRESS))
    assert layout.read_json(full_disk / layout.PROGRESS) == {"epoch": 1}  # the previous one is kept
    assert [path.name for path in full_disk.iterdir()] == sorted(["filler", layout.PROGRESS])  # no temp file


def test_segment_record_into_a_full_disk(full_disk):
    with pytest.raises(OutOfSpace) as raised:
        layout.append_segment(full_disk, {"job": "1", "padding": "x" * 200_000})
    assert_one_line(raised.value, "a segment record to", layout.SEGMENTS)


def test_prediction_part_into_a_full_disk(full_disk):
    with pytest.raises(OutOfSpace) as raised, atomic_path(full_disk / "part-00000.h5") as tmp, h5py.File(tmp, "w") as h:
        h["predictions"] = np.zeros((1000, 100), dtype=np.float32)
    assert_one_line(raised.value, "part-00000.h5")
    assert not (full_disk / "part-00000.h5").exists()
