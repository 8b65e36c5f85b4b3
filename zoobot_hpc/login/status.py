"""`zoobot-hpc status` and `cancel`: the scheduler's view of runs joined with what their run dirs say.

Nothing here unpickles: a job's state comes from its scheduler's backend (a local job's from its process
and the JSON it writes when it ends (`zoobot_hpc.core.job_result`), never from submitit's result pickles,
which run code when read and sit in a folder the run directory names).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from zoobot_hpc.backends.base import JobRecord, JobStart, Phase, SchedulerBackend
from zoobot_hpc.backends.registry import get_backend
from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.core.disk_space import format_free
from zoobot_hpc.core.job_result import JOB_RESULT, read_result, root_cause
from zoobot_hpc.core.segment_records import segments_note
from zoobot_hpc.runtime.stall_watchdog import read_beats


@dataclass
class RunStatus:
    name: str
    run_dir: Path
    executor: str | None
    job_id: str | None
    state: str
    requeues: int
    epoch: str
    best: str
    latest_checkpoint: str | None
    why: str = ""
    free: str = ""  # the run dir's filesystem: `12.3 GB free`

    def line(self) -> str:
        checkpoint = Path(self.latest_checkpoint).name if self.latest_checkpoint else "-"
        line = (
            f"{self.name:<40} {self.job_id or '-':>12} {self.state:<11} requeues={self.requeues:<2} "
            f"epoch={self.epoch:<7} best={self.best:<22} ckpt={checkpoint}"
        )
        line = f"{line} ({self.free})" if self.free else line
        return f"{line}  ({self.why})" if self.why else line


def job_error(run_dir: Path, job_id: str, segments: list[dict] | None = None) -> str | None:
    """The error a job ended with, as its ranks recorded it in its run dir (redacted): the first failing rank's
    (`root_cause`: not a lost peer's symptom), else rank 0's last line."""
    result = read_result(run_dir, job_id)
    if result is not None and result.get("outcome") == "success":
        return None
    if result is None:
        last_start = (segments or [{}])[-1].get("start")
        return root_cause(run_dir, job_id, last_start if isinstance(last_start, float) else None)
    started = result.get("started")
    cause = root_cause(run_dir, job_id, started) if isinstance(started, float) else None
    return cause or result.get("error") or str(result.get("outcome"))


def unread_pickle_note(submitit_folder: Path, job_id: str) -> str:
    """Why status says nothing of a result pickle it could see: it never unpickles."""
    if (Path(submitit_folder) / f"{job_id}_0_result.pkl").exists():
        return f"no {JOB_RESULT} from the job; its submitit result pickle is not read (unpickling runs code)"
    return ""


def how_segment_ended(
    segments: list[dict], index: int, cache: dict[str, list[JobStart]], backend: SchedulerBackend | None
) -> str | None:
    """What ended start `index` of a run (`NODE_FAIL`, ...): the scheduler's record of the start of its job that
    began last before the segment did (`cache`: one query per job); None where the scheduler does not say."""
    segment = segments[index]
    job = str(segment.get("job", ""))
    if backend is None or not job or "start" not in segment:
        return None
    if job not in cache:
        cache[job] = backend.job_starts(job)
    before = [start for start in cache[job] if start.started <= segment["start"] + 1]
    return before[-1].state if before else None


def redone_note(segments: list[dict], backend: SchedulerBackend | None) -> str:
    """How much training was done twice because a start of the job ended without saving where it had got to
    (a lost node, a kill), and what ended it where the scheduler knows: `17 steps redone (steps 40-57, restart 1
    after NODE_FAIL)`."""
    redone = layout.redone_work(segments)
    if not redone:
        return ""
    causes: dict[str, list[JobStart]] = {}
    parts = []
    for work in redone:
        cause = how_segment_ended(segments, work.segment - 1, causes, backend)
        after = f" after {cause}" if cause else ""
        parts.append(f"steps {work.resumed_step}-{work.reached_step}, restart {work.segment}{after}")
    return f"{sum(work.steps for work in redone)} steps redone ({'; '.join(parts)})"


def explain(run: Path, state: str, submission: dict, segments: list[dict]) -> str:
    """Why a run stopped or was restarted, from the scheduler's state, the job's error and the segment records."""
    backend = backend_of(submission)
    phase = backend.phase(state) if backend is not None else Phase.UNKNOWN
    why = _stop_reason(run, state, phase, submission, segments)
    redone = redone_note(segments, backend)
    return "; ".join(part for part in (why, redone) if part)


def _stop_reason(run: Path, state: str, phase: Phase, submission: dict, segments: list[dict]) -> str:
    last_stop = next((s for s in reversed(segments) if s.get("stop")), None)
    stop = f"{last_stop['stop']} at step {last_stop['stop_step']}" if last_stop else None
    resume_hint = f"continue with: zoobot-hpc resume {run}"
    if phase is Phase.CANCELLED:
        return f"cancelled; saved after {stop}; {resume_hint}" if stop else f"cancelled; {resume_hint}"
    if phase is Phase.FAILED:
        error = job_error(run, str(submission.get("job_id")), segments)
        if error and "timed-out too many times" in error:
            return f"time-limit requeues exhausted (resources.max_time_limit_requeues); {resume_hint}"
        if error is None and state == "ENDED":
            error = unread_pickle_note(Path(submission.get("submitit_folder", ".")), str(submission.get("job_id")))
        return f"{error}; {resume_hint}" if error else resume_hint
    if stop and phase is not Phase.COMPLETED:
        return f"last stop: {stop}"
    return ""


def stall_note(run: Path, state: str, segments: list[dict], now: float | None = None) -> str:
    """`stalled: no step for N min` when a running job's ranks (their watchdog beats of this start) made no
    progress for longer than their stall timeout."""
    if state != "RUNNING" or not segments:
        return ""
    started = float(segments[-1].get("start", 0))
    beats = [beat for beat in read_beats(run / layout.RANKS) if beat.beat_at >= started]
    if not beats:
        return ""
    now = time.time() if now is None else now
    idle = now - max(beat.progress_at for beat in beats)
    if idle <= max(beat.timeout_s for beat in beats):
        return ""
    return f"stalled: no step for {idle / 60:.0f} min" if idle >= 120 else f"stalled: no step for {idle:.0f} s"


def _format_best(progress: dict | None, summary: dict | None) -> str:
    source = summary or progress
    if not source or source.get("best") is None:
        return "-"
    return f"{source['monitor']}={source['best']:.4g}"


def backend_of(submission: dict) -> SchedulerBackend | None:
    """The backend a run's `submission.json` names (None: never submitted, or a backend this version lacks)."""
    try:
        return get_backend(str(submission["executor"]))
    except (KeyError, ValueError):
        return None


def _job_states(runs: list[Path], submissions: dict[Path, dict]) -> dict[Path, str]:
    """Each submitted run's job state, one scheduler query per backend."""
    by_backend: dict[str, list[tuple[Path, JobRecord]]] = {}
    for run in runs:
        if backend_of(submissions[run]) is not None:
            record = JobRecord.from_submission(submissions[run], run)
            by_backend.setdefault(submissions[run]["executor"], []).append((run, record))
    states = {}
    for name, jobs in by_backend.items():
        known = get_backend(name).job_states([record for _, record in jobs])
        states.update({run: known.get(record.job_id, "UNKNOWN") for run, record in jobs})
    return states


def active_job(run_dir: Path) -> str | None:
    """The run's submitted job and its state when its scheduler says it is queued, running or requeued
    ("job 123 (PENDING)"), else None."""
    submission = layout.read_json(Path(run_dir) / layout.SUBMISSION) or {}
    backend = backend_of(submission)
    if backend is None or not submission.get("job_id"):
        return None
    record = JobRecord.from_submission(submission, Path(run_dir))
    state = backend.job_states([record]).get(record.job_id, "UNKNOWN")
    return f"job {record.job_id} ({state})" if backend.phase(state) is Phase.ACTIVE else None


def collect_status(path: Path) -> list[RunStatus]:
    """One RunStatus per run under `path` (a run dir or a sweep dir)."""
    runs = layout.find_run_dirs(path)
    submissions = {r: layout.read_json(r / layout.SUBMISSION) or {} for r in runs}
    states = _job_states(runs, submissions)
    result = []
    for run in runs:
        sub = submissions[run]
        progress = layout.read_json(run / layout.PROGRESS)
        summary = layout.read_json(run / layout.SUMMARY)
        state = states.get(run) or ("FINISHED" if summary else "NOT-SUBMITTED")
        epoch = f"{progress['epoch']}/{progress['max_epochs']}" if progress else "-"
        segments = layout.read_segments(run)
        result.append(
            RunStatus(
                name=run.name,
                run_dir=run,
                executor=sub.get("executor"),
                job_id=sub.get("job_id"),
                state=state,
                requeues=max(len(segments) - 1, 0),
                epoch=epoch,
                best=_format_best(progress, summary),
                latest_checkpoint=(progress or {}).get("latest_checkpoint"),
                free=format_free(run),
                why="; ".join(
                    part
                    for part in (
                        stall_note(run, state, segments),
                        explain(run, state, sub, segments),
                        segments_note(segments, bool(summary)),
                    )
                    if part
                ),
            )
        )
    return result


def cancel_runs(path: Path) -> list[str]:
    """Cancel the jobs of every run under `path` (they save first); returns the job ids the schedulers were
    asked to stop."""
    by_backend: dict[str, list[JobRecord]] = {}
    for run in layout.find_run_dirs(path):
        sub = layout.read_json(run / layout.SUBMISSION) or {}
        if backend_of(sub) is not None:
            by_backend.setdefault(sub["executor"], []).append(JobRecord.from_submission(sub, run))
    cancelled = []
    for name, jobs in by_backend.items():
        cancelled += get_backend(name).cancel(jobs)
    return cancelled


def follow(submission_logs: list[Path], is_done, poll_s: float = 1.0) -> None:
    """Print the new lines of each job's log until `is_done()`; for watching a local or queued job by hand."""
    offsets = {path: 0 for path in submission_logs}
    while True:
        finished = is_done()
        for path in submission_logs:
            if not path.exists():
                continue
            with open(path, errors="replace") as handle:
                handle.seek(offsets[path])
                chunk = handle.read()
                offsets[path] = handle.tell()
            if chunk:
                print(chunk, end="", flush=True)
        if finished:
            return
        time.sleep(poll_s)
