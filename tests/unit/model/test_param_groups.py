"""The lr and weight decay every parameter gets at the first optimiser step (what users are promised)."""

import pytest
import torch
from timm.models import group_parameters

from zoobot_hpc.model import FinetuneableZoobotClassifier

LR, DECAY, WD = 1e-4, 0.75, 0.05
COSINE = {"sched": "cosine", "num_epochs": 10}


def optimizer_of(model) -> torch.optim.Optimizer:
    configured = model.configure_optimizers()
    return configured["optimizer"] if isinstance(configured, dict) else configured


def settings_per_parameter(model) -> dict[str, tuple[float, float]]:
    """(lr, weight_decay) of every named parameter, as the optimiser holds them."""
    optimizer = optimizer_of(model)
    by_id = {id(p): (group["lr"], group["weight_decay"]) for group in optimizer.param_groups for p in group["params"]}
    return {name: by_id[id(p)] for name, p in model.named_parameters() if id(p) in by_id}


def timm_layer_ids(encoder) -> tuple[dict[str, int], int]:
    layer_map = group_parameters(encoder, encoder.group_matcher(coarse=False), reverse=True)
    return layer_map, max(layer_map.values())


def model(name: str, **kwargs) -> FinetuneableZoobotClassifier:
    return FinetuneableZoobotClassifier(name=name, pretrained=False, num_classes=3, **kwargs)


@pytest.mark.parametrize(("name", "num_layers"), [("convnext_nano", 16), ("efficientnet_b0", 17), ("resnet18", 9)])
@pytest.mark.parametrize("scheduler_kwargs", [None, COSINE], ids=["no_scheduler", "cosine"])
def test_every_parameter_gets_its_layer_decayed_lr(name, num_layers, scheduler_kwargs):
    classifier = model(name, scheduler_kwargs=scheduler_kwargs)
    layer_map, top = timm_layer_ids(classifier.encoder)
    assert top + 1 == num_layers
    settings = settings_per_parameter(classifier)
    assert len(settings) == len(list(classifier.parameters()))
    for param_name, param in classifier.named_parameters():
        lr, weight_decay = settings[param_name]
        if param_name.startswith("head."):
            assert (lr, weight_decay) == (LR, 0.0), param_name
            continue
        k = top - layer_map[param_name.removeprefix("encoder.")]
        assert lr == pytest.approx(LR * DECAY**k, rel=1e-12), param_name
        assert weight_decay == (0.0 if param.ndim <= 1 else WD), param_name
    if name == "convnext_nano":
        assert settings["encoder.stem.0.weight"][0] == pytest.approx(1e-4 * 0.75**15)


def test_layer_decay_one_gives_every_block_the_same_lr():
    lrs = {lr for lr, _ in settings_per_parameter(model("test_resnet", layer_decay=1.0)).values()}
    assert lrs == {LR}


def test_layer_decay_zero_trains_only_the_top_block_and_the_head():
    classifier = model("test_resnet", layer_decay=0.0)
    layer_map, top = timm_layer_ids(classifier.encoder)
    for param_name, (lr, _) in settings_per_parameter(classifier).items():
        is_top = param_name.startswith("head.") or layer_map[param_name.removeprefix("encoder.")] == top
        assert lr == (LR if is_top else 0.0), param_name


def test_head_only_optimises_just_the_head_without_weight_decay():
    classifier = model("test_resnet", training_mode="head_only", weight_decay=0.3, scheduler_kwargs=COSINE)
    settings = settings_per_parameter(classifier)
    assert set(settings) == {"head.1.weight", "head.1.bias"}
    assert set(settings.values()) == {(LR, 0.0)}
    assert not any(p.requires_grad for p in classifier.encoder.parameters())


def test_warmup_keeps_each_groups_ratio_from_the_first_step():
    classifier = model("test_resnet", scheduler_kwargs={**COSINE, "warmup_epochs": 2, "warmup_lr": 1e-6})
    optimizer = optimizer_of(classifier)
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(1e-6 * group["lr_scale"], rel=1e-12)
