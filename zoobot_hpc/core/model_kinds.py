"""The model kinds, one vocabulary for the config (`model.kind`), the CLI (`predict --task`), the W&B job type,
checkpoints and inference outputs, and each kind's spec: its label columns, the validation metrics it logs with
the direction each improves in, and the one it monitors by default (best checkpoint, early stopping, summary, the
search's objective). Plain data: the login node imports it without torch.

A new kind is one entry in `KIND_SPECS`, its settings class in `core.config` and its LightningModule in
`model.finetune`; preflight, the search and the summary read the spec instead of branching on the kind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from zoobot_hpc.core.tree_schema import TreeSchema

Mode = Literal["min", "max"]


def _label_column(model: Any) -> list[str]:
    return [model.label_col]


def _tree_columns(model: Any) -> list[str]:
    return TreeSchema(model.question_answer_pairs, model.dependencies).label_cols


@dataclass(frozen=True)
class ModelKindSpec:
    """What the rest of the package needs to know of one model kind."""

    name: str
    metrics: Mapping[str, Mode]  # validation metrics the kind logs -> the direction each improves in
    label_columns: Callable[[Any], list[str]]  # the dataset columns a model of these settings trains on
    monitor: str = "validation/loss"

    def mode(self, metric: str) -> Mode:
        """The direction `metric` improves in; a one-line ValueError for a metric the kind does not log."""
        if metric not in self.metrics:
            raise ValueError(f"{metric!r} is not a metric a {self.name} logs (one of {sorted(self.metrics)})")
        return self.metrics[metric]


KIND_SPECS: dict[str, ModelKindSpec] = {
    "classifier": ModelKindSpec(
        "classifier", {"validation/loss": "min", "validation/accuracy": "max"}, label_columns=_label_column
    ),
    "regressor": ModelKindSpec(
        "regressor",
        {"validation/loss": "min", "validation/rmse": "min", "validation/mae": "min"},
        label_columns=_label_column,
    ),
    "tree": ModelKindSpec("tree", {"validation/loss": "min"}, label_columns=_tree_columns),
}
MODEL_KINDS = tuple(KIND_SPECS)


def kind_spec(kind: str) -> ModelKindSpec:
    """The spec of model kind `kind`."""
    return KIND_SPECS[kind]


def monitored(kind: str, metric: str | None) -> tuple[str, Mode]:
    """The metric a run monitors (`trainer.monitor`, else its kind's default) and the direction it improves in."""
    spec = kind_spec(kind)
    chosen = metric or spec.monitor
    return chosen, spec.mode(chosen)


CHECKPOINT_KIND_KEY = "zoobot_hpc_model_kind"  # a top-level checkpoint entry (hyper-parameters go to __init__)


def stored_kind(checkpoint: Mapping[str, Any]) -> str | None:
    """The kind a checkpoint records; for checkpoints written before it was recorded, the kind their
    hyper-parameter names imply; None when neither says."""
    kind = checkpoint.get(CHECKPOINT_KIND_KEY)
    if isinstance(kind, str) and kind in MODEL_KINDS:
        return kind
    hyper_parameters = checkpoint.get("hyper_parameters") or {}
    if "question_answer_pairs" in hyper_parameters:
        return "tree"
    if "num_classes" in hyper_parameters:
        return "classifier"
    if "loss" in hyper_parameters:
        return "regressor"
    return None
