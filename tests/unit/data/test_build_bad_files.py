"""Bad image files cost only themselves: every good image is decoded once over a failed build and its reruns."""

from __future__ import annotations

import json
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image, ImageFile

from zoobot_hpc.cli import main
from zoobot_hpc.data.build import REPORT_NAME, build_dataset
from zoobot_hpc.data.shard_format import DatasetError, open_shard, read_manifest
from zoobot_hpc.data.validate import validate_dataset

DECODES: Counter[str] = Counter()
_MAGIC = b"CNT1"


class CountingImageFile(ImageFile.ImageFile):
    """A real (tiny) image format, registered with Pillow: a header and raw RGB bytes; every decode is counted."""

    format = "CNT1"
    format_description = "test format that counts its decodes"

    def _open(self) -> None:
        width, height = struct.unpack("<II", self.fp.read(12)[4:12])
        self._mode, self._size = "RGB", (width, height)
        self.tile = [ImageFile._Tile("raw", (0, 0, width, height), 12, ("RGB", 0, 1))]

    def load(self):
        if self.tile:  # pixels not read yet (load() returns at once afterwards)
            DECODES[Path(self.filename).name] += 1
        return super().load()


Image.register_open(CountingImageFile.format, CountingImageFile, lambda prefix: prefix[:4] == _MAGIC)


def _write_counting_image(path: Path, rng: np.random.Generator) -> None:
    pixels = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    path.write_bytes(_MAGIC + struct.pack("<II", 20, 20) + pixels.tobytes())


@pytest.fixture
def bad_catalog(tmp_path: Path) -> Path:
    """36 images (the counting format) and 5 bad files: missing, empty, text, truncated JPEG, truncated PNG."""
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for index in range(36):
        name = f"good_{index}.cnt"
        _write_counting_image(images / name, rng)
        rows.append({"file_loc": f"images/{name}", "id_str": f"g{index}", "label": index % 3})
    jpeg, png = images / "truncated.jpg", images / "truncated.png"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(jpeg, quality=90)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(png)
    jpeg.write_bytes(jpeg.read_bytes()[:300])
    png.write_bytes(png.read_bytes()[:200])
    (images / "empty.png").write_bytes(b"")
    (images / "notes.jpg").write_text("not an image at all\n")
    bad = ["images/missing.png", "images/empty.png", "images/notes.jpg", "images/truncated.jpg", "images/truncated.png"]
    for offset, relative in enumerate(bad):
        rows.insert(3 + 7 * offset, {"file_loc": relative, "id_str": f"bad{offset}", "label": 0})
    catalog = tmp_path / "catalog.csv"
    pd.DataFrame(rows).to_csv(catalog, index=False)
    return catalog


OPTIONS = {"label_cols": ["label"], "size": 16, "shard_size_bytes": 16 * 16 * 3 * 6, "progress": False}


def _report(out: Path) -> dict:
    return json.loads((out / REPORT_NAME).read_text())


def _images_by_id(out: Path) -> dict[str, np.ndarray]:
    manifest = read_manifest(out)
    images = {}
    for shards in manifest.splits.values():
        for shard in shards:
            with open_shard(out / shard.file) as handle:
                for index, id_ in enumerate(handle["ids"].asstr()[:]):
                    images[id_] = handle["images"][index]
    return images


def test_fail_then_skip_then_fixed_decodes_every_good_image_once(bad_catalog: Path, tmp_path: Path) -> None:
    DECODES.clear()
    out = tmp_path / "shards"
    with pytest.raises(DatasetError, match="5 unreadable images") as error:
        build_dataset(bad_catalog, out, **OPTIONS)
    assert "readable images are kept" in str(error.value)
    assert not (out / "manifest.json").exists()
    assert set(DECODES) == {f"good_{i}.cnt" for i in range(36)} and set(DECODES.values()) == {1}
    first = _report(out)
    assert first["images_decoded"] == 36 and first["failed_count"] == 5
    assert {failure["id"] for failure in first["failed"]} == {f"bad{i}" for i in range(5)}

    manifest = build_dataset(bad_catalog, out, **{**OPTIONS, "on_error": "skip"})
    assert sum(manifest.split_count(split) for split in manifest.splits) == 36
    assert set(DECODES.values()) == {1}, "a rerun with skip decoded good images again"
    second = _report(out)
    assert second["images_decoded"] == 0 and second["shards_written"] == 0
    assert second["shards_reused"] == sum(len(shards) for shards in manifest.splits.values())
    assert {failure["id"] for failure in second["failed"]} == {f"bad{i}" for i in range(5)}
    validate_dataset(out, verify_checksums=True)

    # Fix two of the bad files: only they are decoded; their shards are rewritten from the old shards' pixels.
    rng = np.random.default_rng(1)
    for relative in ("images/missing.png", "images/notes.jpg"):
        _write_counting_image(bad_catalog.parent / relative, rng)
    fixed = build_dataset(bad_catalog, out, **{**OPTIONS, "on_error": "skip"})
    assert sum(fixed.split_count(split) for split in fixed.splits) == 38
    assert DECODES["missing.png"] == 1 and DECODES["notes.jpg"] == 1
    assert set(DECODES.values()) == {1}, "fixing a file decoded its shard's good images again"
    third = _report(out)
    assert third["images_decoded"] == 2 and third["images_copied"] > 0 and third["failed_count"] == 3
    validate_dataset(out, verify_checksums=True)

    fresh = tmp_path / "fresh"
    build_dataset(bad_catalog, fresh, **{**OPTIONS, "on_error": "skip"})
    assert read_manifest(fresh).splits == fixed.splits
    expected, rebuilt = _images_by_id(fresh), _images_by_id(out)
    assert expected.keys() == rebuilt.keys()
    for id_, image in expected.items():
        np.testing.assert_array_equal(rebuilt[id_], image)


def test_skip_names_the_skipped_images_on_the_terminal(bad_catalog: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    args = ["shard", str(bad_catalog), "--out", str(out), "--label-col", "label", "--size", "16", "--no-progress"]
    failed = CliRunner().invoke(main, args)
    assert failed.exit_code == 1
    assert "could not read 5 unreadable image(s)" in failed.output and "5 unreadable images" in failed.output

    result = CliRunner().invoke(main, [*args, "--on-error", "skip"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"skipped 5 unreadable image(s) (all listed in {out / REPORT_NAME}):"
    named = {line.split(" [")[0].strip() for line in lines[1:6]}
    assert named == {
        str(bad_catalog.parent / "images" / n)
        for n in ("missing.png", "empty.png", "notes.jpg", "truncated.jpg", "truncated.png")
    }
    assert all(": " in line for line in lines[1:6])
    assert lines[-1].startswith(f"wrote {out}: ")


def test_a_resume_trusts_writer_records_and_rehashes_only_changed_shards(bad_catalog: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    options = {**OPTIONS, "on_error": "skip"}
    first = build_dataset(bad_catalog, out, **options)
    shard = first.splits["train"][0]
    path = out / shard.file
    # Same size, different bytes, new mtime: the record no longer matches, so the shard is checked and re-hashed.
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(data))
    second = build_dataset(bad_catalog, out, **options)
    assert second.splits == first.splits
    report = _report(out)
    assert report["shards_written"] == 0 and report["images_decoded"] == 0
