"""The shard build as jobs (any scheduler backend): array tasks that write shards, then one step that writes
the manifest once every shard is done.

Tasks are sized by work: the planned shards are packed into tasks of about equal image counts. A task writes its
shards with `resources.cpus_per_task` processes and is requeue-safe: a shard is trusted by its writer record
once finished, so a requeued task (preempted, or out of time) writes only the shards it had not finished. A stop
signal follows the stop protocol (`zoobot_hpc.runtime.preemption.run_preemptible`): the task stops handing out
shards and ends as the signal asks; the shard writers ignore the signal, and an unfinished shard is written
again by the requeued task.
"""

from __future__ import annotations

import heapq
import logging
import signal
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from zoobot_hpc.backends.base import JobRecord, Phase
from zoobot_hpc.backends.registry import get_backend
from zoobot_hpc.core.stop_signals import PreemptionFlag, StopRecord, requeue_signal
from zoobot_hpc.data.build import PreparedBuild, UnitTask, build_unit, finish_build, recorded_result
from zoobot_hpc.data.shard_format import DatasetError
from zoobot_hpc.runtime.node import configure_job_logging
from zoobot_hpc.runtime.preemption import run_preemptible

log = logging.getLogger(__name__)
POLL_S = 2.0  # the last step's look at the build tasks' states, and a task's look at its stop flag


def pack_tasks(counts: Sequence[int], tasks: int) -> list[list[int]]:
    """The shards (indices into `counts`, their image counts) of each of at most `tasks` tasks, packed so that
    the tasks' image counts are about equal (largest shard first, to the least loaded task); each task's shards in
    plan order, no task empty."""
    tasks = max(1, min(tasks, len(counts)))
    loads = [(0, task) for task in range(tasks)]
    groups: list[list[int]] = [[] for _ in range(tasks)]
    for shard in sorted(range(len(counts)), key=lambda index: (-counts[index], index)):
        load, task = heapq.heappop(loads)
        groups[task].append(shard)
        heapq.heappush(loads, (load + counts[shard], task))
    return [sorted(group) for group in groups if group]


@dataclass
class BuildOutcome:
    preempted: bool
    shards: int


def _ignore_stop_signals() -> None:
    """Shard writers leave the stop signals to their task, which decides when the job stops."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(requeue_signal(), signal.SIG_IGN)


@dataclass
class BuildShardsJob(submitit.helpers.Checkpointable):
    """One array task of a shard build: write (or trust) its shards with `workers` processes."""

    tasks: list[UnitTask]
    workers: int

    def __call__(self) -> int:
        return run_preemptible(self._build, submitted=True).shards

    def _build(self, flag: PreemptionFlag) -> BuildOutcome:
        configure_job_logging()
        workers = max(1, self.workers)
        pool = ProcessPoolExecutor(max_workers=workers, initializer=_ignore_stop_signals)
        waiting, running, done = list(self.tasks), set[Future[Any]](), 0
        try:
            while waiting or running:
                if flag.received:
                    flag.stopped = StopRecord(terminated=flag.terminated, step=done, saved_at=time.time())
                    log.info("stop signal after %d of %d shards; a requeue writes the rest", done, len(self.tasks))
                    return BuildOutcome(preempted=True, shards=done)
                while waiting and len(running) < workers:
                    running.add(pool.submit(build_unit, waiting.pop(0)))
                finished, running = wait(running, timeout=POLL_S, return_when=FIRST_COMPLETED)
                for future in finished:
                    future.result()
                    done += 1
        finally:
            pool.shutdown(wait=not flag.received, cancel_futures=True)
        log.info("wrote %d shard(s)", done)
        return BuildOutcome(preempted=False, shards=done)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """The requeued task is this same task: it trusts the shards it finished."""
        return submitit.helpers.DelayedSubmission(self)


@dataclass
class FinishBuildJob(submitit.helpers.Checkpointable):
    """The build's last step: once every build task has ended, the manifest, when every shard is done."""

    prepared: PreparedBuild
    executor: str
    jobs: list[dict[str, Any]]  # each build task's job_id, submitit_folder, process_start

    def __call__(self) -> str:
        configure_job_logging()
        self._wait_for_tasks()
        results = [recorded_result(task) for task in self.prepared.tasks]
        missing = [task.shard for task, result in zip(self.prepared.tasks, results, strict=True) if result is None]
        out_dir = self.prepared.out_dir
        if missing:
            raise DatasetError(
                f"{out_dir}: {len(missing)} of {len(results)} shards not written (first {missing[0]}): their tasks "
                "ended first; submit the same `zoobot-hpc shard` again (written shards are kept)"
            )
        manifest = finish_build(self.prepared, [result for result in results if result is not None])
        counts = ", ".join(f"{split} {manifest.split_count(split)}" for split in manifest.splits)
        log.info("wrote %s: %s", out_dir, counts)
        return f"wrote {out_dir}: {counts}"

    def _wait_for_tasks(self) -> None:
        """Under a scheduler with dependencies this step starts after the tasks; elsewhere it waits here."""
        backend = get_backend(self.executor)
        records = [
            JobRecord(str(job["job_id"]), Path(job["submitit_folder"]), job.get("process_start")) for job in self.jobs
        ]
        while True:
            states = backend.job_states(records)
            if all(backend.phase(states.get(job.job_id, "UNKNOWN")) is not Phase.ACTIVE for job in records):
                return
            time.sleep(POLL_S)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(self)


@dataclass
class DemoDataJob(submitit.helpers.Checkpointable):
    """`demo-data --submit`: the synthetic dataset written in a job, `workers` shards at a time. A requeued job
    writes it again from the start (it is a demo: minutes, not hours); the manifest is written last."""

    out_dir: Path
    n_galaxies: int
    image_size: int
    seed: int
    workers: int
    shard_size_bytes: int

    def __call__(self) -> str:
        from zoobot_hpc.data.demo import write_demo_dataset

        configure_job_logging()
        manifest = write_demo_dataset(
            self.out_dir, self.n_galaxies, self.image_size, self.seed, self.workers, self.shard_size_bytes
        )
        counts = ", ".join(f"{split} {manifest.split_count(split)}" for split in manifest.splits)
        log.info("wrote %s: %s", self.out_dir, counts)
        return f"wrote {self.out_dir}: {counts}"

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(self)
