"""The on-disk format: shards written atomically, manifests round-trip, errors are one line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from zoobot_hpc.data.shard_format import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    DatasetError,
    Manifest,
    ShardWriter,
    file_sha256,
    images_per_shard,
    open_shard,
    read_manifest,
    shard_file_name,
    write_manifest,
    write_shard,
)


def _shard_inputs(n: int = 6, size: int = 8, channels: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
    ids = [f"galaxy-{i}-ä" for i in range(n)]
    labels = {"label": np.arange(n) % 3, "votes": rng.random(n)}
    return images, ids, labels


def _manifest(shards) -> Manifest:
    return Manifest(
        format_version=FORMAT_VERSION,
        image_shape=(8, 8, 3),
        label_columns={"label": "int64", "votes": "float32"},
        allow_nan=("votes",),
        splits={"train": tuple(shards)},
        id_column="id_str",
        source="catalog.csv",
        created="2024-01-01T00:00:00+00:00",
    )


def test_write_shard_stores_the_documented_layout(tmp_path: Path) -> None:
    images, ids, labels = _shard_inputs()
    path = tmp_path / shard_file_name("train", 3)
    info = write_shard(path, images, ids, labels, "train")

    assert path.name == "train-00003.h5"
    assert info.file == path.name and info.count == 6
    assert info.size_bytes == path.stat().st_size and info.sha256 == file_sha256(path)
    assert not list(tmp_path.glob("*.tmp"))
    with open_shard(path, locking=False) as handle:
        stored = handle["images"]
        assert stored.dtype == np.uint8 and stored.chunks == (1, 8, 8, 3) and stored.compression is None
        np.testing.assert_array_equal(stored[:], images)
        assert list(handle["ids"].asstr()[:]) == ids
        assert handle["labels/label"].dtype == np.int64 and handle["labels/votes"].dtype == np.float32
        np.testing.assert_array_equal(handle["labels/label"][:], labels["label"])
        np.testing.assert_allclose(handle["labels/votes"][:], labels["votes"], rtol=1e-6)
        assert handle.attrs["format_version"] == FORMAT_VERSION
        assert handle.attrs["split"] == "train" and handle.attrs["count"] == 6
        assert tuple(handle.attrs["image_shape"]) == (8, 8, 3)
        assert json.loads(handle.attrs["label_columns"]) == {"label": "int64", "votes": "float32"}


def test_bad_shard_input_leaves_no_file(tmp_path: Path) -> None:
    images, ids, labels = _shard_inputs()
    path = tmp_path / "train-00000.h5"
    with pytest.raises(ValueError, match="5 ids for 6 images"):
        write_shard(path, images, ids[:5], labels, "train")
    with pytest.raises(ValueError, match="split must be one of"):
        write_shard(path, images, ids, labels, "training")
    with pytest.raises(ValueError, match="uint8"):
        write_shard(path, images.astype(np.float32), ids, labels, "train")
    with pytest.raises(ValueError, match="label 'votes' must have shape"):
        write_shard(path, images, ids, {"votes": np.zeros(3)}, "train")
    assert list(tmp_path.iterdir()) == []


def test_shard_appears_only_when_finished(tmp_path: Path) -> None:
    images, ids, labels = _shard_inputs()
    path = tmp_path / "val-00000.h5"
    with ShardWriter(path, (8, 8, 3), "val") as writer:
        writer.append(images[:4], ids[:4])
        writer.append(images[4:], ids[4:])
        assert not path.exists() and writer.tmp_path.exists()
        info = writer.finish(labels)
    assert path.exists() and not writer.tmp_path.exists() and info.count == 6
    with open_shard(path) as handle:
        np.testing.assert_array_equal(handle["images"][:], images)

    interrupted = tmp_path / "val-00001.h5"
    with pytest.raises(RuntimeError), ShardWriter(interrupted, (8, 8, 3), "val") as writer:
        writer.append(images, ids)
        raise RuntimeError("killed mid-shard")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["val-00000.h5"]


def test_manifest_round_trips_atomically(tmp_path: Path) -> None:
    images, ids, labels = _shard_inputs()
    first = write_shard(tmp_path / "train-00000.h5", images, ids, labels, "train")
    second = write_shard(
        tmp_path / "train-00001.h5", images[:2], ["x", "y"], {k: v[:2] for k, v in labels.items()}, "train"
    )
    manifest = _manifest([first, second])
    write_manifest(tmp_path, manifest)

    assert read_manifest(tmp_path) == manifest
    assert manifest.split_count("train") == 8 and manifest.split_count("test") == 0
    assert not (tmp_path / (MANIFEST_NAME + ".tmp")).exists()
    raw = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert raw["splits"]["train"][1] == {
        "file": "train-00001.h5",
        "count": 2,
        **{"size_bytes": second.size_bytes, "sha256": second.sha256},
    }
    assert raw["image_shape"] == [8, 8, 3] and raw["allow_nan"] == ["votes"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda raw: raw.pop("label_columns"), "missing keys \\['label_columns'\\]"),
        (lambda raw: raw.update(format_version=99), "unsupported format_version 99"),
        (lambda raw: raw.update(image_shape=[8, 8]), "image_shape must be"),
        (lambda raw: raw.update(label_columns={"label": "string"}), "dtypes must be one of"),
        (lambda raw: raw.update(allow_nan=["redshift"]), "allow_nan names unknown label columns"),
        (lambda raw: raw["splits"].update(holdout=[]), "unknown splits \\['holdout'\\]"),
    ],
)
def test_malformed_manifest_is_a_one_line_error(tmp_path: Path, edit, message: str) -> None:
    raw = _manifest([]).to_dict()
    edit(raw)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(DatasetError, match=message) as error:
        read_manifest(tmp_path)
    assert str(tmp_path / MANIFEST_NAME) in str(error.value) and "\n" not in str(error.value)


def test_missing_or_unparseable_manifest(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="dataset directory does not exist"):
        read_manifest(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="manifest is missing"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        read_manifest(tmp_path)


def test_open_shard_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="shard file is missing"):
        open_shard(tmp_path / "train-00000.h5")
    garbage = tmp_path / "train-00001.h5"
    garbage.write_bytes(b"definitely not hdf5" * 100)
    with pytest.raises(DatasetError, match="not a readable HDF5 file") as error:
        open_shard(garbage, locking=False)
    assert str(garbage) in str(error.value) and "\n" not in str(error.value)
    assert issubclass(DatasetError, ValueError)


def test_open_shard_is_read_only(tmp_path: Path) -> None:
    images, ids, labels = _shard_inputs()
    path = tmp_path / "test-00000.h5"
    write_shard(path, images, ids, labels, "test")
    with open_shard(path) as handle:
        assert handle.mode == "r"
        with pytest.raises(KeyError, match="no write intent"):
            handle.attrs["split"] = "train"


def test_images_per_shard_uses_the_image_byte_size() -> None:
    assert images_per_shard((224, 224, 3)) == 2 * 1024**3 // (224 * 224 * 3)
    assert images_per_shard((64, 64, 3), 64 * 64 * 3 * 10 + 5) == 10
    assert images_per_shard((64, 64, 3), 1) == 1
    with pytest.raises(ValueError, match="shard_size_bytes must be positive"):
        images_per_shard((64, 64, 3), 0)


def test_manifest_is_frozen() -> None:
    manifest = _manifest([])
    with pytest.raises(dataclasses.FrozenInstanceError):
        manifest.source = "elsewhere"  # type: ignore[misc]
