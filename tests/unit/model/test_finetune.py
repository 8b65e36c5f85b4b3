import shutil
import subprocess
import sys
import textwrap

import lightning as L
import pytest
import torch

from tests.support.model_helpers import HUB_REPO, TINY_ENCODER, cpu_trainer, galaxy_images, loader
from zoobot_hpc.core.model_kinds import KIND_SPECS, MODEL_KINDS
from zoobot_hpc.model import (
    MODEL_CLASSES,
    FinetuneableZoobotClassifier,
    FinetuneableZoobotRegressor,
    FinetuneableZoobotTree,
)

PAIRS = {"colour": ["red", "blue"], "size": ["big", "small"]}
DEPENDENCIES = {"colour": None, "size": "colour_red"}


def classifier(**kwargs) -> FinetuneableZoobotClassifier:
    return FinetuneableZoobotClassifier(**{"name": TINY_ENCODER, "pretrained": False, "num_classes": 2, **kwargs})


def red_vs_blue(n: int, seed: int) -> dict[str, torch.Tensor]:
    labels = torch.arange(n) % 2
    redness = 0.1 + 0.7 * labels + 0.1 * torch.rand(n, generator=torch.Generator().manual_seed(seed))
    return {"image": galaxy_images(redness, seed=seed), "label": labels}


def redness_regression(n: int, seed: int) -> dict[str, torch.Tensor]:
    redness = torch.rand(n, generator=torch.Generator().manual_seed(seed))
    return {"image": galaxy_images(redness, seed=seed), "label": redness}


def colour_votes(n: int, seed: int) -> dict[str, torch.Tensor]:
    """20 votes on colour follow the blob's redness; 'size' is asked only of mostly-red ones (else 0 votes)."""
    redness = torch.rand(n, generator=torch.Generator().manual_seed(seed))
    red = torch.round(20 * redness)
    asked = (red > 10).float()
    return {
        "image": galaxy_images(redness, seed=seed),
        "colour_red": red,
        "colour_blue": 20 - red,
        "size_big": asked * torch.round(red / 2),
        "size_small": asked * (red - torch.round(red / 2)),
    }


def test_model_classes_and_launcher_properties():
    assert tuple(MODEL_CLASSES) == MODEL_KINDS == ("classifier", "regressor", "tree")
    model = classifier(greyscale=True)
    assert (model.kind, model.label_cols, model.in_channels) == ("classifier", ["label"], 1)
    assert (
        KIND_SPECS["classifier"].monitor == "validation/loss"
        and KIND_SPECS["classifier"].mode("validation/accuracy") == "max"
    )
    tree = FinetuneableZoobotTree(
        name=TINY_ENCODER, pretrained=False, question_answer_pairs=PAIRS, dependencies=DEPENDENCIES
    )
    assert tree.kind == "tree"
    assert tree.label_cols == ["colour_red", "colour_blue", "size_big", "size_small"]
    regressor = FinetuneableZoobotRegressor(name=TINY_ENCODER, pretrained=False, label_col="redshift")
    assert (regressor.kind, regressor.label_cols, regressor.in_channels) == ("regressor", ["redshift"], 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"training_mode": "linear"}, "training_mode='linear'"),
        ({"learning_rate": 0.0}, "learning_rate=0.0"),
        ({"learning_rate": -1e-3}, "learning_rate=-0.001"),
        ({"layer_decay": 1.5}, "layer_decay=1.5"),
        ({"layer_decay": -0.1}, "layer_decay=-0.1"),
        ({"weight_decay": -0.01}, "weight_decay=-0.01"),
        ({"head_dropout_prob": 1.0}, "head_dropout_prob=1.0"),
        ({"num_classes": 1}, "num_classes=1"),
        ({"class_weights": [1.0]}, r"class_weights=\[1.0\]"),
        ({"class_names": ["a", "b", "c"]}, "class_names="),
        ({"label_smoothing": 1.0}, "label_smoothing=1.0"),
        ({"name": None}, "encoder source"),
        ({"encoder": torch.nn.Identity()}, "encoder source"),
        ({"scheduler_kwargs": {"epochs": 3}}, r"unknown keys \['epochs'\]"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        classifier(**kwargs)


def test_invalid_regressor_and_tree_arguments():
    with pytest.raises(ValueError, match="loss='huber'"):
        FinetuneableZoobotRegressor(name=TINY_ENCODER, pretrained=False, loss="huber")
    with pytest.raises(ValueError, match="'colour_green' is not an answer column"):
        FinetuneableZoobotTree(
            name=TINY_ENCODER,
            pretrained=False,
            question_answer_pairs=PAIRS,
            dependencies={"colour": None, "size": "colour_green"},
        )


def test_predictions_and_embeddings_have_the_promised_shapes():
    images = torch.rand(5, 3, 32, 32)
    batch = {"image": images}
    model = classifier(num_classes=4).eval()
    probabilities = model.predict_step(batch)["probabilities"]
    assert probabilities.shape == (5, 4)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(5))
    assert model.embed(images).shape == (5, model.encoder.num_features)
    regressor = FinetuneableZoobotRegressor(name=TINY_ENCODER, pretrained=False, unit_interval=True).eval()
    values = regressor.predict_step(batch)["values"]
    assert values.shape == (5,) and bool(((values > 0) & (values < 1)).all())
    tree = FinetuneableZoobotTree(
        name=TINY_ENCODER, pretrained=False, question_answer_pairs=PAIRS, dependencies=DEPENDENCIES
    ).eval()
    predictions = tree.predict_step(batch)
    assert predictions["concentrations"].shape == predictions["vote_fractions"].shape == (5, 4)
    assert bool((predictions["concentrations"] > 1).all())
    assert torch.allclose(predictions["vote_fractions"][:, :2].sum(dim=1), torch.ones(5))


