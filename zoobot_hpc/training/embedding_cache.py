"""Cached encoder embeddings for head_only training: computed once, stored next to the dataset, served as batches.

A frozen encoder in eval mode maps a given view of an image to the same embedding every epoch, so the head can
train on stored embeddings. The cache holds, per split, `views` augmented training views (view `v` is the view
`ShardDataModule` shows in epoch `v`: a pure function of seed, epoch and sample index), or the deterministic
evaluation view (`views=0`, for training without augmentation). Epoch `e` trains on view `e % views`.

The cache file is `DATASET_DIR/embedding_cache/<encoder>-<key>.h5`, the key hashing the encoder name, its weights,
the view settings, the seed and the dataset manifest: a different encoder, checkpoint or view never reuses it.
It is built in `<cache>.partial.<run tag>` next to it, batch by batch, each split's rows done synced to disk every
few seconds: a build stopped by a signal (checked before every batch and view) is continued by the run's next job,
with the same bits as an uninterrupted build, and renamed into place when complete.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

if TYPE_CHECKING:
    from zoobot_hpc.core.config import RunConfig

from zoobot_hpc.core.atomic import commit, writer_suffix
from zoobot_hpc.core.stop_signals import PreemptionFlag
from zoobot_hpc.data.augment import AugmentConfig, augment_batch
from zoobot_hpc.data.datamodule import SplitLoaders
from zoobot_hpc.data.dataset import ShardDataset, collate_samples
from zoobot_hpc.data.shard_format import MANIFEST_NAME, DatasetError, read_manifest
from zoobot_hpc.data.workers import loader_settings
from zoobot_hpc.runtime.preemption import stop_all_ranks
from zoobot_hpc.runtime.rank_agreement import agree_on_stop, host_flag_group
from zoobot_hpc.runtime.stall_watchdog import StallWatchdog, note_progress

CACHE_DIR_NAME = "embedding_cache"
EMBEDDINGS_KEY = "embeddings"
IDS_KEY = "ids"
LABELS_GROUP = "labels"
SPEC_ATTR = "spec"
ROWS_DONE_ATTR = "rows_done"  # per split, in a partial file: rows written and synced to disk so far
BATCH_SIZE_ATTR = "batch_size"  # of a partial file: a build continues with the batches it started with
COMMIT_EVERY_S = 10.0  # a lost node costs at most this much of a build
PROGRESS_EVERY_S = 30.0

log = logging.getLogger(__name__)


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


def run_partial_tag(run_dir: str | os.PathLike) -> str:
    """The tag of a run's partial cache file: the run's next job resumes it, another run never shares it."""
    return hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]


def partial_path(path: Path, partial_tag: str | None) -> Path:
    """Where the cache `path` is built: next to it (so the final rename stays on one filesystem), named per run
    (`partial_tag`) or, without a tag, per process (not resumable)."""
    suffix = f".partial.{partial_tag}" if partial_tag else writer_suffix()
    return path.with_name(path.name + suffix)


@dataclass
class _Build:
    """What every batch of a build needs: the frozen encoder and how to load and show the images."""

    encoder: nn.Module
    augment: AugmentConfig
    seed: int
    batch_size: int
    num_workers: int
    device: torch.device
    should_stop: Callable[[], bool]


class _Progress:
    """Rows done over every split of a build, logged as a line at most every `PROGRESS_EVERY_S`."""

    def __init__(self, done: int, total: int) -> None:
        self.done, self.total, self.started_with = done, total, done
        self.started = self.last_line = time.monotonic()

    def add(self, split: str, rows: int) -> None:
        self.done += rows
        now = time.monotonic()
        if now - self.last_line >= PROGRESS_EVERY_S:
            rate = (self.done - self.started_with) / (now - self.started)
            log.info("embedding cache: %d/%d rows done (%s; %.0f rows/s)", self.done, self.total, split, rate)
            self.last_line = now


def _spec_text(spec: CacheSpec) -> str:
    return json.dumps(dataclasses.asdict(spec), default=list)


def _rows_done(handle: h5py.File, split: str) -> int:
    return int(handle[split].attrs[ROWS_DONE_ATTR]) if split in handle else 0


def _reopen(partial: Path, spec: CacheSpec, batch_size: int) -> h5py.File | None:
    """The partial file of an earlier build of `spec` with the same batches, or None when it is missing, of another
    spec or batch size, or unreadable (the node died mid-write)."""
    if not partial.exists():
        return None
    handle = None
    try:
        handle = h5py.File(partial, "r+")
        same = (handle.attrs.get(SPEC_ATTR), handle.attrs.get(BATCH_SIZE_ATTR)) == (_spec_text(spec), batch_size)
        if same:
            for group in handle.values():
                int(group.attrs[ROWS_DONE_ATTR])  # every split's count reads back
            return handle
        log.warning("embedding cache: %s was built for another spec or batch size; starting it afresh", partial)
    except (OSError, KeyError, ValueError) as error:
        log.warning("embedding cache: %s is unreadable (%s); starting it afresh", partial, error)
    if handle is not None:
        handle.close()
    return None


def _open_partial(partial: Path, spec: CacheSpec, batch_size: int) -> h5py.File:
    """The partial file of `spec`, reopened to continue where its last build stopped, or started afresh. The batch
    size is kept: the encoder's arithmetic may depend on it, and the rows of a continued build must be the bits of
    an uninterrupted one."""
    handle = _reopen(partial, spec, batch_size)
    if handle is None:
        handle = h5py.File(partial, "w")
        handle.attrs[SPEC_ATTR] = _spec_text(spec)
        handle.attrs[BATCH_SIZE_ATTR] = batch_size
    return handle


def _commit_rows(handle: h5py.File, group: h5py.Group, rows_done: int) -> None:
    """Make the rows written so far durable, and only then count them: a node lost mid-build never leaves a count
    ahead of rows that did not reach the disk."""
    handle.flush()
    os.fsync(handle.id.get_vfd_handle())
    group.attrs[ROWS_DONE_ATTR] = rows_done
    handle.flush()
    os.fsync(handle.id.get_vfd_handle())


def _allocate(
    group: h5py.Group, batch: dict[str, Any], features: np.ndarray, length: int, label_cols: Sequence[str]
) -> None:
    """Every dataset of a split at its full size, at its first batch (`features`: views, B, D)."""
    group.create_dataset(EMBEDDINGS_KEY, shape=(features.shape[0], length, features.shape[2]), dtype=np.float32)
    group.create_dataset(IDS_KEY, shape=(length,), dtype=h5py.string_dtype("utf-8"))
    labels = group.create_group(LABELS_GROUP)
    for name in label_cols:
        labels.create_dataset(name, shape=(length,), dtype=batch[name].numpy().dtype)


def _embed_batch(build: _Build, batch: dict[str, Any], views: int) -> np.ndarray | None:
    """The batch's embeddings (views, B, D), or None when `should_stop` turned true (checked before each view)."""
    images, index = batch["image"].to(build.device), batch["index"]
    features = []
    for view in range(max(views, 1)):
        if build.should_stop():
            return None
        shown = augment_batch(images, index, epoch=view, seed=build.seed, config=build.augment, training=views > 0)
        features.append(build.encoder(shown).float().cpu().numpy())
    return np.stack(features)


