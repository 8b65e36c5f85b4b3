"""Cached encoder embeddings for head_only training: computed once, stored next to the dataset, served as batches.

A frozen encoder in eval mode maps a given view of an image to the same embedding every epoch, so the head can
train on stored embeddings. The cache holds, per split, `views` augmented training views (view `v` is the view
`ShardDataModule` shows in epoch `v`: a pure function of seed, epoch and sample index), or the deterministic
evaluation view (`views=0`, for training without augmentation). Epoch `e` trains on view `e % views`.

The cache file is `DATASET_DIR/embedding_cache/<encoder>-<key>.h5`, the key hashing the encoder name, its weights,
the view settings, the seed and the dataset manifest: a different encoder, checkpoint or view never reuses it.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from zoobot_hpc.atomic import atomic_path, writer_suffix
from zoobot_hpc.data.augment import AugmentConfig, augment_batch
from zoobot_hpc.data.datamodule import SplitLoaders
from zoobot_hpc.data.dataset import ShardDataset, collate_samples
from zoobot_hpc.data.shard_format import MANIFEST_NAME, DatasetError, read_manifest
from zoobot_hpc.data.workers import loader_settings

CACHE_DIR_NAME = "embedding_cache"
EMBEDDINGS_KEY = "embeddings"
IDS_KEY = "ids"
LABELS_GROUP = "labels"
SPEC_ATTR = "spec"


@dataclass(frozen=True)
class CacheSpec:
    """Everything an embedding depends on; its hash names the cache file."""

    encoder_name: str
    weights_sha256: str
    views: int
    augment: dict[str, Any]
    seed: int
    manifest_sha256: str
    splits: tuple[str, ...]

    def key(self) -> str:
        text = json.dumps(dataclasses.asdict(self), sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def encoder_weights_sha256(encoder: nn.Module) -> str:
    """sha256 of an encoder's state (parameter and buffer names and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_path(cache_dir: Path, spec: CacheSpec) -> Path:
    safe_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec.encoder_name)
    return Path(cache_dir) / f"{safe_name}-{spec.key()}.h5"


def _write_split(
    handle: h5py.File,
    encoder: nn.Module,
    dataset: ShardDataset,
    views: int,
    augment: AugmentConfig,
    seed: int,
    batch_size: int,
    num_workers: int,
    device: torch.device,
) -> None:
    group = handle.create_group(dataset.split)
    # Its own generator: iterating must not draw from the global RNG, which the training run then continues.
    loader = DataLoader(
        dataset,
        **loader_settings(
            num_workers=num_workers,
            seed=seed,
            batch_size=batch_size,
            locking=dataset.locking,
            collate_fn=collate_samples,
        ),
    )
    ids: list[str] = []
    labels: dict[str, list[np.ndarray]] = {name: [] for name in dataset.label_cols}
    embeddings = None
    for batch in loader:
        images, index = batch["image"].to(device), batch["index"]
        start, stop = int(index[0]), int(index[-1]) + 1
        for view in range(max(views, 1)):
            shown = augment_batch(images, index, epoch=view, seed=seed, config=augment, training=views > 0)
            features = encoder(shown).float().cpu().numpy()
            if embeddings is None:
                shape = (max(views, 1), len(dataset), features.shape[1])
                embeddings = group.create_dataset(EMBEDDINGS_KEY, shape=shape, dtype=np.float32)
            embeddings[view, start:stop] = features
        ids += list(batch["id"])
        for name in labels:
            labels[name].append(batch[name].numpy().copy())  # a copy: the batch's block goes back to its worker
    group.create_dataset(IDS_KEY, data=ids, dtype=h5py.string_dtype("utf-8"))
    label_group = group.create_group(LABELS_GROUP)
    for name, values in labels.items():
        label_group.create_dataset(name, data=np.concatenate(values))


@torch.inference_mode()
def compute_embedding_cache(
    path: Path,
    spec: CacheSpec,
    encoder: nn.Module,
    dataset_dir: Path,
    augment: AugmentConfig,
    batch_size: int = 256,
    num_workers: int = 0,
    locking: bool | None = False,
    device: torch.device | None = None,
) -> Path:
    """Write the cache file of `spec` (atomically, from `path.tmp.<host>.<pid>`: ranks may race) unless it exists."""
    if path.exists():
        return path
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    frozen = copy.deepcopy(encoder).to(device).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, writer_suffix()) as tmp, h5py.File(tmp, "w") as handle:
        handle.attrs[SPEC_ATTR] = json.dumps(dataclasses.asdict(spec), default=list)
        for split in spec.splits:
            dataset = ShardDataset(dataset_dir, split, label_cols=None, locking=locking)
            views = spec.views if split == "train" else 0
            _write_split(handle, frozen, dataset, views, augment, spec.seed, batch_size, num_workers, device)
    return path


