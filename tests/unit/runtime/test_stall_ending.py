"""How a stalled job ends, in real processes under the local backend: stacks and one line in the log, a requeue
(submitit's restart code) while the job's stalls number at most `max_stall_requeues`, then FAILED with the stall's
line in `job_result.json`, which `status` shows."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from zoobot_hpc.backends.local import LOCAL_REQUEUE_RETURN_CODE
from zoobot_hpc.cli import main
from zoobot_hpc.core import run_dir as layout

JOB_ID = "4242"
STALLING_TASK = """
import sys, threading
from pathlib import Path
from zoobot_hpc.runtime.stall_ending import StallEnding
from zoobot_hpc.runtime.stall_watchdog import StallWatchdog
run_dir = Path(sys.argv[1])
ending = StallEnding(run_dir, "local4242", max_requeues=int(sys.argv[2]))
watchdog = StallWatchdog(0.5, ending, beat_dir=run_dir / "ranks", beat_every_s=0.1).start()
watchdog.progress("training step", 3, epoch=1)
threading.Event().wait()  # the main thread hangs
"""


def stall_once(run_dir: Path, max_requeues: int) -> subprocess.CompletedProcess:
    """A task of local job JOB_ID whose main thread hangs after step 3."""
    env = {**os.environ, "SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": JOB_ID, "SUBMITIT_LOCAL_GLOBALID": "0"}
    command = [sys.executable, "-c", STALLING_TASK, str(run_dir), str(max_requeues)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_a_stall_requeues_the_job_until_max_stall_requeues_then_it_ends_failed_with_the_line(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / layout.SUBMISSION).write_text(json.dumps({"executor": "local", "job_id": JOB_ID}))
    (run_dir / layout.CONFIG).write_text("name: run\n")
    for start in range(2):
        layout.append_segment(run_dir, {"start": 0, "job": f"local{JOB_ID}"})
        done = stall_once(run_dir, max_requeues=1)
        assert done.returncode == (LOCAL_REQUEUE_RETURN_CODE if start == 0 else 1), done.stdout + done.stderr
        assert "Current thread" in done.stdout and "threading.py" in done.stdout, "no stacks in the log"
        line = f"stalled: rank 0 on {socket.gethostname()} made no progress for "
        assert line in done.stderr and "(last: training step 3, epoch 1)" in done.stderr, done.stderr

    records = layout.read_segments(run_dir)
    assert [record["stop"] for record in records] == ["stalled", "stalled"]
    assert records[0]["stop_step"] == 3 and records[0]["stalled_ranks"] == [0]
    result = json.loads((run_dir / "job_result.json").read_text())
    assert result["outcome"] == "error" and "max_stall_requeues=1 reached" in result["error"], result
    status = CliRunner().invoke(main, ["status", str(run_dir)]).output
    assert "FAILED" in status and "stalled: rank 0 on" in status, status
