"""Callbacks the launch tests add to jobs (through `trainer.callbacks`) to observe or break them from inside."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class RankProbe(Callback):
    """Writes, per rank, the sample indices it trained on, its batch counts and a fingerprint of its weights."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.train_indices: list[int] = []
        self.train_batches = 0
        self.val_batches = 0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self.train_indices += [int(i) for i in batch["index"]]
        self.train_batches += 1

    def on_validation_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if not trainer.sanity_checking:
            self.val_batches += 1

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        weights = torch.cat([p.detach().double().flatten() for p in pl_module.parameters()])
        self.out_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "node": os.environ.get("SLURMD_NODENAME", ""),
            "hf_hub_offline": os.environ.get("HF_HUB_OFFLINE"),
            "train_indices": self.train_indices,
            "train_batches": self.train_batches,
            "val_batches": self.val_batches,
            "weights_sum": float(weights.sum()),
            "weights_abs_sum": float(weights.abs().sum()),
        }
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


class CrashOnRank(Callback):
    """Raises on one rank at one training step, as a bug or a bad node would."""

    def __init__(self, rank: int, step: int) -> None:
        self.rank = rank
        self.step = step

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_rank == self.rank and trainer.global_step >= self.step:
            raise RuntimeError(f"rank {self.rank} crashed on purpose at step {trainer.global_step}")


def read_probes(out_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(out_dir).glob("rank*.json"))]


class ArrayTaskProbe(Callback):
    """Breaks or slows chosen SLURM array tasks (a search's trials): raises at a step on `crash_task`, sleeps
    `slow_s` after each training batch on `slow_task`, so a test can signal it mid-epoch."""

    def __init__(
        self, crash_task: int | None = None, crash_step: int = 2, slow_task: int | None = None, slow_s: float = 0.0
    ) -> None:
        self.crash_task = crash_task
        self.crash_step = crash_step
        self.slow_task = slow_task
        self.slow_s = slow_s

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        task = int(os.environ.get("SLURM_ARRAY_TASK_ID", "-1"))
        if task == self.crash_task and trainer.global_step >= self.crash_step:
            raise RuntimeError(f"array task {task} crashed on purpose at step {trainer.global_step}")
        if task == self.slow_task:
            time.sleep(self.slow_s)
