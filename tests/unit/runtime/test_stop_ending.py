"""The one decision of how a stopped job ends (`choose_ending`), for every signal, starter, rank and scheduler.

The real endings are exercised end to end by the local-executor tests here and the loopback-cluster tests in
tests/cluster/; this table pins the decision itself, including the cases only a real cluster reaches.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from zoobot_hpc.backends.local import LocalBackend
from zoobot_hpc.backends.slurm import SlurmBackend
from zoobot_hpc.runtime.preemption import Ending, choose_ending


@dataclass
class SlurmAnswering(SlurmBackend):
    """The SLURM backend with the controller's answer to "was this SIGTERM the time limit?" fixed."""

    time_limit: bool = False
    asked: int = 0

    def stop_was_time_limit(self) -> bool:
        self.asked += 1
        return self.time_limit


@pytest.mark.parametrize(
    ("terminated", "submitted", "rank", "time_limit", "expected"),
    [
        (False, True, 0, False, Ending.HAND_OVER),  # requeue signal under submitit: rank 0 hands over
        (False, True, 1, False, Ending.LEAVE),
        (True, True, 0, False, Ending.WAIT_TO_BE_ENDED),  # preemption / scancel: SLURM requeues or ends it
        (True, True, 1, False, Ending.WAIT_TO_BE_ENDED),
        (True, True, 0, True, Ending.HAND_OVER),  # the time limit's own SIGTERM: requeue
        (True, True, 1, True, Ending.WAIT_TO_BE_ENDED),  # only rank 0 asks; the others wait to be ended
        (False, False, 0, False, Ending.REQUEUE_SELF),  # the user's own sbatch script: scontrol requeue
        (False, False, 1, False, Ending.LEAVE),
        (True, False, 0, True, Ending.REQUEUE_SELF),
        (True, False, 0, False, Ending.WAIT_TO_BE_ENDED),
    ],
)
def test_under_slurm(terminated: bool, submitted: bool, rank: int, time_limit: bool, expected: Ending) -> None:
    backend = SlurmAnswering(time_limit=time_limit)
    assert choose_ending(terminated, submitted, rank, backend) is expected
    assert backend.asked == (1 if terminated and rank == 0 else 0), "only rank 0 of a SIGTERM asks the scheduler"


@pytest.mark.parametrize(
    ("terminated", "submitted", "rank", "expected"),
    [
        (False, True, 0, Ending.HAND_OVER),  # submitit's local executor requeues like SLURM's
        (False, True, 1, Ending.LEAVE),
        (True, True, 0, Ending.EXIT),  # a local job ends once it saved: nothing would end it
        (True, True, 1, Ending.EXIT),
    ],
)
def test_under_the_local_executor(terminated: bool, submitted: bool, rank: int, expected: Ending) -> None:
    assert choose_ending(terminated, submitted, rank, LocalBackend()) is expected


@pytest.mark.parametrize("terminated", [False, True])
def test_outside_any_scheduler_the_same_command_resumes(terminated: bool) -> None:
    assert choose_ending(terminated, False, 0, None) is Ending.EXIT