def test_seed_makes_the_head_reproducible():
    first, second, other = classifier(seed=7), classifier(seed=7), classifier(seed=8)
    assert torch.equal(first.head[1].weight, second.head[1].weight)
    assert not torch.equal(first.head[1].weight, other.head[1].weight)


class EncoderModeProbe(L.Callback):
    def __init__(self) -> None:
        self.encoder_training: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.encoder_training.append(any(m.training for m in pl_module.encoder.modules()))


@pytest.mark.parametrize("training_mode", ["head_only", "full"])
def test_head_only_leaves_every_encoder_tensor_bit_identical(training_mode):
    model = classifier(
        name="test_efficientnet",
        training_mode=training_mode,
        learning_rate=1e-2,
        timm_kwargs={"drop_rate": 0.2, "drop_path_rate": 0.2},
    )
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.encoder.modules())
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    head_before = model.head[1].weight.clone()
    probe = EncoderModeProbe()
    data = red_vs_blue(16, seed=0)
    cpu_trainer(max_epochs=2, callbacks=[probe]).fit(model, loader(data, 8), loader(data, 8))
    after = model.encoder.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not torch.equal(head_before, model.head[1].weight)
    if training_mode == "head_only":
        assert changed == []
        assert probe.encoder_training == [False] * 4
        assert all(p.grad is None for p in model.encoder.parameters())
    else:
        assert any(k.endswith("running_mean") for k in changed)
        assert any(k.endswith("weight") and "bn" not in k for k in changed)
        assert all(probe.encoder_training)


def fit_and_validate(model, train, val, epochs: int) -> tuple[dict, dict]:
    trainer = cpu_trainer(max_epochs=epochs)
    before = trainer.validate(model, loader(val, 32), verbose=False)[0]
    trainer.fit(model, loader(train, 16, shuffle=True), loader(val, 32))
    after = trainer.validate(model, loader(val, 32), verbose=False)[0]
    return before, after


def learner(cls, **kwargs):
    return cls(name=TINY_ENCODER, pretrained=False, learning_rate=1e-3, head_dropout_prob=0.0, **kwargs)


