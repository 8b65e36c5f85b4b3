"""A callback that damages a dataset under a running job, as re-sharding into the same folder or a quota cut does."""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer


class TruncateTrainShardsAt(Callback):
    """After optimiser step `step`, cut every train shard of `dataset_dir` to half its size."""

    def __init__(self, dataset_dir: str, step: int) -> None:
        self.dataset_dir = Path(dataset_dir)
        self.step = step

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            for shard in sorted(self.dataset_dir.glob("train-*.h5")):
                os.truncate(shard, shard.stat().st_size // 2)