def _write_split(handle: h5py.File, dataset: ShardDataset, views: int, build: _Build, progress: _Progress) -> bool:
    """Embed the split's rows not yet done, each batch written in place; `rows_done` counts them every
    `COMMIT_EVERY_S`, at the end and at a stop (`_commit_rows`). False when `should_stop` stopped it. The rows are
    those of an uninterrupted build: the batches start at the same rows and a view is a pure function of the
    sample index."""
    group = handle.require_group(dataset.split)
    group.attrs.setdefault(ROWS_DONE_ATTR, 0)
    done = int(group.attrs[ROWS_DONE_ATTR])
    # Its own generator: iterating must not draw from the global RNG, which the training run then continues.
    loader = DataLoader(
        Subset(dataset, range(done, len(dataset))),
        **loader_settings(
            num_workers=build.num_workers,
            seed=build.seed,
            batch_size=build.batch_size,
            locking=dataset.locking,
            collate_fn=collate_samples,
        ),
    )
    written, committed_at, stopped = done, time.monotonic(), False
    for batch in loader:
        features = _embed_batch(build, batch, views)
        if features is None:
            stopped = True
            break
        if EMBEDDINGS_KEY not in group:
            _allocate(group, batch, features, len(dataset), dataset.label_cols)
        start, written = int(batch["index"][0]), int(batch["index"][-1]) + 1
        group[EMBEDDINGS_KEY][:, start:written] = features
        group[IDS_KEY][start:written] = list(batch["id"])
        for name in dataset.label_cols:
            group[LABELS_GROUP][name][start:written] = batch[name].numpy()
        progress.add(dataset.split, written - start)
        note_progress(f"cache-build block ({dataset.split}) at row", written)
        if time.monotonic() - committed_at >= COMMIT_EVERY_S:
            _commit_rows(handle, group, written)
            committed_at = time.monotonic()
    _commit_rows(handle, group, written)
    return not stopped


def _build_partial(partial: Path, spec: CacheSpec, dataset_dir: Path, locking: bool | None, build: _Build) -> bool:
    """Fill the partial file of `spec`, continuing where it stopped; True when every split is done."""
    datasets = [ShardDataset(dataset_dir, split, label_cols=None, locking=locking) for split in spec.splits]
    with _open_partial(partial, spec, build.batch_size) as handle:
        progress = _Progress(sum(_rows_done(handle, d.split) for d in datasets), sum(len(d) for d in datasets))
        if progress.done:
            log.info("embedding cache: resuming %s (%d/%d rows already done)", partial, progress.done, progress.total)
        else:
            log.info("embedding cache: building %s (%d rows to embed)", partial, progress.total)
        for dataset in datasets:
            views = spec.views if dataset.split == "train" else 0
            if not _write_split(handle, dataset, views, build, progress):
                log.info("embedding cache: build stopped on a signal at %d/%d rows", progress.done, progress.total)
                return False
    return True


