"""Elastic resume: a checkpoint written on one number of ranks continues on another from the same global position.

The training order and the sampler's position are global (:mod:`zoobot_hpc.data.sampler`), and `submit` keeps the
global batch by adjusting the accumulation (:mod:`zoobot_hpc.core.global_batch`), so optimiser steps, their samples
and the LR schedule are those of the first world size. What is left is Lightning's own count of the batches of the
interrupted epoch, which is per rank: it decides where accumulation boundaries fall and when the epoch ends, so it
is moved to the same global position here, before Lightning restores its loops.
"""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

log = logging.getLogger(__name__)

WORLD_SIZE_KEY = "elastic_world_size"
_BATCH_PROGRESS = "epoch_loop.batch_progress"


class ElasticResume(Callback):
    """Stores the world size with every checkpoint; on a resume at another, moves the interrupted epoch's batch
    counters to the same global position (``done batches x saved world size / new world size``)."""

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[WORLD_SIZE_KEY] = trainer.world_size

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        saved = int(checkpoint.get(WORLD_SIZE_KEY, trainer.world_size))
        if saved != trainer.world_size:
            rescale_batch_progress(checkpoint, saved, trainer.world_size)


def rescale_batch_progress(checkpoint: dict[str, Any], saved_world_size: int, world_size: int) -> None:
    """Shift the fit loop's batch counters (current epoch and total alike, keeping their differences) from
    ``saved_world_size`` ranks' batches to ``world_size`` ranks' batches of the same samples."""
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get(_BATCH_PROGRESS)
    if progress is None:
        return
    done = progress["current"]["ready"]
    moved, partial = divmod(done * saved_world_size, world_size)
    if partial and not progress.get("is_last_batch"):
        raise ValueError(
            f"cannot resume on {world_size} rank(s): {done} batches of each of {saved_world_size} ranks are not a "
            f"whole number of batches of {world_size}"
        )
    shift = moved + bool(partial) - done  # a finished epoch stays finished
    for counters in (progress["current"], progress["total"]):
        for name in ("ready", "started", "processed", "completed"):
            counters[name] += shift
    log.info(
        "resuming on %d rank(s) a run saved on %d: %d batches of the epoch done on each rank (was %d)",
        world_size,
        saved_world_size,
        done + shift,
        done,
    )
