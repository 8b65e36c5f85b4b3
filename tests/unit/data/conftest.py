"""Shared data fixtures: a small multi-shard demo dataset and an image catalog on disk."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from zoobot_hpc.data.demo import write_demo_dataset

DEMO_SIZE = 32
DEMO_IMAGES_PER_SHARD = 50


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only demo dataset: 200 galaxies of 32 px, at most 50 per shard (several train shards)."""
    out_dir = tmp_path_factory.mktemp("demo") / "dataset"
    write_demo_dataset(
        out_dir,
        n_galaxies=200,
        image_size=DEMO_SIZE,
        seed=0,
        shard_size_bytes=DEMO_SIZE**2 * 3 * DEMO_IMAGES_PER_SHARD,
    )
    return out_dir


@pytest.fixture
def demo_copy(demo_dataset: Path, tmp_path: Path) -> Path:
    """A private copy of `demo_dataset` that a test may damage."""
    return Path(shutil.copytree(demo_dataset, tmp_path / "dataset"))


def write_catalog_images(folder: Path, n_images: int, seed: int = 0) -> pd.DataFrame:
    """Write `n_images` small images in mixed formats (RGB PNG, greyscale JPEG, uint8 and float .npy).

    Returns the catalog rows (relative `file_loc`, `id_str`, int `label`, float `redshift`, `votes` with NaN).
    """
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(n_images):
        kind = index % 4
        relative = f"images/galaxy_{index}" + (".png", ".jpg", ".npy", ".npy")[kind]
        if kind == 0:
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / relative)
        elif kind == 1:
            Image.fromarray(rng.integers(0, 256, (24, 24), dtype=np.uint8)).save(folder / relative, quality=95)
        elif kind == 2:
            np.save(folder / relative, rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
        else:
            np.save(folder / relative, rng.random((30, 30)).astype(np.float32))
        rows.append(
            {
                "file_loc": relative,
                "id_str": f"gal-{index}",
                "label": int(rng.integers(0, 3)),
                "redshift": float(rng.random()),
                "votes": float("nan") if index % 5 == 0 else float(rng.integers(0, 40)),
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture
def image_catalog(tmp_path: Path) -> Path:
    """A CSV catalog of 40 mixed-format images next to its `images/` folder."""
    catalog = tmp_path / "catalog.csv"
    write_catalog_images(tmp_path, 40).to_csv(catalog, index=False)
    return catalog
