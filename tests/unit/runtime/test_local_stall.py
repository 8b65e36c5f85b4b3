"""A hung rank in a 2-rank local DDP job (rank 1 stopped with SIGSTOP mid-epoch): the healthy rank's watchdog ends
the job within the stall timeout with every stack and one line naming the stopped rank and its host, kills the
stopped rank, the job restarts itself, resumes from the newest checkpoint and ends with the weights of an
uninterrupted run."""

from __future__ import annotations

import json
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


STOP_STEP = 5  # rank 1 stops after this step, mid-epoch (13 steps), one after the checkpoint of step 4


def stop_rank_1(marker: Path) -> list[dict]:
    init = {"rank": 1, "step": STOP_STEP, "marker": str(marker)}
    return [{"class_path": "tests.support.probes.StopRankAtStep", "init_args": init}]


def stall_config(tmp_path: Path, dataset: Path, name: str, workers: int, **overrides) -> Path:
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
        **overrides,
    )


def rank_log(job, rank: int) -> str:
    out = Path(str(job.paths.stdout).replace("_0_log.out", f"_{rank}_log.out"))
    return out.read_text() + (out.with_suffix(".err").read_text() if out.with_suffix(".err").exists() else "")


def training_beat(run_dir: Path, rank: int):
    """The rank's beat once its watchdog runs, else None."""

    def check():
        beats = [b for b in read_beats(run_dir / layout.RANKS) if b.rank == rank]
        return beats[0] if beats else None

    return check


def process_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


@pytest.mark.timeout(420)
def test_a_stopped_rank_ends_the_local_job_which_restarts_and_ends_as_an_uninterrupted_run(tmp_path, demo_dataset):
    marker = tmp_path / "stopped.json"
    stalled_config = stall_config(tmp_path / "a", demo_dataset, "stalled", 1, trainer__callbacks=stop_rank_1(marker))
    stalled = submit_plan(plan_runs(stalled_config))
    baseline = submit_plan(plan_runs(stall_config(tmp_path / "b", demo_dataset, "baseline", workers=0)))
    job, run_dir = stalled.jobs[0], stalled.plan.runs[0].run_dir

    wait_for(marker.exists, 240, f"rank 1 stopped after step {STOP_STEP}")
    stop = json.loads(marker.read_text())
    rank0 = wait_for(training_beat(run_dir, 0), 60, "rank 0's watchdog")
    parents = process_parents()
    first_start = [pid for rank in (rank0.pid, stop["pid"]) for pid in [rank, *descendants(rank, parents)]]
    assert len(first_start) >= 6, "each rank runs a forkserver and a loader worker"
    stopped_at = stop["time"]
    try:
        wait_for(lambda: len(segments(run_dir)) == 2, 180, "the restarted second segment")
        ended_at = time.time()
        left = [pid for pid in first_start if not process_gone(pid)]
        assert not left, f"processes of the stalled start outlived it: {left}"
    finally:
        if not process_gone(stop["pid"]):
            os.kill(stop["pid"], signal.SIGKILL)
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
    assert starts[1]["resumed_from"].endswith("resume.ckpt") and starts[1]["resumed_step"] == STOP_STEP - 1

    log0 = rank_log(job, 0)
    [line] = re.findall(r"ERROR zoobot_hpc[\w.]*: (stalled: .*)", log0)
    assert line.startswith(f"stalled: rank 1 on {socket.gethostname()} made no progress for "), line
    last = re.search(r"\(last: training step (\d+), epoch 1\)", line)
    assert last and int(last.group(1)) == first["stop_step"] <= STOP_STEP, line  # its last beat's step
    assert re.search(r"Thread 0x[0-9a-f]+ \(most recent call first\)", log0), "no stacks in rank 0's log"
    assert "stall_watchdog.py" in log0 and "training/run.py" in log0, "the stacks miss the watchdog or the main thread"

    status = CliRunner().invoke(main, ["status", str(run_dir)]).output
    assert "stalled" in status, status
