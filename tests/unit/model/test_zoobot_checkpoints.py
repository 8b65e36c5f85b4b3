"""Checkpoints written by Zoobot's own classes (pretraining ZoobotTree, finetuning FinetuneableZoobot*) load and
finetune. Zoobot itself is not installed here (it pins its own torch/timm stack); these checkpoints have the keys,
hyper-parameter names and pickled objects that Zoobot 2.x writes."""

import sys
import types

import lightning as L
import timm
import torch

from tests.support.model_helpers import TINY_ENCODER, cpu_trainer, galaxy_images, loader
from zoobot_hpc.model import FinetuneableZoobotTree
from zoobot_hpc.model.encoders import checkpoint_channels


class ZoobotTreeLike(L.LightningModule):
    """The constructor arguments Zoobot's `define_model.ZoobotTree` saves as hyper-parameters."""

    def __init__(
        self,
        output_dim,
        question_answer_pairs=None,
        dependencies=None,
        architecture_name="efficientnet_b0",
        channels=1,
        test_time_dropout=True,
        compile_encoder=False,
        timm_kwargs={},  # noqa: B006 (Zoobot's signature)
        dropout_rate=0.2,
        learning_rate=1e-3,
        betas=(0.9, 0.999),
        weight_decay=0.01,
        scheduler_params={},  # noqa: B006
    ):
        super().__init__()
        self.save_hyperparameters()
        self.encoder = timm.create_model(architecture_name, in_chans=channels, num_classes=0, **timm_kwargs)
        self.head = torch.nn.Linear(self.encoder.num_features, output_dim)


def write_pretraining_checkpoint(path, compiled: bool) -> ZoobotTreeLike:
    """A greyscale ZoobotTree checkpoint; a compiled encoder's weights are saved under `encoder._orig_mod.`."""
    torch.manual_seed(3)
    pairs = {"ring": ["_yes", "_no"]}
    model = ZoobotTreeLike(2, pairs, {"ring": None}, TINY_ENCODER, channels=1, timm_kwargs={"drop_path_rate": 0.1})
    state = model.state_dict()
    if compiled:
        state = {k.replace("encoder.", "encoder._orig_mod.", 1): v for k, v in state.items()}
    torch.save({"state_dict": state, "hyper_parameters": dict(model.hparams), "epoch": 3}, path)
    return model


def write_finetuning_tree_checkpoint(path) -> torch.nn.Module:
    """A FinetuneableZoobotTree checkpoint: `name`, no `channels`, and its zoobot `Schema` object pickled in."""
    module = types.ModuleType("zoobot.shared.schemas")
    for class_name in ("Schema", "Question", "Answer"):
        setattr(module, class_name, type(class_name, (), {"__module__": "zoobot.shared.schemas"}))
    schema = module.Schema()
    question = module.Question()
    question.answers = [module.Answer(), module.Answer()]
    schema.question_answer_pairs, schema.questions = {"ring": ["_yes", "_no"]}, [question]
    torch.manual_seed(4)
    encoder = timm.create_model(TINY_ENCODER, num_classes=0)
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    hparams = {"name": TINY_ENCODER, "zoobot_checkpoint_loc": None, "n_blocks": 0, "lr_decay": 0.75, "schema": schema}
    modules = {"zoobot": types.ModuleType("zoobot"), "zoobot.shared": types.ModuleType("zoobot.shared")}
    modules["zoobot.shared.schemas"] = module
    sys.modules.update(modules)
    try:
        torch.save({"state_dict": state, "hyper_parameters": hparams}, path)
    finally:
        for name in modules:
            del sys.modules[name]
    return encoder


def ring_votes(n: int, channels: int) -> dict[str, torch.Tensor]:
    ring = torch.rand(n, generator=torch.Generator().manual_seed(0))
    images = galaxy_images(ring, seed=0)[:, :channels]
    return {"image": images, "ring_yes": torch.round(ring * 10), "ring_no": torch.round((1 - ring) * 10)}


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_greyscale_pretraining_checkpoint_of_zoobot_tree_finetunes(tmp_path):
    path = tmp_path / "zoobot_pretrained.ckpt"
    source = write_pretraining_checkpoint(path, compiled=True)
    model = FinetuneableZoobotTree(schema="gz_rings", zoobot_checkpoint_loc=str(path), greyscale=True)
    assert model.hparams.name == TINY_ENCODER
    assert model.hparams.timm_kwargs == {"drop_path_rate": 0.1}
    assert model.encoder.stem[0].in_channels == 1
    assert same_weights(model.encoder, source.encoder)
    data = ring_votes(8, channels=1)
    cpu_trainer(max_epochs=1).fit(model, loader(data, 4), loader(data, 8))
    assert not same_weights(model.encoder, source.encoder)


def test_channels_follow_zoobots_hyper_parameters_or_its_greyscale_hub_names():
    assert checkpoint_channels({"channels": 1, "greyscale": False}, "efficientnet_b0") == 1
    assert checkpoint_channels({}, "hf_hub:mwalmsley/zoobot-encoder-greyscale-convnext_nano") == 1
    assert checkpoint_channels({}, "hf_hub:mwalmsley/zoobot-encoder-convnext_nano") == 3


def test_zoobot_finetuning_tree_checkpoint_with_its_pickled_schema_loads(tmp_path):
    path = tmp_path / "zoobot_finetuned.ckpt"
    source = write_finetuning_tree_checkpoint(path)
    model = FinetuneableZoobotTree(schema="gz_rings", zoobot_checkpoint_loc=str(path))
    assert model.encoder.stem[0].in_channels == 3
    assert same_weights(model.encoder, source)
