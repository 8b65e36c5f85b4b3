"""Callbacks the launch tests add to jobs (through `trainer.callbacks`) to observe or break them from inside."""

from __future__ import annotations

import hashlib
import json
import os
import signal
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

    def error(self, step: int) -> Exception:
        return RuntimeError(f"rank {self.rank} crashed on purpose at step {step}")

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_rank == self.rank and trainer.global_step >= self.step:
            raise self.error(trainer.global_step)


class OutOfMemoryOnRank(CrashOnRank):
    """Raises torch's out-of-memory error on one rank at one training step, as a too large batch would."""

    def error(self, step: int) -> Exception:
        return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (made by the test)")


def weights_digest(pl_module: LightningModule) -> str:
    """A bit-exact fingerprint of the model's parameters and buffers."""
    digest = hashlib.sha256()
    for name, tensor in sorted(pl_module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class StepDigests(Callback):
    """Rank 0 appends `{"step", "digest"}` after every optimiser step (redone steps again), and at the end of training
    writes the final weights to `final.pt`: exact resume means every step's digest equals an uninterrupted run's.
    `step_sleep_s` slows the steps after `sleep_from_step` down: in every start of the job, only in its first start
    (`first_start_only`), or while the file `sleep_while_exists` exists (a test removes it to let the run finish)."""

    def __init__(
        self,
        out_dir: str,
        step_sleep_s: float = 0.0,
        first_start_only: bool = False,
        sleep_from_step: int = 0,
        sleep_while_exists: str | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        restarted = int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0
        self.step_sleep_s = 0.0 if first_start_only and restarted else step_sleep_s
        self.sleep_from_step = sleep_from_step
        self.sleep_while_exists = Path(sleep_while_exists) if sleep_while_exists else None

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        slowed = self.sleep_while_exists is None or self.sleep_while_exists.exists()
        if self.step_sleep_s and slowed and trainer.global_step >= self.sleep_from_step:
            time.sleep(self.step_sleep_s)
        if trainer.global_rank != 0:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        record = {"step": trainer.global_step, "digest": weights_digest(pl_module)}
        with open(self.out_dir / "steps.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_rank == 0:
            torch.save({k: v.detach().cpu() for k, v in pl_module.state_dict().items()}, self.out_dir / "final.pt")


def step_digests(out_dir: Path) -> dict[int, set[str]]:
    """Step -> the digests rank 0 saw at that step (one, when every redone step ended the same)."""
    digests: dict[int, set[str]] = {}
    path = Path(out_dir) / "steps.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        record = json.loads(line)
        digests.setdefault(record["step"], set()).add(record["digest"])
    return digests


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


class SignalDuringValidation(Callback):
    """Sends `signum` to this process at one validation batch of one epoch (once per run directory: `marker`)."""

    def __init__(self, epoch: int, batch: int, marker: str, signum: int = 15) -> None:
        self.epoch = epoch
        self.batch = batch
        self.marker = Path(marker)
        self.signum = signum

    def on_validation_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if trainer.sanity_checking or self.marker.exists():
            return
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            self.marker.touch()
            os.kill(os.getpid(), self.signum)


class FillDiskAtStep(Callback):
    """At one training step, fills the filesystem holding `filler` (a small tmpfs the test mounted) up to
    `leave_bytes`, as another job or a quota would; once per `marker` (a file elsewhere)."""

    def __init__(self, step: int, filler: str, marker: str, leave_bytes: int = 200_000) -> None:
        self.step = step
        self.filler = Path(filler)
        self.marker = Path(marker)
        self.leave_bytes = leave_bytes

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step != self.step or self.marker.exists():
            return
        self.marker.touch()
        with open(self.filler, "wb") as handle:
            try:
                while True:
                    handle.write(b"\0" * 65536)
                    handle.flush()
            except OSError:
                pass
        size = self.filler.stat().st_size
        os.truncate(self.filler, max(0, size - self.leave_bytes))


class EpochIndices(Callback):
    """Every rank appends `{"epoch", "world_size", "indices"}` for each training batch it starts, to a file of its
    own process (`out_dir/rank{R}-{pid}.jsonl`), so that the starts of an interrupted run add up."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        record = {"epoch": trainer.current_epoch, "world_size": trainer.world_size, "indices": batch["index"].tolist()}
        with open(self.out_dir / f"rank{trainer.global_rank}-{os.getpid()}.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")


def epoch_indices(out_dir: Path) -> dict[int, list[int]]:
    """Epoch -> every index trained in it, over all ranks and starts (what `EpochIndices` wrote)."""
    epochs: dict[int, list[int]] = {}
    for path in Path(out_dir).glob("rank*.jsonl"):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            epochs.setdefault(record["epoch"], []).extend(record["indices"])
    return epochs


class StopRankAtStep(Callback):
    """Stops one rank with SIGSTOP once it finished training step `step`, mid-epoch, as a stuck GPU or a frozen
    read would (once per run directory: `marker`, written first with the pid and the time)."""

    def __init__(self, rank: int, step: int, marker: str) -> None:
        self.rank = rank
        self.step = step
        self.marker = Path(marker)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_rank != self.rank or trainer.global_step != self.step or self.marker.exists():
            return
        self.marker.write_text(json.dumps({"pid": os.getpid(), "step": self.step, "time": time.time()}))
        os.kill(os.getpid(), signal.SIGSTOP)
