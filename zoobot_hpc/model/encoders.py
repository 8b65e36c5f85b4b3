"""Encoders: timm models by name (timm registry, `hf_hub:owner/repo`, `local-dir:/path`) or in-memory modules.

An encoder maps float images (B, C, H, W) in [0, 1] to pooled features (B, num_features).
`ensure_encoder_weights` is the login-node check that pretrained weights are on disk before a job is queued.
"""

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import huggingface_hub
import timm
import torch
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError
from timm.models import get_pretrained_cfg, parse_model_name, split_model_name_tag
from timm.models._input import get_model_args
from torch import nn

HF_CONFIG_FILE = "config.json"
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
LOCAL_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pth.tar", ".bin")


class EncoderWeightsError(FileNotFoundError):
    """Pretrained encoder weights are not available locally (and may not be downloaded)."""


def encoder_timm_kwargs(timm_kwargs: Mapping[str, Any] | None, greyscale: bool) -> dict[str, Any]:
    """Keywords for `timm.create_model`: the user's, plus pooled output and the input channels."""
    kwargs = dict(timm_kwargs or {})
    if "num_classes" in kwargs:
        raise ValueError(f"timm_kwargs num_classes={kwargs['num_classes']!r}: the encoder has no classifier")
    channels = 1 if greyscale else 3
    if kwargs.get("in_chans", channels) != channels:
        raise ValueError(f"timm_kwargs in_chans={kwargs['in_chans']!r} contradicts greyscale={greyscale}")
    return {**kwargs, "num_classes": 0, "in_chans": channels}


def create_encoder(
    name_or_module: str | nn.Module,
    pretrained: bool = True,
    timm_kwargs: Mapping[str, Any] | None = None,
    greyscale: bool = False,
) -> nn.Module:
    """Build a pooled-feature encoder (`num_classes=0`) with a `num_features` attribute.

    Names go through `timm.create_model`: any timm name, `hf_hub:owner/repo` or `local-dir:/path`.
    A module is used as it is (a timm classifier is reset to pooled output).
    """
    if isinstance(name_or_module, nn.Module):
        return _prepare_module(name_or_module)
    if not isinstance(name_or_module, str) or not name_or_module:
        raise ValueError(f"encoder name={name_or_module!r} must be a non-empty string or an nn.Module")
    kwargs = encoder_timm_kwargs(timm_kwargs, greyscale)
    try:
        return timm.create_model(name_or_module, pretrained=pretrained, **kwargs)
    except RuntimeError as error:
        if str(error).startswith("Unknown model"):
            raise ValueError(f"encoder name={name_or_module!r} is not a timm model") from error
        raise


def encoder_architecture(encoder: nn.Module) -> dict[str, Any] | None:
    """What rebuilds a timm encoder without any hub or folder: its architecture name and model arguments."""
    architecture = getattr(encoder, "pretrained_cfg", {}).get("architecture")
    if architecture is None or not timm.is_model(architecture):
        return None
    return {"model_name": architecture, "model_args": get_model_args(encoder)}


def encoder_from_architecture(architecture: Mapping[str, Any]) -> nn.Module:
    """A randomly initialised encoder from `encoder_architecture` (a checkpoint then loads its weights)."""
    return _prepare_module(
        timm.create_model(architecture["model_name"], pretrained=False, **dict(architecture["model_args"]))
    )


def _prepare_module(module: nn.Module) -> nn.Module:
    if getattr(module, "num_classes", 0) and hasattr(module, "reset_classifier"):
        module.reset_classifier(0)
    if not isinstance(getattr(module, "num_features", None), int):
        raise ValueError(f"encoder {type(module).__name__} needs an int attribute num_features (its output width)")
    return module


