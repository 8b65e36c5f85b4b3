"""The first failing rank's error, recorded as it happens: each rank writes the error it raised into the run dir
(`core.job_result.record_rank_error`) before Lightning's teardown closes its connections, so that `status` and the
W&B summary name the rank that failed (an out-of-memory on rank 1) and not the symptom of the others (rank 0's
"Connection closed by peer"). An out-of-memory error becomes one line naming the per-rank batch, the device's
memory and the settings to change.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from zoobot_hpc.backends.registry import job_id
from zoobot_hpc.core.config import RunConfig
from zoobot_hpc.core.job_result import is_communication_error, last_line, rank_errors, record_rank_error, root_cause
from zoobot_hpc.runtime.preemption import PreemptedStop

log = logging.getLogger(__name__)

CAUSE_WAIT_S = 10.0  # how long rank 0, which only lost a peer, waits for the failing rank's record (W&B summary)


def device_memory(device: torch.device) -> str:
    """The memory of the device a rank trains on, in words."""
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        return f"{properties.name} ({device}) with {properties.total_memory / 2**30:.1f} GiB"
    return f"the {device.type.upper()} (host memory: no device memory limit applies)"


def out_of_memory_line(config: RunConfig, device: torch.device) -> str:
    """The one line an out-of-memory ends with: the per-rank batch, the device memory, the fix."""
    batch, accumulate = config.data.batch_size, config.trainer.accumulate_grad_batches
    return (
        f"out of memory at data.batch_size={batch} per rank on {device_memory(device)}; lower data.batch_size "
        f"(and raise trainer.accumulate_grad_batches={accumulate} to keep the global batch of "
        f"{batch * config.world_size * accumulate}) or set trainer.precision=bf16-mixed"
    )


def explained(error: BaseException, config: RunConfig, device: torch.device) -> BaseException:
    """`error`, or for an out-of-memory one of the same type whose message is `out_of_memory_line`."""
    if isinstance(error, torch.OutOfMemoryError):
        return torch.OutOfMemoryError(out_of_memory_line(config, device))
    return error


class RankErrorRecorder(Callback):
    """Records the error this rank raised the moment Lightning hands it to the callbacks; rank 0 puts the root
    cause (waiting briefly for the failing rank's record when its own error is a lost peer) in the W&B summary."""

    def __init__(self, run_dir: Path, config: RunConfig) -> None:
        self.run_dir = Path(run_dir)
        self.config = config
        self.started = time.time()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if isinstance(exception, PreemptedStop | KeyboardInterrupt):
            return  # a stop with its progress saved, not a failure
        line = last_line(explained(exception, self.config, pl_module.device))
        job = job_id()
        record_rank_error(self.run_dir, job, trainer.global_rank, line)
        if trainer.global_rank != 0:
            return
        if is_communication_error(line):
            self._wait_for_cause(job, trainer.world_size)
        cause = root_cause(self.run_dir, job, self.started) or line
        if not cause.startswith(f"{line} on rank 0 "):  # rank 0's own error is only a symptom: log the cause too
            log.error("the job failed on another rank: %s", cause)
        for logger in trainer.loggers:
            update = getattr(logger, "update_summary", None)
            if update is not None:
                update({"error": cause})

    def _wait_for_cause(self, job: str, world_size: int) -> None:
        deadline = time.monotonic() + CAUSE_WAIT_S
        while time.monotonic() < deadline:
            records = rank_errors(self.run_dir, job, self.started)
            if len(records) >= world_size or any(not is_communication_error(r["error"]) for r in records):
                return
            time.sleep(0.2)
