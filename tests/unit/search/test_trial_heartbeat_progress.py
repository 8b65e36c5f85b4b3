"""A search trial's heartbeat reflects its main thread's progress (the stall watchdog's view), not a live thread:
a hung trial's heartbeat goes stale, so the trial does not hold its array slot."""

from __future__ import annotations

import time

from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.runtime.stall_watchdog import StallWatchdog
from zoobot_hpc.search.study import heartbeat_path
from zoobot_hpc.search.trial_job import Heartbeat


def test_the_heartbeat_stops_beating_while_the_trial_makes_no_progress(tmp_path):
    watchdog = StallWatchdog(0.3, lambda report: None, beat_every_s=10).start()
    heartbeat = Heartbeat(tmp_path, 3, interval_s=0.05).start()
    try:
        for step in range(10):
            watchdog.progress("training step", step)
            time.sleep(0.05)
        beating = layout.read_json(heartbeat_path(tmp_path, 3))
        assert time.time() - beating["time"] < 0.3, "the heartbeat did not beat while the trial made progress"
        time.sleep(0.6)  # no progress: past the stall timeout
        hung = layout.read_json(heartbeat_path(tmp_path, 3))
        time.sleep(0.3)
        assert layout.read_json(heartbeat_path(tmp_path, 3)) == hung, "a hung trial's heartbeat kept beating"
        watchdog.progress("training step", 10)
        time.sleep(0.3)
        assert layout.read_json(heartbeat_path(tmp_path, 3))["time"] > hung["time"], "progress did not resume it"
    finally:
        heartbeat.stop("failed")
        watchdog.stop()
