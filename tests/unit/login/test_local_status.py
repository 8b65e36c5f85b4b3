"""`status` and `cancel` of local jobs never trust a bare PID: the OS may have given it to another process."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from zoobot_hpc.backends.local import process_start_ticks
from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.login.status import cancel_runs, collect_status


@pytest.fixture
def unrelated_process():
    """A live process that is not a zoobot-hpc job; it ignores SIGINT, as every process started from a background
    shell (`&`, nohup) does."""
    process = subprocess.Popen(["sleep", "60"], preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    yield process
    process.kill()
    process.wait()


def local_run_dir(tmp_path, pid: int, process_start: int | None):
    run_dir = tmp_path / "runs" / "local-run"
    run_dir.mkdir(parents=True)
    (run_dir / layout.CONFIG).write_text("name: local-run\n")
    submission = {"executor": "local", "job_id": str(pid), "submitit_folder": str(run_dir / "submitit")}
    if process_start is not None:
        submission["process_start"] = process_start
    layout.write_json(run_dir / layout.SUBMISSION, submission)
    return run_dir


@pytest.mark.parametrize("recorded", ["an earlier start", "no start (older submission)"])
def test_a_pid_now_held_by_another_process_is_neither_running_nor_cancelled(tmp_path, unrelated_process, recorded):
    started = process_start_ticks(unrelated_process.pid)
    run_dir = local_run_dir(tmp_path, unrelated_process.pid, started - 100 if recorded == "an earlier start" else None)

    [status] = collect_status(run_dir)
    assert status.state == "ENDED"
    assert cancel_runs(run_dir) == []
    assert unrelated_process.poll() is None, "cancel signalled a process that is not the job"


@pytest.fixture
def controller_process():
    """A live process whose command line is a submitit local controller's (`-m submitit.local._local FOLDER`)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-m", "submitit.local._local"])
    yield process
    process.kill()
    process.wait()


def test_the_process_submit_recorded_is_running_and_cancelled(tmp_path, controller_process):
    run_dir = local_run_dir(tmp_path, controller_process.pid, process_start_ticks(controller_process.pid))

    [status] = collect_status(run_dir)
    assert status.state == "RUNNING"
    assert cancel_runs(run_dir) == [str(controller_process.pid)]
    assert controller_process.wait(timeout=10) != 0
