"""W&B figures of each validation pass (rank 0, through the segment's guarded logger): the classifier's confusion
matrix, the regressor's predicted-vs-true plot, and the best monitored value so far with its epoch in the summary."""

from __future__ import annotations

import logging
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from zoobot_hpc.training.segment_logger import SegmentWandbLogger

log = logging.getLogger(__name__)

MAX_SCATTER_POINTS = 2000


def confusion_chart(confusion: torch.Tensor, class_names: list[str]) -> Any:
    """W&B's own confusion-matrix chart (`wandb.plot.confusion_matrix`'s table and spec) of a computed matrix."""
    import wandb

    rows = [
        [class_names[true], class_names[predicted], int(confusion[true, predicted])]
        for true in range(len(class_names))
        for predicted in range(len(class_names))
    ]
    table = wandb.Table(columns=["Actual", "Predicted", "nPredictions"], data=rows)
    fields = {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"}
    return wandb.plot_table("wandb/confusion_matrix/v1", table, fields, {"title": "validation confusion matrix"})


def scatter_chart(predicted: torch.Tensor, true: torch.Tensor) -> Any:
    """Predicted against true values, at most MAX_SCATTER_POINTS of them (evenly spaced through the split)."""
    import wandb

    keep = torch.linspace(0, len(true) - 1, min(len(true), MAX_SCATTER_POINTS)).long()
    rows = [[float(t), float(p)] for t, p in zip(true[keep], predicted[keep], strict=True)]
    table = wandb.Table(columns=["true", "predicted"], data=rows)
    return wandb.plot.scatter(table, "true", "predicted", title="validation: predicted vs true")


def wandb_logger_of(trainer: Trainer) -> SegmentWandbLogger | None:
    return next((logger for logger in trainer.loggers if isinstance(logger, SegmentWandbLogger)), None)


class ValidationFigures(Callback):
    """After each validation pass: the task's W&B charts, and `best/<monitor>` with `best/epoch` in the summary."""

    def __init__(self, monitor: str, mode: str) -> None:
        self.monitor = monitor
        self.mode = mode
        self.best: float | None = None
        self.best_epoch: int | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.best_epoch = state_dict.get("best"), state_dict.get("best_epoch")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.global_rank:
            return
        logger = wandb_logger_of(trainer)
        if logger is None:
            return
        step = trainer.fit_loop.epoch_loop._batches_that_stepped
        figures = getattr(pl_module, "validation_figures", {})

        def charts() -> dict[str, Any]:
            made: dict[str, Any] = {}
            if "confusion_matrix" in figures:
                made["validation/confusion_matrix"] = confusion_chart(
                    figures["confusion_matrix"], pl_module.class_labels
                )
            if "predicted" in figures:
                made["validation/predicted_vs_true"] = scatter_chart(figures["predicted"], figures["true"])
            return made

        if figures:
            logger.log_row(charts, step)
        current = trainer.callback_metrics.get(self.monitor)
        if current is not None:
            value = float(current)
            if self.best is None or (value < self.best if self.mode == "min" else value > self.best):
                self.best, self.best_epoch = value, trainer.current_epoch + 1
            logger.update_summary({f"best/{self.monitor}": self.best, "best/epoch": self.best_epoch})
