"""A W&B Table of validation galaxies after each validation pass (every `tracking.galaxy_table_every` epochs): a
fixed sample (the same split positions in every pass, on every world size and across requeues) and the
worst-predicted galaxies of the pass, each with its thumbnail, position in the split, truth, prediction and loss.

Bounded: a thumbnail is at most THUMBNAIL_PX square; each rank keeps only its sample rows and its running worst
few, and rank 0 gathers them once per pass (`tracking.galaxy_table: 0` turns the table off)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer

from zoobot_hpc.training.wandb_figures import wandb_logger_of

log = logging.getLogger(__name__)

THUMBNAIL_PX = 64
COLUMNS = ["kind", "index", "id", "thumbnail", "truth", "prediction", "loss"]


@dataclass
class GalaxyRow:
    """One galaxy of the table (CPU data only)."""

    index: int
    galaxy_id: str  # the catalogue id (the shards' `id` column); the position where a batch carries none
    thumbnail: torch.Tensor | None  # uint8 (H, W, C)
    truth: str
    prediction: str
    loss: float


def sample_positions(split_size: int, count: int) -> set[int]:
    """`count` positions spread evenly through a split of `split_size` galaxies: the fixed sample."""
    if split_size <= 0 or count <= 0:
        return set()
    return {int(p) for p in torch.linspace(0, split_size - 1, min(count, split_size)).round().long()}


def thumbnails(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, C) thumbnails, at most THUMBNAIL_PX on a side, of float (B, C, H, W) images in [0, 1]."""
    images = images.float()
    if max(images.shape[-2:]) > THUMBNAIL_PX:
        images = F.interpolate(images, size=(THUMBNAIL_PX, THUMBNAIL_PX), mode="bilinear", antialias=True)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()


def describe(model: LightningModule, outputs: torch.Tensor, batch: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Truth and prediction of each galaxy of a batch, as short text."""
    kind = model.kind
    if kind == "classifier":
        names = model.class_labels
        probabilities = outputs.softmax(dim=1)
        confidence, predicted = probabilities.max(dim=1)
        truth = [names[int(t)] for t in batch[model.hparams.label_col]]
        return truth, [f"{names[int(p)]} ({float(c):.2f})" for p, c in zip(predicted, confidence, strict=True)]
    if kind == "regressor":
        truth = [f"{float(t):.3f}" for t in batch[model.hparams.label_col]]
        return truth, [f"{float(p):.3f}" for p in outputs]
    fractions = model.predictions(outputs)["vote_fractions"]
    counts = model.vote_counts(batch)
    truth, prediction = [], []
    for row in range(outputs.shape[0]):
        observed, predicted = [], []
        for question, answers in zip(model.schema.questions, model.schema.question_slices, strict=True):
            total = float(counts[row, answers].sum())
            if total > 0:
                observed.append(f"{question}: " + " ".join(f"{float(v) / total:.2f}" for v in counts[row, answers]))
            predicted.append(f"{question}: " + " ".join(f"{float(v):.2f}" for v in fractions[row, answers]))
        truth.append("; ".join(observed))
        prediction.append("; ".join(predicted))
    return truth, prediction


class GalaxyTable(Callback):
    """Logs `validation/galaxies`, the table of a fixed sample and the worst-predicted galaxies of a pass."""

    def __init__(self, sample: int, worst: int, every: int = 1) -> None:
        self.sample, self.worst, self.every = sample, worst, every
        self._positions: set[int] = set()
        self._rows: dict[int, GalaxyRow] = {}
        self._worst: list[GalaxyRow] = []
        self._active = False
        self._failed = False

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._rows, self._worst, self._failed = {}, [], False
        self._active = (  # the same on every rank (each has the logger): all join the gather
            not trainer.sanity_checking
            and trainer.current_epoch % self.every == 0
            and wandb_logger_of(trainer) is not None
        )
        if self._active and not self._positions:
            self._positions = sample_positions(len(trainer.val_dataloaders.dataset), self.sample)

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, *args: Any
    ) -> None:
        head_outputs = getattr(pl_module, "last_validation_outputs", None)
        if not self._active or head_outputs is None or self._failed:
            return
        try:
            self._collect(pl_module, head_outputs, batch)
        except Exception as error:  # the table is a view: its failure must not stop training (ranks still gather)
            self._failed = True
            log.warning("galaxy table off for this pass (%s: %s)", type(error).__name__, error)

    def _collect(self, pl_module: LightningModule, head_outputs: torch.Tensor, batch: dict[str, Any]) -> None:
        with torch.no_grad():
            losses = pl_module.per_galaxy_loss(head_outputs, batch).float()
        positions = [int(i) for i in batch["index"]]
        ids = [str(i) for i in batch.get("id", positions)]
        keep = [row for row, position in enumerate(positions) if position in self._positions]
        if self.worst:
            keep += losses.topk(min(self.worst, len(positions))).indices.tolist()
        keep = sorted(set(keep))
        if not keep:
            return
        selected = torch.tensor(keep, device=losses.device)
        images = thumbnails(batch["image"][selected]) if "image" in batch else None
        rows_batch = {key: value[selected] for key, value in batch.items() if isinstance(value, torch.Tensor)}
        truth, prediction = describe(pl_module, head_outputs[selected], rows_batch)
        for slot, row in enumerate(keep):
            galaxy = GalaxyRow(
                positions[row],
                ids[row],
                images[slot] if images is not None else None,
                truth[slot],
                prediction[slot],
                float(losses[row]),
            )
            if galaxy.index in self._positions:
                self._rows[galaxy.index] = galaxy
            self._worst.append(galaxy)
        self._worst = _worst_of(self._worst, self.worst)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._active:
            return
        rows, worst = list(self._rows.values()), self._worst
        if dist.is_available() and dist.is_initialized() and trainer.world_size > 1:
            gathered: list[Any] = [None] * trainer.world_size if trainer.global_rank == 0 else None
            dist.gather_object((rows, worst), gathered, dst=0)
            if trainer.global_rank:
                return
            rows = list({row.index: row for part in gathered for row in part[0]}.values())
            worst = _worst_of([row for part in gathered for row in part[1]], self.worst)
        logger = wandb_logger_of(trainer)
        if trainer.global_rank or logger is None:
            return
        step = trainer.fit_loop.epoch_loop._batches_that_stepped
        logger.log_row(lambda: {"validation/galaxies": galaxy_table(rows, worst)}, step)


def _worst_of(rows: list[GalaxyRow], count: int) -> list[GalaxyRow]:
    unique = {row.index: row for row in rows}.values()
    return sorted(unique, key=lambda row: -row.loss)[:count]


def galaxy_table(sample: list[GalaxyRow], worst: list[GalaxyRow]) -> Any:
    """The W&B Table: the sample in split order, then the worst-predicted (highest loss first)."""
    import wandb

    table = wandb.Table(columns=COLUMNS)
    for kind, rows in (("sample", sorted(sample, key=lambda row: row.index)), ("worst", worst)):
        for row in rows:
            image = wandb.Image(row.thumbnail.numpy()) if row.thumbnail is not None else None
            table.add_data(kind, row.index, row.galaxy_id, image, row.truth, row.prediction, row.loss)
    return table
