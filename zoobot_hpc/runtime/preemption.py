"""The stop protocol: how a job that got a stop signal saves on every rank and then ends as the signal asks.

A scheduler takes a job away with one of two signals (`zoobot_hpc.core.stop_signals`), and each asks for a
different ending:
- **the requeue signal** (USR2 by default, `signal_delay_s` before the time limit): save, then requeue (submitit's
  handler on rank 0; outside submitit, the backend's `requeue_self`).
- **SIGTERM**: preemption, cancel, or a drained node. Save, then stay alive until the scheduler ends the job
  (a job that exits first ends COMPLETED or FAILED and is not requeued) — unless the SIGTERM was the time limit
  itself, which the backend can tell (`stop_was_time_limit`): then requeue.

Both only set a flag (`PreemptionFlag`); the workload polls it where every rank can agree and save
(`ResumeCheckpointer` and the embedding cache's build, through `stop_all_ranks`; the inference part writer)
and then raises `PreemptedStop` on every rank. `run_preemptible` is the one place that installs the flag, runs the
workload and ends a stopped job; `choose_ending` is the one decision of how it ends.
This module imports nothing heavy, so that the flag is in place before torch is imported.
"""

from __future__ import annotations

import enum
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import NoReturn, Protocol, TypeVar

from zoobot_hpc.backends.base import SchedulerBackend
from zoobot_hpc.backends.registry import running_backend
from zoobot_hpc.core.stop_signals import PreemptionFlag, StopRecord

log = logging.getLogger(__name__)


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


class Ending(enum.Enum):
    """How a job whose ranks all stopped and saved ends."""

    WAIT_TO_BE_ENDED = "wait until the scheduler requeues or ends the job"
    HAND_OVER = "hand over to submitit's requeue handler"
    REQUEUE_SELF = "ask the scheduler to requeue the job"
    LEAVE = "exit; rank 0 requeues the job"
    EXIT = "exit; the same command resumes"


def choose_ending(terminated: bool, submitted: bool, rank: int, backend: SchedulerBackend | None) -> Ending:
    """The one decision of how a stopped job ends, from the signal that won (`terminated`: SIGTERM), whether
    submitit started this process (`submitted`), its rank, and the scheduler it runs under (None: none).

    A SIGTERM under a scheduler that ends stopped jobs waits to be ended, unless rank 0 learns from the scheduler
    that it was the time limit itself; then it is a requeue like the requeue signal's. A requeue is submitit's
    (rank 0 hands over, the others exit) or, outside submitit, the backend's (rank 0 asks).
    """
    under_scheduler = backend is not None and backend.ends_stopped_jobs
    if terminated and under_scheduler and rank == 0 and backend.stop_was_time_limit():
        log.info("the SIGTERM was the job's time limit, not a preemption or cancel: requeueing the job")
        terminated = False
    if terminated and under_scheduler:
        return Ending.WAIT_TO_BE_ENDED
    if not terminated and submitted:
        return Ending.HAND_OVER if rank == 0 else Ending.LEAVE
    if not terminated and backend is not None:
        return Ending.REQUEUE_SELF if rank == 0 else Ending.LEAVE
    return Ending.EXIT


def wait_to_be_ended() -> NoReturn:
    """Stay alive until the scheduler kills the job (after a preemption's grace time, or a cancel's kill wait)."""
    log.info(
        "progress saved after SIGTERM; waiting for the scheduler to end the job (a preempted job is requeued by "
        "the scheduler; a cancelled one continues with `zoobot-hpc resume RUN_DIR`)"
    )
    sys.stdout.flush()
    while True:
        time.sleep(60)


def end_stopped_job(flag: PreemptionFlag, rank: int, submitted: bool) -> NoReturn:
    """After every rank stopped and saved: end the job as `choose_ending` decides. Never returns.

    Under submitit no rank may return: a returned callable would write a "success" result.
    """
    sys.stdout.flush()
    terminated = flag.stopped.terminated if flag.stopped else flag.terminated
    backend = running_backend()
    ending = choose_ending(terminated, submitted, rank, backend)
    if ending is Ending.WAIT_TO_BE_ENDED:
        wait_to_be_ended()
    if ending is Ending.HAND_OVER:
        log.info("stopped and saved on every rank; handing over to submitit to requeue")
        flag.hand_over()
        raise RuntimeError("submitit did not requeue the preempted job")
    if ending is Ending.REQUEUE_SELF and backend is not None:
        backend.requeue_self()
    elif ending is Ending.EXIT:
        log.info("stopped on a signal with its progress saved; run the same command again to resume")
    sys.stdout.flush()
    sys.stderr.flush()
    if submitted or backend is not None:
        os._exit(0)  # exit hooks would talk to side processes that the stop signal may have killed (W&B's service)
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
            from zoobot_hpc.backends.registry import task_rank

            rank = task_rank()
        end_stopped_job(flag, rank, submitted)
    flag.uninstall()
    return outcome
