"""Finetuneable Zoobot models: encoders, layer-decayed AdamW groups, timm schedulers, decision-tree loss."""

from zoobot_hpc.model.encoders import (
    EncoderWeightsError,
    create_encoder,
    encoder_weights_available,
    ensure_encoder_weights,
)
from zoobot_hpc.model.finetune import (
    FinetuneableZoobotAbstract,
    FinetuneableZoobotClassifier,
    FinetuneableZoobotRegressor,
    FinetuneableZoobotTree,
)
from zoobot_hpc.model.tree import TreeSchema

MODEL_CLASSES: dict[str, type[FinetuneableZoobotAbstract]] = {
    "classifier": FinetuneableZoobotClassifier,
    "regressor": FinetuneableZoobotRegressor,
    "tree": FinetuneableZoobotTree,
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
