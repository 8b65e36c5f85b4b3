"""Training loader at survey scale: images/s per loader process against the number of train shards.

Builds one metadata-scale shard dataset (the real 224-px shard layout: 14,266 images per 2 GiB shard, real ids and
34 float32 label columns, but 8x8 pixels, so that 8M images fit in a few GB) and views of its first 23, 113 and
561 train shards (manifests next to links to the same files). For each view and 1, 6 and 34 label columns it
measures the package's own ``ShardDataModule`` train loader (uint8 batches of ``--batch-size``, read in the main
process: one loader process) for ``--seconds`` after its first batch:

  - ``block``: the training order (a block shuffle of ``data.shuffle_window_shards`` shards, ``data.max_open_shards``
    handles);
  - ``uniform``: a uniform shuffle (``window`` = every shard) through 64 handles: what the loader did before;

with images/s, HDF5 opens per batch and per shard touched, and the ratio to the 23-shard rate in the same run.
Then the RSS of one loader worker after ``--seconds`` of reading at each shard count, the rate against the window
size at the largest view, and the shuffle quality: the spread of the per-batch mean of a label that drifts along
the catalogue (as a survey's do with sky position and brightness) and each batch's class mix, block against uniform.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from zoobot_hpc.data.block_order import block_shuffled_order, pad_order
from zoobot_hpc.data.datamodule import ShardDataModule
from zoobot_hpc.data.shard_format import (
    FORMAT_VERSION,
    Manifest,
    images_per_shard,
    read_manifest,
    shard_file_name,
    write_manifest,
    write_shard,
)

REAL_SHAPE = (224, 224, 3)
TINY_SHAPE = (8, 8, 3)
N_COLUMNS = 34
DRIFT = "c00"  # drifts along the catalogue; the shuffle-quality label


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, nargs="+", default=[23, 113, 561], help="train shards of each view")
    parser.add_argument("--columns", type=int, nargs="+", default=[1, 6, 34], help="label columns read")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring time of each loader")
    parser.add_argument("--window", type=int, default=4, help="data.shuffle_window_shards")
    parser.add_argument("--max-open", type=int, default=16, help="data.max_open_shards")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the data here (default: a temp dir)")
    return parser.parse_args()


def build(root: Path, n_shards: int) -> Path:
    """The full dataset (``n_shards`` train shards and one val shard) in ``root/all``, written once."""
    full = root / "all"
    if (full / "manifest.json").exists() and len(read_manifest(full).splits["train"]) >= n_shards:
        return full
    full.mkdir(parents=True, exist_ok=True)
    per_shard = images_per_shard(REAL_SHAPE)
    rng = np.random.default_rng(0)
    total = n_shards * per_shard
    infos: dict[str, list] = {"train": [], "val": []}
    started = time.monotonic()
    for split, count in (("train", n_shards), ("val", 1)):
        for shard in range(count):
            first = shard * per_shard
            position = (first + np.arange(per_shard)) / total
            labels = {f"c{c:02d}": rng.random(per_shard).astype(np.float32) for c in range(N_COLUMNS)}
            drift = 0.5 + 0.35 * np.sin(2 * np.pi * 3 * position) + 0.1 * rng.standard_normal(per_shard)
            labels[DRIFT] = drift.astype(np.float32)
            images = rng.integers(0, 256, (per_shard, *TINY_SHAPE), dtype=np.uint8)
            ids = [f"J{first + i:09d}+{(first + i) % 9000:04d}" for i in range(per_shard)]
            path = full / shard_file_name(split, shard)
            infos[split].append(write_shard(path, images, ids, labels, split))
        print(f"  wrote {count} {split} shards ({time.monotonic() - started:.0f} s)", flush=True)
    write_manifest(full, _manifest({split: tuple(shards) for split, shards in infos.items()}))
    return full


def _manifest(splits: dict[str, tuple]) -> Manifest:
    return Manifest(
        format_version=FORMAT_VERSION,
        image_shape=TINY_SHAPE,
        label_columns={f"c{c:02d}": "float32" for c in range(N_COLUMNS)},
        allow_nan=(),
        splits=splits,
        id_column="id",
        source="benchmarks/loader_scale.py",
        created="2026-01-01T00:00:00+00:00",
    )


def view(root: Path, full: Path, n_shards: int) -> Path:
    """A dataset of the first ``n_shards`` train shards of ``full`` (links to its files)."""
    folder = root / f"train{n_shards}"
    if (folder / "manifest.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(full)
    splits = {"train": manifest.splits["train"][:n_shards], "val": manifest.splits["val"]}
    for shard in (*splits["train"], *splits["val"]):
        link = folder / shard.file
        if not link.exists():
            link.symlink_to(full / shard.file)
    write_manifest(folder, _manifest(splits))
    return folder


def measure(dataset: Path, columns: int, batch_size: int, window: int, max_open: int, seconds: float) -> dict:
    """Images/s, opens per batch and opens per shard touched of one loader process (the main process)."""
    label_cols = [f"c{c:02d}" for c in range(columns)]
    module = ShardDataModule(
        dataset,
        batch_size=batch_size,
        num_workers=0,
        label_cols=label_cols,
        pin_memory=False,
        shuffle_window=window,
        max_open_files=max_open,
    )
    loader = module.train_dataloader()
    data = module.datasets["train"]
    iterator = iter(loader)
    touched = set(np.searchsorted(data.shard_starts, next(iterator)["index"].numpy(), side="right").tolist())
    opens_before, batches, started = data.opens, 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        batch = next(iterator)
        touched.update(np.searchsorted(data.shard_starts, batch["index"].numpy(), side="right").tolist())
        batches += 1
    elapsed = time.perf_counter() - started
    opens, total_opens = data.opens - opens_before, data.opens
    data.close()
    return {
        "rate": batches * batch_size / elapsed,
        "opens_per_batch": opens / batches,
        "opens_per_shard": total_opens / len(touched),
    }


def worker_rss_mb(dataset: Path, columns: int, batch_size: int, window: int, max_open: int, seconds: float) -> float:
    """RSS of one loader worker after ``seconds`` of reading (MiB)."""
    module = ShardDataModule(
        dataset,
        batch_size=batch_size,
        num_workers=1,
        label_cols=[f"c{c:02d}" for c in range(columns)],
        pin_memory=False,
        shuffle_window=window,
        max_open_files=max_open,
        persistent_workers=False,
    )
    iterator = iter(module.train_dataloader())
    next(iterator)
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        next(iterator)
    [worker] = [w.pid for w in iterator._workers]
    rss = _rss_kb(worker) / 1024
    del iterator
    return rss


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def drift_labels(dataset: Path) -> tuple[list[int], np.ndarray]:
    """The train shards' sizes and the drifting label of every train image."""
    shards = read_manifest(dataset).splits["train"]
    return [shard.count for shard in shards], np.concatenate([_column(dataset / shard.file) for shard in shards])


