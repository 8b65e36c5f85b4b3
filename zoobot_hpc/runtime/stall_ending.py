"""How a job ends after a stall: every thread's stack and one line in the log, a stop record, then requeue or FAILED.

Called from a firing `StallWatchdog`'s thread, while the main thread is blocked (waiting for a stalled peer in a
collective, or stuck itself). Nothing is saved: a stopped peer cannot take part in a save, and the newest
checkpoint (of a completed step) stands. One rank acts per job start (the first to create the start's claim
file in `RUN_DIR/ranks`, holding the job's key); it records `stop: stalled` in the segment's record (training),
then asks the backend to end the
whole job, stalled ranks included (`SchedulerBackend.end_stalled_job`): requeued while this job's stalls number
at most `resources.max_stall_requeues`, FAILED with the stall's line in `job_result.json` after that.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from zoobot_hpc.backends.registry import running_backend
from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.core.job_result import write_result
from zoobot_hpc.runtime.stall_watchdog import RankProgress, StallReport, read_beats

log = logging.getLogger(__name__)

STALLED = "stalled"  # the `stop` of a segment that ended on a stall


def dump_stacks() -> None:
    """Every thread's stack into this rank's log (stdout, where the log lines go; stderr when it has no fd)."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        faulthandler.dump_traceback(file=sys.stdout, all_threads=True)
    except (ValueError, OSError, AttributeError):
        faulthandler.dump_traceback(file=sys.__stderr__, all_threads=True)
    sys.stdout.flush()


def start_token(segments: list[dict], beats: list[RankProgress]) -> str:
    """A name for this start of the job that all its ranks derive alike: its segment count and its ranks' pids."""
    return f"{len(segments)}-" + "-".join(str(beat.pid) for beat in sorted(beats, key=lambda beat: beat.rank))


def claim(ranks_dir: Path, token: str, job_key: str) -> bool:
    """True for the first rank of this job start to claim ending it (an exclusive create in the shared run dir)."""
    path = Path(ranks_dir) / f"{STALLED}.{token}"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        handle.write(job_key)
    return True


def stalls_of_job(ranks_dir: Path, job_key: str) -> int:
    """How many starts of this job ended on a stall (the claims it left)."""
    return sum(1 for path in Path(ranks_dir).glob(f"{STALLED}.*") if path.read_text() == job_key)


@dataclass
class StallEnding:
    """The `on_stall` of a training or inference job in `run_dir` (job `job_key`)."""

    run_dir: Path
    job_key: str
    max_requeues: int

    def __call__(self, report: StallReport) -> NoReturn:
        dump_stacks()
        log.error("%s", report.line())
        ranks_dir = self.run_dir / layout.RANKS
        token = start_token(layout.read_segments(self.run_dir), read_beats(ranks_dir, report.world_size))
        if not claim(ranks_dir, token, self.job_key):
            self._wait_to_be_ended(report.timeout_s)
        self.record(report)
        stalls = stalls_of_job(ranks_dir, self.job_key)
        requeue = stalls <= self.max_requeues
        backend = running_backend()
        if not requeue:
            reason = f"{report.line()}; resources.max_stall_requeues={self.max_requeues} reached"
            log.error("%s: the job ends FAILED (continue with `zoobot-hpc resume %s`)", reason, self.run_dir)
            job_id = backend.job_id() if backend is not None else None
            if job_id:
                write_result(self.run_dir, job_id, "error", reason)
        else:
            log.info("ending the job for a requeue (stall %d of at most %d + 1)", stalls, self.max_requeues)
        code = backend.end_stalled_job(requeue) if backend is not None else 1
        if code is None:
            self._wait_to_be_ended(report.timeout_s)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    def record(self, report: StallReport) -> None:
        """Add the stall to this start's record in `segments.jsonl` (what `status` shows)."""
        stalled = report.stalled
        layout.update_last_segment(
            self.run_dir,
            {
                "stop": STALLED,
                "stop_step": min(rank.step for rank in stalled),
                "stopped": report.at,
                "stalled_ranks": [rank.rank for rank in stalled],
                "stalled_hosts": sorted({rank.host for rank in stalled}),
                "stall_line": report.line(),
            },
        )

    @staticmethod
    def _wait_to_be_ended(timeout_s: float) -> NoReturn:
        """Another rank (or the scheduler) ends the job; exit by ourselves only if nothing did after a while."""
        log.info("waiting for the job to be ended")
        sys.stdout.flush()
        time.sleep(max(60.0, 2 * timeout_s))
        os._exit(1)
