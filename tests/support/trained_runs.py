"""Fixtures for the inference, embedding-cache and report tests: small demo datasets and real trained runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from zoobot_hpc.core.config import RunConfig, build_config
from zoobot_hpc.data.demo import DEMO_TREE_SCHEMA, write_demo_dataset
from zoobot_hpc.training.run import run_training

IMAGE_SIZE = 32


@pytest.fixture(scope="session")
def train_data(tmp_path_factory) -> Path:
    """The dataset the test models are trained on (32 px)."""
    path = tmp_path_factory.mktemp("inference-data") / "train"
    write_demo_dataset(path, n_galaxies=96, image_size=IMAGE_SIZE, seed=1)
    return path


@pytest.fixture(scope="session")
def survey_data(tmp_path_factory) -> Path:
    """A second dataset (a 'survey' to predict on), same image size."""
    path = tmp_path_factory.mktemp("inference-data") / "survey"
    write_demo_dataset(path, n_galaxies=60, image_size=IMAGE_SIZE, seed=2)
    return path


MODEL_SETTINGS: dict[str, dict[str, Any]] = {
    "classifier": {"kind": "classifier", "num_classes": 3, "class_names": ["smooth", "spiral", "edge-on"]},
    "regressor": {"kind": "regressor", "label_col": "axis_ratio", "unit_interval": True},
    "tree": {"kind": "tree", **DEMO_TREE_SCHEMA},
}


def run_config(dataset: Path, output_dir: Path, kind: str = "classifier", **sections: dict[str, Any]) -> RunConfig:
    """A tiny, quick, deterministic run config (test_convnext, 32 px, no workers, no W&B)."""
    raw: dict[str, Any] = {
        "name": f"tiny-{kind}",
        "output_dir": str(output_dir),
        "data": {
            "dataset_dir": str(dataset),
            "batch_size": 16,
            "num_workers": 0,
            "augment": {"output_size": IMAGE_SIZE, "rotation": "90", "zoom_range": [1.0, 1.0], "translate": 0.0},
        },
        "model": {"name": "test_convnext", "pretrained": False, "learning_rate": 1e-3, **MODEL_SETTINGS[kind]},
        "trainer": {"max_epochs": 1, "deterministic": True, "checkpoint_every_minutes": None, "log_every_n_steps": 2},
        "resources": {"executor": "local", "cpus_per_task": 1, "time_min": 10},
        "tracking": {"mode": "disabled"},
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return build_config(raw)


def train_run(dataset: Path, run_dir: Path, kind: str) -> Path:
    """Train one tiny model for an epoch; returns its best checkpoint."""
    config = run_config(dataset, run_dir.parent, kind)
    outcome = run_training(config, run_dir, interactive=False)
    return Path(outcome.best_checkpoint)


@pytest.fixture(scope="session")
def classifier_checkpoint(train_data, tmp_path_factory) -> Path:
    return train_run(train_data, tmp_path_factory.mktemp("runs") / "classifier", "classifier")


@pytest.fixture(scope="session")
def tree_checkpoint(train_data, tmp_path_factory) -> Path:
    return train_run(train_data, tmp_path_factory.mktemp("runs") / "tree", "tree")


@pytest.fixture(scope="session")
def regressor_checkpoint(train_data, tmp_path_factory) -> Path:
    return train_run(train_data, tmp_path_factory.mktemp("runs") / "regressor", "regressor")