def shuffle_quality(sizes: list[int], drift: np.ndarray, batch_size: int, window: int, batches: int = 2000) -> str:
    """The spread of the per-batch mean of the drifting label, and the largest class share (terciles of it) per
    batch, over the first ``batches`` batches of the order of ``window``."""
    classes = np.searchsorted(np.quantile(drift, [1 / 3, 2 / 3]), drift)
    order = pad_order(block_shuffled_order(sizes, seed=42, epoch=0, window=window), batches * batch_size)
    picked = order[: batches * batch_size].reshape(batches, batch_size)
    means = drift[picked].mean(axis=1)
    majority = np.stack([(classes[picked] == c).mean(axis=1) for c in range(3)]).max(axis=0)
    return f"per-batch mean std {means.std():.4f}, largest class share {majority.mean():.3f}"


def _column(path: Path) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as handle:
        return handle["labels"][DRIFT][()]


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = args.workdir or Path(tmp)
        print(f"building {max(args.shards)} shards of {images_per_shard(REAL_SHAPE)} images ({TINY_SHAPE} pixels)")
        full = build(root, max(args.shards))
        views = {n: view(root, full, n) for n in args.shards}
        print(f"\nloader process, batch {args.batch_size}, window {args.window}, {args.max_open} handles; images/s")
        header = "shards  images      order    " + "  ".join(f"{c:>2} col  (ratio)" for c in args.columns)
        print(header + "  opens/batch  opens/shard")
        base: dict[tuple[str, int], float] = {}
        for n, dataset in views.items():
            for order, window, handles in (("block", args.window, args.max_open), ("uniform", n, 64)):
                cells, opens = [], None
                for columns in args.columns:
                    seconds = args.seconds if order == "block" else args.seconds / 2
                    result = measure(dataset, columns, args.batch_size, window, handles, seconds)
                    base.setdefault((order, columns), result["rate"])
                    cells.append(f"{result['rate']:>7,.0f} ({result['rate'] / base[(order, columns)]:.2f})")
                    opens = result
                images = n * images_per_shard(REAL_SHAPE)
                print(
                    f"{n:>6}  {images / 1e6:>5.2f}M  {order:>9}    " + "  ".join(cells) + f"  "
                    f"{opens['opens_per_batch']:>11.3f}  {opens['opens_per_shard']:>11.2f}",
                    flush=True,
                )
        print(f"\nRSS of one loader worker ({max(args.columns)} columns, block order), MiB")
        for n, dataset in views.items():
            rss = worker_rss_mb(dataset, max(args.columns), args.batch_size, args.window, args.max_open, args.seconds)
            print(f"{n:>6} shards  {rss:>7.0f}", flush=True)
        largest = views[max(views)]
        sizes, drift = drift_labels(largest)
        print(
            f"\nrate and shuffle quality against the window at {max(views)} shards ({max(args.columns)} columns; "
            "handles 2 x window + 2); quality: a label drifting along the catalogue, terciles as classes "
            "(1/3 = perfectly mixed)"
        )
        for window in sorted({w for w in (1, 2, 4, 8, 16) if w < len(sizes)} | {len(sizes)}):
            handles = max(args.max_open, 2 * window + 2) if window < len(sizes) else 64
            result = measure(largest, max(args.columns), args.batch_size, window, handles, args.seconds / 2)
            quality = shuffle_quality(sizes, drift, args.batch_size, window)
            name = f"window {window:>3}" if window < len(sizes) else "uniform   "
            print(f"  {name}  {result['rate']:>7,.0f} images/s  {result['opens_per_batch']:.3f} opens/batch  {quality}")
        within = statistics.pstdev(drift[: sizes[0]].tolist()) / math.sqrt(args.batch_size)
        print(f"  (a shard's own spread alone: per-batch mean std ~{within:.4f})")
        print(f"\nthis machine: {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
