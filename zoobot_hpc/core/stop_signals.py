"""The stop signals of a job and the flag their handlers set (torch-free: installed before anything heavy).

A scheduler takes a job away with one of two signals, and each asks for a different ending:
- **the requeue signal** (`SUBMITIT_PREEMPT_SIGNAL`, USR2 by default, sent `signal_delay_s` before the time
  limit): save, then requeue (submitit's handler on rank 0, or the backend's `requeue_self`).
- **SIGTERM**: preemption, cancel, or a drained node. Save, then stay alive until the scheduler ends the job.

Both only set a flag (`PreemptionFlag`); `zoobot_hpc.runtime.preemption` owns what happens next.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Any

PREEMPT_SIGNAL_ENV = "SUBMITIT_PREEMPT_SIGNAL"  # submitit's variable for the requeue signal (default USR2)


def parse_signal(value: str) -> signal.Signals:
    """A signal in the notation of `--signal`: `USR1`, `SIGUSR1`, `10`, with an optional `B:`/`R:` prefix and
    `@delay`."""
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
    """Every signal a scheduler may send to stop a job (side processes start with these blocked)."""
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
        """SIGTERM arrived (preemption, cancel): the job must not requeue itself."""
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
