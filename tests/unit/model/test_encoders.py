import pytest
import timm
import torch

from tests.support.model_helpers import HUB_REPO, HUB_REVISION, TINY_ENCODER, save_encoder_in_hf_layout
from zoobot_hpc.model import (
    EncoderWeightsError,
    create_encoder,
    encoder_weights_available,
    ensure_encoder_weights,
)

IMAGES = torch.rand(2, 3, 32, 32)


def test_timm_name_gives_pooled_features():
    encoder = create_encoder(TINY_ENCODER, pretrained=False)
    assert encoder(IMAGES).shape == (2, encoder.num_features)


def test_greyscale_takes_one_channel_and_leaves_timm_kwargs_alone():
    timm_kwargs = {"drop_path_rate": 0.1}
    encoder = create_encoder(TINY_ENCODER, pretrained=False, timm_kwargs=timm_kwargs, greyscale=True)
    assert encoder(torch.rand(2, 1, 32, 32)).shape == (2, encoder.num_features)
    assert timm_kwargs == {"drop_path_rate": 0.1}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timm_kwargs": {"num_classes": 10}}, "timm_kwargs num_classes=10"),
        ({"timm_kwargs": {"in_chans": 3}, "greyscale": True}, "in_chans=3 contradicts greyscale=True"),
    ],
)
def test_contradictory_timm_kwargs_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_encoder(TINY_ENCODER, pretrained=False, **kwargs)


def test_unknown_name_is_a_value_error():
    with pytest.raises(ValueError, match="no_such_model"):
        create_encoder("no_such_model", pretrained=False)


def test_in_memory_timm_classifier_is_reset_to_pooled_output():
    module = timm.create_model(TINY_ENCODER, pretrained=False, num_classes=5)
    encoder = create_encoder(module)
    assert encoder(IMAGES).shape == (2, module.num_features)


def test_module_without_num_features_is_rejected():
    with pytest.raises(ValueError, match="num_features"):
        create_encoder(torch.nn.Flatten())


def test_local_dir_loads_the_saved_weights(tmp_path):
    folder = tmp_path / "encoder"
    saved = save_encoder_in_hf_layout(folder, seed=3)
    encoder = create_encoder(f"local-dir:{folder}", pretrained=True)
    expected = {k: v for k, v in saved.state_dict().items() if not k.startswith("head.fc")}
    loaded = encoder.state_dict()
    assert expected.keys() == loaded.keys()
    assert all(torch.equal(expected[k], loaded[k]) for k in expected)
    assert encoder_weights_available(f"local-dir:{folder}")


def test_local_dir_missing_weights_fail_fast(tmp_path, local_encoder_dir):
    (local_encoder_dir / "model.safetensors").unlink()
    name = f"local-dir:{local_encoder_dir}"
    assert not encoder_weights_available(name)
    with pytest.raises(EncoderWeightsError, match="weights file"):
        ensure_encoder_weights(name, allow_download=True)
    with pytest.raises(EncoderWeightsError, match="config file"):
        ensure_encoder_weights(f"local-dir:{tmp_path / 'absent'}", allow_download=False)


def test_hf_hub_name_loads_offline_from_the_cache(hf_cache):
    snapshot = hf_cache / f"models--{HUB_REPO.replace('/', '--')}" / "snapshots" / HUB_REVISION
    encoder = create_encoder(f"hf_hub:{HUB_REPO}", pretrained=True)
    reference = create_encoder(f"local-dir:{snapshot}", pretrained=True)
    assert all(
        torch.equal(a, b) for a, b in zip(encoder.state_dict().values(), reference.state_dict().values(), strict=True)
    )
    assert encoder_weights_available(f"hf_hub:{HUB_REPO}")
    ensure_encoder_weights(f"hf_hub:{HUB_REPO}", allow_download=False)


def test_hf_hub_missing_from_cache_fails_fast_with_the_repo_name(hf_cache):
    name = "hf_hub:zoobot-test/not-cached"
    assert not encoder_weights_available(name)
    with pytest.raises(EncoderWeightsError, match="zoobot-test/not-cached"):
        ensure_encoder_weights(name, allow_download=False)
    with pytest.raises(EncoderWeightsError, match="zoobot-test/not-cached"):
        ensure_encoder_weights(name, allow_download=True)  # offline: the download fails, one clear error


def test_timm_pretrained_name_checks_its_hub_weights(hf_cache):
    name = "convnext_nano.in12k_ft_in1k"
    assert not encoder_weights_available(name)
    with pytest.raises(EncoderWeightsError, match=r"timm/convnext_nano\.in12k_ft_in1k"):
        ensure_encoder_weights(name, allow_download=False)
    repo_folder = hf_cache / "models--timm--convnext_nano.in12k_ft_in1k"
    (repo_folder / "snapshots" / HUB_REVISION).mkdir(parents=True)
    (repo_folder / "snapshots" / HUB_REVISION / "model.safetensors").write_bytes(b"")
    (repo_folder / "refs").mkdir()
    (repo_folder / "refs" / "main").write_text(HUB_REVISION)
    assert encoder_weights_available(name)
