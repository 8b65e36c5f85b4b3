"""The stall watchdog: a per-rank daemon thread that needs no collective and fires when the rank makes no progress.

The workload calls `progress(what, step)` at every unit of work (a training or validation batch, a prediction
chunk, a cache-build block). No call for `timeout_s()` seconds (the configured `trainer.stall_timeout_s`, or
`STALL_MARGIN` times the slowest interval between two calls seen so far, whichever is longer; `FIRST_STEP_MARGIN`
times that until the first call after `start`) calls `on_stall` once, from the watchdog's thread, with a
`StallReport`.

A rank stopped by SIGSTOP (or frozen in the kernel) cannot act: its peers' watchdogs fire while they wait for it
in a collective. To name it, every watchdog thread rewrites its rank's beat file (`RUN_DIR/ranks/rank-R.json`:
host, pid, last progress) every `beat_every_s`; a peer whose beat is older than `STALE_BEATS` beats has a thread
that does not run. Torch-free: this module only watches; `runtime.stall_ending` ends the job.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from zoobot_hpc.core import run_dir as layout

log = logging.getLogger(__name__)

STALL_MARGIN = 4.0  # the effective timeout is at least this many times the slowest step or save seen
FIRST_STEP_MARGIN = 3.0  # until the first progress after a start: loader workers, cudnn autotuning, compilation
STALE_BEATS = 3.0  # a peer whose beat is older than this many beat intervals is stopped, frozen or dead
_current: StallWatchdog | None = None


@dataclass
class RankProgress:
    """One rank's last unit of work as its beat file records it."""

    rank: int
    host: str
    pid: int
    what: str = "start-up"
    step: int = 0
    epoch: int | None = None
    progress_at: float = field(default_factory=time.time)
    beat_at: float = field(default_factory=time.time)
    timeout_s: float = 0.0

    def last(self) -> str:
        epoch = f", epoch {self.epoch}" if self.epoch is not None else ""
        return f"{self.what} {self.step}{epoch}"

    def line(self, now: float) -> str:
        """`rank 1 on HOST made no progress for 21 s (last: training step 12, epoch 1)`."""
        idle = now - self.progress_at
        return f"rank {self.rank} on {self.host} made no progress for {idle:.0f} s (last: {self.last()})"


@dataclass
class StallReport:
    """What a firing watchdog knows: its own rank's progress, and the peers whose watchdog threads do not beat."""

    own: RankProgress
    timeout_s: float
    frozen_peers: list[RankProgress]
    world_size: int = 1
    at: float = field(default_factory=time.time)

    @property
    def stalled(self) -> list[RankProgress]:
        """The ranks to blame: the frozen peers, else this rank itself (a deadlock or a hung collective)."""
        return self.frozen_peers or [self.own]

    def line(self) -> str:
        """The one log line of a stall."""
        blamed = "; ".join(rank.line(self.at) for rank in self.stalled)
        if self.frozen_peers:
            how = f"its process does not run (stopped, frozen or dead); seen by rank {self.own.rank} on {self.own.host}"
        else:
            how = "every rank's watchdog runs: a hung collective, a deadlock or a blocking read"
        return f"stalled: {blamed}; {how}; stall timeout {self.timeout_s:.0f} s"


def beat_path(beat_dir: Path, rank: int) -> Path:
    return Path(beat_dir) / f"rank-{rank}.json"


def read_beats(beat_dir: Path, world_size: int | None = None) -> list[RankProgress]:
    """Every rank's beat in `beat_dir` (ranks below `world_size` only, when given); unreadable files are skipped."""
    beats = []
    for path in sorted(Path(beat_dir).glob("rank-*.json")):
        record = layout.read_json(path)
        try:
            beat = RankProgress(**record) if isinstance(record, dict) else None
        except TypeError:
            beat = None
        if beat is not None and (world_size is None or beat.rank < world_size):
            beats.append(beat)
    return beats


