"""The synthetic demo dataset: schema, consistent vote counts, determinism and learnability."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner

from zoobot_hpc.cli import main
from zoobot_hpc.data.demo import DEMO_TREE_SCHEMA, write_demo_dataset
from zoobot_hpc.data.shard_format import open_shard, read_manifest
from zoobot_hpc.data.validate import validate_dataset

VOTE_COLUMNS = [
    "smooth-or-featured_smooth",
    "smooth-or-featured_featured-or-disk",
    "disk-edge-on_yes",
    "disk-edge-on_no",
    "has-spiral-arms_yes",
    "has-spiral-arms_no",
]


def _load_split(dataset_dir: Path, split: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    manifest = read_manifest(dataset_dir)
    images, labels = [], {name: [] for name in manifest.label_columns}
    for shard in manifest.splits[split]:
        with open_shard(dataset_dir / shard.file) as handle:
            images.append(handle["images"][:])
            for name in labels:
                labels[name].append(handle[f"labels/{name}"][:])
    return np.concatenate(images), {name: np.concatenate(parts) for name, parts in labels.items()}


def test_schema_and_label_columns(demo_dataset: Path) -> None:
    manifest = validate_dataset(demo_dataset, verify_checksums=True)
    assert DEMO_TREE_SCHEMA["question_answer_pairs"] == {
        "smooth-or-featured": ["smooth", "featured-or-disk"],
        "disk-edge-on": ["yes", "no"],
        "has-spiral-arms": ["yes", "no"],
    }
    assert DEMO_TREE_SCHEMA["dependencies"] == {
        "smooth-or-featured": None,
        "disk-edge-on": "smooth-or-featured_featured-or-disk",
        "has-spiral-arms": "disk-edge-on_no",
    }
    assert list(manifest.label_stats) == ["label", "axis_ratio", *VOTE_COLUMNS]
    assert {name: stats.dtype for name, stats in manifest.label_stats.items()} == {
        "label": "int64",
        "axis_ratio": "float32",
        **dict.fromkeys(VOTE_COLUMNS, "float32"),
    }
    assert manifest.image_shape == (32, 32, 3)
    assert set(manifest.split_counts) == {"train", "val", "test"}
    assert sum(manifest.split_counts.values()) == 200
    assert len(manifest.shard_counts["train"]) >= 3


def test_votes_follow_the_tree(demo_dataset: Path) -> None:
    _, labels = _load_split(demo_dataset, "train")
    votes = {name: labels[name] for name in VOTE_COLUMNS}
    for values in votes.values():
        np.testing.assert_array_equal(values, np.round(values))
        assert (values >= 0).all()
    first_question = votes["smooth-or-featured_smooth"] + votes["smooth-or-featured_featured-or-disk"]
    assert first_question.min() >= 35 and first_question.max() <= 45
    np.testing.assert_array_equal(
        votes["disk-edge-on_yes"] + votes["disk-edge-on_no"], votes["smooth-or-featured_featured-or-disk"]
    )
    np.testing.assert_array_equal(votes["has-spiral-arms_yes"] + votes["has-spiral-arms_no"], votes["disk-edge-on_no"])
    smooth_fraction = votes["smooth-or-featured_smooth"] / first_question
    label = labels["label"]
    assert set(np.unique(label)) == {0, 1, 2}
    assert smooth_fraction[label == 0].mean() > 0.6 > smooth_fraction[label != 0].mean()
    edge_on = votes["disk-edge-on_yes"] / np.maximum(votes["smooth-or-featured_featured-or-disk"], 1)
    assert edge_on[label == 2].mean() > 0.6 > edge_on[label == 1].mean()
    axis_ratio = labels["axis_ratio"]
    assert ((axis_ratio > 0) & (axis_ratio <= 1)).all()
    assert axis_ratio[label == 2].max() < axis_ratio[label != 2].mean()


def test_same_seed_same_dataset_whatever_the_workers(tmp_path: Path) -> None:
    serial = write_demo_dataset(tmp_path / "a", n_galaxies=60, image_size=16, seed=3)
    parallel = write_demo_dataset(tmp_path / "b", n_galaxies=60, image_size=16, seed=3, num_workers=2)
    other_seed = write_demo_dataset(tmp_path / "c", n_galaxies=60, image_size=16, seed=4)
    assert serial.splits == parallel.splits
    assert serial.splits["train"][0].sha256 != other_seed.splits["train"][0].sha256
    assert [s.count for s in serial.splits["train"]] == [s.count for s in other_seed.splits["train"]]


def test_classes_are_learnable_by_a_linear_model(tmp_path: Path) -> None:
    """Logistic regression on 16x16 downsampled pixels separates the three classes well above chance."""
    write_demo_dataset(tmp_path / "demo", n_galaxies=1200, image_size=32, seed=1)
    train_images, train_labels = _load_split(tmp_path / "demo", "train")
    test_images, test_labels = _load_split(tmp_path / "demo", "test")

    def features(images: np.ndarray) -> torch.Tensor:
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        return torch.nn.functional.avg_pool2d(pixels, 2).flatten(1)

    train_x, test_x = features(train_images), features(test_images)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    train_y = torch.from_numpy(train_labels["label"])
    torch.manual_seed(0)
    model = torch.nn.Linear(train_x.shape[1], 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(200):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(train_x), train_y).backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = (model(test_x).argmax(1).numpy() == test_labels["label"]).mean()
    chance = np.bincount(test_labels["label"]).max() / len(test_labels["label"])
    assert accuracy > max(0.8, chance + 0.3)


def test_demo_data_command(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo-data", str(out), "--n", "50", "--size", "16", "--seed", "2"])
    assert result.exit_code == 0, result.output
    manifest = read_manifest(out)
    assert manifest.image_shape == (16, 16, 3) and sum(manifest.split_count(s) for s in manifest.splits) == 50
    inspected = CliRunner().invoke(main, ["inspect", str(out)])
    assert inspected.exit_code == 0 and inspected.output.strip().endswith("VALID")


def test_demo_data_shard_size(tmp_path: Path) -> None:
    out = tmp_path / "small-shards"
    args = ["demo-data", str(out), "--n", "150", "--size", "16", "--shard-size", "7KB"]
    assert CliRunner().invoke(main, args).exit_code == 0
    manifest = read_manifest(out)
    per_shard = 7 * 1024 // (16 * 16 * 3)
    assert len(manifest.splits["train"]) > 1 and all(s.count <= per_shard for s in manifest.splits["train"])
    assert sum(manifest.split_count(s) for s in manifest.splits) == 150
