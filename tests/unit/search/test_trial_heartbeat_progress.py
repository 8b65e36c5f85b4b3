"""A search trial's heartbeat reflects its main thread's progress (the stall watchdog's view), not a live thread:
a hung trial's heartbeat goes stale, so the trial does not hold its array slot."""

from __future__ import annotations

import time

from tests.support.jobs import wait_for
from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.runtime.stall_watchdog import StallWatchdog
from zoobot_hpc.search.study import heartbeat_path
from zoobot_hpc.search.trial_job import Heartbeat


def test_the_heartbeat_stops_beating_while_the_trial_makes_no_progress(tmp_path):
    timeout_s = 1.0
    watchdog = StallWatchdog(timeout_s, lambda report: None, beat_every_s=10).start()
    heartbeat = Heartbeat(tmp_path, 3, interval_s=0.05).start()
    try:
        for step in range(10):
            watchdog.progress("training step", step)
            time.sleep(0.05)
        wait_for(lambda: time.time() - layout.read_json(heartbeat_path(tmp_path, 3))["time"] < 0.3, 10, "a beat")
        time.sleep(timeout_s + 0.3)  # no progress: past the stall timeout
        hung = layout.read_json(heartbeat_path(tmp_path, 3))
        time.sleep(0.3)
        assert layout.read_json(heartbeat_path(tmp_path, 3)) == hung, "a hung trial's heartbeat kept beating"
        watchdog.progress("training step", 10)
        wait_for(lambda: layout.read_json(heartbeat_path(tmp_path, 3))["time"] > hung["time"], 10, "beats again")
    finally:
        heartbeat.stop("failed")
        watchdog.stop()
