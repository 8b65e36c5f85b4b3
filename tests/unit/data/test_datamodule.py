"""ShardDataModule with a real Trainer: fit with workers, exact mid-epoch resume, equal shares per rank."""

from __future__ import annotations

import multiprocessing.forkserver
import os
import signal
import time
from pathlib import Path

import lightning as L
import pytest
import timm
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from tests.unit.data.test_dataset import write_dataset
from zoobot_hpc.data.augment import AugmentConfig, augment_batch
from zoobot_hpc.data.datamodule import ShardDataModule
from zoobot_hpc.data.sampler import ResumableDataLoader
from zoobot_hpc.data.workers import _blocks_signal

AUGMENT = AugmentConfig(output_size=24)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("shards")
    written = write_dataset(root, {"train": [20, 14], "val": [9], "test": [7]}, image_size=32)
    return root, written


class RecordingModel(L.LightningModule):
    """A tiny timm classifier that records what every step received."""

    def __init__(self, raw_val_images: torch.Tensor | None = None) -> None:
        super().__init__()
        self.raw_val_images = raw_val_images
        self.net = timm.create_model("test_resnet", num_classes=3, pretrained=False)
        self.train_seen: list[tuple[int, list[int], list[float]]] = []
        self.val_indices: list[int] = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        image = batch["image"]
        assert image.dtype == torch.float32 and image.shape[1:] == (3, 24, 24)
        assert image.is_contiguous(memory_format=torch.channels_last)
        assert batch["label"].dtype == torch.int64 and batch["smooth_fraction"].dtype == torch.float32
        self.train_seen.append((self.current_epoch, batch["index"].tolist(), image.sum(dim=(1, 2, 3)).tolist()))
        return F.cross_entropy(self.net(image), batch["label"])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        expected = augment_batch(self.raw_val_images[batch["index"]], batch["index"], 0, 0, AUGMENT, training=False)
        torch.testing.assert_close(batch["image"], expected)
        self.val_indices.extend(batch["index"].tolist())
        self.log("val_loss", F.cross_entropy(self.net(batch["image"]), batch["label"]), batch_size=len(batch["id"]))

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return batch["index"]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class RecordProgress(L.Callback):
    """What the training callback does: mark the batch consumed when it starts."""

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        trainer.train_dataloader.record_progress(batch_idx + 1)


class StopAndSave(L.Callback):
    """Save a checkpoint after `step` optimiser steps and stop, like a preemption."""

    def __init__(self, step: int, path: Path) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True


def make_trainer(max_epochs: int, callbacks: list[L.Callback], validate: bool = False) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        callbacks=callbacks,
        use_distributed_sampler=False,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=None if validate else 0,
        deterministic=True,
    )


def make_datamodule(root: Path, num_workers: int = 2) -> ShardDataModule:
    return ShardDataModule(root, batch_size=4, num_workers=num_workers, seed=0, augment=AUGMENT)


def test_fit_with_workers_sees_every_training_sample_once_per_epoch(dataset_dir: tuple[Path, dict]) -> None:
    root, written = dataset_dir
    model = RecordingModel(raw_val_images=torch.from_numpy(written["val"]["images"]))
    datamodule = make_datamodule(root)
    make_trainer(2, [RecordProgress()], validate=True).fit(model, datamodule=datamodule)
    for epoch in (0, 1):
        indices = [i for e, batch, _ in model.train_seen if e == epoch for i in batch]
        assert sorted(indices) == list(range(34))
    first, second = ([i for e, b, _ in model.train_seen if e == epoch for i in b] for epoch in (0, 1))
    assert first != second
    assert sorted(model.val_indices) == sorted(list(range(9)) * 2)
    loader = datamodule.train_dataloader()
    assert isinstance(loader, ResumableDataLoader)


@pytest.fixture(scope="module")
def uninterrupted(dataset_dir: tuple[Path, dict]) -> RecordingModel:
    """Two epochs without workers: what every resumed run with workers must reproduce."""
    reference = RecordingModel()
    make_trainer(2, [RecordProgress()]).fit(reference, datamodule=make_datamodule(dataset_dir[0], num_workers=0))
    return reference


@pytest.mark.parametrize("stop_step", [3, 12])
def test_resume_mid_epoch_sees_exactly_the_unseen_samples(
    dataset_dir: tuple[Path, dict], uninterrupted: RecordingModel, tmp_path: Path, stop_step: int
) -> None:
    root, _ = dataset_dir  # 34 samples, batch 4: 9 batches per epoch (the last one has 2)
    checkpoint = tmp_path / "preempted.ckpt"
    interrupted = RecordingModel()
    make_trainer(2, [RecordProgress(), StopAndSave(stop_step, checkpoint)]).fit(
        interrupted, datamodule=make_datamodule(root)
    )
    assert len(interrupted.train_seen) == stop_step

    resumed = RecordingModel()
    make_trainer(2, [RecordProgress()]).fit(resumed, datamodule=make_datamodule(root), ckpt_path=checkpoint)
    assert interrupted.train_seen + resumed.train_seen == uninterrupted.train_seen


def test_trainer_predict_covers_the_split_in_order(dataset_dir: tuple[Path, dict]) -> None:
    root, _ = dataset_dir
    datamodule = ShardDataModule(root, batch_size=3, num_workers=0, augment=AUGMENT, predict_split="val")
    predictions = make_trainer(1, []).predict(RecordingModel(), datamodule=datamodule)
    assert torch.cat(predictions).tolist() == list(range(9))


