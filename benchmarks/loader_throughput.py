"""Loader throughput: a folder of JPEGs decoded in workers vs our HDF5 shards, with the same workers.

Builds the same synthetic galaxies as 424x424 JPEGs (as Galaxy Zoo serves them) and, through
``build_dataset``, as shards of ``--size`` pixels, then measures:

  (a) the Zoobot / galaxy-datasets way: PIL decode + resize + torchvision augmentation in the
      DataLoader workers, images/s of training-ready float batches;
  (b) our ``ShardDataModule`` train loader delivering uint8 batches (all the CPU work we need), and (b') the same
      with the opt-in worker batch pool (``data.batch_pool: true``, :mod:`zoobot_hpc.data.batch_memory`);
  (c) ``augment_batch`` on the device (``--device``), cost per image;
  (d) one process reading the same shards contiguously (h5py slices), images/s.

Loader rates are measured after the first batch of the first pass (worker start-up excluded) over
``--passes`` epochs with persistent workers. All files are in the page cache (just written).
Run ``python benchmarks/loader_throughput.py --help`` for the sizes, workers and device.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode, v2

from zoobot_hpc.data.augment import AugmentConfig, augment_batch
from zoobot_hpc.data.build import build_dataset
from zoobot_hpc.data.datamodule import ShardDataModule
from zoobot_hpc.data.demo import make_galaxy
from zoobot_hpc.data.shard_format import IMAGES_KEY, open_shard, read_manifest

UNIQUE_GALAXIES = 128


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3000, help="number of images")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for (a) and (b)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--size", type=int, default=224, help="shard / training image size")
    parser.add_argument("--jpeg-size", type=int, default=424)
    parser.add_argument("--passes", type=int, default=8, help="epochs over the shards for (b) and (d)")
    parser.add_argument("--jpeg-passes", type=int, default=1, help="epochs over the JPEGs for (a)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the data here (default: a temp dir)")
    return parser.parse_args()


def _galaxy(task: tuple[int, int]) -> np.ndarray:
    index, size = task
    return make_galaxy(seed=0, index=index, image_size=size)[0]


def write_jpeg_folder(folder: Path, n_images: int, size: int, workers: int) -> Path:
    """Write `n_images` synthetic galaxies as JPEGs (quality 90) and a catalog CSV; returns the catalog."""
    folder.mkdir(parents=True, exist_ok=True)
    unique = min(n_images, UNIQUE_GALAXIES)
    with ProcessPoolExecutor(max_workers=max(workers, 1)) as pool:
        galaxies = list(pool.map(_galaxy, [(index, size) for index in range(unique)]))
    rows = []
    for index in range(n_images):
        variant = index // unique  # rotations and flips make distinct images from the unique ones
        image = np.rot90(galaxies[index % unique], k=variant % 4)
        if (variant // 4) % 2:
            image = image[:, ::-1]
        name = f"galaxy_{index:07d}.jpg"
        Image.fromarray(np.ascontiguousarray(image)).save(folder / name, quality=90)
        rows.append({"file_loc": name, "id_str": f"g{index:07d}", "label": index % 3, "split": "train"})
    catalog = folder / "catalog.csv"
    pd.DataFrame(rows).to_csv(catalog, index=False)
    return catalog


def zoobot_style_transform(size: int) -> v2.Compose:
    """Zoobot's default train view in torchvision, on a PIL image resized to `size`."""
    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.RandomAffine(
                degrees=90, translate=(0.1, 0.1), scale=(1.2, 1.4), interpolation=InterpolationMode.BILINEAR
            ),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )


