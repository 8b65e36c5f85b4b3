"""The preemption protocol on a compute node: which signals stop a run, and what a stopped job does next.

SLURM takes a job away with one of two signals, and each asks for a different ending:

- the **requeue signal** (`--signal=USR2@signal_delay_s`, or the site's `SUBMITIT_PREEMPT_SIGNAL`, or a `--signal`
  in `sbatch_extra`): the time limit is near (or the site sends it at preemption, `preempt_send_user_signal`).
  Save, then requeue the job ourselves (submitit's handler, which also counts time-limit requeues).
- **SIGTERM**: preemption (SLURM requeues the job itself under `PreemptMode=REQUEUE`, but only one still running
  when its grace time ends), `scancel` (the job ends CANCELLED), or a drained node. Save, then stay alive until
  SLURM ends the job: a job that exits first ends COMPLETED or FAILED and is not requeued.

Both signals only set a flag (`PreemptionFlag`); the workload polls it where every rank can agree and save
(`ResumeCheckpointer` and the embedding cache's datamodule, through `stop_all_ranks`; the inference part writer)
and then raises `PreemptedStop` on every rank.
`run_preemptible` is the one place that installs the flag, runs the workload and ends a stopped job.
This module imports nothing heavy, so that the flag is in place before torch is imported.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol, TypeVar

log = logging.getLogger("zoobot_hpc")
PREEMPT_SIGNAL_ENV = "SUBMITIT_PREEMPT_SIGNAL"  # submitit's variable for the requeue signal (default USR2)


def parse_signal(value: str) -> signal.Signals:
    """A signal from sbatch's notation: `USR1`, `SIGUSR1`, `10`, with an optional `B:`/`R:` prefix and `@delay`."""
    name = value.split("@", 1)[0].rsplit(":", 1)[-1].strip().upper()
    if name.isdigit():
        return signal.Signals(int(name))
    try:
        return signal.Signals["SIG" + name.removeprefix("SIG")]
    except KeyError:
        raise ValueError(f"unknown signal {value!r}") from None


def requeue_signal() -> signal.Signals:
    """The signal that asks for a save-and-requeue on this node: `SUBMITIT_PREEMPT_SIGNAL`, default USR2."""
    return parse_signal(os.environ.get(PREEMPT_SIGNAL_ENV, "USR2"))


def stop_signals() -> set[signal.Signals]:
    """Every signal SLURM may send to stop a job (side processes start with these blocked)."""
    return {signal.SIGTERM, requeue_signal()}


class PreemptionFlag:
    """Signal handlers that only record which stop signal arrived, and when; the replaced handlers are kept.

    The workload polls the flag so that every rank stops at the same step; submitit's requeue handler (the one
    replaced for the requeue signal) runs once the checkpoint is safely written.
    """

    def __init__(self) -> None:
        self.requeue_signum = requeue_signal()
        self.signals: set[int] = set()
        self.first_at: float | None = None
        self.previous_handlers: dict[int, Any] = {}
        self.stopped: StopRecord | None = None

    def install(self) -> PreemptionFlag:
        for signum in {signal.SIGTERM, self.requeue_signum}:
            self.previous_handlers[signum] = signal.signal(signum, self._handle)
        return self

    def uninstall(self) -> None:
        """Put the replaced handlers back (the workload ended without a stop)."""
        for signum, previous in self.previous_handlers.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self.previous_handlers = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.first_at is None:
            self.first_at = time.time()
        self.signals.add(signum)

    @property
    def received(self) -> bool:
        return bool(self.signals)

    @property
    def terminated(self) -> bool:
        """SIGTERM arrived (preemption, scancel): the job must not requeue itself."""
        return signal.SIGTERM in self.signals

    @property
    def requeue_requested(self) -> bool:
        return self.requeue_signum in self.signals

    def hand_over(self) -> None:
        """Run the handler this flag replaced for the requeue signal (submitit's requeue), as if it arrived now."""
        previous = self.previous_handlers.get(self.requeue_signum)
        if callable(previous):
            previous(self.requeue_signum, None)


@dataclass
class StopRecord:
    """What every rank agreed on when it stopped: the signal that wins (SIGTERM over the requeue signal)."""

    terminated: bool
    step: int
    saved_at: float

    @property
    def signal_name(self) -> str:
        return "SIGTERM" if self.terminated else requeue_signal().name


class PreemptedStop(Exception):
    """Raised on every rank at the same step once the preemption checkpoint (or part file) is written.

    An exception, not `trainer.should_stop`: Lightning would still run a validation pass and the epoch-end
    hooks after `should_stop`, spending the grace time before the kill and logging a mid-epoch validation.
    """


def stop_all_ranks(flag: PreemptionFlag, terminated: float | bool, step: int, what: str) -> NoReturn:
    """Called on every rank once all ranks agreed on a stop (and saved what they must): record the agreed signal on
    the flag (`run_preemptible` ends the job by it), log one line (`what` was done), raise `PreemptedStop`."""
    flag.stopped = StopRecord(terminated=bool(terminated), step=step, saved_at=time.time())
    log.info("preemption signal (%s): %s at step %d; stopping all ranks", flag.stopped.signal_name, what, step)
    raise PreemptedStop(f"preempted at step {step}")