class TwoRankDataModule(ShardDataModule):
    """The datamodule as rank `rank` of `world_size` sees it (no process group needed to build loaders)."""

    def __init__(self, root: Path, rank: int, world_size: int = 2, num_workers: int = 0) -> None:
        super().__init__(root, batch_size=4, num_workers=num_workers, augment=AUGMENT, shuffle_window=1)
        self.rank, self.world_size = rank, world_size

    def _replicas(self) -> tuple[int, int]:
        return self.world_size, self.rank


def epoch_order(root: Path, world_size: int, num_workers: int, epoch: int) -> list[int]:
    """The indices of one training epoch step by step (each step: the ranks' batches in rank order)."""
    per_rank = []
    for rank in range(world_size):
        loader = TwoRankDataModule(root, rank, world_size, num_workers).train_dataloader()
        loader.sampler.set_epoch(epoch)
        per_rank.append([batch["index"].tolist() for batch in loader])
    return [i for step in zip(*per_rank, strict=True) for batch in step for i in batch]


@pytest.mark.parametrize("epoch", [0, 1])
def test_the_epoch_order_does_not_depend_on_world_size_or_workers(dataset_dir: tuple[Path, dict], epoch: int) -> None:
    root, _ = dataset_dir
    single = epoch_order(root, 1, 0, epoch)
    assert sorted(single) == list(range(34))
    assert sorted(single[:20]) == list(range(20)) or sorted(single[:14]) == list(range(20, 34))  # window 1
    layouts = [(2, 0), (4, 0), (1, 1), (2, 2)] if epoch == 0 else [(4, 1), (1, 2)]
    for world_size, num_workers in layouts:
        order = epoch_order(root, world_size, num_workers, epoch)
        assert order[:34] == single, (world_size, num_workers)
        assert order[34:] == single[: len(order) - 34]  # every image once, plus the padding


def test_ranks_get_equal_batches_and_disjoint_training_samples(dataset_dir: tuple[Path, dict]) -> None:
    root, _ = dataset_dir
    ranks = [TwoRankDataModule(root, rank) for rank in (0, 1)]
    train = [[i for batch in dm.train_dataloader() for i in batch["index"].tolist()] for dm in ranks]
    assert len(train[0]) == len(train[1]) == 17
    assert sorted(train[0] + train[1]) == list(range(34))
    for split, size in (("val", 9), ("test", 7)):
        loaders = [dm._eval_dataloader(split) for dm in ranks]
        batches = [list(loader) for loader in loaders]
        assert len(batches[0]) == len(batches[1]) == len(loaders[0])
        indices = {i for rank_batches in batches for batch in rank_batches for i in batch["index"].tolist()}
        assert indices == set(range(size))


class _LockingEnv(Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> str:
        return os.environ.get("HDF5_USE_FILE_LOCKING", "unset")


@pytest.mark.parametrize(("locking", "expected"), [(False, "FALSE"), (True, "TRUE")])
def test_workers_set_hdf5_locking(
    dataset_dir: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch, locking: bool, expected: str
) -> None:
    monkeypatch.setenv("HDF5_USE_FILE_LOCKING", "unset-by-test")
    datamodule = ShardDataModule(dataset_dir[0], batch_size=1, num_workers=1, locking=locking)
    worker_init_fn = datamodule.train_dataloader().worker_init_fn
    loader = DataLoader(_LockingEnv(), num_workers=1, worker_init_fn=worker_init_fn)
    assert next(iter(loader)) == [expected]
    assert os.environ["HDF5_USE_FILE_LOCKING"] == "unset-by-test"


def test_bad_arguments_are_refused(dataset_dir: tuple[Path, dict]) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        ShardDataModule(dataset_dir[0], batch_size=0)
    with pytest.raises(ValueError, match="'missing_label'"):
        ShardDataModule(dataset_dir[0], batch_size=2, label_cols=["missing_label"]).setup("fit")


def test_loader_workers_outlive_the_stop_signals(dataset_dir: tuple[Path, dict]) -> None:
    """SLURM sends USR2 (time limit) or SIGTERM (preemption, scancel) to every process of the step; only the training
    process may act on them, and the workers must keep serving it while it saves."""
    root, _ = dataset_dir
    dm = ShardDataModule(root, batch_size=2, num_workers=2, augment=AUGMENT, persistent_workers=False)
    dm.setup("fit")
    iterator = iter(dm.train_dataloader())
    seen = next(iterator)["index"].tolist()
    forkserver_pid = multiprocessing.forkserver._forkserver._forkserver_pid
    stop_signals = (signal.SIGUSR2, signal.SIGTERM)
    assert all(_blocks_signal(forkserver_pid, signum) for signum in stop_signals)
    for pid in [forkserver_pid, *(worker.pid for worker in iterator._workers)]:
        for signum in stop_signals:
            os.kill(pid, signum)
    time.sleep(0.5)
    assert all(worker.is_alive() for worker in iterator._workers)
    seen += [index for batch in iterator for index in batch["index"].tolist()]
    assert sorted(seen) == list(range(34))
    again = [index for batch in dm.train_dataloader() for index in batch["index"].tolist()]
    assert sorted(again) == list(range(34)), "new workers start from the same forkserver"


def test_blocked_signals_are_read_from_proc() -> None:
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
    try:
        assert _blocks_signal(os.getpid(), signal.SIGUSR2)
        assert not _blocks_signal(os.getpid(), signal.SIGUSR1)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    assert not _blocks_signal(os.getpid(), signal.SIGUSR2)


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
def test_the_batches_per_epoch_counted_from_the_manifest_are_the_loaders(dataset_dir, world_size) -> None:
    root, _ = dataset_dir
    counted = TwoRankDataModule(root, 0, world_size).train_batches_per_epoch(world_size)
    assert counted == len(TwoRankDataModule(root, world_size - 1, world_size).train_dataloader())
