"""Images that are not 8-bit JPEG/PNG files: FITS cutouts, 16-bit PNG, float TIFF, Hugging Face datasets."""

import io
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from zoobot_hpc.cli import main
from zoobot_hpc.data.shard_format import read_manifest
from zoobot_hpc.data.validate import inspect_dataset

SIZE = 16


def shard_images(dataset_dir: Path) -> dict[str, np.ndarray]:
    """Every image of a built dataset by id."""
    import h5py

    images = {}
    for shard in sorted(dataset_dir.glob("*.h5")):
        with h5py.File(shard, "r") as handle:
            images.update(zip(handle["ids"].asstr()[:], handle["images"][:], strict=True))
    return images


def run_shard(catalog: Path, out: Path, *options: str):
    args = ["shard", str(catalog), "--out", str(out), "--size", str(SIZE), "--no-progress", *options]
    return CliRunner().invoke(main, args)


def expected_asinh(values: np.ndarray, low_pct=0.5, high_pct=99.5, softening=0.1) -> np.ndarray:
    """The asinh stretch written out independently of zoobot_hpc.data.stretch."""
    finite = np.isfinite(values)
    low, high = np.percentile(values[finite], [low_pct, high_pct])
    x = np.clip((np.nan_to_num(values, nan=low) - low) / (high - low), 0, 1)
    return np.round(255 * np.arcsinh(x / softening) / np.arcsinh(1 / softening)).astype(np.uint8)


def sky(seed: int, with_nan: bool) -> np.ndarray:
    """A float32 galaxy: an exponential profile on a noisy sky, spanning five decades; brighter towards the top
    as FITS viewers show it (FITS stores the bottom row first)."""
    coords = np.arange(SIZE) - SIZE / 2
    radius = np.hypot(*np.meshgrid(coords, coords))
    image = 1e4 * np.exp(-radius / 1.5) + np.random.default_rng(seed).normal(0, 0.5, (SIZE, SIZE))
    image += np.linspace(0, 50, SIZE)[:, None]  # bottom (FITS row 0) faint, top bright
    if with_nan:
        image[0, :4] = np.nan
    return image.astype(np.float32)


def test_fits_cutouts_of_one_and_three_bands_shard_with_the_chosen_stretch(tmp_path):
    from astropy.io import fits

    grey, bands = sky(0, with_nan=True), np.stack([sky(1, False), sky(2, False) * 2, sky(3, False) * 4])
    fits.PrimaryHDU(grey).writeto(tmp_path / "grey.fits")
    # three bands in three tile-compressed HDUs (GZIP, lossless) of one .fits.fz file
    hdus = [fits.PrimaryHDU()] + [
        fits.CompImageHDU(band, compression_type="GZIP_1", quantize_level=0.0) for band in bands
    ]
    fits.HDUList(hdus).writeto(tmp_path / "grz.fits.fz")
    grey_catalog, grz_catalog = tmp_path / "grey.csv", tmp_path / "grz.csv"
    pd.DataFrame({"id_str": ["grey"], "file_loc": ["grey.fits"]}).to_csv(grey_catalog, index=False)
    pd.DataFrame({"id_str": ["grz"], "file_loc": ["grz.fits.fz"]}).to_csv(grz_catalog, index=False)

    refused = run_shard(grey_catalog, tmp_path / "refused")
    assert refused.exit_code != 0 and "grey.fits: FITS pixels need a stretch" in refused.output

    result = run_shard(grz_catalog, tmp_path / "rgb", "--stretch", "asinh", "--bands", "2,1,0")
    assert result.exit_code == 0, result.output
    assert inspect_dataset(tmp_path / "rgb").is_valid
    assert read_manifest(tmp_path / "rgb").provenance["image_scaling"] == {
        "stretch": "asinh",
        "low_percentile": 0.5,
        "high_percentile": 99.5,
        "asinh_softening": 0.1,
        "bands": [2, 1, 0],
    }
    # 16 px cutouts are stored as they are (no resize): compare pixel for pixel, bands reordered, rows flipped
    expected = expected_asinh(bands[::-1].transpose(1, 2, 0)[::-1])
    np.testing.assert_array_equal(shard_images(tmp_path / "rgb")["grz"], expected)

    grey_rgb = run_shard(grey_catalog, tmp_path / "grey", "--stretch", "asinh")
    assert grey_rgb.exit_code == 0, grey_rgb.output
    stored = shard_images(tmp_path / "grey")["grey"]
    assert (stored[..., 0] == stored[..., 1]).all() and (stored[..., 0] == stored[..., 2]).all()
    np.testing.assert_array_equal(stored[..., 0], expected_asinh(grey[::-1]))
    assert (stored[-1, :4] == 0).all()  # NaN pixels (FITS row 0, shown at the bottom) become 0
    assert stored.min() == 0 and stored.max() == 255 and len(np.unique(stored)) > 50  # the range survives

    single = run_shard(grz_catalog, tmp_path / "one", "--stretch", "percentile", "--channels", "1", "--bands", "1")
    assert single.exit_code == 0, single.output
    assert read_manifest(tmp_path / "one").image_shape == (SIZE, SIZE, 1)
    two = run_shard(grz_catalog, tmp_path / "two", "--stretch", "percentile", "--bands", "0,1")
    assert two.exit_code != 0 and "2 image planes; choose 1 or 3 of them with --bands" in two.output


