"""Full-state checkpoints for exact resume: atomic writes, every rank's RNG state, stop-and-save on a signal.

See `/docs/architecture.md` ("Exact resume"). The pieces here are the ones Lightning does not provide:
it saves neither RNG states nor the sampler position, it ends a save in a barrier (so every rank must save
together), and its own atomic save moves a temp file across filesystems, which is not atomic.
"""

from __future__ import annotations

import logging
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector

from zoobot_hpc.core.atomic import atomic_path, writer_suffix
from zoobot_hpc.core.disk_space import out_of_space
from zoobot_hpc.core.stop_signals import PreemptionFlag
from zoobot_hpc.runtime.preemption import stop_all_ranks
from zoobot_hpc.runtime.rank_agreement import agree_on_stop, all_reduce_max, host_flag_group
from zoobot_hpc.training.checkpoint_digest import (
    copy_digest,
    digest_of,
    digest_problem,
    read_digest,
    remove_digest,
    write_digest,
)
from zoobot_hpc.training.nonfinite import (
    FINITE_CHECK_EVERY_N_STEPS,
    FiniteWatch,
    NonFiniteTraining,
    nonfinite_message,
    suspect_ids,
)

# Exact resume leans on Lightning internals: `_SignalConnector`, `fit_loop.epoch_loop.batch_progress`,
# `fit_loop.restarting` + `epoch_loop.update_lr_schedulers`, and the layout of `checkpoint["loops"]`.
# pyproject.toml pins Lightning to these minors; tests/unit/training/test_lightning_version.py fails on any other,
# naming what to re-check.
TESTED_LIGHTNING_MINORS = ("2.6",)
LIGHTNING_INTERNALS_USED = (
    "lightning.pytorch.trainer.connectors.signal_connector._SignalConnector (keep_own_signal_handlers)",
    "trainer.fit_loop.epoch_loop.batch_progress.is_last_batch (ResumeCheckpointer.on_train_batch_end)",
    "trainer.fit_loop.restarting + epoch_loop.update_lr_schedulers (ResumeCheckpointer.on_train_epoch_end)",
    'checkpoint["loops"]["fit_loop"]["epoch_loop.val_loop.batch_progress"] (mark_validation_not_run)',
)
RESUME_CHECKPOINT = "resume.ckpt"
LAST_CHECKPOINT = "last.ckpt"
VALIDATION_RERUN_KEY = "zoobot_hpc_validation_rerun"  # set in a checkpoint taken mid-validation
DATASET_KEY = "zoobot_hpc_dataset"  # the checksum of the manifest of the dataset a checkpoint was trained on

log = logging.getLogger(__name__)


class NoValidCheckpoint(RuntimeError):
    """A run directory has checkpoints, and none of them is what was saved."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written with `zoobot_hpc.core.atomic` under a temp name unique to the writer (a crash
    mid-write, or a second writer, keeps a whole file under the final name), and each one's digest is recorded
    beside it (`checkpoint_digest`), with the checksum of the dataset it was trained on (`dataset`).

    A resume loads on every rank the file rank 0 chose and verified (`ResumeChoice`): it is broadcast here, where
    the process group exists, so all ranks resume from one file, chosen once."""

    def __init__(self, dataset: str | None = None) -> None:
        super().__init__()
        self.dataset = dataset

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if self.dataset is not None:
            checkpoint[DATASET_KEY] = self.dataset
        try:
            with atomic_path(target, writer_suffix()) as tmp:
                torch.save(checkpoint, tmp)
                digest = digest_of(tmp, checkpoint.get("global_step", -1), self.dataset)
        except Exception as error:
            full = out_of_space(error, target, "the checkpoint", tensor_bytes(checkpoint))
            if full is None:
                raise
            log.error("%s", full)
            raise full from None
        write_digest(target, digest)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        settings: dict[str, Any] = {"weights_only": weights_only}
        if map_location is not None:
            settings["map_location"] = map_location
        return super().load_checkpoint(agreed_checkpoint(Path(path)), **settings)

    def remove_checkpoint(self, path: Any) -> None:
        super().remove_checkpoint(path)
        remove_digest(Path(path))


def agreed_checkpoint(mine: Path) -> Path:
    """Rank 0's checkpoint, on every rank (a collective under DDP; `mine` elsewhere)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return mine
    chosen = [str(mine)]
    dist.broadcast_object_list(chosen, src=0)
    return Path(chosen[0])


class ResumeVerdict(Callback):
    """Rank 0's refusal to resume (no valid checkpoint, a checkpoint of another dataset), raised on every rank at
    once. Only rank 0 verifies the checkpoints; without the verdict the other ranks would start `fit` and wait for
    rank 0 in a collective until the process group's timeout. Broadcast at `setup`, before any checkpoint is read."""

    def __init__(self, refusal: Exception | None) -> None:
        self.refusal = refusal

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        verdict = [self.refusal]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.broadcast_object_list(verdict, src=0)
        if verdict[0] is not None:
            raise verdict[0]