class CachedEmbeddings(Dataset):
    """One split of a cache file: `index -> {embedding (views, D) float32, labels..., index, id}`.

    The file is opened lazily by the process that reads it (DataLoader workers included).
    """

    def __init__(self, path: Path, split: str, label_cols: Sequence[str]) -> None:
        self.path = Path(path)
        self.split = split
        self.label_cols = tuple(label_cols)
        with h5py.File(self.path, "r") as handle:
            if split not in handle:
                raise DatasetError(f"{self.path}: no split {split!r} in the embedding cache")
            self.length = handle[split][IDS_KEY].shape[0]
            missing = [name for name in self.label_cols if name not in handle[split][LABELS_GROUP]]
            if missing:
                raise DatasetError(f"{self.path}: label columns {missing} are not in the embedding cache")
        self._handle: h5py.File | None = None
        self._pid = -1

    def __len__(self) -> int:
        return self.length

    def _group(self) -> h5py.Group:
        if self._handle is None or self._pid != os.getpid():
            self._handle = h5py.File(self.path, "r", locking=False)
            self._pid = os.getpid()
        return self._handle[self.split]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        group = self._group()
        order = np.asarray(indices, dtype=np.int64)
        rows, inverse = np.unique(order, return_inverse=True)
        embeddings = torch.from_numpy(group[EMBEDDINGS_KEY][:, rows][:, inverse]).transpose(0, 1)
        ids = group[IDS_KEY].asstr()[rows][inverse]
        labels = {name: torch.from_numpy(group[LABELS_GROUP][name][rows][inverse]) for name in self.label_cols}
        return [
            {"embedding": embeddings[k], "index": int(order[k]), "id": ids[k], **{n: v[k] for n, v in labels.items()}}
            for k in range(len(order))
        ]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handle": None, "_pid": -1}


class EmbeddingCacheDataModule(SplitLoaders):
    """Batches of cached embeddings for head_only training, with the sampling of `ShardDataModule`.

    Batches hold `embedding` float32 (B, D) (the view of the current epoch), the label columns, `index` and `id`;
    the finetuneable models then skip the encoder. The cache is computed in `prepare_data` (global rank 0, on the
    GPU when there is one) unless it exists. `views`: 0 for the evaluation view, N for N augmented training views.
    """

    def __init__(
        self,
        dataset_dir: str | os.PathLike,
        encoder: nn.Module,
        encoder_name: str,
        batch_size: int,
        label_cols: Sequence[str],
        seed: int = 42,
        augment: AugmentConfig | None = None,
        views: int = 0,
        num_workers: int = 0,
        locking: bool | None = False,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        if views < 0:
            raise ValueError(f"views must be >= 0, got {views}")
        self.prepare_data_per_node = False
        self.dataset_dir = Path(dataset_dir)
        self.encoder = encoder
        self.batch_size = batch_size
        self.label_cols = tuple(label_cols)
        self.seed = seed
        self.augment = augment if augment is not None else AugmentConfig()
        self.num_workers = num_workers
        self.locking = locking
        manifest = read_manifest(self.dataset_dir)
        self.spec = CacheSpec(
            encoder_name=encoder_name,
            weights_sha256=encoder_weights_sha256(encoder),
            views=views,
            augment=self.augment.model_dump(mode="json"),
            seed=seed,
            manifest_sha256=hashlib.sha256((self.dataset_dir / MANIFEST_NAME).read_bytes()).hexdigest(),
            splits=tuple(split for split in ("train", "val", "test") if manifest.splits.get(split)),
        )
        self.cache_path = cache_path(Path(cache_dir) if cache_dir else self.dataset_dir / CACHE_DIR_NAME, self.spec)
        self.datasets: dict[str, CachedEmbeddings] = {}

    def prepare_data(self) -> None:
        compute_embedding_cache(
            self.cache_path,
            self.spec,
            self.encoder,
            self.dataset_dir,
            self.augment,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            locking=self.locking,
        )

    def _dataset(self, split: str) -> CachedEmbeddings:
        if split not in self.datasets:
            self.datasets[split] = CachedEmbeddings(self.cache_path, split, self.label_cols)
        return self.datasets[split]

    def _loader_kwargs(self) -> dict[str, Any]:
        return loader_settings(
            num_workers=self.num_workers,
            seed=self.seed,
            batch_size=self.batch_size,
            locking=self.locking,
            persistent_workers=True,
        )

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """Pick the epoch's view: `views` cycle with the epoch in training; evaluation has one view."""
        embeddings = batch["embedding"]
        training = bool(self.trainer is not None and self.trainer.training)
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        batch["embedding"] = embeddings[:, epoch % embeddings.shape[1] if training else 0]
        return batch
