"""Job arrays within the cluster's MaxArraySize: lanes of arrays, one parallelism limit over all of them."""

from __future__ import annotations

import functools
import time
from datetime import datetime

import pytest

from tests.support.jobs import write_test_config
from zoobot_hpc.backends.registry import get_backend
from zoobot_hpc.core.config import load_config
from zoobot_hpc.login.arrays import plan_arrays, submit_arrays

pytestmark = pytest.mark.slurm

TASK_S = 3  # each task's own length: long enough for sacct's whole seconds to show any overlap


def most_at_once(spans: list[tuple[datetime, datetime]]) -> int:
    """The most spans (start, end) that overlap at one moment; a task starting as another ends does not."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


def task_spans(slurm_cluster, array_id: str) -> list[tuple[datetime, datetime]]:
    """(start, end) of each completed task of an array, from accounting."""
    records = slurm_cluster.settled_accounting(array_id)
    parse = datetime.fromisoformat
    return [(parse(r["Start"]), parse(r["End"])) for r in records if r["State"].split()[0] == "COMPLETED"]


@pytest.mark.timeout(180)
def test_arrays_past_max_array_size_run_in_lanes_under_one_parallelism_limit(tmp_path, demo_dataset, slurm_cluster):
    config = load_config(write_test_config(tmp_path, demo_dataset, name="lanes", resources__executor="slurm"))
    backend = get_backend("slurm")
    executor = backend.make_executor(config, tmp_path / "submitit", "lanes")
    with slurm_cluster.configured("MaxArraySize", "2"):
        parts, limits = plan_arrays(backend, 5, 2)
        jobs, arrays = submit_arrays(backend, executor, [functools.partial(time.sleep, TASK_S)] * 5, parts)
    assert limits.max_array_size == 2 and len(jobs) == 5
    ids = [array["job_id"] for array in arrays]
    assert [array["runs"] for array in arrays] == [[0, 1], [1, 3], [3, 5]]
    assert [array["parallelism"] for array in arrays] == [1, 1, 1]
    assert [array["after"] for array in arrays] == [None, None, ids[0]]
    for array_id in ids:
        slurm_cluster.wait_for_state(array_id, ["COMPLETED"], timeout=150)

    spans = {array_id: task_spans(slurm_cluster, array_id) for array_id in ids}
    assert [len(spans[array_id]) for array_id in ids] == [1, 2, 2]
    assert most_at_once([span for array_spans in spans.values() for span in array_spans]) <= 2
    assert min(start for start, _ in spans[ids[2]]) >= max(end for _, end in spans[ids[0]])
    assert most_at_once(spans[ids[1]]) == 1