def mirror_checkpoint(source: Path, target: Path) -> None:
    """Make `target` hold what `source` holds now, atomically, with its digest: a hard link (no copy) renamed into
    place; a copy where the filesystem has no hard links. A later atomic rewrite of `source` leaves `target` as
    it was."""
    with atomic_path(target, writer_suffix()) as tmp:
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
    copy_digest(source, target)


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


def checkpoint_problem(path: Path) -> str | None:
    """Why `path` must not be resumed from, or None: its digest does not match; without a digest (a checkpoint
    from before digests were recorded), a full load fails."""
    if read_digest(path) is not None:
        return digest_problem(path)
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        return f"no digest recorded beside it, and it does not load ({str(error).splitlines()[0][:200]})"
    return None


def _candidates(checkpoint_dir: Path) -> list[Path]:
    """The checkpoints of a directory, newest first by the step their digest (else the file) records; at equal
    steps the full-state `resume.ckpt`, then `last.ckpt`, before a `best.ckpt` written at the same moment."""
    preference = {RESUME_CHECKPOINT: 2, LAST_CHECKPOINT: 1}
    ranked = []
    for path in Path(checkpoint_dir).glob("*.ckpt"):
        digest = read_digest(path)
        step = digest.global_step if digest is not None else stored_step(path)
        if step is not None:
            ranked.append((step, preference.get(path.name, 0), path))
    return [path for _, _, path in sorted(ranked, key=lambda c: (c[0], c[1]), reverse=True)]


def newest_valid_checkpoint(checkpoint_dir: Path, verify: bool = True) -> Path | None:
    """The newest checkpoint that is what was saved (`checkpoint_problem`); each newer one that is not is passed
    over with one line. `verify=False`: the newest by its record, unchecked (a rank that takes rank 0's choice)."""
    for path in _candidates(checkpoint_dir):
        if not verify:
            return path
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        log.warning("checkpoint %s is damaged (%s): falling back to the next valid checkpoint", path, problem)
    return None


class _OwnSignalHandlers(_SignalConnector):
    """Lightning's signal connector, minus its handlers: on SIGTERM Lightning's own handler runs a collective inside
    the signal handler and then ends `fit` with SIGTERMException at the next step, before any save."""

    def register_signal_handlers(self) -> None:
        self.received_sigterm = False


def keep_own_signal_handlers(trainer: Trainer) -> None:
    """Keep the PreemptionFlag's handlers in place while `trainer` runs (Lightning installs its own at each run)."""
    trainer._signal_connector = _OwnSignalHandlers(trainer)