def slurm_task_rank() -> int:
    """This process's task rank in its SLURM step (SLURM_PROCID), 0 outside SLURM."""
    return int(os.environ.get("SLURM_PROCID", "0"))


def in_slurm_job() -> bool:
    """This process is a task of a SLURM job (not submitit's local executor started inside an allocation)."""
    return "SLURM_JOB_ID" in os.environ and os.environ.get("SUBMITIT_EXECUTOR", "slurm") == "slurm"


def wait_to_be_ended() -> None:
    """Stay alive until SLURM kills the job (after a preemption's grace time, or `scancel`'s KillWait)."""
    log.info(
        "progress saved after SIGTERM; waiting for SLURM to end the job (a preempted job is requeued by "
        "SLURM; a cancelled one continues with `zoobot-hpc resume RUN_DIR`)"
    )
    sys.stdout.flush()
    while True:
        time.sleep(60)


def slurm_job_fields(job_id: str) -> dict[str, str]:
    """`scontrol show job -o JOB` as a mapping of its `Key=Value` fields (empty when it cannot be asked)."""
    try:
        shown = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {}
    fields: dict[str, str] = {}
    for key, _, value in (token.partition("=") for token in shown.stdout.split() if "=" in token):
        fields.setdefault(key, value)  # the first: SLURM's own fields come before the user's command and comment
    return fields


def ended_by_time_limit() -> bool:
    """SLURM is ending this job for its time limit and allows it to requeue: the SIGTERM was the limit itself,
    with no requeue signal before it (none asked for, or a save that outlasted `signal_delay_s`). Such a job can
    still be requeued until it is killed (`KillWait`, 30 s by default)."""
    job_id = os.environ.get("SLURM_JOB_ID")
    fields = slurm_job_fields(job_id) if job_id else {}
    return fields.get("Reason") == "TimeLimit" and fields.get("Requeue") == "1"


def requeue_own_job() -> None:
    """Requeue the SLURM job we run in (`zoobot-hpc train` under the user's own sbatch script), from rank 0."""
    job_id = os.environ["SLURM_JOB_ID"]
    if slurm_task_rank() != 0:
        return
    done = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, check=False)
    if done.returncode == 0:
        log.info("requeued SLURM job %s", job_id)
    else:
        log.error("could not requeue SLURM job %s (%s); continue with the same command", job_id, done.stderr.strip())


def end_stopped_job(flag: PreemptionFlag, rank: int, submitted: bool) -> None:
    """After every rank stopped and saved: SIGTERM waits for SLURM (under SLURM), the requeue signal requeues
    (submitit's handler on rank 0 when `submitted`, else `scontrol requeue`), and so does a SIGTERM that was the
    time limit itself (rank 0 asks SLURM; the other ranks wait to be ended). Never returns.

    Under submitit no rank may return: a returned callable would write a "success" result.
    """
    sys.stdout.flush()
    terminated = flag.stopped.terminated if flag.stopped else flag.terminated
    if terminated and in_slurm_job() and rank == 0 and ended_by_time_limit():
        log.info("the SIGTERM was SLURM's time limit, not a preemption or scancel: requeueing the job")
        terminated = False
    if terminated and in_slurm_job():
        wait_to_be_ended()
    if not terminated and submitted:
        if rank == 0:
            log.info("stopped and saved on every rank; handing over to submitit to requeue")
            flag.hand_over()
            raise RuntimeError("submitit did not requeue the preempted job")
        os._exit(0)
    if not terminated and in_slurm_job():
        requeue_own_job()
    else:
        log.info("stopped on a signal with its progress saved; run the same command again to resume")
    sys.stdout.flush()
    sys.stderr.flush()
    if submitted or in_slurm_job():
        os._exit(0)  # exit hooks would talk to side processes that SLURM's signal may have killed (W&B's service)
    sys.exit(0)


class _Outcome(Protocol):
    preempted: bool


Outcome = TypeVar("Outcome", bound=_Outcome)


def run_preemptible(work: Callable[[PreemptionFlag], Outcome], *, submitted: bool) -> Outcome:
    """Run `work(flag)` under the preemption protocol: install the flag first, run, and when the work reports
    that it stopped on a signal (after saving), end the job as the signal asks (`end_stopped_job`).

    `submitted`: this process is a submitit task (submitit's requeue handler is the one the flag replaces).
    """
    flag = PreemptionFlag().install()
    try:
        outcome = work(flag)
    except BaseException:
        flag.uninstall()
        raise
    if outcome.preempted:
        if submitted:
            import submitit

            rank = submitit.JobEnvironment().global_rank
        else:
            rank = slurm_task_rank()
        end_stopped_job(flag, rank, submitted)
    flag.uninstall()
    return outcome
