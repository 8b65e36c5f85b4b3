"""One run, one job: a second job on a run directory exits at once naming the owner; the lease is taken over only
when its holder has ended; `submit` refuses a run whose job is still running."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from zoobot_hpc.backends.local import process_start_ticks
from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.login.preflight import PreflightError
from zoobot_hpc.login.submit import refuse_active_run
from zoobot_hpc.runtime.run_lease import LEASE, RunDirOwned, read_lease, renew_lease, take_lease

HOLDER = """
import sys
from zoobot_hpc.runtime.run_lease import take_lease
take_lease(sys.argv[1], "local111")
print("held", flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def holder(tmp_path):
    """A job process holding `tmp_path`'s lease until it is killed."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "held"
    yield process
    process.kill()
    process.wait()


def test_a_second_job_is_refused_naming_the_owner_until_the_owner_has_ended(tmp_path, holder):
    with pytest.raises(RunDirOwned) as refused:
        take_lease(tmp_path, "local222")
    message = str(refused.value)
    assert "\n" not in message and "job local111" in message and f"pid {holder.pid}" in message
    assert read_lease(tmp_path)["job"] == "local111"

    holder.kill()
    holder.wait()
    take_lease(tmp_path, "local222")  # the scheduler (here the process table) says the holder has ended
    assert read_lease(tmp_path)["job"] == "local222"
    before = read_lease(tmp_path)["renewed"]
    renew_lease(tmp_path, "local222")
    assert read_lease(tmp_path)["renewed"] >= before
    renew_lease(tmp_path, "local111")
    assert read_lease(tmp_path)["job"] == "local222", "only the holder renews"


def test_a_requeued_job_takes_its_own_lease_back(tmp_path, holder):
    take_lease(tmp_path, "local111")  # the same job key: a requeue of the holder
    assert json.loads((tmp_path / LEASE).read_text())["job"] == "local111"


@pytest.fixture
def controller_process():
    """A live process whose command line is a submitit local controller's (`-m submitit.local._local FOLDER`)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-m", "submitit.local._local"])
    yield process
    process.kill()
    process.wait()


def test_submit_refuses_a_run_whose_job_is_running(tmp_path, controller_process):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    layout.write_json(
        run_dir / layout.SUBMISSION,
        {
            "executor": "local",
            "job_id": str(controller_process.pid),
            "submitit_folder": str(tmp_path / "submitit"),
            "process_start": process_start_ticks(controller_process.pid),
        },
    )
    with pytest.raises(PreflightError) as refused:
        refuse_active_run(run_dir)
    message = str(refused.value)
    assert "\n" not in message and f"job {controller_process.pid} (RUNNING)" in message and str(run_dir) in message
    controller_process.kill()
    controller_process.wait()
    refuse_active_run(run_dir)
