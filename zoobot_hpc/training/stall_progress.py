"""StallProgress: the training and prediction loops' progress for the stall watchdog (`runtime.stall_watchdog`).

The watchdog starts once training (or prediction) starts, after the data set-up, the cache build and the
checkpoint restore, which wait in Lightning's barriers without a timeout, and counts every training, validation
and prediction batch; it stops when the loop ends or raises (a stop signal's `PreemptedStop` included: a
stopped job waits to be ended).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from zoobot_hpc.runtime.stall_watchdog import StallWatchdog


class StallProgress(Callback):
    """Feeds `watchdog` a progress call at every training, validation and prediction batch."""

    def __init__(self, watchdog: StallWatchdog) -> None:
        self.watchdog = watchdog

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.watchdog.start(trainer.global_rank, trainer.world_size)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.watchdog.progress("training step", trainer.global_step, trainer.current_epoch + 1)

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.watchdog.progress("validation batch", batch_idx + 1, trainer.current_epoch + 1)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.watchdog.stop()

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.watchdog.start(trainer.global_rank, trainer.world_size)

    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.watchdog.progress("prediction batch", batch_idx + 1)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.watchdog.stop()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.watchdog.stop()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.watchdog.stop()