def required_encoder_files(name: str) -> list[tuple[str, str | None]]:
    """What loading `name` with pretrained weights needs: (description, local path or None when missing)."""
    source, model_id = parse_model_name(name)
    if source == "local-dir":
        return _local_dir_files(Path(model_id))
    if source == "hf-hub":
        repo_id, revision = _split_revision(model_id)
        return [
            _hf_cached(repo_id, revision, (HF_CONFIG_FILE,)),
            _hf_cached(repo_id, revision, HF_WEIGHT_FILES),
        ]
    if not timm.is_model(split_model_name_tag(model_id)[0]):
        raise ValueError(f"encoder name={name!r} is not a timm model")
    try:
        cfg = get_pretrained_cfg(model_id)
    except RuntimeError as error:
        raise ValueError(f"encoder name={name!r}: {error}") from error
    if cfg is None:
        raise ValueError(f"encoder name={name!r}: timm has no pretrained weights for it")
    if cfg.hf_hub_id:
        repo_id, revision = _split_revision(cfg.hf_hub_id)
        weight_files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HF_WEIGHT_FILES
        return [_hf_cached(repo_id, revision, weight_files)]
    if cfg.url:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)
        return [(f"torch hub cache file {cached}", str(cached) if cached.is_file() else None)]
    raise ValueError(f"encoder name={name!r}: timm has no pretrained weights for it")


def encoder_weights_available(name: str) -> bool:
    """Whether everything loading `name` with pretrained weights reads is already on local disk."""
    return all(path is not None for _, path in required_encoder_files(name))


