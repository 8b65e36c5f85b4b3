"""ShardDataModule: train / val / test / predict loaders over a shard dataset, DDP-equal and resumable.

Every loader builds its own ``DistributedSampler`` (rank and world size from the attached
Trainer, else a single replica), so Lightning must not replace them: the launcher passes
``Trainer(use_distributed_sampler=False)`` (Lightning would in any case leave
``DistributedSampler`` subclasses alone). Val/test/predict samplers pad by repeating samples so
that every rank runs the same number of batches; the few repeated samples of the last batch are
counted twice in metrics, and predictions should be de-duplicated by ``index``.

Batches leave the workers as uint8 (pinned when a GPU is used); Lightning moves them to the
device with ``non_blocking=True``, and ``on_after_batch_transfer`` turns ``image`` into float32
``(B, C, S, S)`` on the device with :func:`augment_batch`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
from torch.utils.data import DataLoader, Dataset, DistributedSampler

if TYPE_CHECKING:
    from zoobot_hpc.core.config import RunConfig

from zoobot_hpc.data.augment import AugmentConfig, augment_batch
from zoobot_hpc.data.batch_memory import forget_mappings
from zoobot_hpc.data.dataset import ShardDataset, collate_samples
from zoobot_hpc.data.sampler import ResumableDataLoader, ResumableDistributedSampler
from zoobot_hpc.data.shard_format import read_manifest
from zoobot_hpc.data.workers import loader_settings

_STAGE_SPLITS = {"fit": ("train",), "validate": ("val",), "test": ("test",), "predict": ()}


class SplitLoaders(L.LightningDataModule):
    """Train / val / test loaders over per-split datasets, the same way for every datamodule of the package.

    Train: a resumable, (seed, epoch)-block-shuffled sampler (``shuffle_window`` shards at a time when the dataset
    has ``shard_sizes``), the same order at every world size, equal length on every rank. Val/test: in order, padded so
    that every rank runs the same number of batches. Subclasses provide `_dataset(split)` and `_loader_kwargs()`.
    """

    seed: int
    dataset_dir: Path
    shuffle_window: int = 4
    _restored_train_position: dict[str, int] | None = None

    def _dataset(self, split: str) -> Dataset:
        raise NotImplementedError

    def _loader_kwargs(self) -> dict[str, Any]:
        raise NotImplementedError

    def _replicas(self) -> tuple[int, int]:
        """(world size, global rank) from the attached Trainer, else (1, 0)."""
        if self.trainer is None:
            return 1, 0
        return self.trainer.world_size, self.trainer.global_rank

    def _new_train_loader(self) -> ResumableDataLoader:
        world_size, rank = self._replicas()
        dataset = self._dataset("train")
        settings = self._loader_kwargs()
        sampler = ResumableDistributedSampler(
            dataset,
            num_replicas=world_size,
            rank=rank,
            seed=self.seed,
            batch_size=settings["batch_size"],
            shard_sizes=getattr(dataset, "shard_sizes", None),
            window=self.shuffle_window,
        )
        return ResumableDataLoader(dataset, sampler=sampler, **settings)

    def train_dataloader(self) -> ResumableDataLoader:
        """Shuffled by (seed, epoch), equal length on every rank, resumable mid-epoch."""
        loader = self._new_train_loader()
        if self._restored_train_position is not None:
            loader.load_state_dict(self._restored_train_position)
            self._restored_train_position = None
        return loader

    def train_batches_per_epoch(self, world_size: int) -> int:
        """Batches of one training epoch on each of `world_size` ranks, from the train split's size in the manifest:
        no loader or dataset is built (the embedding cache's is written only at setup). Every rank's share has the
        same length: the padded ``ceil(size / world_size)`` samples of `ResumableDistributedSampler`."""
        samples = math.ceil(read_manifest(self.dataset_dir).split_count("train") / world_size)
        return math.ceil(samples / self._loader_kwargs()["batch_size"])

    def state_dict(self) -> dict[str, Any]:
        """The train sampler's position, checkpointed by the datamodule too: Lightning restores the train loader's
        own state only when it resumes mid-epoch. From a checkpoint taken at an epoch's end (`last.ckpt`, written
        after validation) the sampler would start at epoch 0, and loader workers prefetch that epoch's order before
        Lightning sets the next epoch; with the saved position it rolls over to the next epoch itself."""
        loader = self.trainer.train_dataloader if self.trainer is not None else None
        return {"train_position": loader.state_dict()} if isinstance(loader, ResumableDataLoader) else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep a checkpoint's sampler position for the train loader (made after the checkpoint is restored)."""
        self._restored_train_position = state_dict.get("train_position")

    def _eval_dataloader(self, split: str) -> DataLoader:
        world_size, rank = self._replicas()
        dataset = self._dataset(split)
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)
        return DataLoader(dataset, sampler=sampler, **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader:
        """The val split, in order, padded to the same number of batches on every rank."""
        return self._eval_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        """The test split, in order, padded to the same number of batches on every rank."""
        return self._eval_dataloader("test")

    def teardown(self, stage: str) -> None:
        """Let go of the worker batch blocks this process kept mapped (see :mod:`zoobot_hpc.data.batch_memory`)."""
        forget_mappings()


class ShardDataModule(SplitLoaders):
    """Loaders over ``dataset_dir`` (a shard dataset with ``manifest.json``); ``batch_size`` is per rank.

    Train uses a :class:`ResumableDataLoader` (its ``{epoch, consumed}`` state is checkpointed by
    Lightning, and by the datamodule for the checkpoints Lightning does not restore it from); val/test/predict
    are unshuffled and padded to equal length on every rank.
    ``predict_split`` names the split ``predict_dataloader`` reads.
    """

    @classmethod
    def from_config(cls, config: RunConfig, label_cols: Sequence[str] | None = None) -> ShardDataModule:
        """The loaders of a run's config: its `data` section, the model's label columns (`label_cols`: the only
        columns read), the trainer's seed, pinned memory when the run has GPUs."""
        data = config.data
        return cls(
            dataset_dir=data.dataset_dir,
            batch_size=data.batch_size,
            num_workers=data.num_workers,
            label_cols=label_cols,
            seed=config.trainer.seed,
            augment=data.augment.model_copy(update={"greyscale": config.model.greyscale}),
            locking=data.hdf5_locking,
            pin_memory=config.resources.gpus_per_node > 0,
            batch_pool=data.batch_pool,
            shuffle_window=data.shuffle_window_shards,
            max_open_files=data.max_open_shards,
        )

    def __init__(  # noqa: PLR0913 (Lightning datamodule arguments, one per loader setting; see from_config)
        self,
        dataset_dir: str | os.PathLike,
        batch_size: int,
        num_workers: int = 4,
        label_cols: Sequence[str] | None = None,
        seed: int = 42,
        augment: AugmentConfig | None = None,
        locking: bool | None = False,
        pin_memory: bool = True,
        prefetch_factor: int = 4,
        persistent_workers: bool | None = None,
        predict_split: str = "test",
        batch_pool: bool = False,
        shuffle_window: int = 4,
        max_open_files: int = 16,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.dataset_dir = Path(dataset_dir)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.label_cols = None if label_cols is None else tuple(label_cols)
        self.seed = seed
        self.augment = augment if augment is not None else AugmentConfig()
        self.locking = locking
        self.pin_memory = pin_memory
        self.prefetch_factor = prefetch_factor
        self.persistent_workers = num_workers > 0 if persistent_workers is None else persistent_workers
        self.predict_split = predict_split
        self.batch_pool = batch_pool
        if shuffle_window < 1:
            raise ValueError(f"shuffle_window must be >= 1, got {shuffle_window}")
        self.shuffle_window = shuffle_window
        self.max_open_files = max_open_files
        self.datasets: dict[str, ShardDataset] = {}

    def setup(self, stage: str) -> None:
        """Check the splits ``stage`` needs (for ``fit``: train, and val when the dataset has one).

        Files are opened lazily by whichever process reads; errors name the dataset and the problem.
        """
        splits = (self.predict_split,) if stage == "predict" else _STAGE_SPLITS[stage]
        for split in splits:
            self._dataset(split)
        if stage == "fit" and "val" in self._dataset("train").manifest.splits:
            self._dataset("val")

    def _dataset(self, split: str) -> ShardDataset:
        if split not in self.datasets:
            self.datasets[split] = ShardDataset(
                self.dataset_dir,
                split,
                self.label_cols,
                self.locking,
                batch_pool=self.batch_pool,
                max_open_files=self.max_open_files,
            )
        return self.datasets[split]

    def _loader_kwargs(self) -> dict[str, Any]:
        return loader_settings(
            num_workers=self.num_workers,
            seed=self.seed,
            batch_size=self.batch_size,
            locking=self.locking,
            collate_fn=collate_samples,
            pin_memory=self.pin_memory,
            prefetch_factor=self.prefetch_factor,
            persistent_workers=self.persistent_workers,
        )

    def predict_dataloader(self) -> DataLoader:
        """``predict_split``, in order, padded to the same number of batches on every rank."""
        return self._eval_dataloader(self.predict_split)

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """Augment (training) or resize (otherwise) the uint8 images on the device they arrived on."""
        training = bool(self.trainer is not None and self.trainer.training)
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        batch["image"] = augment_batch(
            batch["image"],
            batch["index"],
            epoch=epoch,
            seed=self.seed,
            config=self.augment,
            training=training,
        )
        return batch
