"""`zoobot-hpc export`: timm / Hugging Face layout, identical features and predictions, model card, Hub push."""

from __future__ import annotations

import hashlib
import inspect
import json
import shutil
from pathlib import Path

import huggingface_hub
import timm
import torch
from click.testing import CliRunner

from zoobot_hpc.cli import main
from zoobot_hpc.export import load_export
from zoobot_hpc.model import FinetuneableZoobotTree


def test_export_loads_in_timm_with_identical_features_and_a_model_card(
    tree_checkpoint, train_data, tmp_path, monkeypatch
):
    out = tmp_path / "export"
    result = CliRunner().invoke(main, ["export", str(tree_checkpoint), str(out)])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "head.safetensors", "README.md"}

    model = FinetuneableZoobotTree.load_from_checkpoint(tree_checkpoint, map_location="cpu").eval()
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    encoder = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(encoder(images), model.encoder(images))
        reloaded = load_export(out)
        assert torch.equal(reloaded(images), model(images))

    # the same folder as a Hub repository (an offline HF cache snapshot) loads as hf_hub:OWNER/REPO
    snapshot = tmp_path / "hf_cache" / "models--astro-lab--rings" / "snapshots" / ("0" * 40)
    shutil.copytree(out, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    from_hub = timm.create_model("hf_hub:astro-lab/rings", pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(from_hub(images), model.encoder(images))

    description = json.loads((out / "config.json").read_text())["zoobot_hpc"]
    assert description["task"] == "tree" and description["label_cols"] == model.label_cols
    card = (out / "README.md").read_text()
    manifest_sha256 = hashlib.sha256((train_data / "manifest.json").read_bytes()).hexdigest()
    assert f"manifest sha256: `{manifest_sha256}`" in card
    assert "- validation/loss: " in card and "library_name: timm" in card
    assert all(f"`{column}`" in card for column in model.label_cols)

    again = CliRunner().invoke(main, ["export", str(tree_checkpoint), str(out)])
    assert again.exit_code != 0 and "exists and is not empty" in again.output


class RecordingHubApi:
    """Stands in for `huggingface_hub.HfApi` at the network boundary: records the calls and what would be sent."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))

    def upload_folder(self, **kwargs):
        files = sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())
        self.calls.append(("upload_folder", {**kwargs, "files": files}))
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{kwargs['repo_id']}/commit/abc"})()


def test_push_creates_the_repo_then_uploads_the_export_folder(tree_checkpoint, tmp_path, monkeypatch):
    import huggingface_hub

    real_api = huggingface_hub.HfApi
    api = RecordingHubApi()
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: api)  # the network boundary: nothing leaves this machine
    out = tmp_path / "export"
    result = CliRunner().invoke(main, ["export", str(tree_checkpoint), str(out), "--push", "astro-lab/rings"])
    assert result.exit_code == 0, result.output
    assert "pushed (private): https://huggingface.co/astro-lab/rings/commit/abc" in result.output
    assert [name for name, _ in api.calls] == ["create_repo", "upload_folder"]
    create, upload = api.calls[0][1], api.calls[1][1]
    assert create == {"repo_id": "astro-lab/rings", "repo_type": "model", "private": True, "exist_ok": True}
    assert upload["folder_path"] == str(out) and upload["repo_id"] == "astro-lab/rings"
    assert upload["files"] == ["README.md", "config.json", "head.safetensors", "model.safetensors"]
    assert 'timm.create_model("hf_hub:astro-lab/rings", pretrained=True)' in (out / "README.md").read_text()
    for name, kwargs in api.calls:  # the real client accepts exactly these arguments
        accepted = inspect.signature(getattr(real_api, name)).parameters
        assert set(kwargs) - {"files"} <= set(accepted), name


def test_export_refuses_a_file_that_is_not_a_checkpoint(tmp_path):
    bogus = tmp_path / "bogus.ckpt"
    bogus.write_text("not a checkpoint")
    result = CliRunner().invoke(main, ["export", str(bogus), str(tmp_path / "out")])
    assert result.exit_code != 0 and "not a readable checkpoint" in result.output