class ResumeCheckpointer(Callback):
    """Writes the full-state `resume.ckpt` on preemption and on a step/time cadence, on all ranks together,
    and makes `last.ckpt` the same state (a hard link), so that `last.ckpt` is always the newest saved state.

    After every optimiser step all ranks agree (one all-reduce of host-side flags, over gloo) whether a stop
    signal arrived on any of them (and which: SIGTERM wins over the requeue signal) and whether a periodic save is
    due; after a preemption save every rank records the agreed stop on its flag and raises PreemptedStop. Saves
    happen only on accumulation boundaries, so no partial gradient is ever lost. A save that would land on an
    epoch's last batch is deferred by one step (Lightning 2.6 restores wrong epoch counters from such a checkpoint).
    Whether each step's loss and gradients were finite is recorded on the device and checked (one host sync and
    one all-reduce) every FINITE_CHECK_EVERY_N_STEPS steps, before every save and at each epoch's end: on a
    non-finite step every rank raises NonFiniteTraining before anything from it on is saved.
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
        self._rerun_validation = False
        self._resumed_before_validation = False
        self._finite_watch = FiniteWatch()

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Open the flag group, and move this callback after every other one, wherever the list put it: its
        `on_train_batch_end` is the step's one stop-and-save decision, so every other callback has seen (counted,
        logged) the step at which a stop happens, and no hook of another callback runs after a stop."""
        self._flag_group = host_flag_group()
        trainer.callbacks = [callback for callback in trainer.callbacks if callback is not self] + [self]

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        loader = trainer.train_dataloader
        if hasattr(loader, "record_progress"):
            loader.record_progress(batch_idx + 1)

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        self._finite_watch.record_gradients(pl_module)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        self._finite_watch.record_step(step, outputs, batch)
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self._check_finite(trainer, step)
            loader = trainer.train_dataloader
            if hasattr(loader, "record_epoch_done"):
                loader.record_epoch_done()
            return
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return
        time_due = float(self.every_s is not None and time.monotonic() - self._last_save >= self.every_s)
        steps_due = bool(self.every_n_steps) and step % self.every_n_steps == 0
        requeue, terminated, time_due = self._agree([time_due])
        saving = requeue or terminated or time_due or steps_due
        if saving or step % FINITE_CHECK_EVERY_N_STEPS == 0:
            self._check_finite(trainer, step)
        if not saving:
            return
        trainer.save_checkpoint(self.path)
        if trainer.is_global_zero:
            mirror_checkpoint(self.path, self.path.with_name(LAST_CHECKPOINT))
        self._last_save = time.monotonic()
        if requeue or terminated:
            self._stop(terminated, step, "saved")

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """A stop signal during a validation pass (or the sanity check) is acted on at the next batch. The training
        position is saved with the pass marked as not yet run, so the resumed job runs the whole pass again: no
        checkpoint ever holds a half-done validation's metrics."""
        requeue, terminated, _ = self._agree([0.0])
        if not (requeue or terminated):
            return
        if trainer.sanity_checking:
            self._stop(terminated, trainer.global_step, "nothing new to save (sanity check)")
        self._rerun_validation = True
        try:
            trainer.save_checkpoint(self.path)
        finally:
            self._rerun_validation = False
        if trainer.is_global_zero:
            mirror_checkpoint(self.path, self.path.with_name(LAST_CHECKPOINT))
        self._stop(terminated, trainer.global_step, "saved the training position, validation to rerun")

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._rerun_validation:
            mark_validation_not_run(checkpoint)

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        self._resumed_before_validation = bool(checkpoint.get(VALIDATION_RERUN_KEY))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """After the rerun validation pass of a job stopped mid-validation: Lightning 2.6 skips the epoch's scheduler
        step when the fit loop is still restarting at the epoch's end, so take it here (the saved scheduler state
        is from before the step)."""
        if self._resumed_before_validation and trainer.fit_loop.restarting:
            trainer.fit_loop.epoch_loop.update_lr_schedulers("epoch", update_plateau_schedulers=False)
        self._resumed_before_validation = False

    def _agree(self, extra: list[float]) -> list[float]:
        """[requeue signal, SIGTERM, *extra], each the max over all ranks."""
        return agree_on_stop(self.flag, extra, self._flag_group)

    def _check_finite(self, trainer: Trainer, step: int) -> None:
        """Every rank together (one all-reduce): if any step since the last check was not finite, name the ranks
        whose own loss was not, log the suspects of each, and raise NonFiniteTraining on every rank."""
        bad_step, loss_bad, labels = self._finite_watch.first_bad()
        world = trainer.world_size
        mine = [0.0] * (world + 2)
        mine[trainer.global_rank] = float(loss_bad)
        mine[world] = float(bad_step is not None)
        mine[world + 1] = -float(bad_step) if bad_step is not None else -math.inf
        agreed = all_reduce_max(mine, self._flag_group)
        if not agreed[world]:
            return
        if loss_bad:
            log.error("rank %d: non-finite loss at step %d; %s", trainer.global_rank, bad_step, suspect_ids(labels))
        ranks = [rank for rank in range(world) if agreed[rank]]
        newest = newest_valid_checkpoint(self.path.parent, verify=False)
        first = int(-agreed[world + 1])
        message = nonfinite_message(first, step, trainer.current_epoch, ranks, newest.name if newest else None)
        if trainer.is_global_zero:
            log.error(message)
        raise NonFiniteTraining(message)

    def _stop(self, terminated: float, step: int, what: str) -> NoReturn:
        assert self.flag is not None
        stop_all_ranks(self.flag, terminated, step, f"{what} ({self.path.name})")


def tensor_bytes(state: Any) -> int:
    """The bytes of every tensor in a (nested) checkpoint: about what its file needs."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(tensor_bytes(value) for value in state.values())
    if isinstance(state, (list, tuple)):
        return sum(tensor_bytes(value) for value in state)
    return 0


def mark_validation_not_run(checkpoint: dict[str, Any]) -> None:
    """Rewrite the validation loop's progress in a checkpoint taken mid-pass so that Lightning restarts the pass
    from its first batch ("restarted mid-evaluation" with no batch of this pass done)."""
    progress = checkpoint["loops"]["fit_loop"]["epoch_loop.val_loop.batch_progress"]
    done_before = progress["total"]["completed"] - progress["current"]["completed"]
    progress["current"].update(ready=1, started=1, processed=0, completed=0)
    progress["total"].update(
        ready=done_before + 1, started=done_before + 1, processed=done_before, completed=done_before
    )
    progress["is_last_batch"] = False
    checkpoint[VALIDATION_RERUN_KEY] = True


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
