"""`zoobot-hpc shard ... --submit`: plan the build here, then write the shards as a job array and the manifest in
one last step, through the scheduler backend of `resources.executor` (the local executor without a scheduler).

The array's tasks are sized by work (`images_per_task` images each, from whole shards) and stay within the
scheduler's array limits (`zoobot_hpc.login.arrays`); the last step waits for every task to end (a dependency
under a scheduler) and writes the manifest only when every shard is done.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoobot_hpc.backends.job_setup import protect_submission_files
from zoobot_hpc.backends.registry import get_backend, resolve_backend
from zoobot_hpc.core import atomic
from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.core.config import JobConfig
from zoobot_hpc.data.build import PreparedBuild
from zoobot_hpc.data.shard_format import STATE_DIR
from zoobot_hpc.login.arrays import plan_arrays, submit_arrays
from zoobot_hpc.login.build_status import SUBMISSION
from zoobot_hpc.runtime.build_job import BuildShardsJob, FinishBuildJob, pack_tasks

log = logging.getLogger(__name__)
IMAGES_PER_TASK = 100_000  # about 4 CPU-minutes of 424 -> 224 px JPEG decoding (2.6 ms an image on one core)


@dataclass
class BuildSubmission:
    """The submitted build: the array tasks' jobs and the last step's."""

    executor: str
    tasks: list[Any]
    finish: Any
    record: Path


def submit_build(prepared: PreparedBuild, config: JobConfig, images_per_task: int = IMAGES_PER_TASK) -> BuildSubmission:
    """Submit the planned build's shards as array tasks and its last step; returns without waiting."""
    executor_name = resolve_backend(config.resources.executor)
    backend = get_backend(executor_name)
    backend.check_resources(config)
    groups = pack_tasks(prepared.counts, math.ceil(sum(prepared.counts) / max(1, images_per_task)))
    parts, _ = plan_arrays(backend, len(groups), config.resources.array_parallelism)
    folder = atomic.private_directory(prepared.out_dir / STATE_DIR / "submitit")
    executor = backend.make_executor(config, folder, config.name)
    workers = config.resources.cpus_per_task
    calls = [BuildShardsJob([prepared.tasks[index] for index in group], workers) for group in groups]
    jobs, arrays = submit_arrays(backend, executor, calls, parts)
    recorded = [
        {"job_id": job.job_id, "submitit_folder": str(folder.resolve()), **backend.submitted_job_record(job.job_id)}
        for job in jobs
    ]
    finish_call = FinishBuildJob(prepared, executor_name, recorded)
    [finish] = backend.submit_array(executor, [finish_call], 1, [array["job_id"] for array in arrays])
    protect_submission_files(folder)
    record = prepared.out_dir / STATE_DIR / SUBMISSION
    layout.write_json(
        record,
        {
            "executor": executor_name,
            "submitted": time.time(),
            "arrays": arrays,
            "tasks": [
                {**job, "shards": [prepared.tasks[i].shard for i in group]}
                for job, group in zip(recorded, groups, strict=True)
            ],
            "finish": {
                "job_id": finish.job_id,
                "submitit_folder": str(folder.resolve()),
                **backend.submitted_job_record(finish.job_id),
                "stdout": str(finish.paths.stdout),
            },
        },
    )
    log.info("submitted %d build task(s) and the last step %s", len(jobs), finish.job_id)
    return BuildSubmission(executor_name, jobs, finish, record)


def submit_checksums(dataset_dir: Path, config: JobConfig, label_cols: tuple[str, ...], rehash: bool) -> Any:
    """`inspect --checksums --submit`: one job hashing every shard with `resources.cpus_per_task` threads."""
    from zoobot_hpc.data.shard_format import read_manifest
    from zoobot_hpc.data.validate import check_state_dir
    from zoobot_hpc.runtime.inspect_job import ChecksumJob, result_path

    read_manifest(dataset_dir)  # a missing or broken manifest is a one-line error here, not in the job
    backend = get_backend(resolve_backend(config.resources.executor))
    backend.check_resources(config)
    folder = atomic.private_directory(check_state_dir(dataset_dir) / "submitit")
    result_path(dataset_dir).unlink(missing_ok=True)
    executor = backend.make_executor(config, folder, config.name)
    call = ChecksumJob(dataset_dir.resolve(), label_cols, config.resources.cpus_per_task, rehash)
    [job] = backend.submit_array(executor, [call], 1)
    protect_submission_files(folder)
    return job


def submit_demo(out_dir: Path, config: JobConfig, n_galaxies: int, image_size: int, seed: int, shard_size: int) -> Any:
    """`demo-data --submit`: one job writing the demo dataset with `resources.cpus_per_task` processes."""
    from zoobot_hpc.runtime.build_job import DemoDataJob

    backend = get_backend(resolve_backend(config.resources.executor))
    backend.check_resources(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    folder = atomic.private_directory(out_dir / STATE_DIR / "submitit")
    executor = backend.make_executor(config, folder, config.name)
    workers = config.resources.cpus_per_task
    call = DemoDataJob(out_dir.resolve(), n_galaxies, image_size, seed, workers, shard_size)
    [job] = backend.submit_array(executor, [call], 1)
    protect_submission_files(folder)
    return job
