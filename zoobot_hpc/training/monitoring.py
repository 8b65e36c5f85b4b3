"""Callbacks that report a run's progress: log lines for batch jobs, start-up phases, throughput, and the run
dir's progress file."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.runtime.run_lease import renew_lease

log = logging.getLogger(__name__)


def _scalar_metrics(trainer: Trainer, prefix: str) -> dict[str, float]:
    return {
        k: round(float(v), 6)
        for k, v in trainer.callback_metrics.items()
        if k.startswith(prefix) and getattr(v, "numel", lambda: 1)() == 1
    }


def process_start_time() -> float:
    """When this process started (epoch seconds, ~10 ms resolution on Linux; now where /proc is missing)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return time.time()
    return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))


class StartupLog:
    """Log lines naming each start-up phase of a job and how long it took, counted from the process's start:
    what every requeue and every array task pays again before its first training step."""

    def __init__(self) -> None:
        self.started = self._last = process_start_time()

    def phase(self, name: str) -> None:
        now = time.time()
        since_start = now - self.started
        log.info("start-up: %-34s %6.2f s (%.2f s since the process started)", name, now - self._last, since_start)
        self._last = now


class StartupPhases(Callback):
    """Logs the phases inside `Trainer.fit` up to the first training step (rank 0 only)."""

    def __init__(self, startup: StartupLog) -> None:
        self.startup = startup
        self._first_batch_seen = self._first_step_seen = False

    def _phase(self, trainer: Trainer, name: str) -> None:
        if trainer.global_rank == 0:
            self.startup.phase(name)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._phase(trainer, "process group, W&B run, data set up")

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._phase(trainer, "model on the device")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._phase(trainer, "checkpoint restored")

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if not self._first_batch_seen:
            self._first_batch_seen = True
            self._phase(trainer, "loader workers, first batch")

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._first_step_seen:
            self._first_step_seen = True
            self._phase(trainer, "first training step")


class ThroughputMonitor(Callback):
    """Logs training images/s (all ranks together) and epoch wall time; keeps the latest figures for summaries.

    Not Lightning's `ThroughputMonitor`: that one calls `torch.cuda.synchronize()` after every batch (a stall of
    the step pipeline on a GPU), logs to the loggers directly (its figure never reaches `callback_metrics` or
    this run's summary), needs a full window of batches before it reports anything, and warns unless the model
    counts its FLOPs. What is kept here is what those lack: one figure per logging interval, no synchronisation.
    """

    def __init__(self, batch_size: int, requeue_count: int) -> None:
        self.batch_size = batch_size
        self.requeue_count = requeue_count
        self.images_per_sec: float | None = None
        self._epoch_start = 0.0
        self._window_start = 0.0
        self._window_batches = 0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._epoch_start = self._window_start = time.perf_counter()
        self._window_batches = 0

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._window_batches += 1
        if trainer.global_step % trainer.log_every_n_steps:
            return
        elapsed = time.perf_counter() - self._window_start
        if elapsed > 0:
            self.images_per_sec = self._window_batches * self.batch_size * trainer.world_size / elapsed
            pl_module.log("train/images_per_sec", self.images_per_sec, on_step=True, on_epoch=False)
        self._window_start, self._window_batches = time.perf_counter(), 0

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pl_module.log("train/epoch_time_s", time.perf_counter() - self._epoch_start, on_epoch=True)
        pl_module.log("requeue_count", float(self.requeue_count), on_epoch=True)


class LogLineProgress(Callback):
    """Progress for batch-job log files: a plain line at each epoch's first batch, then every `every_s`
    seconds, and one per validation."""

    def __init__(self, every_s: float = 30.0) -> None:
        self.every_s = every_s
        self._last = 0.0

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.monotonic()
        if trainer.global_rank or (now - self._last < self.every_s and batch_idx > 0):
            return
        self._last = now
        loss = trainer.callback_metrics.get("train/loss")
        loss_text = f" loss {float(loss):.4f}" if loss is not None else ""
        log.info(
            "epoch %d/%d batch %d/%s step %d%s",
            trainer.current_epoch + 1,
            trainer.max_epochs,
            batch_idx + 1,
            trainer.num_training_batches,
            trainer.global_step,
            loss_text,
        )

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_rank or trainer.sanity_checking:
            return
        metrics = " ".join(f"{k}={v:.4g}" for k, v in _scalar_metrics(trainer, "validation/").items())
        log.info("epoch %d validation: %s", trainer.current_epoch + 1, metrics)


class SegmentHeartbeat(Callback):
    """Records, in this job start's line of `segments.jsonl` (rank 0), the step it resumed from (`resumed_step`, as
    Lightning restored it) and how far it got (`reached_step`, `reached_at`: at most every `every_s` seconds,
    `trainer.heartbeat_every_s`, and when training ends). A job that dies without saving (a lost node, a kill)
    leaves this as its last word: `status` compares it with the step the next start resumed from to tell how much
    work was redone (at least that much: up to `every_s` more may be lost)."""

    def __init__(self, run_dir: Path, every_s: float = 30.0) -> None:
        self.run_dir = Path(run_dir)
        self.every_s = every_s
        self._last = time.monotonic()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """The step this start resumed from, as Lightning restored it (0 for a fresh run)."""
        if trainer.global_rank == 0:
            layout.update_last_segment(self.run_dir, {"resumed_step": trainer.global_step})

    def _record(self, trainer: Trainer) -> None:
        reached = {"reached_step": trainer.global_step, "reached_at": time.time()}
        segment = layout.update_last_segment(self.run_dir, reached)
        if segment is not None:  # the run dir's lease: renewed by the heartbeat of the job that holds it
            renew_lease(self.run_dir, str(segment.get("job")))
        self._last = time.monotonic()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_rank == 0 and time.monotonic() - self._last >= self.every_s:
            self._record(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_rank == 0:
            self._record(trainer)


class ProgressFile(Callback):
    """Rewrites RUN_DIR/progress.json after each validation (read by `zoobot-hpc status`)."""

    def __init__(self, run_dir: Path, monitor: str, mode: str) -> None:
        self.path = Path(run_dir) / layout.PROGRESS
        self.monitor = monitor
        self.mode = mode
        self.best: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict.get("best")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        current = trainer.callback_metrics.get(self.monitor)
        if current is not None:
            value = float(current)
            better = min if self.mode == "min" else max
            self.best = value if self.best is None else better(self.best, value)
        if trainer.global_rank:
            return
        latest = sorted((self.path.parent / layout.CHECKPOINTS).glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
        layout.write_json(
            self.path,
            {
                "epoch": trainer.current_epoch + 1,
                "max_epochs": trainer.max_epochs,
                "global_step": trainer.global_step,
                "monitor": self.monitor,
                "mode": self.mode,
                "best": self.best,
                "latest_checkpoint": str(latest[-1]) if latest else None,
                "validation": _scalar_metrics(trainer, "validation/"),
                "time": time.time(),
            },
        )
