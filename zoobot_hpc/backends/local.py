"""The local backend: submitit's local executor on this machine; a job is its controller process."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoobot_hpc.backends.base import ArrayLimits, JobRecord, JobStart, Partition, Phase
from zoobot_hpc.backends.job_setup import job_setup
from zoobot_hpc.core import atomic
from zoobot_hpc.core.job_result import read_result

if TYPE_CHECKING:
    import submitit

    from zoobot_hpc.core.config import SubmittedConfig

LOCAL_SETUP = "local_submission.sh"
LOCAL_CONTROLLER = b"submitit.local._local"  # in the command line of every submitit local job's controller
# What `cancel` sends a local job's submitit controller: SIGTERM, as a cluster's cancel does. The controller
# forwards it to the tasks, which save and stop. SIGINT would make the controller kill the tasks within a second
# without a save, and a controller started from a background shell (`&`, nohup) ignores SIGINT altogether.
CANCEL_SIGNAL = signal.SIGTERM
LOCAL_REQUEUE_RETURN_CODE = 144  # submitit.local.local's: a task exiting with it makes the controller restart them
PHASES = {"RUNNING": Phase.ACTIVE, "COMPLETED": Phase.COMPLETED, "FAILED": Phase.FAILED, "ENDED": Phase.FAILED}


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


def process_parents() -> dict[int, int]:
    """pid -> parent pid of every process (from /proc)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    return parents


def descendants(pid: int, parents: dict[int, int]) -> list[int]:
    """Every process below `pid` (its loader workers' forkserver and the workers)."""
    below, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        below += children
        frontier = children
    return below


def sibling_tasks(parents: dict[int, int]) -> list[int]:
    """The other tasks of this local job: the controller's (our parent's) children with this job's id."""
    controller, job = os.getppid(), os.environ.get("SUBMITIT_LOCAL_JOB_ID")
    siblings = []
    for pid, parent in parents.items():
        if parent != controller or pid == os.getpid() or not job:
            continue
        with contextlib.suppress(OSError):
            if f"SUBMITIT_LOCAL_JOB_ID={job}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                siblings.append(pid)
    return siblings


def visible_gpu_count() -> int:
    """The NVIDIA GPUs this process may use, without importing torch: the driver's devices
    (/proc/driver/nvidia/gpus), narrowed by CUDA_VISIBLE_DEVICES where it is set."""
    gpus = Path("/proc/driver/nvidia/gpus")
    count = len(list(gpus.iterdir())) if gpus.is_dir() else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return count
    return min(count, len([device for device in visible.split(",") if device.strip() and device.strip() != "-1"]))


def local_setup(folder: Path, lines: list[str]) -> list[str]:
    """The local job's set-up as one line sourcing an owner-only script in the submitit folder (the local job's
    counterpart of a cluster's job script): submitit's local executor runs set-up lines as `sh -c "..."`, whose
    command line every user of the machine can read (`ps`), secrets included."""
    if not lines:
        return []
    script = atomic.private_directory(folder) / LOCAL_SETUP
    atomic.write_text(script, "\n".join(lines) + "\n", mode=atomic.OWNER_ONLY)
    return [f". {shlex.quote(str(script.resolve()))}"]


