"""The scheduler-backend contract: what the rest of the package may ask of a scheduler.

A backend is one module under `zoobot_hpc.backends` with a class implementing `SchedulerBackend`, registered in
`zoobot_hpc.backends.registry`. It is the only code that names its scheduler, reads its environment variables or
runs its commands. Nothing here imports torch, Lightning or timm: login-node commands use backends.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import submitit

    from zoobot_hpc.core.config import SubmittedConfig


class SchedulerMissing(ValueError):
    """The scheduler's clients are not installed here: nothing can be submitted to it from this machine."""


class Phase(enum.Enum):
    """Where a job is in its life, whatever the scheduler calls the state."""

    ACTIVE = "active"  # queued, running, or about to run again by itself: it owns its run directory
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"  # failed, timed out, lost its node, ran out of memory
    UNKNOWN = "unknown"  # the scheduler does not say (yet)

    @property
    def ended(self) -> bool:
        return self in (Phase.COMPLETED, Phase.CANCELLED, Phase.FAILED)


@dataclass(frozen=True)
class JobRecord:
    """What `submission.json` (or `search.json`) records about one submitted job."""

    job_id: str
    submitit_folder: Path
    process_start: int | None = None  # a local job's controller start time (clock ticks since boot)
    run_dir: Path | None = None

    @classmethod
    def from_submission(cls, submission: dict[str, Any], run_dir: Path | None = None) -> JobRecord:
        return cls(
            job_id=str(submission.get("job_id", "")),
            submitit_folder=Path(submission.get("submitit_folder", ".")),
            process_start=submission.get("process_start"),
            run_dir=run_dir,
        )


@dataclass(frozen=True)
class JobStart:
    """One start of a job as the scheduler's accounting records it (a requeued job has one per start)."""

    started: float
    state: str


@dataclass(frozen=True)
class Partition:
    """The preemption settings of one partition (queue)."""

    name: str
    preempt_mode: str  # SLURM's PreemptMode words (OFF, REQUEUE, CANCEL, ...); other backends map onto them
    grace_time_s: int
    default: bool = False

    @property
    def preemptible(self) -> bool:
        return self.preempt_mode != "OFF"

    @property
    def cancels(self) -> bool:
        return "CANCEL" in self.preempt_mode.split(",")


@dataclass(frozen=True)
class ArrayLimits:
    """How large the scheduler lets a job array be and how many jobs it holds at once (None: no limit)."""

    max_array_size: int | None = None  # task indices run 0 .. max_array_size - 1; 0: arrays are switched off
    max_job_count: int | None = None  # job records the scheduler holds at once (an array's pending tasks: one)


class SchedulerBackend(Protocol):
    """One scheduler: the login node's side (executors, job states, cancel, partitions) and the compute node's
    side (this job's identity, requeue myself, was this stop the time limit).

    The stop protocol (`zoobot_hpc.runtime.preemption`) needs from a backend: which signals stop a job (it sends
    SIGTERM on preemption or cancel, and the requeue signal before the time limit when asked), whether a SIGTERM
    was the time limit itself (`stop_was_time_limit`), how a job requeues itself without submitit
    (`requeue_self`), and whether the scheduler ends a job that saved after SIGTERM (`ends_stopped_jobs`: the job
    must then stay alive until it is killed, or it would end COMPLETED and not be requeued).
    """

    name: str
    ends_stopped_jobs: bool  # after SIGTERM the scheduler itself requeues or ends the job: wait to be ended

    # -- login node
    def reachable(self) -> bool:
        """The scheduler can take jobs from here (its clients are installed and its controller answers)."""
        ...

    def check_resources(self, config: SubmittedConfig) -> None:
        """Raise `ValueError` (one line naming the key) when the config's resources do not fit this scheduler,
        `SchedulerMissing` when its clients are not installed here."""
        ...

    def make_executor(
        self, config: SubmittedConfig, folder: Path, job_name: str, extra_setup: Sequence[str] = ()
    ) -> submitit.Executor:
        """A submitit executor for the config's resources, writing its files to `folder`."""
        ...

    def job_script(
        self, config: SubmittedConfig, folder: Path, job_name: str, array_size: int, extra_setup: Sequence[str] = ()
    ) -> str | None:
        """The script the scheduler would receive (for --dry-run), None when it takes none."""
        ...

    def array_limits(self) -> ArrayLimits:
        """The scheduler's limits on job arrays, as its configuration says now."""
        ...

    def submit_array(
        self, executor: submitit.Executor, calls: Sequence[Any], parallelism: int, after: Sequence[str] = ()
    ) -> list[submitit.Job[Any]]:
        """Submit `calls` as one job array running at most `parallelism` tasks at once, starting once every task
        of the arrays whose job ids are `after` has ended (any outcome); one job per call."""
        ...

    def array_job_id(self, job_id: str) -> str:
        """The id of the array a job id belongs to (the job's own id where it is no array task)."""
        ...

    def job_states(self, jobs: Sequence[JobRecord]) -> dict[str, str]:
        """Job id -> the scheduler's state name, for the jobs it knows."""
        ...

    def phase(self, state: str) -> Phase:
        """The phase of one of this scheduler's state names."""
        ...

    def cancel(self, jobs: Sequence[JobRecord]) -> list[str]:
        """Ask the scheduler to stop these jobs (they save first); the ids it was asked to stop."""
        ...

    def job_starts(self, job_id: str) -> list[JobStart]:
        """Each start of a job with how it ended, oldest first (empty where the scheduler keeps no record)."""
        ...

    def partition(self, name: str | None) -> Partition | None:
        """The preemption facts of a partition (None: the scheduler has no partitions or does not say)."""
        ...

    def submitted_job_record(self, job_id: str) -> dict[str, Any]:
        """Extra facts `submit` records about a job it just submitted (a local job's process start)."""
        ...

    # -- compute node
    def in_job(self) -> bool:
        """This process is a task of a job of this scheduler."""
        ...

    def job_id(self) -> str | None:
        """This job's id as `submit` recorded it (array job + task where it is an array task); the same in every
        requeue of the job."""
        ...

    def job_key(self) -> str | None:
        """This job's id as a key that names the scheduler's job and no other's (W&B run ids, segment records)."""
        ...

    def node_list(self) -> str | None:
        """The nodes this job runs on, in the scheduler's notation (None: it does not say)."""
        ...

    def restart_count(self) -> int | None:
        """How many times the scheduler restarted this job (None: it does not say)."""
        ...

    def task_rank(self) -> int:
        """This process's task rank in its job step (0 outside a job)."""
        ...

    def stop_was_time_limit(self) -> bool:
        """The SIGTERM this job got was its time limit, and the scheduler still lets it requeue itself."""
        ...

    def requeue_self(self) -> bool:
        """Requeue the job this process runs in (a job the user's own script started, outside submitit)."""
        ...

    def end_stalled_job(self, requeue: bool) -> int | None:
        """End this whole job from one of its tasks after a stall, the tasks that cannot act (stopped, frozen)
        included: requeued, or failed. Returns the exit code for this task, None when it is to wait until the
        scheduler ends it."""
        ...

    def lightning_environment(self) -> tuple[str, dict[str, Any]] | None:
        """Lightning's ClusterEnvironment for a job this scheduler started without submitit, as an import path
        and keyword arguments (None: none)."""
        ...