@pytest.mark.parametrize(
    ("name", "pixels", "mode", "depth"),
    [
        ("deep.png", (np.arange(SIZE * SIZE).reshape(SIZE, SIZE) * 200 + 1000).astype(np.uint16), "I;16", "16-bit"),
        ("deep.tif", np.linspace(-1e-3, 4e-3, SIZE * SIZE, dtype=np.float32).reshape(SIZE, SIZE), "F", "32-bit float"),
    ],
)
def test_16_bit_png_and_float_tiff_keep_their_range_or_are_refused(tmp_path, name, pixels, mode, depth):
    image = Image.fromarray(pixels)
    assert image.mode == mode
    image.save(tmp_path / name)
    catalog = tmp_path / "catalog.csv"
    pd.DataFrame({"id_str": ["a"], "file_loc": [name]}).to_csv(catalog, index=False)

    refused = run_shard(catalog, tmp_path / "refused", "--channels", "1")
    assert refused.exit_code != 0
    assert f"{name}: {depth} pixels (PIL mode {mode}) would lose their range as 8-bit" in refused.output

    result = run_shard(
        catalog, tmp_path / "out", "--channels", "1", "--stretch", "percentile", "--percentiles", "0,100"
    )
    assert result.exit_code == 0, result.output
    stored = shard_images(tmp_path / "out")["a"][..., 0]
    ramp = (pixels.astype(np.float64) - pixels.min()) / (float(pixels.max()) - pixels.min())
    np.testing.assert_allclose(stored, np.round(255 * ramp), atol=0.5)
    assert read_manifest(tmp_path / "out").provenance["image_scaling"]["stretch"] == "percentile"


def test_npy_arrays_of_16_bit_colour_take_the_stretch(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 60000, (SIZE, SIZE, 3)).astype(np.uint16)
    np.save(tmp_path / "deep.npy", pixels)
    catalog = tmp_path / "catalog.csv"
    pd.DataFrame({"id_str": ["a"], "file_loc": ["deep.npy"]}).to_csv(catalog, index=False)
    refused = run_shard(catalog, tmp_path / "refused")
    assert (
        refused.exit_code != 0
        and "deep.npy: array dtype uint16 is not uint8 or float; choose --stretch" in refused.output
    )
    result = run_shard(catalog, tmp_path / "out", "--stretch", "percentile", "--percentiles", "0,100")
    assert result.exit_code == 0, result.output
    ramp = (pixels - pixels.min()) / (float(pixels.max()) - pixels.min())
    np.testing.assert_allclose(shard_images(tmp_path / "out")["a"], np.round(255 * ramp), atol=0.5)


