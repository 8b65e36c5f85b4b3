"""`submit` warns in one line when the output filesystem holds less space or fewer inodes than the run needs;
`status` shows the space left."""

from __future__ import annotations

import subprocess

import pytest

from tests.support.jobs import write_test_config
from tests.unit.login.test_fail_fast import run_submit


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MB tmpfs with 64 inodes: a real filesystem too small for a run (needs root, as the SLURM tests do)."""
    mount_point = tmp_path / "scratch"
    mount_point.mkdir()
    options = "size=1m,nr_inodes=64"
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)], check=False).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_submit_warns_of_an_output_dir_too_small_for_the_run(tmp_path, demo_dataset, tiny_disk):
    config = write_test_config(tmp_path, demo_dataset, resources__executor="local", output_dir=str(tiny_disk / "runs"))
    result = run_submit(config, "--dry-run")
    assert result.exit_code == 0, result.output
    [warning] = [line for line in result.output.splitlines() if line.startswith("warning: output_dir=")]
    assert str(tiny_disk) in warning and "MB free of the about" in warning and "free inodes" in warning, warning
    assert "M parameters" in warning, warning


def test_submit_does_not_warn_where_the_run_fits(tmp_path, demo_dataset):
    config = write_test_config(tmp_path, demo_dataset, resources__executor="local")
    result = run_submit(config, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "warning: output_dir=" not in result.output, result.output
