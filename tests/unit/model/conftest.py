"""Fixtures for the model tests: a tiny encoder in a local folder and in an offline Hugging Face cache."""

from pathlib import Path

import huggingface_hub
import pytest

from tests.support.model_helpers import HUB_REPO, HUB_REVISION, save_encoder_in_hf_layout


@pytest.fixture
def local_encoder_dir(tmp_path: Path) -> Path:
    """A folder holding a tiny encoder as `timm.models.save_for_hf` writes it."""
    folder = tmp_path / "local_encoder"
    save_encoder_in_hf_layout(folder)
    return folder


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An offline Hugging Face cache holding `hf_hub:{HUB_REPO}` (snapshot folder plus refs/main).

    Sets HF_HUB_CACHE / HF_HUB_OFFLINE here (huggingface_hub reads them at import) and for subprocesses.
    """
    cache = tmp_path / "hf_cache"
    repo_folder = cache / f"models--{HUB_REPO.replace('/', '--')}"
    save_encoder_in_hf_layout(repo_folder / "snapshots" / HUB_REVISION)
    (repo_folder / "refs").mkdir()
    (repo_folder / "refs" / "main").write_text(HUB_REVISION)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache
