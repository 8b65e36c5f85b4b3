"""head_only training with and without the embedding cache: epochs/s on the same data, and their ratio.

Writes a synthetic demo dataset (``--images`` galaxies of ``--size`` px), then trains the head of a frozen,
randomly initialised ``--encoder`` (nothing is downloaded) for a few epochs twice with the same seed:

  (a) uncached: ``ShardDataModule`` batches, the frozen encoder runs every step (the usual head_only loop);
  (b) cached: ``EmbeddingCacheDataModule`` batches of embeddings computed once (``--views`` augmented training
      views; epoch ``e`` trains on view ``e % views``), the encoder is skipped.

An epoch is one pass over the train split plus validation; epochs/s is measured from the end of the first epoch
to the end of the last (start-up excluded). The one-time cost of computing the cache is printed separately.
Run ``python benchmarks/head_only_cache.py --help`` for the sizes.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from zoobot_hpc.core.config import build_config
from zoobot_hpc.data.demo import write_demo_dataset
from zoobot_hpc.training.embedding_cache import EmbeddingCacheDataModule
from zoobot_hpc.training.run import build_datamodule, build_model


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=600, help="galaxies in the demo dataset")
    parser.add_argument("--size", type=int, default=128, help="image size (px), also the model's input size")
    parser.add_argument("--encoder", default="convnext_nano", help="timm encoder (random init)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="loader workers of the uncached run")
    parser.add_argument("--views", type=int, default=2, help="augmented training views in the cache")
    parser.add_argument("--uncached-epochs", type=int, default=3)
    parser.add_argument("--cached-epochs", type=int, default=30)
    return parser.parse_args()


class EpochClock(L.Callback):
    """Time at the end of every training epoch (after its validation)."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.ends.append(time.perf_counter())

    def epochs_per_sec(self) -> float:
        return (len(self.ends) - 1) / (self.ends[-1] - self.ends[0])


def fit(model: L.LightningModule, datamodule: L.LightningDataModule, epochs: int) -> EpochClock:
    clock = EpochClock()
    trainer = L.Trainer(
        accelerator="auto",
        devices=1,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        callbacks=[clock],
    )
    trainer.fit(model, datamodule=datamodule)
    return clock


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dataset = Path(tmp) / "demo"
        write_demo_dataset(dataset, n_galaxies=args.images, image_size=args.size, seed=0)
        raw: dict[str, Any] = {
            "data": {
                "dataset_dir": str(dataset),
                "batch_size": args.batch_size,
                "num_workers": args.workers,
                "augment": {"output_size": args.size, "zoom_range": [1.0, 1.1], "translate": 0.05},
            },
            "model": {
                "kind": "classifier",
                "name": args.encoder,
                "pretrained": False,
                "num_classes": 3,
                "training_mode": "head_only",
            },
        }
        config = build_config(raw)
        L.seed_everything(config.trainer.seed, verbose=False)
        model = build_model(config)
        uncached = fit(model, build_datamodule(config, model), args.uncached_epochs)

        L.seed_everything(config.trainer.seed, verbose=False)
        model = build_model(config)
        datamodule = EmbeddingCacheDataModule(
            dataset,
            model.encoder,
            args.encoder,
            batch_size=args.batch_size,
            label_cols=model.label_cols,
            seed=config.trainer.seed,
            augment=config.data.augment,
            views=args.views,
            cache_dir=Path(tmp) / "cache",
        )
        start = time.perf_counter()
        datamodule.prepare_data()
        cache_s = time.perf_counter() - start
        cached = fit(model, datamodule, args.cached_epochs)

    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(f"head_only {args.encoder}, {args.images} galaxies of {args.size} px, batch {args.batch_size}, {device}")
    print(f"  uncached (encoder every step): {uncached.epochs_per_sec():8.3f} epochs/s")
    print(f"  cached ({args.views} views):          {cached.epochs_per_sec():8.3f} epochs/s")
    print(f"  one-time cache computation:    {cache_s:8.2f} s")
    print(f"  ratio cached / uncached:       {cached.epochs_per_sec() / uncached.epochs_per_sec():8.1f}x")


if __name__ == "__main__":
    main()