def rgb48_png(pixels: np.ndarray) -> bytes:
    """A 16-bit-per-channel colour PNG, written by hand (PIL cannot write one)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width, _ = pixels.shape
    rows = b"".join(b"\x00" + pixels[row].astype(">u2").tobytes() for row in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_16_bit_colour_png_is_refused_rather_than_cut_to_its_top_byte(tmp_path):
    faint = np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3))  # all below 256: PIL would give all zeros
    (tmp_path / "rgb48.png").write_bytes(rgb48_png(faint))
    catalog = tmp_path / "catalog.csv"
    pd.DataFrame({"id_str": ["a"], "file_loc": ["rgb48.png"]}).to_csv(catalog, index=False)
    for options in ((), ("--stretch", "asinh")):
        result = run_shard(catalog, tmp_path / f"out{len(options)}", *options)
        assert result.exit_code != 0
        assert "rgb48.png: 16-bit colour pixels (RGB;16B) are decoded by PIL to their top 8 bits only" in result.output


def png_bytes(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((SIZE, SIZE, 3), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_hugging_face_parquet_and_save_to_disk_datasets_shard_without_extracting(tmp_path):
    datasets = pytest.importorskip("datasets")
    n = 12
    features = datasets.Features(
        {"image": datasets.Image(), "id_str": datasets.Value("string"), "ring_yes": datasets.Value("int64")}
    )
    rows = {
        "image": [{"bytes": png_bytes(10 * i), "path": f"galaxy_{i}.png"} for i in range(n)],
        "id_str": [f"g{i}" for i in range(n)],
        "ring_yes": list(range(n)),
    }
    dataset = datasets.Dataset.from_dict(rows, features=features)
    hub_folder = tmp_path / "hub" / "data"
    hub_folder.mkdir(parents=True)
    dataset.select(range(8)).to_parquet(hub_folder / "train-00000-of-00001.parquet")
    dataset.select(range(8, n)).to_parquet(hub_folder / "test-00000-of-00001.parquet")
    dataset.save_to_disk(tmp_path / "saved")

    from_hub = run_shard(
        tmp_path / "hub",
        tmp_path / "from_hub",
        "--image-col",
        "image",
        "--label-col",
        "ring_yes",
        "--split-col",
        "hf_split",
        "--workers",
        "2",  # the worker processes read the images from the parquet files themselves
    )
    assert from_hub.exit_code == 0, from_hub.output
    manifest = read_manifest(tmp_path / "from_hub")
    assert (manifest.split_count("train"), manifest.split_count("test")) == (8, 4)
    assert [entry["file"] for entry in manifest.provenance["files"]] == [
        "data/test-00000-of-00001.parquet",
        "data/train-00000-of-00001.parquet",
    ]
    images = shard_images(tmp_path / "from_hub")
    assert all((images[f"g{i}"] == 10 * i).all() for i in range(n))
    assert not list((tmp_path / "from_hub").glob("*.png"))

    saved = run_shard(tmp_path / "saved", tmp_path / "from_disk", "--image-col", "image", "--label-col", "ring_yes")
    assert saved.exit_code == 0, saved.output
    provenance = read_manifest(tmp_path / "from_disk").provenance
    assert provenance["datasets_fingerprint"] == [dataset._fingerprint]
    assert len(provenance["files"]) == 1 and len(provenance["files"][0]["sha256"]) == 64
    assert shard_images(tmp_path / "from_disk").keys() == images.keys()


def test_fits_without_astropy_names_the_extra_to_install(tmp_path, monkeypatch):
    from zoobot_hpc.data.fits_images import read_fits_planes

    monkeypatch.setitem(sys.modules, "astropy", None)  # as if astropy were not installed
    monkeypatch.setitem(sys.modules, "astropy.io", None)
    with pytest.raises(ImportError, match=r"reading FITS images needs astropy: pip install 'zoobot-hpc\[fits\]'"):
        read_fits_planes(tmp_path / "cutout.fits")