@torch.inference_mode()
def compute_embedding_cache(  # noqa: PLR0913 (every argument changes what is cached or how)
    path: Path,
    spec: CacheSpec,
    encoder: nn.Module,
    dataset_dir: Path,
    augment: AugmentConfig,
    batch_size: int = 256,
    num_workers: int = 0,
    locking: bool | None = False,
    device: torch.device | None = None,
    should_stop: Callable[[], bool] | None = None,
    partial_tag: str | None = None,
) -> Path | None:
    """Write the cache file of `spec` unless it exists; returns its path, or None when `should_stop` (checked
    between batches and views) stopped the build first.

    The build goes to `partial_path(path, partial_tag)` and is renamed into `path` when complete (atomically:
    ranks and runs may race). With a `partial_tag` a stopped build keeps its partial file, and the next call with
    the same tag continues it; without one the partial file is deleted.
    """
    partial = partial_path(path, partial_tag)
    if path.exists():
        if partial_tag:
            partial.unlink(missing_ok=True)
        return path
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    frozen = copy.deepcopy(encoder).to(device).eval()
    build = _Build(frozen, augment, spec.seed, batch_size, num_workers, device, should_stop or (lambda: False))
    path.parent.mkdir(parents=True, exist_ok=True)
    finished = False
    try:
        finished = _build_partial(partial, spec, dataset_dir, locking, build)
    finally:
        if not (finished or partial_tag):
            partial.unlink(missing_ok=True)
    if not finished:
        return None
    commit(partial, path)
    log.info("embedding cache: %s written", path)
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
    `flag`: the run's stop signals; the build stops at the next batch and `setup` stops every rank. `partial_tag`
    (`run_partial_tag` of the run dir): the run's next job continues a stopped build. `watchdog` (set by the run):
    the stall watchdog, fed every batch of the build.
    """

    @classmethod
    def from_config(
        cls,
        config: RunConfig,
        encoder: nn.Module,
        label_cols: Sequence[str],
        flag: PreemptionFlag | None = None,
        partial_tag: str | None = None,
    ) -> EmbeddingCacheDataModule:
        """The cache of a run's config: its `data` section (the build decodes with `data.num_workers` loader
        workers), the model's encoder and label columns, the run's stop flag and partial-build tag."""
        data = config.data
        return cls(
            data.dataset_dir,
            encoder=encoder,
            encoder_name=config.model.name,
            batch_size=data.batch_size,
            label_cols=label_cols,
            seed=config.trainer.seed,
            augment=data.augment.model_copy(update={"greyscale": config.model.greyscale}),
            views=data.embedding_cache_views,
            build_workers=data.num_workers,
            locking=data.hdf5_locking,
            flag=flag,
            partial_tag=partial_tag,
        )

    def __init__(  # noqa: PLR0913 (every argument changes what is cached or how; see from_config)
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
        build_workers: int = 0,
        locking: bool | None = False,
        cache_dir: str | os.PathLike | None = None,
        flag: PreemptionFlag | None = None,
        partial_tag: str | None = None,
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
        self.num_workers = num_workers  # serving the stored embeddings: small reads, the main process by default
        self.build_workers = build_workers  # decoding and augmenting images for the build
        self.locking = locking
        self.flag = flag
        self.partial_tag = partial_tag
        self.watchdog: StallWatchdog | None = None  # the run's stall watchdog watches the build (rank 0)
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
        if self.watchdog is not None:
            self.watchdog.start()
        try:
            self._build()
        finally:
            if self.watchdog is not None:
                self.watchdog.stop()

    def _build(self) -> None:
        compute_embedding_cache(
            self.cache_path,
            self.spec,
            self.encoder,
            self.dataset_dir,
            self.augment,
            batch_size=self.batch_size,
            num_workers=self.build_workers,
            locking=self.locking,
            should_stop=(lambda: self.flag.received) if self.flag is not None else None,
            partial_tag=self.partial_tag,
        )

    def setup(self, stage: str) -> None:
        """On every rank, after global rank 0's `prepare_data`: when a stop signal reached any rank (the build
        stopped on it, or it came while the others waited), all ranks agree and stop together before training."""
        if self.flag is None:
            return
        requeue, terminated = agree_on_stop(self.flag, group=host_flag_group())
        if requeue or terminated:
            step = self.trainer.global_step if self.trainer is not None else 0
            stop_all_ranks(
                self.flag,
                terminated,
                step,
                "nothing to save before training (a stopped embedding cache build continues in the next job)",
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