def test_classifier_learns_red_vs_blue():
    model = learner(FinetuneableZoobotClassifier, num_classes=2)
    before, after = fit_and_validate(model, red_vs_blue(64, 0), red_vs_blue(64, 1), epochs=10)
    assert after["validation/loss"] < 0.3 * before["validation/loss"]
    assert after["validation/accuracy"] >= 0.9


def test_regressor_learns_redness():
    model = learner(FinetuneableZoobotRegressor, unit_interval=True)
    val = redness_regression(64, 1)
    before, after = fit_and_validate(model, redness_regression(64, 0), val, epochs=10)
    chance_rmse = val["label"].std().item()
    assert after["validation/loss"] < 0.3 * before["validation/loss"]
    assert after["validation/rmse"] < 0.6 * chance_rmse


def test_tree_learns_vote_fractions():
    model = learner(FinetuneableZoobotTree, question_answer_pairs=PAIRS, dependencies=DEPENDENCIES)
    val = colour_votes(64, 1)
    before, after = fit_and_validate(model, colour_votes(64, 0), val, epochs=10)
    assert after["validation/loss"] < 0.7 * before["validation/loss"]
    fractions = model.eval().predict_step(val)["vote_fractions"][:, 0]
    truth = val["colour_red"] / 20
    assert torch.sqrt(((fractions - truth) ** 2).mean()) < 0.6 * truth.std()


def test_encoder_weights_come_from_a_zoobot_checkpoint(tmp_path):
    source = classifier(seed=1)
    trainer = cpu_trainer(max_epochs=1)
    data = red_vs_blue(8, seed=0)
    trainer.fit(source, loader(data, 8))
    path = tmp_path / "source.ckpt"
    trainer.save_checkpoint(path)
    regressor = FinetuneableZoobotRegressor(zoobot_checkpoint_loc=str(path))
    assert regressor.hparams.name == TINY_ENCODER
    assert all(
        torch.equal(a, b)
        for a, b in zip(source.encoder.state_dict().values(), regressor.encoder.state_dict().values(), strict=True)
    )
    with pytest.raises(ValueError, match="greyscale=True"):
        FinetuneableZoobotRegressor(zoobot_checkpoint_loc=str(path), greyscale=True)
    with pytest.raises(ValueError, match="is not a file"):
        FinetuneableZoobotRegressor(zoobot_checkpoint_loc=str(tmp_path / "absent.ckpt"))


RELOAD_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from zoobot_hpc.model import FinetuneableZoobotTree

    torch.set_num_threads(1)
    model = FinetuneableZoobotTree.load_from_checkpoint(sys.argv[1], map_location="cpu").eval()
    images = torch.load(sys.argv[2])
    with torch.inference_mode():
        predictions = model.predict_step({"image": images})
    torch.save({**predictions, "embedding": model.embed(images)}, sys.argv[3])
    """
)


def test_checkpoint_reloads_offline_in_a_fresh_process_with_identical_predictions(hf_cache, tmp_path):
    model = FinetuneableZoobotTree(
        name=f"hf_hub:{HUB_REPO}", question_answer_pairs=PAIRS, dependencies=DEPENDENCIES, learning_rate=1e-3
    )
    trainer = cpu_trainer(max_epochs=1)
    trainer.fit(model, loader(colour_votes(16, 0), 8))
    checkpoint, images_path, output = tmp_path / "tree.ckpt", tmp_path / "images.pt", tmp_path / "out.pt"
    trainer.save_checkpoint(checkpoint)
    images = torch.rand(6, 3, 32, 32)
    torch.save(images, images_path)
    model.eval()
    with torch.inference_mode():
        expected = {**model.predict_step({"image": images}), "embedding": model.embed(images)}
    # the Hugging Face cache is gone: restoring needs neither the network nor the encoder's hub files
    shutil.rmtree(hf_cache / f"models--{HUB_REPO.replace('/', '--')}")
    result = subprocess.run(
        [sys.executable, "-c", RELOAD_SCRIPT, str(checkpoint), str(images_path), str(output)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reloaded = torch.load(output)
    assert set(reloaded) == {"concentrations", "vote_fractions", "embedding"}
    for key, value in expected.items():
        assert torch.equal(value, reloaded[key]), key
