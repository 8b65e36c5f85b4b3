"""Callbacks the inference tests add to jobs (through `trainer.callbacks`) to observe them from inside."""

from __future__ import annotations

import time
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer


class SlowPredictBatches(Callback):
    """Sleeps after every prediction batch (of one rank only, with `rank`), so that a test can signal a job between
    two part files."""

    def __init__(self, seconds: float, rank: int | None = None) -> None:
        self.seconds = seconds
        self.rank = rank

    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.rank is None or trainer.global_rank == self.rank:
            time.sleep(self.seconds)