class JpegFolderDataset(Dataset):
    """One JPEG per sample: PIL decode, resize, torchvision augmentation (galaxy-datasets style)."""

    def __init__(self, catalog: Path, size: int) -> None:
        frame = pd.read_csv(catalog)
        self.paths = [str(catalog.parent / name) for name in frame["file_loc"]]
        self.labels = frame["label"].to_numpy()
        self.size = size
        self.transform = zoobot_style_transform(size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        with Image.open(self.paths[index]) as image:
            image = image.convert("RGB").resize((self.size, self.size), Image.Resampling.BILINEAR)
        return {"image": self.transform(image), "label": torch.tensor(self.labels[index])}


def images_per_second(batches: Iterable[dict], passes: int, start_pass: callable | None = None) -> float:
    """Images/s over `passes` passes of `batches`, timed from the first batch (start-up excluded)."""
    counted, started = 0, None
    for epoch in range(passes):
        if start_pass is not None:
            start_pass(epoch)
        for batch in batches:
            if started is None:
                started = time.perf_counter()
                continue
            counted += len(batch["image"])
    return counted / (time.perf_counter() - started)


def shard_loader_rate(shard_dir: Path, args: argparse.Namespace, batch_pool: bool) -> float:
    """Images/s of `ShardDataModule`'s train loader (uint8 batches), with or without the worker batch pool."""
    datamodule = ShardDataModule(
        shard_dir,
        batch_size=args.batch_size,
        num_workers=args.workers,
        augment=AugmentConfig(output_size=args.size),
        batch_pool=batch_pool,
    )
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    rate = images_per_second(loader, args.passes, start_pass=loader.sampler.set_epoch)
    del loader
    datamodule.teardown("fit")
    return rate


def augment_seconds_per_image(dataset_dir: Path, batch_size: int, size: int, device: str) -> float:
    """Seconds per image of the training view of `augment_batch` on `device` (uint8 batch already there)."""
    with open_shard(sorted(dataset_dir.glob("train-*.h5"))[0]) as handle:
        images = torch.from_numpy(handle[IMAGES_KEY][:batch_size]).to(device)
    indices = torch.arange(len(images), device=device)
    config = AugmentConfig(output_size=size)

    def run(repeats: int) -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        for epoch in range(repeats):
            augment_batch(images, indices, epoch, 0, config, training=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    run(2)
    repeats = 50 if device.startswith("cuda") else 5
    return run(repeats) / (repeats * len(images))


def contiguous_read_per_second(dataset_dir: Path, batch_size: int, passes: int) -> float:
    """Images/s of one process reading every train shard in slices of `batch_size`."""
    paths = [dataset_dir / shard.file for shard in read_manifest(dataset_dir).splits["train"]]
    counted, start = 0, time.perf_counter()
    for _ in range(passes):
        for path in paths:
            with open_shard(path, locking=False) as handle:
                images = handle[IMAGES_KEY]
                for first in range(0, len(images), batch_size):
                    counted += len(images[first : first + batch_size])
    return counted / (time.perf_counter() - start)


def main() -> None:
    args = parse_args()
    workdir_context = tempfile.TemporaryDirectory(prefix="loader-bench-") if args.workdir is None else None
    workdir = Path(workdir_context.name) if workdir_context else args.workdir
    print(f"{args.images} images, {args.workers} workers, batch {args.batch_size}, device {args.device}")
    print(f"load average (1 min) at the start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

    start = time.perf_counter()
    catalog = write_jpeg_folder(workdir / "jpegs", args.images, args.jpeg_size, args.workers)
    shard_dir = workdir / "shards"
    build_dataset(
        catalog, shard_dir, label_cols=["label"], size=args.size, split_col="split",
        num_workers=max(args.workers, 1), progress=False,
    )  # fmt: skip
    print(f"wrote {args.jpeg_size}px JPEGs and {args.size}px shards in {time.perf_counter() - start:.1f} s")

    jpeg_loader = DataLoader(
        JpegFolderDataset(catalog, args.size),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        prefetch_factor=4 if args.workers > 0 else None,
        generator=torch.Generator().manual_seed(0),
    )
    rate_a = images_per_second(jpeg_loader, args.jpeg_passes)

    rate_b = shard_loader_rate(shard_dir, args, batch_pool=False)
    rate_b_pool = shard_loader_rate(shard_dir, args, batch_pool=True)

    seconds_c = augment_seconds_per_image(shard_dir, args.batch_size, args.size, args.device)
    rate_d = contiguous_read_per_second(shard_dir, args.batch_size, args.passes)

    print(f"(a) JPEG folder, PIL + torchvision in workers: {rate_a:9.0f} img/s (float batches)")
    print(f"(b) HDF5 shards, ShardDataModule loader:      {rate_b:9.0f} img/s (uint8 batches)")
    print(f"(b') the same with data.batch_pool=true:        {rate_b_pool:9.0f} img/s")
    print(f"(c) augment_batch on {args.device}:{'':<22}{seconds_c * 1e3:9.3f} ms/img ({1 / seconds_c:.0f} img/s)")
    print(f"(d) one process, contiguous shard read:       {rate_d:9.0f} img/s")
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"b/a = {rate_b / rate_a:.1f}   (target >= 10)")
    print(f"b/d = {rate_b / rate_d:.2f}  (target >= 0.5)")
    if workdir_context is not None:
        workdir_context.cleanup()


if __name__ == "__main__":
    main()
