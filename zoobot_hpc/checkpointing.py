"""Full-state checkpoints for exact resume: atomic writes, every rank's RNG state, stop-and-save on a signal.

See `/docs/architecture.md` ("Exact resume"). The pieces here are the ones Lightning does not provide:
it saves neither RNG states nor the sampler position, it ends a save in a barrier (so every rank must save
together), and its own atomic save moves a temp file across filesystems, which is not atomic.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from zoobot_hpc.atomic import atomic_path

RESUME_CHECKPOINT = "resume.ckpt"
LAST_CHECKPOINT = "last.ckpt"

log = logging.getLogger("zoobot_hpc")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written with `zoobot_hpc.atomic`: a crash mid-write keeps the old checkpoint."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            torch.save(checkpoint, tmp)


def mirror_checkpoint(source: Path, target: Path) -> None:
    """Make `target` hold what `source` holds now, atomically: a hard link (no copy) renamed into place; a copy
    where the filesystem has no hard links. A later atomic rewrite of `source` leaves `target` as it was."""
    with atomic_path(target) as tmp:
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


def last_state_checkpoint(checkpoint_dir: Path) -> ModelCheckpoint:
    """Lightning's ModelCheckpoint that keeps `last.ckpt` at the state of every validation end (every epoch end
    without validation), whether or not the monitored metric improved.

    `ModelCheckpoint(save_last=True)` writes `last.ckpt` only in a step where it also writes a top-k checkpoint,
    so a run whose metric stopped improving would end with `last.ckpt` at its best epoch. With `monitor=None`
    and `save_top_k=1`, ModelCheckpoint keeps the newest checkpoint, here always under the one name.
    """
    return ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename=Path(LAST_CHECKPOINT).stem,
        monitor=None,
        save_top_k=1,
        enable_version_counter=False,
    )


def stored_step(path: Path) -> int | None:
    """The global step a checkpoint stores, or None when it does not load (a torn or empty file)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None
    return int(checkpoint.get("global_step", -1))


def is_loadable_checkpoint(path: Path) -> bool:
    """True when `path` is a complete checkpoint."""
    return stored_step(path) is not None


def newest_valid_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The loadable checkpoint with the highest global step; at equal steps the full-state `resume.ckpt`, then
    `last.ckpt`, win over a `best.ckpt` written at the same moment."""
    preference = {RESUME_CHECKPOINT: 2, LAST_CHECKPOINT: 1}
    candidates = []
    for path in Path(checkpoint_dir).glob("*.ckpt"):
        step = stored_step(path)
        if step is not None:
            candidates.append((step, preference.get(path.name, 0), path))
    if not candidates:
        return None
    return max(candidates, key=lambda c: (c[0], c[1]))[2]


class PreemptionFlag:
    """A signal handler that only records that the signal arrived, keeping the handler it replaced.

    The training loop polls the flag so that every rank stops at the same step; the replaced handler
    (submitit's checkpoint-and-requeue) is called once the checkpoint is safely written.
    """

    def __init__(self, signum: int = signal.SIGUSR2) -> None:
        self.signum = signum
        self.received = False
        self.previous_handler: Callable[..., Any] | int | None = None

    def install(self) -> PreemptionFlag:
        self.previous_handler = signal.signal(self.signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = True

    def hand_over(self) -> None:
        """Run the handler this flag replaced (submitit's requeue), as if the signal arrived now."""
        if callable(self.previous_handler):
            self.previous_handler(self.signum, None)


def _all_reduce_max(values: list[float], group: Any = None) -> list[float]:
    """Element-wise max over ranks of a few host-side flags (no-op outside distributed runs)."""
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=group)
    return tensor.tolist()


def host_flag_group() -> Any:
    """A gloo process group for host-side flags: under NCCL, agreeing on a flag then needs no GPU sync."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_backend() == "gloo":
        return None
    return dist.new_group(backend="gloo")


class PreemptedStop(Exception):
    """Raised on every rank at the same step once the preemption checkpoint is written.

    An exception, not `trainer.should_stop`: Lightning would still run a validation pass and the epoch-end
    hooks after `should_stop`, spending the grace time before the kill and logging a mid-epoch validation.
    """


class ResumeCheckpointer(Callback):
    """Writes the full-state `resume.ckpt` on preemption and on a step/time cadence, on all ranks together,
    and makes `last.ckpt` the same state (a hard link), so that `last.ckpt` is always the newest saved state.

    After every optimiser step all ranks agree (one all-reduce of host-side flags, over gloo) whether the signal
    arrived on any of them and whether a periodic save is due; after a preemption save every rank raises
    PreemptedStop. Saves happen only on accumulation boundaries, so no partial gradient is ever lost.
    A save that would land on an epoch's last batch is deferred by one step (Lightning 2.6 restores wrong
    epoch counters from such a checkpoint).
    """

    def __init__(
        self,
        checkpoint_dir: Path,
        flag: PreemptionFlag | None = None,
        every_n_steps: int | None = None,
        every_minutes: float | None = None,
    ) -> None:
        self.path = Path(checkpoint_dir) / RESUME_CHECKPOINT
        self.flag = flag
        self.every_n_steps = every_n_steps
        self.every_s = every_minutes * 60 if every_minutes else None
        self._flag_group: Any = None
        self._last_save = time.monotonic()

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._flag_group = host_flag_group()

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        loader = trainer.train_dataloader
        if hasattr(loader, "record_progress"):
            loader.record_progress(batch_idx + 1)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return
        signalled = float(self.flag is not None and self.flag.received)
        time_due = float(self.every_s is not None and time.monotonic() - self._last_save >= self.every_s)
        steps_due = float(bool(self.every_n_steps) and step % self.every_n_steps == 0)
        signalled, time_due = _all_reduce_max([signalled, time_due], self._flag_group)
        if not (signalled or time_due or steps_due):
            return
        trainer.save_checkpoint(self.path)
        if trainer.is_global_zero:
            mirror_checkpoint(self.path, self.path.with_name(LAST_CHECKPOINT))
        self._last_save = time.monotonic()
        if signalled:
            log.info("preemption signal: saved %s at step %d; stopping all ranks", self.path, step)
            raise PreemptedStop(f"preempted at step {step}")


def _capture_rng_state() -> dict[str, torch.Tensor | list[int] | int | Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_meta": [int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    pos, has_gauss, cached = state["numpy_meta"]
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class RNGStateCallback(Callback):
    """Saves every rank's torch / numpy / python RNG state, and restores this rank's on resume.

    Under DDP only rank 0's checkpoint dict is written, so the states are gathered there. They are
    stored as tensors and plain lists because `fit(ckpt_path=...)` loads with `weights_only=True`.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        state = _capture_rng_state()
        if dist.is_available() and dist.is_initialized():
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, state)
        else:
            gathered = [state]
        checkpoint["rng_states"] = gathered

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("rng_states")
        if states and trainer.global_rank < len(states):
            self._pending = states[trainer.global_rank]

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._pending is not None:
            _restore_rng_state(self._pending)
            self._pending = None
