"""Catalog -> shards: formats, resizing, splits, parallel workers, unreadable images, resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from zoobot_hpc.cli import main
from zoobot_hpc.data.build import REPORT_NAME, build_dataset, hash_split, load_image
from zoobot_hpc.data.shard_format import DatasetError, open_shard, read_manifest
from zoobot_hpc.data.validate import validate_dataset


def _read_all(dataset_dir: Path) -> dict[str, dict]:
    """id -> {split, image, labels} over every shard of a dataset."""
    manifest = read_manifest(dataset_dir)
    rows = {}
    for split, shards in manifest.splits.items():
        for shard in shards:
            with open_shard(dataset_dir / shard.file) as handle:
                labels = {name: handle[f"labels/{name}"][:] for name in manifest.label_columns}
                for i, id_ in enumerate(handle["ids"].asstr()[:]):
                    rows[id_] = {
                        "split": split,
                        "image": handle["images"][i],
                        "labels": {name: values[i] for name, values in labels.items()},
                    }
    return rows


def _shard_hashes(dataset_dir: Path) -> dict[str, str]:
    manifest = read_manifest(dataset_dir)
    return {shard.file: shard.sha256 for shards in manifest.splits.values() for shard in shards}


def test_builds_a_valid_dataset_from_mixed_image_formats(image_catalog: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    manifest = build_dataset(
        image_catalog, out, label_cols=["label", "votes"], size=24, allow_nan=["votes"], progress=False
    )
    catalog = pd.read_csv(image_catalog)

    assert manifest.image_shape == (24, 24, 3)
    assert manifest.label_columns == {"label": "int64", "votes": "float32"}
    assert manifest.allow_nan == ("votes",) and manifest.id_column == "id_str"
    assert sum(manifest.split_count(s) for s in manifest.splits) == len(catalog)
    validate_dataset(out, required_label_cols=["label", "votes"], image_shape=24, channels=3)
    rows = _read_all(out)
    for record in catalog.itertuples():
        row = rows[record.id_str]
        assert row["labels"]["label"] == record.label
        np.testing.assert_equal(row["labels"]["votes"], np.float32(record.votes))
        assert row["image"].shape == (24, 24, 3)
    # A 24x24 uint8 .npy needs no resizing: stored bytes are the original pixels.
    original = np.load(image_catalog.parent / "images" / "galaxy_2.npy")
    np.testing.assert_array_equal(rows["gal-2"]["image"], original)
    report = json.loads((out / REPORT_NAME).read_text())
    assert report["failed_count"] == 0 and report["shards_written"] == len(_shard_hashes(out))


def test_load_image_resizes_and_converts_channels(image_catalog: Path) -> None:
    images = image_catalog.parent / "images"
    assert load_image(images / "galaxy_0.png", 16, 3).shape == (16, 16, 3)
    grey_png = load_image(images / "galaxy_0.png", 16, 1)
    assert grey_png.shape == (16, 16, 1) and grey_png.dtype == np.uint8
    float_npy = load_image(images / "galaxy_3.npy", 30, 3)
    expected = np.round(np.load(images / "galaxy_3.npy") * 255).astype(np.uint8)
    np.testing.assert_array_equal(float_npy[..., 0], expected)
    np.testing.assert_array_equal(float_npy[..., 0], float_npy[..., 2])


def test_greyscale_dataset(image_catalog: Path, tmp_path: Path) -> None:
    manifest = build_dataset(
        image_catalog, tmp_path / "grey", label_cols=["label"], size=16, channels=1, progress=False
    )
    assert manifest.image_shape == (16, 16, 1)
    validate_dataset(tmp_path / "grey", channels=1)


def test_hash_split_is_deterministic_and_follows_fractions() -> None:
    ids = [f"J{i:07d}" for i in range(20_000)]
    splits = hash_split(ids, (0.7, 0.2, 0.1))
    fractions = pd.Series(splits).value_counts(normalize=True)
    assert abs(fractions["train"] - 0.7) < 0.015 and abs(fractions["val"] - 0.2) < 0.015
    assert abs(fractions["test"] - 0.1) < 0.015
    reversed_splits = hash_split(ids[::-1], (0.7, 0.2, 0.1))[::-1]
    np.testing.assert_array_equal(splits, reversed_splits)
    assert set(hash_split(ids[:100], (1.0, 0.0, 0.0))) == {"train"}
    with pytest.raises(ValueError, match="split_fractions must be three non-negative numbers summing to 1"):
        hash_split(ids, (0.8, 0.3, 0.1))


def test_split_column_and_unlabelled_catalog(image_catalog: Path, tmp_path: Path) -> None:
    catalog = pd.read_csv(image_catalog)
    catalog["which"] = np.where(np.arange(len(catalog)) < 30, "train", "test")
    split_catalog = image_catalog.with_name("split.csv")
    catalog.to_csv(split_catalog, index=False)
    manifest = build_dataset(split_catalog, tmp_path / "a", label_cols=["label"], split_col="which", progress=False)
    assert manifest.split_count("train") == 30 and manifest.split_count("test") == 10
    assert "val" not in manifest.splits
    assert {row["split"] for id_, row in _read_all(tmp_path / "a").items() if int(id_[4:]) >= 30} == {"test"}

    unlabelled = build_dataset(image_catalog, tmp_path / "b", size=8, progress=False)
    assert list(unlabelled.splits) == ["predict"] and unlabelled.label_columns == {}
    validate_dataset(tmp_path / "b")


def test_parquet_and_parallel_builds_write_identical_shards(image_catalog: Path, tmp_path: Path) -> None:
    parquet = image_catalog.with_suffix(".parquet")
    pd.read_csv(image_catalog).to_parquet(parquet)
    options = {"label_cols": ["label", "redshift"], "size": 16, "shard_size_bytes": 16 * 16 * 3 * 7}
    serial = build_dataset(image_catalog, tmp_path / "serial", progress=False, **options)
    parallel = build_dataset(parquet, tmp_path / "parallel", num_workers=2, progress=False, **options)

    assert len(serial.splits["train"]) >= 3 and all(s.count <= 7 for s in serial.splits["train"])
    assert _shard_hashes(tmp_path / "serial") == _shard_hashes(tmp_path / "parallel")
    assert serial.splits == parallel.splits


def test_unreadable_images_fail_the_build_and_are_reported(image_catalog: Path, tmp_path: Path) -> None:
    (image_catalog.parent / "images" / "galaxy_5.jpg").write_bytes(b"not a jpeg")
    (image_catalog.parent / "images" / "galaxy_6.npy").unlink()
    out = tmp_path / "shards"
    with pytest.raises(DatasetError, match="2 unreadable images") as error:
        build_dataset(image_catalog, out, label_cols=["label"], size=16, progress=False)
    assert str(image_catalog) in str(error.value) and REPORT_NAME in str(error.value)
    assert not (out / "manifest.json").exists()
    report = json.loads((out / REPORT_NAME).read_text())
    assert {failure["id"] for failure in report["failed"]} == {"gal-5", "gal-6"}
    assert all(failure["path"] and failure["error"] for failure in report["failed"])
    assert not list(out.glob("*.tmp"))


def test_skip_mode_drops_and_reports_unreadable_images(image_catalog: Path, tmp_path: Path) -> None:
    (image_catalog.parent / "images" / "galaxy_5.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "shards"
    options = {"label_cols": ["label"], "size": 16, "on_error": "skip", "progress": False}
    manifest = build_dataset(image_catalog, out, **options)
    assert sum(manifest.split_count(s) for s in manifest.splits) == 39
    assert "gal-5" not in _read_all(out)
    assert [f["id"] for f in json.loads((out / REPORT_NAME).read_text())["failed"]] == ["gal-5"]

    rerun = build_dataset(image_catalog, out, **options)
    report = json.loads((out / REPORT_NAME).read_text())
    assert report["shards_reused"] == len(_shard_hashes(out)) and report["shards_written"] == 0
    assert [f["id"] for f in report["failed"]] == ["gal-5"] and rerun.splits == manifest.splits


def test_rebuild_resumes_and_skips_finished_shards(image_catalog: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    options = {"label_cols": ["label"], "size": 16, "shard_size_bytes": 16 * 16 * 3 * 8, "progress": False}
    first = build_dataset(image_catalog, out, **options)
    files = sorted(out.glob("*.h5"))
    stats = {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in files}
    files[0].unlink()
    files[1].with_name(files[1].name + ".tmp").write_bytes(b"half a shard from a killed build")

    second = build_dataset(image_catalog, out, **options)
    assert second.splits == first.splits
    for path in files[1:]:
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == stats[path.name]
    report = json.loads((out / REPORT_NAME).read_text())
    assert report["shards_written"] == 1 and report["shards_reused"] == len(files) - 1
    validate_dataset(out, verify_checksums=True)


def test_rebuild_rewrites_shards_whose_labels_or_sources_changed(image_catalog: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    options = {"label_cols": ["label"], "size": 16, "shard_size_bytes": 16 * 16 * 3 * 8, "progress": False}
    build_dataset(image_catalog, out, **options)
    files = {path.name: path.stat().st_mtime_ns for path in out.glob("*.h5")}
    catalog = pd.read_csv(image_catalog)
    relabelled, moved = catalog["id_str"].iloc[0], catalog["id_str"].iloc[-1]
    catalog.loc[0, "label"] = (catalog.loc[0, "label"] + 1) % 3
    moved_path = image_catalog.parent / "moved" / Path(catalog["file_loc"].iloc[-1]).name
    moved_path.parent.mkdir()
    moved_path.write_bytes((image_catalog.parent / catalog["file_loc"].iloc[-1]).read_bytes())
    catalog.loc[len(catalog) - 1, "file_loc"] = str(moved_path)
    catalog.to_csv(image_catalog, index=False)

    build_dataset(image_catalog, out, **options)
    rewritten = {name for name, mtime in files.items() if (out / name).stat().st_mtime_ns != mtime}
    holders = {}
    for path in out.glob("*.h5"):
        with h5py.File(path, "r") as handle:
            ids = list(handle["ids"].asstr()[:])
            for id_ in (relabelled, moved):
                if id_ in ids:
                    holders[id_] = path.name
                    if id_ == relabelled:
                        assert handle["labels/label"][ids.index(id_)] == catalog.loc[0, "label"]
    assert rewritten == set(holders.values()) and len(rewritten) == 2
    report = json.loads((out / REPORT_NAME).read_text())
    assert report["shards_written"] == 2 and report["shards_reused"] == len(files) - 2


@pytest.mark.parametrize(
    ("edit", "options", "message"),
    [
        (lambda c: c, {"label_cols": ["morphology"]}, "no label column 'morphology'"),
        (lambda c: c, {"image_col": "path"}, "no image column 'path'"),
        (lambda c: c.assign(index=1), {"label_cols": ["index"]}, "label column 'index' clashes with a sample key"),
        (lambda c: c.assign(id_str="same"), {}, "ids repeat in column 'id_str'"),
        (lambda c: c, {"label_cols": ["votes"]}, "label column 'votes' has 8 non-finite values"),
        (lambda c: c.assign(label="spiral"), {"label_cols": ["label"]}, "'label' is \\w+, expected numbers"),
        (lambda c: c.assign(which="holdout"), {"split_col": "which"}, "split column 'which' has values"),
    ],
)
def test_bad_catalogs_are_one_line_errors(image_catalog: Path, edit, options: dict, message: str) -> None:
    edit(pd.read_csv(image_catalog)).to_csv(image_catalog, index=False)
    with pytest.raises(DatasetError, match=message) as error:
        build_dataset(image_catalog, image_catalog.parent / "out", progress=False, **options)
    assert str(image_catalog) in str(error.value) and "\n" not in str(error.value)


def test_shard_command(image_catalog: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    args = ["shard", str(image_catalog), "--out", str(out), "--label-col", "label", "--label-col", "votes"]
    options = ["--allow-nan", "votes", "--size", "16", "--shard-size", "3KB", "--no-progress"]
    result = CliRunner().invoke(main, [*args, *options, "--split-fractions", "0.5,0.25,0.25"])
    assert result.exit_code == 0, result.output
    manifest = read_manifest(out)
    assert result.output.strip() == f"wrote {out}: " + ", ".join(
        f"{split} {manifest.split_count(split)}" for split in manifest.splits
    )
    assert all(shard.count == 4 for shard in manifest.splits["train"][:-1])

    failed = CliRunner().invoke(main, [*args, "--no-progress"])
    assert failed.exit_code == 1
    assert failed.output.strip().splitlines() == [
        f"Error: {image_catalog}: label column 'votes' has 8 non-finite values (first nan at id 'gal-0'); "
        "pass it in allow_nan if missing labels are expected"
    ]
    bad_size = CliRunner().invoke(main, [*args, "--shard-size", "lots"])
    assert bad_size.exit_code == 2 and "'lots' is not a positive size" in bad_size.output
