"""The stall watchdog on its own: progress resets it, its timeout grows with the slowest step, a stall calls
`on_stall` once, and a peer whose thread stops beating is the rank it names."""

from __future__ import annotations

import os
import re
import threading
import time

from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.login.status import stall_note
from zoobot_hpc.runtime import stall_watchdog
from zoobot_hpc.runtime.stall_watchdog import (
    FIRST_STEP_MARGIN,
    STALL_MARGIN,
    RankProgress,
    StallWatchdog,
    beat_path,
    read_beats,
)


class Stalls:
    """An `on_stall` that records its calls and sets an event."""

    def __init__(self) -> None:
        self.reports: list = []
        self.fired = threading.Event()

    def __call__(self, report) -> None:
        self.reports.append(report)
        self.fired.set()


def test_progress_keeps_the_watchdog_quiet_and_a_stall_calls_on_stall_once(tmp_path):
    timeout_s = 1.0
    stalls = Stalls()
    watchdog = StallWatchdog(timeout_s, stalls, beat_dir=tmp_path, beat_every_s=0.05).start(rank=0, world_size=1)
    try:
        deadline = time.monotonic() + 2.5 * timeout_s
        step, longest_gap, last = 0, 0.0, time.monotonic()
        while time.monotonic() < deadline:
            step += 1
            watchdog.progress("training step", step, epoch=1)
            now = time.monotonic()
            longest_gap, last = max(longest_gap, now - last), now
            time.sleep(0.02)
        assert stalls.fired.wait(30)
        time.sleep(0.3)
    finally:
        watchdog.stop()
    [report] = stalls.reports
    idle = report.at - report.own.progress_at
    assert idle >= timeout_s, f"fired {idle:.2f} s after the last progress, before its {timeout_s} s timeout"
    if longest_gap < timeout_s:  # this machine ran the loop without a pause as long as the timeout
        assert report.own.step == step, "fired although every step came within the timeout"
    assert report.line().startswith(f"stalled: rank 0 on {report.own.host} made no progress for ")
    assert f"(last: training step {report.own.step}, epoch 1); every rank's watchdog runs" in report.line()


def test_the_timeout_grows_with_the_slowest_step_or_save():
    watchdog = StallWatchdog(0.2, Stalls(), beat_every_s=0.05).start()
    try:
        watchdog.progress("training step", 1)
        time.sleep(0.3)  # a slow step (a save)
        watchdog.progress("training step", 2)
        assert watchdog.slowest_s >= 0.3
        assert watchdog.timeout_s() == STALL_MARGIN * watchdog.slowest_s
    finally:
        watchdog.stop()
    waiting = StallWatchdog(5, Stalls(), beat_every_s=10).start()
    try:
        assert waiting.timeout_s() == FIRST_STEP_MARGIN * 5, "the first step after a start may take longer"
        waiting.progress("training step", 1)
        assert waiting.timeout_s() == 5, "then the configured timeout holds"
    finally:
        waiting.stop()


def test_a_peer_whose_beat_stopped_is_the_rank_named(tmp_path):
    frozen = RankProgress(rank=1, host="node-b", pid=12345, what="training step", step=7, epoch=2)
    frozen.beat_at = frozen.progress_at = time.time() - 60
    layout.write_json(beat_path(tmp_path, 1), frozen.__dict__)
    layout.write_json(beat_path(tmp_path, 5), {**frozen.__dict__, "rank": 5})  # of a larger earlier world
    stalls = Stalls()
    watchdog = StallWatchdog(0.3, stalls, beat_dir=tmp_path, beat_every_s=0.05).start(rank=0, world_size=2)
    try:
        assert stalls.fired.wait(10)
    finally:
        watchdog.stop()
    [report] = stalls.reports
    assert [peer.rank for peer in report.stalled] == [1]
    line = report.line()
    assert re.match(r"stalled: rank 1 on node-b made no progress for 6\d s \(last: training step 7, epoch 2\)", line)
    assert f"seen by rank 0 on {report.own.host}" in line
    assert {beat.rank for beat in read_beats(tmp_path)} == {0, 1, 5}
    assert read_beats(tmp_path, world_size=2)[0].pid == os.getpid()


def test_making_progress_follows_the_running_watchdog():
    assert stall_watchdog.making_progress(), "no watchdog: nothing says the work is stuck"
    watchdog = StallWatchdog(5.0, lambda report: None, beat_every_s=10).start()
    try:
        stall_watchdog.note_progress("prediction batch", 1)
        assert stall_watchdog.current() is watchdog and stall_watchdog.making_progress()
        watchdog.stall_timeout_s = 0.2
        time.sleep(0.3)
        assert not stall_watchdog.making_progress()
    finally:
        watchdog.stop()
    assert stall_watchdog.current() is None


def test_status_says_stalled_when_a_running_jobs_beats_show_no_progress(tmp_path):
    now = time.time()
    (tmp_path / layout.RANKS).mkdir()
    beat = RankProgress(rank=0, host="h", pid=1, progress_at=now - 400, beat_at=now - 1, timeout_s=300)
    layout.write_json(beat_path(tmp_path / layout.RANKS, 0), beat.__dict__)
    segments = [{"start": now - 1000}]
    assert stall_note(tmp_path, "RUNNING", segments, now) == "stalled: no step for 7 min"
    assert stall_note(tmp_path, "COMPLETED", segments, now) == ""
    assert stall_note(tmp_path, "RUNNING", [{"start": now}], now) == "", "beats of an earlier start are ignored"
    beat.progress_at = now - 100
    layout.write_json(beat_path(tmp_path / layout.RANKS, 0), beat.__dict__)
    assert stall_note(tmp_path, "RUNNING", segments, now) == ""
