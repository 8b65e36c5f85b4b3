"""`zoobot-hpc status` and `cancel`: the scheduler's view of runs joined with what their run dirs say.

Nothing here unpickles: a job's state comes from the scheduler (sacct, squeue), a local job's from its process
and the JSON it writes when it ends (`zoobot_hpc.core.job_result`), never from submitit's result pickles,
which run code when read and sit in a folder the run directory names.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.core.job_result import JOB_RESULT, read_result


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

    def line(self) -> str:
        checkpoint = Path(self.latest_checkpoint).name if self.latest_checkpoint else "-"
        line = (
            f"{self.name:<40} {self.job_id or '-':>12} {self.state:<11} requeues={self.requeues:<2} "
            f"epoch={self.epoch:<7} best={self.best:<22} ckpt={checkpoint}"
        )
        return f"{line}  ({self.why})" if self.why else line


def _job_states(command: list[str]) -> dict[str, str]:
    """`JOBID|STATE` lines of a SLURM client command, as a mapping (nothing when the command is missing)."""
    if shutil.which(command[0]) is None:
        return {}
    out = subprocess.run(command, capture_output=True, text=True, check=False).stdout
    states = {}
    for line in out.splitlines():
        job, _, state = line.partition("|")
        states[job.strip()] = state.split()[0] if state.strip() else "UNKNOWN"
    return states


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """Job id -> state from sacct, through submitit's job watcher (one call for every array), and squeue for
    jobs sacct does not know yet."""
    if not job_ids:
        return {}
    states: dict[str, str] = {}
    if shutil.which("sacct") is not None:
        from submitit.slurm.slurm import SlurmInfoWatcher

        watcher = SlurmInfoWatcher()
        for job in job_ids:
            watcher.register_job(job)
        watcher.update()
        for job in job_ids:
            state = watcher.get_state(job, mode="cache")
            if state != "UNKNOWN":
                states[job] = state.split()[0]  # "CANCELLED by 0" -> "CANCELLED"
    missing = [job for job in job_ids if job not in states]
    if missing:
        states.update(_job_states(["squeue", "-h", "-o", "%i|%T", "-j", ",".join(missing)]))
    return states


def process_start_ticks(pid: int | str) -> int | None:
    """When a live process started (clock ticks since boot, field 22 of /proc/PID/stat); None when there is none
    or it is a zombie."""
    try:
        fields = Path(f"/proc/{int(pid)}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    if fields[0] == "Z":
        return None
    return int(fields[19])


def is_job_process(pid: str, submitit_folder: Path, started: int | None = None) -> bool:
    """Whether PID is still the local job's controller and not a process that reused its PID: it started when
    `submit` recorded (`started`), or, for submissions without that record, its command line names the job's
    submitit folder. Either way it must be a submitit local controller: `cancel` signals it, and a planted
    `submission.json` may name any process of the user."""
    ticks = process_start_ticks(pid)
    if ticks is None:
        return False
    try:
        cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    if LOCAL_CONTROLLER not in cmdline:
        return False
    if started is not None:
        return ticks == started
    return str(submitit_folder).encode() in cmdline


LOCAL_CONTROLLER = b"submitit.local._local"  # in the command line of every submitit local job's controller


def local_state(job_id: str, submitit_folder: Path, started: int | None = None, run_dir: Path | None = None) -> str:
    """State of a submitit local job: its controller process, else the outcome the job wrote in its run dir."""
    if is_job_process(job_id, submitit_folder, started):
        return "RUNNING"
    result = read_result(run_dir, job_id) if run_dir is not None else None
    if result is None:
        return "ENDED"
    return "COMPLETED" if result.get("outcome") == "success" else "FAILED"


ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING"}
ACTIVE_STATES |= {"RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "PREEMPTED"}


def active_job(run_dir: Path) -> str | None:
    """The run's submitted job and its state when the scheduler says it is queued, running or requeued
    ("job 123 (PENDING)"), else None. The one place the login node asks whether a run's job is active."""
    submission = layout.read_json(Path(run_dir) / layout.SUBMISSION) or {}
    job_id = submission.get("job_id")
    if not job_id:
        return None
    if submission.get("executor") == "slurm":
        state = slurm_states([job_id]).get(job_id, "UNKNOWN")
    elif submission.get("executor") == "local":
        folder = Path(submission.get("submitit_folder", "."))
        state = local_state(job_id, folder, submission.get("process_start"), Path(run_dir))
    else:
        return None
    return f"job {job_id} ({state})" if state in ACTIVE_STATES else None


