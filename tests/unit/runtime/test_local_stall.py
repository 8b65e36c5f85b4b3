"""A hung rank in a 2-rank local DDP job (rank 1 stopped with SIGSTOP mid-epoch): the healthy rank's watchdog ends
the job within the stall timeout with every stack and one line naming the stopped rank and its host, kills the
stopped rank, the job restarts itself, resumes from the newest checkpoint and ends with the weights of an
uninterrupted run."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.support.jobs import assert_same_weights, final_weights, segments, wait_for, write_test_config
from zoobot_hpc.backends.local import descendants, process_parents
from zoobot_hpc.cli import main
from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.login.submit import plan_runs, submit_plan
from zoobot_hpc.runtime.stall_watchdog import beat_path, read_beats

STALL_TIMEOUT_S = 10.0


def stall_config(tmp_path: Path, dataset: Path, name: str, workers: int) -> Path:
    return write_test_config(
        tmp_path,
        dataset,
        name=name,
        resources__executor="local",
        resources__tasks_per_node=2,
        data__num_workers=workers,
        trainer__max_epochs=1,
        trainer__checkpoint_every_n_steps=2,
        trainer__stall_timeout_s=STALL_TIMEOUT_S,
        tracking__mode="disabled",
    )


def rank_log(job, rank: int) -> str:
    out = Path(str(job.paths.stdout).replace("_0_log.out", f"_{rank}_log.out"))
    return out.read_text() + (out.with_suffix(".err").read_text() if out.with_suffix(".err").exists() else "")


def training_beat(run_dir: Path, rank: int, min_step: int):
    """The rank's beat once it shows a training step of at least `min_step` (it is mid-epoch), else None."""

    def check():
        beats = [b for b in read_beats(run_dir / layout.RANKS) if b.rank == rank]
        return beats[0] if beats and beats[0].what == "training step" and beats[0].step >= min_step else None

    return check


def process_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


@pytest.mark.timeout(420)
def test_a_stopped_rank_ends_the_local_job_which_restarts_and_ends_as_an_uninterrupted_run(tmp_path, demo_dataset):
    stalled = submit_plan(plan_runs(stall_config(tmp_path / "a", demo_dataset, "stalled", workers=1)))
    baseline = submit_plan(plan_runs(stall_config(tmp_path / "b", demo_dataset, "baseline", workers=0)))
    job, run_dir = stalled.jobs[0], stalled.plan.runs[0].run_dir

    beat = wait_for(training_beat(run_dir, 1, min_step=3), 240, "rank 1 training past the first checkpoint")
    rank0 = wait_for(training_beat(run_dir, 0, min_step=1), 60, "rank 0 training")
    parents = process_parents()
    first_start = [pid for rank in (beat, rank0) for pid in [rank.pid, *descendants(rank.pid, parents)]]
    assert len(first_start) >= 6, "each rank runs a forkserver and a loader worker"
    os.kill(beat.pid, signal.SIGSTOP)
    stopped_at = time.time()
    try:
        wait_for(lambda: len(segments(run_dir)) == 2, 180, "the restarted second segment")
        ended_at = time.time()
        left = [pid for pid in first_start if not process_gone(pid)]
        assert not left, f"processes of the stalled start outlived it: {left}"
    finally:
        if not process_gone(beat.pid):
            os.kill(beat.pid, signal.SIGKILL)
    first = segments(run_dir)[0]
    assert first["stop"] == "stalled" and first["stalled_ranks"] == [1], first
    rank0_timeout = layout.read_json(beat_path(run_dir / layout.RANKS, 0))["timeout_s"]
    took = first["stopped"] - stopped_at
    print(f"stall -> job ended {took:.1f} s (restart seen {ended_at - stopped_at:.1f} s); timeout {rank0_timeout}")
    assert took < 2 * max(rank0_timeout, STALL_TIMEOUT_S) + 5, f"the stall took {took:.0f} s to end the job"

    metrics = job.results()[0]
    assert metrics["validation/loss"] == baseline.jobs[0].results()[0]["validation/loss"]
    assert_same_weights(final_weights(run_dir), final_weights(baseline.plan.runs[0].run_dir))
    starts = segments(run_dir)
    assert starts[1]["resumed_from"].endswith("resume.ckpt") and starts[1]["resumed_step"] % 2 == 0

    log0 = rank_log(job, 0)
    [line] = re.findall(r"ERROR zoobot_hpc[\w.]*: (stalled: .*)", log0)
    assert line.startswith(f"stalled: rank 1 on {socket.gethostname()} made no progress for "), line
    assert f"(last: training step {first['stop_step']}, epoch 1)" in line, line
    assert re.search(r"Thread 0x[0-9a-f]+ \(most recent call first\)", log0), "no stacks in rank 0's log"
    assert "stall_watchdog.py" in log0 and "training/run.py" in log0, "the stacks miss the watchdog or the main thread"

    status = CliRunner().invoke(main, ["status", str(run_dir)]).output
    assert "stalled" in status, status
