"""A hung rank's cost: submit the demo as a 2-rank local job, stop rank 1 with SIGSTOP mid-epoch, and time
stall -> job ended (the stall's stop record) and stall -> first training step after the requeue (rank 0's watchdog
`start-up: first training step` line in the restarted job).

    python benchmarks/stall_recovery.py [--stall-timeout-s 20]

The job ends after the stall timeout (`trainer.stall_timeout_s`, or 4 x the slowest step or save if longer) plus
one watchdog beat; the restart then pays the job's start-up again (see `job_startup.py`).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from zoobot_hpc.core import run_dir as layout  # noqa: E402
from zoobot_hpc.runtime.stall_watchdog import read_beats  # noqa: E402

FIRST_STEP = re.compile(r"^(\S+ \S+) INFO zoobot_hpc[\w.]*: start-up: first training step", re.MULTILINE)


def wait_for(check, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise SystemExit(f"timed out after {timeout_s:.0f} s waiting for {what}")


def training_beat(run_dir: Path, rank: int, min_step: int = 0):
    """The rank's beat once it trained step `min_step`, else None."""
    beats = [beat for beat in read_beats(run_dir / layout.RANKS) if beat.rank == rank]
    if beats and beats[0].what == "training step" and beats[0].step >= min_step:
        return beats[0]
    return None


def first_steps(run_dir: Path) -> list[float]:
    """When each start of the job logged its first training step (rank 0's log)."""
    logs = list((run_dir / "submitit").glob("*_0_log.out"))
    text = logs[0].read_text() if logs else ""
    return [datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp() for stamp in FIRST_STEP.findall(text)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stall-timeout-s", type=float, default=20.0)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory(prefix="stall-recovery-", dir=os.environ.get("STALL_BENCH_DIR")) as name:
        workdir = Path(name)
        cli = [sys.executable, "-m", "zoobot_hpc.cli"]
        subprocess.run([*cli, "demo-data", "demo_data"], env=env, cwd=workdir, check=True, stdout=subprocess.DEVNULL)
        overrides = ["resources.executor=local", "resources.tasks_per_node=2", "resources.cpus_per_task=1"]
        overrides += ["trainer.max_epochs=1", "trainer.checkpoint_every_n_steps=2", "tracking.mode=disabled"]
        overrides += [f"trainer.stall_timeout_s={args.stall_timeout_s}", "name=stall"]
        submit = [*cli, "submit", str(REPO / "configs" / "demo.yaml"), *overrides]
        subprocess.run(submit, env=env, cwd=workdir, check=True, stdout=subprocess.DEVNULL)
        run_dir = workdir / "runs" / "stall"
        victim = wait_for(lambda: training_beat(run_dir, 1, min_step=3), 300, "rank 1 training")
        os.kill(victim.pid, signal.SIGSTOP)
        stopped_at = time.time()
        first = wait_for(lambda: next((s for s in layout.read_segments(run_dir) if s.get("stop")), None), 300, "a stop")
        resumed = wait_for(lambda: first_steps(run_dir)[1:], 300, "a step after the requeue")[0]
        load = os.getloadavg()[0]
        print(f"2-rank local demo job, stall timeout {args.stall_timeout_s:.0f} s; load average {load:.1f}")
        print(f"stall -> job ended:                    {first['stopped'] - stopped_at:6.1f} s ({first['stall_line']})")
        print(f"stall -> first step after the requeue: {resumed - stopped_at:6.1f} s")
        wait_for(lambda: (run_dir / layout.SUMMARY).exists(), 300, "the run's end")


if __name__ == "__main__":
    main()
