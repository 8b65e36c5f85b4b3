"""Callbacks the inference tests add to jobs (through `trainer.callbacks`) to observe them from inside."""

from __future__ import annotations

import time
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer


class SlowPredictBatches(Callback):
    """Sleeps after every prediction batch, so that a test can signal a job between two part files."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        time.sleep(self.seconds)