def job_error(run_dir: Path, job_id: str) -> str | None:
    """The last line of the error a job ended with, as it recorded it in its run dir (redacted), if it did."""
    result = read_result(run_dir, job_id)
    if result is None or result.get("outcome") == "success":
        return None
    return result.get("error") or str(result.get("outcome"))


def unread_pickle_note(submitit_folder: Path, job_id: str) -> str:
    """Why status says nothing of a result pickle it could see: it never unpickles."""
    if (Path(submitit_folder) / f"{job_id}_0_result.pkl").exists():
        return f"no {JOB_RESULT} from the job; its submitit result pickle is not read (unpickling runs code)"
    return ""


@dataclass(frozen=True)
class JobStart:
    """One start of a SLURM job as sacct records it (a requeued job has one per start)."""

    started: float
    state: str


def job_starts(job_id: str) -> list[JobStart]:
    """Each start of a SLURM job with how it ended (`NODE_FAIL`, `PREEMPTED`, ...), oldest first; empty without
    sacct or when it does not answer in time."""
    if shutil.which("sacct") is None:
        return []
    command = ["sacct", "--duplicates", "--allocations", "--noheader", "--parsable2", "--format=Start,State"]
    try:
        out = subprocess.run([*command, "-j", job_id], capture_output=True, text=True, timeout=30).stdout
    except subprocess.SubprocessError:
        return []
    starts = []
    for line in out.splitlines():
        started, _, state = line.partition("|")
        try:
            starts.append(JobStart(time.mktime(time.strptime(started, "%Y-%m-%dT%H:%M:%S")), state.split()[0]))
        except (ValueError, IndexError):
            continue
    return starts


def how_segment_ended(segments: list[dict], index: int, cache: dict[str, list[JobStart]]) -> str | None:
    """What ended start `index` of a run (`NODE_FAIL`, ...): sacct's record of the start of its SLURM job that
    began last before the segment did (`cache`: one sacct call per job); None where the scheduler does not say."""
    segment = segments[index]
    job = str(segment.get("job", ""))
    if not re.fullmatch(r"\d+(_\d+)?", job) or "start" not in segment:
        return None
    if job not in cache:
        cache[job] = job_starts(job)
    before = [start for start in cache[job] if start.started <= segment["start"] + 1]
    return before[-1].state if before else None


def redone_note(segments: list[dict]) -> str:
    """How much training was done twice because a start of the job ended without saving where it had got to
    (a lost node, a kill), and what ended it where the scheduler knows: `17 steps redone (steps 40-57, restart 1
    after NODE_FAIL)`."""
    redone = layout.redone_work(segments)
    if not redone:
        return ""
    causes: dict[str, list[JobStart]] = {}
    parts = []
    for work in redone:
        cause = how_segment_ended(segments, work.segment - 1, causes)
        after = f" after {cause}" if cause else ""
        parts.append(f"steps {work.resumed_step}-{work.reached_step}, restart {work.segment}{after}")
    return f"{sum(work.steps for work in redone)} steps redone ({'; '.join(parts)})"


def explain(run: Path, state: str, submission: dict, segments: list[dict]) -> str:
    """Why a run stopped or was restarted, from the scheduler's state, the job's error and the segment records."""
    why = _stop_reason(run, state, submission, segments)
    redone = redone_note(segments)
    return "; ".join(part for part in (why, redone) if part)


