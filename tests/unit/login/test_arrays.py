"""Sweeps and searches as job arrays within the scheduler's MaxArraySize / MaxJobCount (login/arrays.py)."""

from __future__ import annotations

import pytest

from zoobot_hpc.backends.base import ArrayLimits
from zoobot_hpc.backends.slurm_config import parse_array_limits
from zoobot_hpc.login.arrays import ArrayLimitError, describe_arrays, split_arrays


def most_running_at_once(parts) -> int:
    """The most tasks the parts can run at once: the arrays of one lane never overlap, so each lane contributes
    the largest parallelism of its arrays."""
    lanes: dict[int, int] = {}
    for index, part in enumerate(parts):
        lane = index
        while parts[lane].after is not None:
            lane = parts[lane].after
        lanes[lane] = max(lanes.get(lane, 0), part.parallelism)
    return sum(lanes.values())


@pytest.mark.parametrize(
    ("count", "parallelism", "size"),
    [(10, 2, 4), (5, 2, 2), (4, 1, 2), (2500, 64, 1001), (7, 10, 3), (1001, 5, 1001), (3, 3, 1), (9, 4, None)],
)
def test_every_run_in_one_array_within_the_size_and_the_parallelism_holds_over_all(count, parallelism, size):
    parts = split_arrays(count, parallelism, ArrayLimits(max_array_size=size))
    covered = [index for part in parts for index in range(part.start, part.stop)]
    assert covered == list(range(count))
    assert all(part.size <= (size or count) for part in parts)
    assert max(part.size for part in parts) - min(part.size for part in parts) <= 1
    assert most_running_at_once(parts) == parallelism
    assert all(part.after is None or part.after < index for index, part in enumerate(parts))


def test_a_sweep_within_the_limit_is_one_array_with_the_whole_parallelism():
    [part] = split_arrays(1000, 64, ArrayLimits(max_array_size=1001, max_job_count=10000))
    assert (part.start, part.stop, part.parallelism, part.after) == (0, 1000, 64, None)


def test_more_arrays_than_parallelism_chain_in_lanes():
    parts = split_arrays(10, 2, ArrayLimits(max_array_size=3))
    assert [(p.start, p.stop) for p in parts] == [(0, 2), (2, 5), (5, 7), (7, 10)]
    assert [p.parallelism for p in parts] == [1, 1, 1, 1]
    assert [p.after for p in parts] == [None, None, 0, 1]


def test_more_parallelism_than_arrays_is_shared_out_summing_to_the_limit():
    parts = split_arrays(2500, 64, ArrayLimits(max_array_size=1001))
    assert [p.size for p in parts] == [833, 833, 834]
    assert [p.parallelism for p in parts] == [22, 21, 21]
    assert [p.after for p in parts] == [None, None, None]


def test_switched_off_arrays_and_too_many_job_records_are_refused_in_one_line():
    with pytest.raises(ArrayLimitError, match=r"^4 runs: .*MaxArraySize=0\)$"):
        split_arrays(4, 2, ArrayLimits(max_array_size=0))
    assert len(split_arrays(1, 2, ArrayLimits(max_array_size=0))) == 1
    with pytest.raises(ArrayLimitError, match=r"MaxJobCount=10$") as error:
        split_arrays(100, 8, ArrayLimits(max_array_size=10, max_job_count=10))
    assert "\n" not in str(error.value)


def test_scontrol_show_config_gives_the_limits():
    text = "Configuration data as of 2026-01-01\nMaxArraySize            = 4\nMaxJobCount             = 10000\n"
    assert parse_array_limits(text) == ArrayLimits(max_array_size=4, max_job_count=10000)
    assert parse_array_limits("MaxJobCount = 0\n") == ArrayLimits(max_array_size=None, max_job_count=None)


def test_dry_run_lines_name_each_array_and_what_it_waits_on():
    limits = ArrayLimits(max_array_size=3)
    text = describe_arrays(split_arrays(10, 2, limits), limits)
    assert text.splitlines() == [
        "# 4 job arrays (the scheduler's MaxArraySize=3):",
        "#   array 0: runs 0-1, 1 at a time",
        "#   array 1: runs 2-4, 1 at a time",
        "#   array 2: runs 5-6, 1 at a time, after array 0 has ended",
        "#   array 3: runs 7-9, 1 at a time, after array 1 has ended",
    ]
    assert describe_arrays(split_arrays(5, 8, ArrayLimits()), ArrayLimits()) == (
        "# one job array: tasks 0-4, 8 at a time"
    )
