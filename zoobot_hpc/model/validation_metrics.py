"""Per-task validation metrics over the whole validation split, across ranks (torchmetrics syncs their states):
per-question means for the tree, per-class precision/recall/F1 from a confusion matrix for the classifier."""

from __future__ import annotations

import torch
from torchmetrics import Metric


class ColumnMeans(Metric):
    """The weighted mean of each column of (B, K) values: sums and weights reduced by sum across ranks.

    A column with no weight in the whole split (a question never asked) comes out NaN."""

    full_state_update = False

    def __init__(self, columns: int) -> None:
        super().__init__()
        self.add_state("total", default=torch.zeros(columns, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("weight", default=torch.zeros(columns, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, values: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        weights = torch.ones_like(values) if weights is None else weights.to(values.dtype)
        self.total += (torch.nan_to_num(values) * weights).sum(dim=0).double()
        self.weight += weights.sum(dim=0).double()

    def compute(self) -> torch.Tensor:
        return self.total / self.weight


def per_class_scores(confusion: torch.Tensor) -> dict[str, torch.Tensor]:
    """Precision, recall and F1 of each class from a confusion matrix (rows true, columns predicted); a class never
    predicted (or never present) scores 0, as torchmetrics' `zero_division=0`."""
    confusion = confusion.double()
    hits = confusion.diagonal()
    precision = torch.nan_to_num(hits / confusion.sum(dim=0))
    recall = torch.nan_to_num(hits / confusion.sum(dim=1))
    f1 = torch.nan_to_num(2 * precision * recall / (precision + recall))
    return {"precision": precision, "recall": recall, "f1": f1}
