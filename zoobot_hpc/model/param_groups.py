"""Layer-decayed AdamW param groups: timm's layer grouping for the encoder; full lr, no decay for the head.

Every group carries `lr` (the base learning rate) and `lr_scale`; its effective lr is `lr * lr_scale`. Each also
carries a readable `name` (`head`, `top`, `stage-3.block-1`, ..., `stem`: the encoder part its layer holds) and its
`depth` (0 for the stem, highest for the head), so that the learning rates can be logged per layer in depth order.
timm schedulers apply `lr_scale` in `Scheduler.update_groups`; without a scheduler call `apply_lr_scale` once.
"""

import re
from collections.abc import Iterable
from typing import Any

import torch
from timm.optim import param_groups_layer_decay
from torch import nn

_BLOCK = re.compile(r"^(?:stages|layers|blocks)\.(\d+)\.(?:blocks\.)?(\d+)?")
_STEM = re.compile(r"^(?:stem|conv_stem|bn1|conv1|patch_embed|cls_token|pos_embed)\b")


def _part_of(parameter_name: str) -> str:
    """The encoder part a parameter belongs to: `stem`, `stage-N.block-M`, `stage-N` or `top` (final norm/conv)."""
    if _STEM.match(parameter_name):
        return "stem"
    match = _BLOCK.match(parameter_name)
    if match is None:
        return "top"
    stage, block = match.groups()
    if block is None or ".downsample" in parameter_name[: match.end() + 12]:
        return f"stage-{stage}"
    return f"stage-{stage}.block-{block}"


def layer_name(parameter_names: Iterable[str]) -> str:
    """A readable name for one layer-decay layer from its parameters' names: the block it holds
    (`stage-2.block-3`), the stage when it holds several blocks of one (`stage-2`), else its parts joined by `+`."""
    parts = list(dict.fromkeys(_part_of(name) for name in parameter_names))
    blocks = [part for part in parts if ".block-" in part]
    stages = {part.split(".")[0] for part in parts if part.startswith("stage-")}
    if len(blocks) > 1 and len(stages) == 1:
        return stages.pop()
    if blocks and all(part.startswith("stage-") for part in parts):
        return blocks[0] if len(blocks) == 1 else "+".join(blocks)
    return "+".join(parts)


def encoder_param_groups(
    encoder: nn.Module, learning_rate: float, weight_decay: float, layer_decay: float
) -> list[dict[str, Any]]:
    """timm's layer-decay groups: block k below the top gets lr_scale=layer_decay**k; 1-D params no decay.

    The groups of one layer (with and without weight decay) share its `name` and `depth`."""
    no_weight_decay = encoder.no_weight_decay() if hasattr(encoder, "no_weight_decay") else ()
    groups = param_groups_layer_decay(
        encoder,
        weight_decay=weight_decay,
        no_weight_decay_list=no_weight_decay,
        layer_decay=layer_decay,
    )
    names = {id(parameter): name for name, parameter in encoder.named_parameters()}
    layers: dict[float, list[str]] = {}
    for group in groups:
        layers.setdefault(group["lr_scale"], []).extend(names[id(p)] for p in group["params"])
    depth = {scale: index for index, scale in enumerate(sorted(layers))}
    labels: dict[float, str] = {}
    for scale in sorted(layers):
        label = layer_name(layers[scale])
        labels[scale] = label if label not in labels.values() else f"{label}.{depth[scale]}"
    if layer_decay == 1.0 or len(layers) == 1:  # one lr for all: timm's layers cannot be told apart by scale
        return [{**group, "lr": learning_rate, "name": "encoder", "depth": 0} for group in groups]
    return [
        {**group, "lr": learning_rate, "name": labels[group["lr_scale"]], "depth": depth[group["lr_scale"]]}
        for group in groups
    ]


def head_param_group(head: nn.Module, learning_rate: float, depth: int = 0) -> dict[str, Any]:
    """The head trains at the full learning rate with no weight decay."""
    return {
        "name": "head",
        "depth": depth,
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
    depth = 1 + max((group["depth"] for group in groups), default=-1)
    return [*groups, head_param_group(head, learning_rate, depth)]


def apply_lr_scale(optimizer: torch.optim.Optimizer) -> None:
    """Set each group's lr to `lr * lr_scale`, what a timm scheduler does; call once when there is none."""
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * group.get("lr_scale", 1.0)