def ensure_encoder_weights(name: str, allow_download: bool) -> None:
    """Fail fast unless `name`'s pretrained weights are local; download Hugging Face files if allowed."""
    missing = [description for description, path in required_encoder_files(name) if path is None]
    if not missing:
        return
    if allow_download and parse_model_name(name)[0] != "local-dir":
        try:
            _download(name)
        except (OSError, HfHubHTTPError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise EncoderWeightsError(f"encoder {name!r} is missing {'; '.join(missing)}: {reason}") from error
        missing = [description for description, path in required_encoder_files(name) if path is None]
        if not missing:
            return
    raise EncoderWeightsError(f"encoder {name!r} is missing {'; '.join(missing)}")


def _split_revision(model_id: str) -> tuple[str, str | None]:
    repo_id, _, revision = model_id.partition("@")
    return repo_id, revision or None


def _hf_cached(repo_id: str, revision: str | None, filenames: tuple[str, ...]) -> tuple[str, str | None]:
    for filename in filenames:
        path = huggingface_hub.try_to_load_from_cache(repo_id, filename, revision=revision)
        if isinstance(path, str):
            return f"{' or '.join(filenames)} of {repo_id} in the HF cache", path
    return (
        f"{' or '.join(filenames)} of {repo_id} in the HF cache {huggingface_hub.constants.HF_HUB_CACHE}",
        None,
    )


def _local_dir_files(folder: Path) -> list[tuple[str, str | None]]:
    config = folder / HF_CONFIG_FILE
    weights = sorted(p for p in folder.glob("*") if p.name.endswith(LOCAL_WEIGHT_SUFFIXES)) if folder.is_dir() else []
    return [
        (f"config file {config}", str(config) if config.is_file() else None),
        (
            f"a weights file ({', '.join(LOCAL_WEIGHT_SUFFIXES)}) in {folder}",
            str(weights[0]) if weights else None,
        ),
    ]


def _download(name: str) -> None:
    source, model_id = parse_model_name(name)
    if source == "hf-hub":
        repo_id, revision = _split_revision(model_id)
        huggingface_hub.hf_hub_download(repo_id, HF_CONFIG_FILE, revision=revision)
        _download_first(repo_id, revision, HF_WEIGHT_FILES)
        return
    cfg = get_pretrained_cfg(model_id)
    if cfg.hf_hub_id:
        repo_id, revision = _split_revision(cfg.hf_hub_id)
        _download_first(repo_id, revision, (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HF_WEIGHT_FILES)
    else:
        torch.hub.load_state_dict_from_url(cfg.url, map_location="cpu", weights_only=True)


def _download_first(repo_id: str, revision: str | None, filenames: tuple[str, ...]) -> None:
    for filename in filenames:
        try:
            huggingface_hub.hf_hub_download(repo_id, filename, revision=revision)
            return
        except EntryNotFoundError as error:
            if isinstance(error, LocalEntryNotFoundError):
                raise
            continue


# Classes a Zoobot finetuning checkpoint pickles into its hyper-parameters (FinetuneableZoobotTree's `schema`).
ZOOBOT_PICKLED_CLASSES = (
    "zoobot.shared.schemas.Schema",
    "zoobot.shared.schemas.Question",
    "zoobot.shared.schemas.Answer",
)
COMPILED_PREFIX = "_orig_mod."


class _ZoobotObject:
    """Stands in for a Zoobot class pickled in a checkpoint, so it loads with `weights_only=True`."""


def read_lightning_checkpoint(path: Path) -> dict[str, Any]:
    """A Lightning checkpoint loaded with `weights_only=True`, Zoobot's own checkpoints included.

    Zoobot's FinetuneableZoobotTree pickles its `schema` object into the hyper-parameters; those objects load as
    inert stand-ins (their question/answer dicts are also stored as plain hyper-parameters by ZoobotTree).
    """
    stand_ins = [(type(name.rsplit(".", 1)[1], (_ZoobotObject,), {}), name) for name in ZOOBOT_PICKLED_CLASSES]
    with torch.serialization.safe_globals(stand_ins):
        return torch.load(path, map_location="cpu", weights_only=True)


def checkpoint_channels(hparams: Mapping[str, Any], name: str) -> int:
    """Input channels of a checkpoint's encoder: Zoobot's `channels`, our `greyscale`, or a greyscale Hub name."""
    if "channels" in hparams:
        return int(hparams["channels"])
    if "greyscale" in hparams:
        return 1 if hparams["greyscale"] else 3
    return 1 if "greyscale" in name else 3


def encoder_from_checkpoint(
    checkpoint_loc: str | os.PathLike,
    name: str | None = None,
    timm_kwargs: Mapping[str, Any] | None = None,
    greyscale: bool = False,
) -> tuple[nn.Module, str, dict[str, Any] | None]:
    """The encoder of a Lightning checkpoint (its `encoder.*` weights), built without downloading weights.

    Reads ours and Zoobot's: pretraining (`ZoobotTree`: `architecture_name`, `channels`, `timm_kwargs`, possibly a
    compiled encoder) and finetuning (`FinetuneableZoobot*`: `name`). The architecture is `name` or else the
    checkpoint's own. Returns the encoder with the name and timm_kwargs it was built from.
    """
    path = Path(checkpoint_loc)
    if not path.is_file():
        raise ValueError(f"zoobot_checkpoint_loc={str(checkpoint_loc)!r} is not a file")
    checkpoint = read_lightning_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters", {})
    if name is None:
        name = hparams.get("name") or hparams.get("architecture_name")
        timm_kwargs = hparams.get("timm_kwargs") if timm_kwargs is None else timm_kwargs
        if name is None:
            raise ValueError(f"zoobot_checkpoint_loc={str(path)!r} names no encoder: pass name= as well")
    saved_channels = checkpoint_channels(hparams, name)
    if saved_channels != (1 if greyscale else 3):
        raise ValueError(f"greyscale={greyscale} but zoobot_checkpoint_loc={str(path)!r} has {saved_channels} channels")
    timm_kwargs = None if timm_kwargs is None else dict(timm_kwargs)
    encoder = create_encoder(name, pretrained=False, timm_kwargs=timm_kwargs, greyscale=greyscale)
    prefix = "encoder."
    weights = {
        k.removeprefix(prefix).removeprefix(COMPILED_PREFIX): v
        for k, v in checkpoint["state_dict"].items()
        if k.startswith(prefix)
    }
    if not weights:
        raise ValueError(f"zoobot_checkpoint_loc={str(path)!r} has no '{prefix}*' weights in its state_dict")
    encoder.load_state_dict(weights)
    return encoder, name, timm_kwargs
