"""One run, one job, on the loopback SLURM cluster: a second submit of a queued or running run is refused, and a
second job started by hand on the run directory exits at once naming the owner; the owner's checkpoints stay whole."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.support.jobs import write_test_config
from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.runtime.run_lease import read_lease
from zoobot_hpc.training.checkpointing import checkpoint_problem

pytestmark = pytest.mark.slurm


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zoobot_hpc.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
        check=False,
    )


@pytest.mark.timeout(420)
def test_a_second_submit_and_a_second_job_on_a_running_run_are_refused(tmp_path, demo_dataset, slurm_cluster):
    config = write_test_config(
        tmp_path, demo_dataset, name="owned", resources__executor="slurm", trainer__max_epochs=3, data__num_workers=0
    )
    first = cli("submit", str(config), env=slurm_cluster.env)
    assert first.returncode == 0, first.stderr
    [job_id] = re.findall(r"^\s+job (\S+)", first.stdout, flags=re.MULTILINE)

    second = cli("submit", str(config), env=slurm_cluster.env)
    assert second.returncode != 0
    [line] = [line for line in (second.stdout + second.stderr).splitlines() if line.strip()]
    assert f"job {job_id} (" in line and "owned" in line

    run_dir = tmp_path / "runs" / "owned"
    slurm_cluster.wait_for_state(job_id, ["RUNNING"], timeout=120)
    intruder = slurm_cluster.run(
        "sbatch",
        "--parsable",
        f"--output={tmp_path / 'intruder.out'}",
        f"--wrap={sys.executable} -m zoobot_hpc.cli train {config}",
    ).stdout.strip()
    slurm_cluster.wait_for_state(intruder, ["FAILED"], timeout=240)
    assert f"job {job_id} on" in (tmp_path / "intruder.out").read_text()

    slurm_cluster.wait_for_state(job_id, ["COMPLETED"], timeout=360)
    assert read_lease(run_dir) is None, "the owner gave the lease up when its run ended"
    for checkpoint in (run_dir / layout.CHECKPOINTS).glob("*.ckpt"):
        assert checkpoint_problem(checkpoint) is None, checkpoint
    starts = layout.read_segments(run_dir)
    assert {start["job"] for start in starts} == {job_id}, "only the owner recorded a segment"
