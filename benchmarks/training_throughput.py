"""Training throughput: the real pipeline (shards -> loader workers -> device augmentation -> model step) against the
same model stepping on synthetic tensors already on the device, same batch size and precision.

    python benchmarks/training_throughput.py                       # CPU here: tiny encoder, 64 px
    python benchmarks/training_throughput.py --device cuda --encoder convnext_nano --size 224 \
        --precision bf16-mixed --batch-size 128 --workers 8 --images 20000

Prints both images/s figures and their ratio (goal on a GPU with <= 8 workers: >= 0.9).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch import Callback

from zoobot_hpc.data.augment import AugmentConfig
from zoobot_hpc.data.datamodule import ShardDataModule
from zoobot_hpc.data.demo import write_demo_dataset
from zoobot_hpc.data.shard_format import read_manifest
from zoobot_hpc.model import FinetuneableZoobotClassifier


class SteadyStateTimer(Callback):
    """Images/s between the end of batch `warmup` and the end of training (rank 0's view)."""

    def __init__(self, batch_size: int, warmup: int) -> None:
        self.batch_size = batch_size
        self.warmup = warmup
        self.start: float | None = None
        self.images = 0

    def _sync(self, device: torch.device) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx + 1 == self.warmup:
            self._sync(pl_module.device)
            self.start = time.perf_counter()
        elif self.start is not None:
            self.images += self.batch_size

    def images_per_sec(self, device: torch.device) -> float:
        self._sync(device)
        return self.images / (time.perf_counter() - self.start)


class SyntheticBatches(torch.utils.data.IterableDataset):
    """The same batch, already on the device and already float, over and over (no loading, no augmentation)."""

    def __init__(self, batch: dict[str, torch.Tensor], count: int) -> None:
        self.batch = batch
        self.count = count

    def __iter__(self):
        for _ in range(self.count):
            yield self.batch


def make_model(args: argparse.Namespace) -> FinetuneableZoobotClassifier:
    return FinetuneableZoobotClassifier(
        name=args.encoder, pretrained=False, num_classes=3, learning_rate=1e-4, head_dropout_prob=0.2
    ).to(memory_format=torch.channels_last)


def make_trainer(args: argparse.Namespace, timer: SteadyStateTimer, batches: int) -> L.Trainer:
    return L.Trainer(
        accelerator="gpu" if args.device == "cuda" else "cpu",
        devices=1,
        precision=args.precision,
        max_epochs=1,
        limit_train_batches=batches,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[timer],
    )


def run_pipeline(args: argparse.Namespace, dataset_dir: Path, batches: int) -> float:
    datamodule = ShardDataModule(
        dataset_dir,
        batch_size=args.batch_size,
        num_workers=args.workers,
        label_cols=["label"],
        augment=AugmentConfig(output_size=args.size, zoom_range=(1.2, 1.4)),
        pin_memory=args.device == "cuda",
        batch_pool=getattr(args, "batch_pool", False),
    )
    timer = SteadyStateTimer(args.batch_size, args.warmup)
    model = make_model(args)
    make_trainer(args, timer, batches).fit(model, datamodule=datamodule)
    return timer.images_per_sec(model.device)


def run_synthetic(args: argparse.Namespace, batches: int) -> float:
    device = torch.device(args.device)
    batch = {
        "image": torch.rand(args.batch_size, 3, args.size, args.size, device=device).contiguous(
            memory_format=torch.channels_last
        ),
        "label": torch.randint(0, 3, (args.batch_size,), device=device),
    }
    loader = torch.utils.data.DataLoader(SyntheticBatches(batch, batches), batch_size=None)
    timer = SteadyStateTimer(args.batch_size, args.warmup)
    model = make_model(args)
    make_trainer(args, timer, batches).fit(model, train_dataloaders=loader)
    return timer.images_per_sec(model.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--encoder", default="test_convnext")
    parser.add_argument("--size", type=int, default=64, help="training view size (px)")
    parser.add_argument("--stored-size", type=int, default=None, help="image size in the shards (default: 1.25x)")
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--dataset", type=Path, default=None, help="existing shard dataset to read")
    parser.add_argument("--batch-pool", action="store_true", help="loader workers reuse shared-memory blocks")
    args = parser.parse_args()
    stored = args.stored_size or int(args.size * 1.25)

    with tempfile.TemporaryDirectory() as tmp:
        dataset_dir = args.dataset or Path(tmp) / "shards"
        if args.dataset is None:
            write_demo_dataset(dataset_dir, n_galaxies=args.images, image_size=stored, seed=0)
        train_count = read_manifest(dataset_dir).split_count("train")
        batches = max(train_count // args.batch_size, args.warmup + 5)
        print(
            f"device={args.device} encoder={args.encoder} view={args.size}px stored={stored}px "
            f"batch={args.batch_size} workers={args.workers} precision={args.precision} batches={batches}"
        )
        synthetic = run_synthetic(args, batches)
        pipeline = run_pipeline(args, dataset_dir, batches)
    print(f"synthetic tensors on device: {synthetic:10.1f} images/s")
    print(f"real pipeline (shards):      {pipeline:10.1f} images/s")
    print(f"ratio pipeline/synthetic:    {pipeline / synthetic:10.3f}")


if __name__ == "__main__":
    main()
