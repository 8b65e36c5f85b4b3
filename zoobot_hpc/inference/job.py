"""The submitit job of an inference run (any scheduler backend): preempted, it requeues and skips finished parts.

Preemption follows the training job (`zoobot_hpc.runtime.preemption.run_preemptible`): a signal only sets a flag; every
rank stops at its next batch (its finished part files are safe on disk), then the job ends as the signal asks
(requeue signal: submitit requeues it; SIGTERM: it waits for the scheduler to requeue or cancel it).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from zoobot_hpc.backends.job_setup import protect_submission_files
from zoobot_hpc.backends.registry import get_backend, resolve_backend, task_rank
from zoobot_hpc.core import atomic
from zoobot_hpc.core.config import RunConfig
from zoobot_hpc.core.redaction import redact_config
from zoobot_hpc.core.stop_signals import PreemptionFlag
from zoobot_hpc.inference.request import (
    InferencePlan,
    InferenceRequest,
    build_plan,
    inference_config,
    prepare_inference,
    wait_for_plan,
)
from zoobot_hpc.runtime.node import compute_node_environment, configure_job_logging
from zoobot_hpc.runtime.preemption import run_preemptible

log = logging.getLogger(__name__)
SUBMITIT_DIR = "submitit"


@dataclass
class InferenceJob(submitit.helpers.Checkpointable):
    """Run a prepared inference request on every task of a job; returns the output path (rank 0) or None."""

    request: InferenceRequest
    config: dict[str, Any]

    def __call__(self) -> str | None:
        outcome = run_preemptible(self._infer, submitted=True)
        return str(outcome.out) if outcome.out is not None else None

    def _infer(self, flag: PreemptionFlag) -> Any:
        configure_job_logging()
        compute_node_environment()
        from zoobot_hpc.inference.loop import run_inference
        from zoobot_hpc.runtime.environment import SubmititEnvironment

        return run_inference(
            self.request, RunConfig.model_validate(self.config), flag=flag, cluster_environment=SubmititEnvironment()
        )

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """The requeued job is this same job: it skips the part files already written."""
        return submitit.helpers.DelayedSubmission(self)


def submit_inference(
    request: InferenceRequest, config: RunConfig, trained: RunConfig, executor: str
) -> tuple[submitit.Job, InferencePlan]:
    """Check and plan the request here, then submit it with the backend named `executor`; does not wait."""
    plan = prepare_inference(request, config, trained)
    job_name = f"{request.mode}-{config.name}"
    folder = atomic.private_directory(request.work_dir / SUBMITIT_DIR)
    submitter = get_backend(executor).make_executor(config, folder, job_name)
    job = submitter.submit(InferenceJob(request, redact_config(config).model_dump(mode="json")))
    protect_submission_files(folder)
    log.info("submitted %s job %s writing %s", request.mode, job.job_id, Path(request.out))
    return job, plan


def submit_request(
    request: InferenceRequest, config_path: Path | None = None, overrides: tuple[str, ...] = ()
) -> tuple[submitit.Job, InferencePlan]:
    """`zoobot-hpc predict/embed`: the run's config with overrides, submitted to its scheduler backend."""
    config, trained = inference_config(request, config_path, overrides)
    return submit_inference(request, config, trained, resolve_backend(config.resources.executor))


def run_request_here(
    request: InferenceRequest, config_path: Path | None = None, overrides: tuple[str, ...] = ()
) -> Path | None:
    """`zoobot-hpc predict/embed --here`: run in this process or allocation (srun); requeues itself when signalled."""
    from zoobot_hpc.inference.loop import run_inference

    config, trained = inference_config(request, config_path, overrides)

    def infer(flag: PreemptionFlag) -> Any:
        configure_job_logging()
        if task_rank() == 0:
            prepare_inference(request, config, trained)
        else:
            wait_for_plan(request, build_plan(request, config, trained))
        return run_inference(request, config, flag=flag, interactive=sys.stderr.isatty())

    return run_preemptible(infer, submitted=False).out
