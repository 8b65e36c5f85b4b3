"""Layer-decayed AdamW param groups: timm's layer grouping for the encoder; full lr, no decay for the head.

Every group carries `lr` (the base learning rate) and `lr_scale`; its effective lr is `lr * lr_scale`.
timm schedulers apply `lr_scale` in `Scheduler.update_groups`; without a scheduler call `apply_lr_scale` once.
"""

from typing import Any

import torch
from timm.optim import param_groups_layer_decay
from torch import nn


def encoder_param_groups(
    encoder: nn.Module, learning_rate: float, weight_decay: float, layer_decay: float
) -> list[dict[str, Any]]:
    """timm's layer-decay groups: block k below the top gets lr_scale=layer_decay**k; 1-D params no decay."""
    no_weight_decay = encoder.no_weight_decay() if hasattr(encoder, "no_weight_decay") else ()
    groups = param_groups_layer_decay(
        encoder,
        weight_decay=weight_decay,
        no_weight_decay_list=no_weight_decay,
        layer_decay=layer_decay,
    )
    return [{**group, "lr": learning_rate} for group in groups]


def head_param_group(head: nn.Module, learning_rate: float) -> dict[str, Any]:
    """The head trains at the full learning rate with no weight decay."""
    return {
        "name": "head",
        "params": list(head.parameters()),
        "lr": learning_rate,
        "lr_scale": 1.0,
        "weight_decay": 0.0,
    }


def finetuning_param_groups(
    encoder: nn.Module,
    head: nn.Module,
    learning_rate: float,
    weight_decay: float,
    layer_decay: float,
    train_encoder: bool,
) -> list[dict[str, Any]]:
    """All parameter groups to optimise: the encoder's (if it trains) and the head's."""
    groups = encoder_param_groups(encoder, learning_rate, weight_decay, layer_decay) if train_encoder else []
    return [*groups, head_param_group(head, learning_rate)]


def apply_lr_scale(optimizer: torch.optim.Optimizer) -> None:
    """Set each group's lr to `lr * lr_scale`, what a timm scheduler does; call once when there is none."""
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * group.get("lr_scale", 1.0)