class StallWatchdog:
    """Calls `on_stall(report)` once when `progress` was not called for `timeout_s()` seconds while started."""

    def __init__(
        self,
        stall_timeout_s: float,
        on_stall: Callable[[StallReport], Any],
        beat_dir: Path | None = None,
        beat_every_s: float | None = None,
    ) -> None:
        self.stall_timeout_s = float(stall_timeout_s)
        self.on_stall = on_stall
        self.beat_dir = Path(beat_dir) if beat_dir is not None else None
        self.beat_every_s = beat_every_s or min(max(self.stall_timeout_s / 10, 0.5), 30.0)
        self.slowest_s = 0.0
        self.world_size = 1
        self.own = RankProgress(rank=0, host=socket.gethostname(), pid=os.getpid())
        self._last = time.monotonic()
        self._first = True  # no progress yet since the start
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.fired = False

    def timeout_s(self) -> float:
        timeout = max(self.stall_timeout_s, STALL_MARGIN * self.slowest_s)
        return FIRST_STEP_MARGIN * timeout if self._first else timeout

    def idle_s(self) -> float:
        """Seconds since the last progress (or the start)."""
        return time.monotonic() - self._last

    def progress(self, what: str, step: int, epoch: int | None = None) -> None:
        """One unit of work done (cheap: called at every batch)."""
        now = time.monotonic()
        if self._thread is not None:
            self.slowest_s = max(self.slowest_s, now - self._last)
        first, self._last, self._first = self._first, now, False
        self.own.what, self.own.step, self.own.epoch, self.own.progress_at = what, step, epoch, time.time()
        if first and self._thread is not None:
            self._beat()  # the peers learn at once that this rank is past its start-up (and where it is)

    def start(self, rank: int = 0, world_size: int = 1) -> StallWatchdog:
        """Start watching (again, after `stop`); the interval until the first `progress` counts as a step."""
        global _current  # one watchdog per process: the trial heartbeat reads it
        if self._thread is not None:
            return self
        self.own.rank, self.world_size = rank, world_size
        self._last, self._first, self.own.progress_at = time.monotonic(), True, time.time()
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="stall-watchdog", daemon=True)
        self._thread.start()
        _current = self
        return self

    def stop(self) -> None:
        """Stop watching (the work ended, or a phase that makes no progress calls begins)."""
        global _current
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        if _current is self:
            _current = None

    def _beat(self) -> None:
        if self.beat_dir is None:
            return
        self.own.beat_at, self.own.timeout_s = time.time(), self.timeout_s()
        try:
            self.beat_dir.mkdir(parents=True, exist_ok=True)
            layout.write_json(beat_path(self.beat_dir, self.own.rank), asdict(self.own))
        except OSError as error:  # a full or unreachable disk must not stop the watch itself
            log.warning("stall watchdog: cannot write its beat in %s (%s)", self.beat_dir, error)

    def frozen_peers(self) -> list[RankProgress]:
        """The other ranks whose watchdog threads stopped beating."""
        if self.beat_dir is None:
            return []
        stale_at = time.time() - STALE_BEATS * self.beat_every_s
        beats = read_beats(self.beat_dir, self.world_size)
        return [beat for beat in beats if beat.rank != self.own.rank and beat.beat_at < stale_at]

    def _peers_starting(self) -> bool:
        """Whether another rank's beat says it has made no progress since its start (still beating)."""
        if self.beat_dir is None:
            return False
        beats = read_beats(self.beat_dir, self.world_size)
        return any(beat.rank != self.own.rank and beat.what == "start-up" for beat in beats)

    def _watch(self) -> None:
        self._beat()
        while not self._stop.wait(self.beat_every_s):
            self._beat()
            if self.idle_s() >= self.timeout_s():
                if self.idle_s() < FIRST_STEP_MARGIN * self.timeout_s() and self._peers_starting():
                    continue  # a peer still starts up (a slow node, a busy filesystem): waiting on it is no stall
                self.fired = True
                peers = self.frozen_peers()
                self.on_stall(StallReport(self.own, self.timeout_s(), peers, world_size=self.world_size))
                return


def current() -> StallWatchdog | None:
    """The watchdog running in this process, if any."""
    return _current


def note_progress(what: str, step: int, epoch: int | None = None) -> None:
    """Progress for the watchdog running in this process, if any (for code that is not handed the watchdog)."""
    watchdog = _current
    if watchdog is not None:
        watchdog.progress(what, step, epoch)


def making_progress() -> bool:
    """Whether this process's main work is making progress: no watchdog runs, or its timeout has not passed."""
    watchdog = _current
    return watchdog is None or watchdog.idle_s() < watchdog.timeout_s()
