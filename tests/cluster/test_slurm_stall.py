"""A hung rank in a 2-node SLURM job (rank 1 stops itself with SIGSTOP mid-epoch, on the loopback cluster): rank 0's
stall watchdog names it with its host and every stack, `scontrol requeue`s the job, SLURM kills the stopped rank,
and the requeued job resumes and ends with the weights of an uninterrupted run of the same layout alongside (a
1 x 2 local run's weights differ from a 2 x 1 SLURM run's in their last bits, stalled or not)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.jobs import assert_same_weights, final_weights, segments, wait_for, write_test_config
from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.runtime.stall_watchdog import beat_path

pytestmark = pytest.mark.slurm

STALL_TIMEOUT_S = 10.0


STOP_STEP = 5  # rank 1 stops after this step, mid-epoch, one after the checkpoint of step 4


def config(tmp_path: Path, dataset: Path, name: str, marker: Path | None = None) -> Path:
    stop = {"rank": 1, "step": STOP_STEP, "marker": str(marker)}
    callbacks = [{"class_path": "tests.support.probes.StopRankAtStep", "init_args": stop}] if marker else []
    return write_test_config(
        tmp_path,
        dataset,
        name=name,
        data__num_workers=0,
        trainer__max_epochs=1,
        trainer__checkpoint_every_n_steps=2,
        trainer__stall_timeout_s=STALL_TIMEOUT_S,
        tracking__mode="disabled",
        trainer__callbacks=callbacks,
        resources__executor="slurm",
        resources__nodes=2,
        resources__tasks_per_node=1,
    )


def submit(config_path: Path, env: dict[str, str]) -> str:
    """`zoobot-hpc submit CONFIG` on the cluster; the job id."""
    done = subprocess.run(
        [sys.executable, "-m", "zoobot_hpc.cli", "submit", str(config_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    [job_id] = re.findall(r"^\s+job (\S+)", done.stdout, flags=re.MULTILINE)
    return job_id


@pytest.mark.timeout(420)
def test_a_stopped_rank_of_a_two_node_job_is_requeued_by_slurm_and_ends_as_an_uninterrupted_run(
    tmp_path, demo_dataset, slurm_cluster
):
    marker = tmp_path / "stopped.json"
    job_id = submit(config(tmp_path / "a", demo_dataset, "stalled", marker), slurm_cluster.env)
    baseline_id = submit(config(tmp_path / "b", demo_dataset, "baseline"), slurm_cluster.env)
    run_dir = tmp_path / "a" / "runs" / "stalled"

    wait_for(marker.exists, 240, f"rank 1 stopped after step {STOP_STEP}")
    stopped_at = json.loads(marker.read_text())["time"]
    wait_for(lambda: len(segments(run_dir)) == 2, 180, "the requeued second start")
    slurm_cluster.wait_for_state(job_id, ["COMPLETED"], timeout=240)
    slurm_cluster.wait_for_state(baseline_id, ["COMPLETED"], timeout=120)

    first = segments(run_dir)[0]
    assert first["stop"] == "stalled" and first["stalled_ranks"] == [1], first
    timeout_s = layout.read_json(beat_path(run_dir / layout.RANKS, 0))["timeout_s"]
    took = first["stopped"] - stopped_at
    print(f"stall -> requeue {took:.1f} s; timeout {timeout_s:.1f} s")
    assert took < 2 * max(timeout_s, STALL_TIMEOUT_S) + 5, f"the stall took {took:.0f} s to end the job"
    second = segments(run_dir)[1]
    assert second["restart_count"] == 1, "SLURM did not requeue the job"
    assert second["resumed_step"] >= STOP_STEP - 1, "the newest checkpoint was not resumed from"
    assert_same_weights(final_weights(run_dir), final_weights(tmp_path / "b" / "runs" / "baseline"))

    [log0] = [path.read_text() for path in (run_dir / "submitit").glob("*_0_log.out")]
    [line] = re.findall(r"ERROR zoobot_hpc[\w.]*: (stalled: .*)", log0)
    assert line.startswith(f"stalled: rank 1 on {socket.gethostname()} made no progress for "), line
    assert re.search(r"Thread 0x[0-9a-f]+ \(most recent call first\)", log0), "no stacks in rank 0's log"
