"""The model kinds, one vocabulary for the config (`model.kind`), the CLI (`predict --task`), the W&B job type,
checkpoints and inference outputs. Plain data: the login node imports it without torch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MODEL_KINDS = ("classifier", "regressor", "tree")
CHECKPOINT_KIND_KEY = "zoobot_hpc_model_kind"  # a top-level checkpoint entry (hyper-parameters go to __init__)


def stored_kind(checkpoint: Mapping[str, Any]) -> str | None:
    """The kind a checkpoint records; for checkpoints written before it was recorded, the kind their
    hyper-parameter names imply; None when neither says."""
    kind = checkpoint.get(CHECKPOINT_KIND_KEY)
    if kind in MODEL_KINDS:
        return kind
    hyper_parameters = checkpoint.get("hyper_parameters") or {}
    if "question_answer_pairs" in hyper_parameters:
        return "tree"
    if "num_classes" in hyper_parameters:
        return "classifier"
    if "loss" in hyper_parameters:
        return "regressor"
    return None