def _stop_reason(run: Path, state: str, submission: dict, segments: list[dict]) -> str:
    last_stop = next((s for s in reversed(segments) if s.get("stop")), None)
    stop = f"{last_stop['stop']} at step {last_stop['stop_step']}" if last_stop else None
    resume_hint = f"continue with: zoobot-hpc resume {run}"
    if state == "CANCELLED":
        return f"cancelled; saved after {stop}; {resume_hint}" if stop else f"cancelled; {resume_hint}"
    if state in {"FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "ENDED"}:
        error = job_error(run, str(submission.get("job_id")))
        if error and "timed-out too many times" in error:
            return f"time-limit requeues exhausted (resources.max_time_limit_requeues); {resume_hint}"
        if error is None and state == "ENDED":
            error = unread_pickle_note(Path(submission.get("submitit_folder", ".")), str(submission.get("job_id")))
        return f"{error}; {resume_hint}" if error else resume_hint
    if stop and state != "COMPLETED":
        return f"last stop: {stop}"
    return ""


def _format_best(progress: dict | None, summary: dict | None) -> str:
    source = summary or progress
    if not source or source.get("best") is None:
        return "-"
    return f"{source['monitor']}={source['best']:.4g}"


def collect_status(path: Path) -> list[RunStatus]:
    """One RunStatus per run under `path` (a run dir or a sweep dir)."""
    runs = layout.find_run_dirs(path)
    submissions = {r: layout.read_json(r / layout.SUBMISSION) or {} for r in runs}
    slurm_ids = [s["job_id"] for s in submissions.values() if s.get("executor") == "slurm"]
    states = slurm_states(slurm_ids)
    result = []
    for run in runs:
        sub = submissions[run]
        progress = layout.read_json(run / layout.PROGRESS)
        summary = layout.read_json(run / layout.SUMMARY)
        job_id = sub.get("job_id")
        if sub.get("executor") == "slurm":
            state = states.get(job_id, "UNKNOWN")
        elif sub.get("executor") == "local":
            state = local_state(job_id, Path(sub["submitit_folder"]), sub.get("process_start"), run)
        else:
            state = "FINISHED" if summary else "NOT-SUBMITTED"
        epoch = f"{progress['epoch']}/{progress['max_epochs']}" if progress else "-"
        segments = layout.read_segments(run)
        result.append(
            RunStatus(
                name=run.name,
                run_dir=run,
                executor=sub.get("executor"),
                job_id=job_id,
                state=state,
                requeues=max(len(segments) - 1, 0),
                epoch=epoch,
                best=_format_best(progress, summary),
                latest_checkpoint=(progress or {}).get("latest_checkpoint"),
                why=explain(run, state, sub, segments),
            )
        )
    return result


# What `cancel` sends a local job's submitit controller: SIGTERM, as `scancel` does. The controller forwards it to
# the tasks, which save and stop. SIGINT would make the controller kill the tasks within a second without a save,
# and a controller started from a background shell (`&`, nohup) ignores SIGINT altogether.
LOCAL_CANCEL_SIGNAL = signal.SIGTERM


def cancel_runs(path: Path) -> list[str]:
    """Cancel the jobs of every run under `path`; returns the job ids signalled."""
    cancelled = []
    slurm_ids = []
    for run in layout.find_run_dirs(path):
        sub = layout.read_json(run / layout.SUBMISSION) or {}
        if sub.get("executor") == "slurm":
            slurm_ids.append(sub["job_id"])
        elif sub.get("executor") == "local":
            if not is_job_process(sub["job_id"], Path(sub["submitit_folder"]), sub.get("process_start")):
                continue
            try:
                os.kill(int(sub["job_id"]), LOCAL_CANCEL_SIGNAL)
                cancelled.append(sub["job_id"])
            except ProcessLookupError:
                pass
    if slurm_ids:
        subprocess.run(["scancel", *sorted(set(slurm_ids))], check=True)
        cancelled += slurm_ids
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
