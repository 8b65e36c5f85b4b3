"""A sweep or search as job arrays within the scheduler's limits, one parallelism limit over all of them.

An array may hold at most `MaxArraySize` tasks, so N runs become `ceil(N / size)` arrays of near-equal size. They
run in `lanes = min(parallelism, arrays)` lanes: each lane gets a share of `array_parallelism` (the shares sum to
it) and runs its arrays one after another, each waiting for the previous one of its lane to end (any outcome).
So at most `array_parallelism` runs of the sweep run at once, whichever arrays they belong to.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoobot_hpc.backends.base import ArrayLimits, SchedulerBackend
from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.login.preflight import PreflightError

log = logging.getLogger(__name__)


class ArrayLimitError(PreflightError):
    """The sweep cannot be submitted within the scheduler's array limits."""


@dataclass(frozen=True)
class ArrayPart:
    """One job array of a sweep: runs `start` .. `stop - 1`, `parallelism` at a time, after part `after`."""

    start: int
    stop: int
    parallelism: int
    after: int | None = None

    @property
    def size(self) -> int:
        return self.stop - self.start


def split_arrays(count: int, parallelism: int, limits: ArrayLimits) -> list[ArrayPart]:
    """The arrays `count` runs are submitted as, or ArrayLimitError (one line) where the scheduler cannot take
    them: arrays switched off, or more job records than `MaxJobCount` (an array's pending tasks are one record,
    each running task one)."""
    size = limits.max_array_size
    if size == 0 and count > 1:
        raise ArrayLimitError(f"{count} runs: the scheduler has job arrays switched off (MaxArraySize=0)")
    arrays = math.ceil(count / size) if size else 1
    lanes = min(parallelism, arrays)
    records = arrays + min(parallelism, count)
    if limits.max_job_count and records > limits.max_job_count:
        raise ArrayLimitError(
            f"{count} runs as {arrays} array(s) of at most {size} with array_parallelism={parallelism} need "
            f"{records} job records, more than the scheduler's MaxJobCount={limits.max_job_count}"
        )
    shares = [parallelism // lanes + (lane < parallelism % lanes) for lane in range(lanes)]
    bounds = [count * index // arrays for index in range(arrays + 1)]
    return [
        ArrayPart(bounds[i], bounds[i + 1], shares[i % lanes], i - lanes if i >= lanes else None) for i in range(arrays)
    ]


def describe_arrays(parts: Sequence[ArrayPart], limits: ArrayLimits) -> str:
    """One comment line per array, for --dry-run."""
    if len(parts) == 1:
        return f"# one job array: tasks 0-{parts[0].stop - 1}, {parts[0].parallelism} at a time"
    lines = [f"# {len(parts)} job arrays (the scheduler's MaxArraySize={limits.max_array_size}):"]
    for index, part in enumerate(parts):
        after = f", after array {part.after} has ended" if part.after is not None else ""
        lines.append(f"#   array {index}: runs {part.start}-{part.stop - 1}, {part.parallelism} at a time{after}")
    return "\n".join(lines)


def plan_arrays(backend: SchedulerBackend, count: int, parallelism: int) -> tuple[list[ArrayPart], ArrayLimits]:
    """The arrays `count` runs go in under the scheduler's limits as it reports them now, and those limits."""
    limits = backend.array_limits()
    return split_arrays(count, parallelism, limits), limits


def submit_arrays(
    backend: SchedulerBackend, executor: Any, calls: Sequence[Any], parts: Sequence[ArrayPart]
) -> tuple[list[Any], list[dict[str, Any]]]:
    """Submit the calls as the planned arrays; their jobs (one per call, in order) and the arrays' records for
    the sweep's record (`job_id` of each array, its runs, parallelism and the array it waits on)."""
    jobs: list[Any] = []
    records: list[dict[str, Any]] = []
    for part in parts:
        after = records[part.after]["job_id"] if part.after is not None else None
        waits = [after] if after else []
        submitted = backend.submit_array(executor, calls[part.start : part.stop], part.parallelism, waits)
        array_id = backend.array_job_id(submitted[0].job_id)
        records.append(
            {"job_id": array_id, "runs": [part.start, part.stop], "parallelism": part.parallelism, "after": after}
        )
        log.info("array %s: runs %d-%d, %d at a time", array_id, part.start, part.stop - 1, part.parallelism)
        jobs += submitted
    return jobs, records


def arrays_line(sweep_dir: Path, record_name: str = layout.SWEEP) -> str | None:
    """`status`'s first line for a sweep submitted as several arrays: one sweep, its arrays' job ids."""
    record = layout.read_json(Path(sweep_dir) / record_name) or {}
    arrays = record.get("arrays") or []
    if len(arrays) < 2:
        return None
    name = record.get("sweep") or record.get("study") or Path(sweep_dir).name
    runs = arrays[-1]["runs"][1]
    limit = sum(array["parallelism"] for array in arrays if array.get("after") is None)
    ids = " ".join(str(array["job_id"]) for array in arrays)
    return f"sweep {name}: {runs} runs in {len(arrays)} job arrays ({ids}), {limit} at a time over all of them"
