"""Dataset validation: the summary is right, and every kind of damage is a one-line error naming the file."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from zoobot_hpc.cli import main
from zoobot_hpc.data.shard_format import DatasetError, open_shard, read_manifest, write_manifest, write_shard
from zoobot_hpc.data.validate import validate_dataset


def _inspect(dataset_dir: Path, *options: str):
    return CliRunner().invoke(main, ["inspect", str(dataset_dir), *options])


def _rewrite_shard(dataset_dir: Path, file: str, edit: Callable[[dict], None]) -> None:
    """Rewrite one shard with edited contents and update the manifest so that sizes and checksums agree."""
    with open_shard(dataset_dir / file) as handle:
        contents = {
            "images": handle["images"][:],
            "ids": list(handle["ids"].asstr()[:]),
            "labels": {name: handle[f"labels/{name}"][:] for name in handle["labels"]},
            "split": handle.attrs["split"],
        }
    edit(contents)
    info = write_shard(dataset_dir / file, **contents)
    manifest = read_manifest(dataset_dir)
    splits = {
        split: tuple(info if shard.file == file else shard for shard in shards)
        for split, shards in manifest.splits.items()
    }
    write_manifest(dataset_dir, dataclasses.replace(manifest, splits=splits))


def _edit_manifest(dataset_dir: Path, edit: Callable[[dict], None]) -> None:
    path = dataset_dir / "manifest.json"
    raw = json.loads(path.read_text())
    edit(raw)
    path.write_text(json.dumps(raw))


def _flip_first_image_byte(dataset_dir: Path) -> None:
    path = dataset_dir / "train-00001.h5"
    with h5py.File(path, "r") as handle:
        offset = handle["images"].id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as raw:
        raw.seek(offset)
        value = raw.read(1)[0]
        raw.seek(offset)
        raw.write(bytes([value ^ 0xFF]))


def _train_ids(dataset_dir: Path) -> list[str]:
    with open_shard(dataset_dir / "train-00000.h5") as handle:
        return list(handle["ids"].asstr()[:])


def _repeat_train_ids(dataset_dir: Path) -> None:
    ids = _train_ids(dataset_dir)
    _rewrite_shard(dataset_dir, "val-00000.h5", lambda c: c["ids"].__setitem__(slice(0, 2), ids[:2]))


def _half_size_images(contents: dict) -> None:
    contents["images"] = np.ascontiguousarray(contents["images"][:, ::2, ::2])


def _nan_label(contents: dict) -> None:
    contents["labels"]["axis_ratio"][3] = np.nan


# (damage, inspect options, file named in the problem, problem text)
DAMAGE = {
    "missing shard": (
        lambda d: (d / "train-00001.h5").unlink(),
        (),
        "train-00001.h5",
        "shard file is missing",
    ),
    "truncated shard": (
        lambda d: (d / "train-00001.h5").write_bytes((d / "train-00001.h5").read_bytes()[:5000]),
        (),
        "train-00001.h5",
        "bytes but the manifest says",
    ),
    "corrupt shard": (
        lambda d: (d / "test-00000.h5").write_bytes(b"\0" * (d / "test-00000.h5").stat().st_size),
        ("--no-checksums",),
        "test-00000.h5",
        "not a readable HDF5 file",
    ),
    "checksum mismatch": (_flip_first_image_byte, ("--checksums",), "train-00001.h5", "sha256 checksum mismatch"),
    "manifest count disagrees": (
        lambda d: _edit_manifest(d, lambda raw: raw["splits"]["train"][0].update(count=49)),
        (),
        "train-00000.h5",
        "50 images but the manifest says 49",
    ),
    "manifest label columns disagree": (
        lambda d: _edit_manifest(d, lambda raw: raw["label_columns"].update(redshift="float32")),
        (),
        "train-00000.h5",
        "label columns ['redshift'] listed in the manifest are missing",
    ),
    "unknown label column": (
        lambda d: None,
        ("--label-col", "bars"),
        "manifest.json",
        "label column 'bars' does not",
    ),
    "mixed image sizes": (
        lambda d: _rewrite_shard(d, "val-00000.h5", _half_size_images),
        (),
        "val-00000.h5",
        "(mixed image sizes)",
    ),
    "repeated ids": (_repeat_train_ids, (), "train-00000.h5, val-00000.h5", "2 ids repeat across shards"),
    "non-finite labels": (
        lambda d: _rewrite_shard(d, "train-00002.h5", _nan_label),
        (),
        "train-00002.h5",
        "label 'axis_ratio' has 1 non-finite values (NaN is not allowed), first nan at id",
    ),
}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_inspect_reports_damage_in_one_line_naming_the_file(demo_copy: Path, name: str) -> None:
    damage, options, file, problem = DAMAGE[name]
    damage(demo_copy)
    result = _inspect(demo_copy, *options)
    assert result.exit_code == 1, result.output
    problem_lines = [line for line in result.output.splitlines() if problem in line]
    assert problem_lines, result.output
    assert file in problem_lines[0]
    with pytest.raises(DatasetError) as error:
        validate_dataset(
            demo_copy,
            required_label_cols=options[1:] if options[:1] == ("--label-col",) else None,
            verify_checksums="--checksums" in options,
        )
    assert "\n" not in str(error.value) and file.split(",")[0] in str(error.value)


def test_checksums_are_skipped_on_request(demo_copy: Path) -> None:
    _flip_first_image_byte(demo_copy)
    assert _inspect(demo_copy, "--no-checksums").exit_code == 0
    validate_dataset(demo_copy)
    with pytest.raises(DatasetError, match="sha256 checksum mismatch"):
        validate_dataset(demo_copy, verify_checksums=True)


def test_missing_directory_and_manifest(tmp_path: Path) -> None:
    result = _inspect(tmp_path / "nowhere")
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {tmp_path / 'nowhere'}: dataset directory does not exist"
    result = _inspect(tmp_path)
    assert result.exit_code == 1 and f"{tmp_path / 'manifest.json'}: manifest is missing" in result.output


def test_first_problem_is_raised_and_the_rest_counted(demo_copy: Path) -> None:
    (demo_copy / "train-00001.h5").unlink()
    (demo_copy / "test-00000.h5").unlink()
    with pytest.raises(DatasetError, match=r"train-00001.h5: shard file is missing \(and 1 more; run") as error:
        validate_dataset(demo_copy)
    assert "\n" not in str(error.value)


def test_requested_image_shape_must_match(demo_dataset: Path) -> None:
    validate_dataset(demo_dataset, image_shape=32, channels=3)
    validate_dataset(demo_dataset, image_shape=(32, 32, 3))
    with pytest.raises(DatasetError, match=r"images are 32x32x3 .* but 64x64x3 was requested"):
        validate_dataset(demo_dataset, image_shape=64)
    with pytest.raises(DatasetError, match="but 32x32x1 was requested"):
        validate_dataset(demo_dataset, channels=1)


def test_summary_counts_and_label_statistics(demo_dataset: Path) -> None:
    summary = validate_dataset(demo_dataset, required_label_cols=["label", "axis_ratio"], verify_checksums=True)
    manifest = read_manifest(demo_dataset)
    assert summary.is_valid and summary.image_shape == (32, 32, 3)
    assert summary.split_counts == {split: manifest.split_count(split) for split in manifest.splits}
    assert summary.shard_counts["train"] == {s.file: s.count for s in manifest.splits["train"]}
    values = []
    for shards in manifest.splits.values():
        for shard in shards:
            with open_shard(demo_dataset / shard.file) as handle:
                values.append(handle["labels/axis_ratio"][:].astype(np.float64))
    axis_ratio = np.concatenate(values)
    stats = summary.label_stats["axis_ratio"]
    assert stats.count == 200 and stats.nan_count == 0
    assert stats.min == pytest.approx(axis_ratio.min()) and stats.max == pytest.approx(axis_ratio.max())
    assert stats.mean == pytest.approx(axis_ratio.mean())

    report = _inspect(demo_dataset, "--checksums")
    assert report.exit_code == 0
    lines = report.output.splitlines()
    assert f"split train: {manifest.split_count('train')} images in {len(manifest.splits['train'])} shards" in lines
    assert "  train-00000.h5: 50" in lines and lines[-2:] == ["checksums verified", "VALID"]
    assert any(line.startswith("axis_ratio") and f"{axis_ratio.mean():.4g}" in line for line in lines)


def test_nan_is_accepted_where_the_manifest_allows_it(demo_copy: Path) -> None:
    _rewrite_shard(demo_copy, "train-00002.h5", _nan_label)
    _edit_manifest(demo_copy, lambda raw: raw.update(allow_nan=["axis_ratio"]))
    summary = validate_dataset(demo_copy)
    assert summary.label_stats["axis_ratio"].nan_count == 1
    _rewrite_shard(demo_copy, "train-00002.h5", lambda c: c["labels"]["axis_ratio"].__setitem__(4, np.inf))
    with pytest.raises(DatasetError, match="1 non-finite values \\(only NaN is allowed\\), first inf"):
        validate_dataset(demo_copy)


def test_checksums_are_parallel_and_incremental(demo_copy: Path) -> None:
    shards = len(list(demo_copy.glob("*.h5")))
    first = validate_dataset(demo_copy, verify_checksums=True, workers=2)
    assert first.checksums_hashed == shards
    assert validate_dataset(demo_copy, verify_checksums=True).checksums_hashed == 0
    _flip_first_image_byte(demo_copy)
    with pytest.raises(DatasetError, match=r"train-00001\.h5: sha256 checksum mismatch"):
        validate_dataset(demo_copy, verify_checksums=True)


def test_unchanged_shards_are_not_read_again_and_a_changed_one_is(demo_copy: Path) -> None:
    shards = len(list(demo_copy.glob("*.h5")))
    first = validate_dataset(demo_copy, required_label_cols=["label"])
    again = validate_dataset(demo_copy, required_label_cols=["label"])
    assert first.shards_reused == 0 and again.shards_reused == shards
    assert again.split_counts == first.split_counts and again.pixels_sampled == first.pixels_sampled
    for name, stats in first.label_stats.items():
        assert dataclasses.astuple(again.label_stats[name]) == pytest.approx(dataclasses.astuple(stats), nan_ok=True)
    _repeat_train_ids(demo_copy)  # rewrites val-00000.h5 (and the manifest entry) with two train ids
    with pytest.raises(DatasetError, match="2 ids repeat across shards"):
        validate_dataset(demo_copy)
