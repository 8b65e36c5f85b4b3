"""The callable that submitit runs on every task of a job: train one run under the preemption protocol.

Preemption has one owner (`zoobot_hpc.runtime.preemption.run_preemptible`). submitit installs its requeue handler
(checkpoint + requeue) before this callable runs; the first thing we do is put a flag in its place (and
on SIGTERM), so that the training loop can stop every rank at the same step and write one full-state checkpoint.
Only then does rank 0 hand over to submitit's handler (requeue signal), or every rank waits for the scheduler to end the
job (SIGTERM: preemption or cancel).

`submit` pickles TrainingJob on the login node, which must not import torch: the training code is imported when
the job runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from zoobot_hpc.core.config import RunConfig
from zoobot_hpc.core.stop_signals import PreemptionFlag
from zoobot_hpc.runtime.node import compute_node_environment, configure_job_logging, start_loader_forkserver
from zoobot_hpc.runtime.preemption import run_preemptible

log = logging.getLogger(__name__)


@dataclass
class TrainingJob(submitit.helpers.Checkpointable):
    """Train `config` in `run_dir` (resuming from its checkpoints); `group` is the sweep's name, if any."""

    config: dict[str, Any]
    run_dir: str
    group: str | None = None

    def __call__(self) -> dict[str, float]:
        from zoobot_hpc.backends.registry import job_id
        from zoobot_hpc.core.job_result import record_outcome

        rank = submitit.JobEnvironment().global_rank
        work = lambda: run_preemptible(self._train, submitted=True).metrics  # noqa: E731
        return record_outcome(self.run_dir, work, rank, job_id())

    def _train(self, flag: PreemptionFlag) -> Any:
        start_loader_forkserver(self.config)
        configure_job_logging()
        compute_node_environment()
        from zoobot_hpc.runtime.environment import SubmititEnvironment
        from zoobot_hpc.training.monitoring import StartupLog
        from zoobot_hpc.training.run import run_training

        startup = StartupLog()
        startup.phase("interpreter, imports")
        from zoobot_hpc.core import run_dir as layout
        from zoobot_hpc.core.kept_config import with_kept_values

        config = with_kept_values(self.config, Path(self.run_dir) / layout.CONFIG)
        return run_training(
            RunConfig.model_validate(config),
            Path(self.run_dir),
            flag=flag,
            cluster_environment=SubmititEnvironment(),
            group=self.group,
            interactive=False,
            startup=startup,
            write_config=False,
        )

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """The requeued job is this same job: it resumes from the run dir's newest valid checkpoint."""
        return submitit.helpers.DelayedSubmission(self)
