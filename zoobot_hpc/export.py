"""Export a finetuned checkpoint in the timm / Hugging Face layout, with a model card, and push it to the Hub.

OUT_DIR holds `config.json` + `model.safetensors` (the encoder, as `timm.models.save_for_hf` writes it, so that
`timm.create_model("local-dir:OUT_DIR")` or `"hf_hub:OWNER/REPO"` rebuilds it with pooled output), `head.safetensors`
(the finetuned head, described under `zoobot_hpc` in config.json) and `README.md` (the model card).

An export is meant to be published, so it carries only what describes the model: the card's config is the run's
`model`, `data` and `trainer` sections with every secret redacted (`zoobot_hpc.core.redaction`) and the dataset named by
its folder, not its path; an export that still holds a token-looking string anywhere is refused, and `push_export`
creates private Hub repositories unless asked otherwise.
torch and timm are imported inside the functions: the CLI imports this module on the login node.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.core.redaction import redact_text, redact_value

HEAD_FILE = "head.safetensors"
CARD_FILE = "README.md"
CONFIG_KEY = "zoobot_hpc"
TASK_KEYS = (
    "num_classes",
    "class_names",
    "label_col",
    "loss",
    "unit_interval",
    "question_answer_pairs",
    "dependencies",
)
CARD_SECTIONS = ("model", "data", "trainer")  # what of the run's config describes the model; not resources/tracking


class ExportError(ValueError):
    """A problem exporting a checkpoint, in one line."""


@dataclass(frozen=True)
class Exported:
    """What `export_checkpoint` wrote."""

    out_dir: Path
    files: tuple[str, ...]
    description: dict[str, Any]


def _run_context(checkpoint: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None, dict[str, Any] | None]:
    """(run config, run summary, training data) of the run that wrote `checkpoint`, where still on disk."""
    run_dir = checkpoint.resolve().parent.parent
    config_path = run_dir / layout.CONFIG
    config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else None
    summary = layout.read_json(run_dir / layout.SUMMARY)
    data = None
    if config is not None:
        manifest = Path(config["data"]["dataset_dir"]) / "manifest.json"
        if manifest.is_file():
            raw = json.loads(manifest.read_text())
            data = {
                "dataset_dir": manifest.parent.name,
                "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
                "source": _without_directories(raw.get("source")),
                "image_shape": raw.get("image_shape"),
                "counts": {split: sum(s["count"] for s in shards) for split, shards in raw["splits"].items()},
                "provenance": raw.get("provenance", {}),
            }
    return card_config(config), summary, data


def _without_directories(source: Any) -> Any:
    """A catalog named by its file name, not the absolute path of the machine it was sharded on."""
    return Path(source).name if isinstance(source, str) and os.path.isabs(source) else source


def card_config(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """The part of a run's config an export publishes: its model, data and trainer sections, redacted, with the
    dataset named by its folder instead of its path."""
    if config is None:
        return None
    kept = {key: config[key] for key in CARD_SECTIONS if key in config}
    if isinstance(kept.get("data"), dict) and kept["data"].get("dataset_dir"):
        kept["data"] = {**kept["data"], "dataset_dir": Path(str(kept["data"]["dataset_dir"])).name}
    return redact_value(kept)


def secret_looking_files(folder: str | Path) -> list[str]:
    """Files of an export folder that hold a token-looking string (safetensors files: their JSON header)."""
    found = []
    for path in sorted(Path(folder).rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        if path.suffix == ".safetensors" and len(data) >= 8:
            data = data[8 : 8 + int.from_bytes(data[:8], "little")]
        text = data.decode("utf-8", errors="replace")
        if redact_text(text) != text:
            found.append(str(path.relative_to(folder)))
    return found


def _refuse_secrets(folder: Path, what: str) -> None:
    found = secret_looking_files(folder)
    if found:
        raise ExportError(
            f"{what}: {', '.join(found)} holds a token-looking string (a key, token or password); "
            "remove it from the run's config or checkpoint hyper-parameters and export again"
        )


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, repo_id: str | None = None) -> Exported:
    """Write the checkpoint's encoder and head in the timm / HF layout with a model card; returns what was written.

    `repo_id` (OWNER/REPO) names the Hub repository in the card's usage example.
    """
    from safetensors.torch import save_file
    from timm.models import save_for_hf

    from zoobot_hpc.inference.request import InferenceError, read_model_header
    from zoobot_hpc.model import MODEL_CLASSES

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    try:
        kind, hparams = read_model_header(checkpoint)
    except InferenceError as error:
        raise ExportError(str(error)) from None
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ExportError(f"out_dir={out_dir} exists and is not empty")
    model = MODEL_CLASSES[kind].load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True).eval()
    config, summary, data = _run_context(checkpoint)
    description = {
        "task": kind,
        "encoder": hparams.get("name"),
        "greyscale": bool(hparams.get("greyscale")),
        "head_file": HEAD_FILE,
        "head_dropout_prob": hparams.get("head_dropout_prob"),
        "label_cols": list(model.label_cols),
        "schema": hparams.get("schema"),
        **{key: _plain(hparams[key]) for key in TASK_KEYS if key in hparams},
        "checkpoint_sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
        "training_data": data,
        "metrics": (summary or {}).get("metrics"),
    }
    # Written next to OUT_DIR first: it becomes OUT_DIR only when nothing in it looks like a secret.
    staging = out_dir.parent / f".{out_dir.name}.export-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        save_for_hf(model.encoder, str(staging), model_config={CONFIG_KEY: description}, safe_serialization=True)
        save_file({k: v.contiguous() for k, v in model.head.state_dict().items()}, str(staging / HEAD_FILE))
        (staging / CARD_FILE).write_text(model_card(description, config, repo_id), encoding="utf-8")
        _refuse_secrets(staging, f"export of {checkpoint.name} refused")
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Exported(out_dir, tuple(sorted(p.name for p in out_dir.iterdir())), description)


def _plain(value: Any) -> Any:
    """Hyper-parameters as JSON values (tuples to lists, mappings to dicts)."""
    return json.loads(json.dumps(value, default=list))


def model_card(description: dict[str, Any], config: dict[str, Any] | None, repo_id: str | None = None) -> str:
    """The README.md of an export: Hub metadata, what the model predicts, its data, metrics and config."""
    data = description.get("training_data") or {}
    metrics = description.get("metrics") or {}
    front = {"library_name": "timm", "tags": ["zoobot", "galaxy-zoo", "astronomy", "image-feature-extraction"]}
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        f"# Zoobot-style {description['task']} finetuned with zoobot-hpc",
        "",
        f"Encoder `{description['encoder']}` finetuned as a {description['task']} "
        f"({'1 greyscale channel' if description['greyscale'] else '3 channels'}, float images in [0, 1]).",
        "",
        "```python",
        "import timm",
        f'encoder = timm.create_model("hf_hub:{repo_id or "OWNER/REPO"}", pretrained=True)  # pooled features',
        "```",
        "",
        f"The finetuned head is `{HEAD_FILE}`; `config.json` describes it under `{CONFIG_KEY}`.",
        "",
        "## Outputs",
        "",
    ]
    if description.get("schema"):
        lines.append(f"Galaxy Zoo decision tree `{description['schema']}` (Dirichlet concentrations per answer):")
    lines += [f"- `{column}`" for column in description["label_cols"]]
    if description.get("class_names"):
        lines += ["", "Classes: " + ", ".join(f"`{name}`" for name in description["class_names"])]
    lines += ["", "## Training data", ""]
    if data:
        lines += [
            f"- manifest sha256: `{data['manifest_sha256']}`",
            f"- source: `{data['source']}`",
            f"- images: {data['image_shape']}, counts {data['counts']}",
        ]
        if data.get("provenance"):
            lines.append(f"- provenance: `{json.dumps(data['provenance'], sort_keys=True)}`")
    else:
        lines.append("The training dataset was not found when this model was exported.")
    lines += ["", "## Metrics", ""]
    lines += [f"- {name}: {value:.6g}" for name, value in sorted(metrics.items())] or ["Not recorded."]
    lines += ["", "## Config", "", "```yaml", yaml.safe_dump(config, sort_keys=False).strip() if config else "", "```"]
    lines += ["", f"Checkpoint sha256: `{description['checkpoint_sha256']}`", ""]
    return "\n".join(lines)


def load_export(out_dir: str | Path):
    """The finetuneable model of an export (encoder from `local-dir:OUT_DIR`, head from `head.safetensors`)."""
    from safetensors.torch import load_file

    from zoobot_hpc.model import MODEL_CLASSES

    out_dir = Path(out_dir)
    description = json.loads((out_dir / "config.json").read_text())[CONFIG_KEY]
    settings = {key: description[key] for key in TASK_KEYS if key in description}
    model = MODEL_CLASSES[description["task"]](
        name=f"local-dir:{out_dir}",
        greyscale=description["greyscale"],
        head_dropout_prob=description["head_dropout_prob"],
        **settings,
    )
    model.head.load_state_dict(load_file(str(out_dir / description["head_file"])))
    return model.eval()


def push_export(out_dir: str | Path, repo_id: str, private: bool = True, api: Any = None) -> str:
    """Create the Hub model repository `repo_id` (if needed; private unless `private=False`) and upload the export
    folder; returns the commit URL. A folder holding a token-looking string is refused before anything is sent."""
    _refuse_secrets(Path(out_dir), f"push of {out_dir} refused")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(
        folder_path=str(out_dir),
        repo_id=repo_id,
        repo_type="model",
        commit_message="Upload model exported with zoobot-hpc",
    )
    return str(getattr(commit, "commit_url", commit))