class LocalBackend:
    """submitit's local executor: the same signal-before-timeout, checkpoint and requeue semantics, one node."""

    name = "local"
    ends_stopped_jobs = False  # a stopped local job ends by itself

    def reachable(self) -> bool:
        return True

    def check_resources(self, config: SubmittedConfig) -> None:
        res = config.resources
        if res.nodes > 1:
            raise ValueError(f"resources.nodes={res.nodes}: the local executor runs on one node only")
        if res.gpus_per_node and res.gpus_per_node > visible_gpu_count():
            raise ValueError(
                f"resources.gpus_per_node={res.gpus_per_node}: this machine has {visible_gpu_count()} "
                "GPU(s) for the local executor"
            )

    def make_executor(
        self, config: SubmittedConfig, folder: Path, job_name: str, extra_setup: Sequence[str] = ()
    ) -> submitit.LocalExecutor:
        import submitit

        res = config.resources
        executor = submitit.LocalExecutor(folder=folder, max_num_timeout=res.max_time_limit_requeues)
        executor.update_parameters(
            timeout_min=res.time_min,
            tasks_per_node=res.tasks_per_node,
            gpus_per_node=res.gpus_per_node,
            signal_delay_s=min(res.signal_delay_s, 30 * res.time_min),
            setup=local_setup(folder, job_setup(config, tuple(extra_setup))),
        )
        return executor

    def job_script(
        self, config: SubmittedConfig, folder: Path, job_name: str, array_size: int, extra_setup: Sequence[str] = ()
    ) -> str | None:
        return None

    def array_limits(self) -> ArrayLimits:
        return ArrayLimits()

    def submit_array(
        self, executor: submitit.Executor, calls: Sequence[Any], parallelism: int, after: Sequence[str] = ()
    ) -> list[submitit.Job[Any]]:
        """Every call at once, each its own controller process: the local executor has no arrays to limit and
        cannot hold a job back (`after`), so a job that must follow others waits for them itself."""
        if len(calls) == 1:
            return [executor.submit(calls[0])]
        with executor.batch():
            return [executor.submit(call) for call in calls]

    def array_job_id(self, job_id: str) -> str:
        return job_id

    def job_state(self, job: JobRecord) -> str:
        """Its controller process, else the outcome the job wrote in its run dir."""
        if is_job_process(job.job_id, job.submitit_folder, job.process_start):
            return "RUNNING"
        result = read_result(job.run_dir, job.job_id) if job.run_dir is not None else None
        if result is None:
            return "ENDED"
        return "COMPLETED" if result.get("outcome") == "success" else "FAILED"

    def job_states(self, jobs: Sequence[JobRecord]) -> dict[str, str]:
        return {job.job_id: self.job_state(job) for job in jobs}

    def phase(self, state: str) -> Phase:
        return PHASES.get(state, Phase.UNKNOWN)

    def cancel(self, jobs: Sequence[JobRecord]) -> list[str]:
        """SIGTERM to each job's controller that is still that job's (never to a process that reused its PID)."""
        cancelled = []
        for job in jobs:
            if not is_job_process(job.job_id, job.submitit_folder, job.process_start):
                continue
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(job.job_id), CANCEL_SIGNAL)
                cancelled.append(job.job_id)
        return cancelled

    def job_starts(self, job_id: str) -> list[JobStart]:
        return []

    def partition(self, name: str | None) -> Partition | None:
        return None

    def submitted_job_record(self, job_id: str) -> dict[str, Any]:
        return {"process_start": process_start_ticks(job_id)}

    def in_job(self) -> bool:
        return os.environ.get("SUBMITIT_EXECUTOR") == "local"

    def job_id(self) -> str | None:
        """The local job's controller pid (submitit's local job id)."""
        return os.environ.get("SUBMITIT_LOCAL_JOB_ID") or None

    def job_key(self) -> str | None:
        job = self.job_id()
        return f"local{job}" if job else None

    def node_list(self) -> str | None:
        return socket.gethostname()

    def restart_count(self) -> int | None:
        return None

    def task_rank(self) -> int:
        return int(os.environ.get("SUBMITIT_LOCAL_GLOBALID", "0"))

    def stop_was_time_limit(self) -> bool:
        return False

    def requeue_self(self) -> bool:
        return False

    def end_stalled_job(self, requeue: bool) -> int | None:
        """SIGKILL this job's other tasks (a stopped task would keep the controller waiting until the time limit)
        and every process below them and below this one (loader workers under a forkserver outlive a killed
        task: their parent, the forkserver, lives on); the exit code then asks submitit's controller to start the
        tasks again, or ends the job."""
        parents = process_parents()
        tasks = sibling_tasks(parents)
        for pid in [*tasks, *(p for task in [*tasks, os.getpid()] for p in descendants(task, parents))]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return LOCAL_REQUEUE_RETURN_CODE if requeue else 1

    def lightning_environment(self) -> tuple[str, dict[str, Any]] | None:
        return None
