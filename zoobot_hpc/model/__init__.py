"""Finetuneable Zoobot models: encoders, layer-decayed AdamW groups, timm schedulers, decision-tree loss.

The names below load on first use (PEP 562), so that `zoobot_hpc.core.tree_schema` — which the login node's
config imports — does not pull in torch, Lightning and timm through this package's `__init__`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zoobot_hpc.core.tree_schema import TreeSchema
    from zoobot_hpc.model.encoders import (
        EncoderWeightsError,
        create_encoder,
        encoder_weights_available,
        ensure_encoder_weights,
    )
    from zoobot_hpc.model.finetune import (
        MODEL_CLASSES,
        FinetuneableZoobotAbstract,
        FinetuneableZoobotClassifier,
        FinetuneableZoobotRegressor,
        FinetuneableZoobotTree,
    )

_HOMES = {
    "EncoderWeightsError": "encoders",
    "create_encoder": "encoders",
    "encoder_weights_available": "encoders",
    "ensure_encoder_weights": "encoders",
    "FinetuneableZoobotAbstract": "finetune",
    "FinetuneableZoobotClassifier": "finetune",
    "FinetuneableZoobotRegressor": "finetune",
    "FinetuneableZoobotTree": "finetune",
    "MODEL_CLASSES": "finetune",
    "TreeSchema": "tree_schema",
}

__all__ = [
    "MODEL_CLASSES",
    "EncoderWeightsError",
    "FinetuneableZoobotAbstract",
    "FinetuneableZoobotClassifier",
    "FinetuneableZoobotRegressor",
    "FinetuneableZoobotTree",
    "TreeSchema",
    "create_encoder",
    "encoder_weights_available",
    "ensure_encoder_weights",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
