"""head_only training on cached embeddings: the same result as running the frozen encoder every step."""

from __future__ import annotations

import dataclasses
import logging

import h5py
import lightning as L
import numpy as np
import torch

from tests.support.trained_runs import run_config
from tests.unit.data.test_datamodule import make_trainer
from zoobot_hpc.core.config import RunConfig
from zoobot_hpc.training import embedding_cache
from zoobot_hpc.training.embedding_cache import (
    ROWS_DONE_ATTR,
    EmbeddingCacheDataModule,
    cache_path,
    compute_embedding_cache,
    partial_path,
)
from zoobot_hpc.training.run import build_datamodule, build_model


def _fit(model: L.LightningModule, datamodule: L.LightningDataModule, epochs: int) -> L.Trainer:
    trainer = make_trainer(epochs, callbacks=[], validate=True)
    trainer.fit(model, datamodule=datamodule)
    return trainer


def _cache_datamodule(config: RunConfig, model, views: int, cache_dir) -> EmbeddingCacheDataModule:
    return EmbeddingCacheDataModule(
        config.data.dataset_dir,
        model.encoder,
        config.model.name,
        batch_size=config.data.batch_size,
        label_cols=model.label_cols,
        seed=config.trainer.seed,
        augment=config.data.augment.model_copy(update={"greyscale": config.model.greyscale}),
        views=views,
        cache_dir=cache_dir,
    )


def test_cached_head_only_training_matches_uncached_training_with_the_same_views(train_data, tmp_path):
    epochs = 2
    config = run_config(train_data, tmp_path, "classifier", model={"training_mode": "head_only"})
    L.seed_everything(config.trainer.seed)
    uncached = build_model(config)
    initial_head = [p.detach().clone() for p in uncached.head.parameters()]
    uncached_trainer = _fit(uncached, build_datamodule(config, uncached), epochs)

    L.seed_everything(config.trainer.seed)
    cached = build_model(config)
    data = config.data.model_copy(update={"embedding_cache": True, "embedding_cache_views": epochs})
    datamodule = build_datamodule(config.model_copy(update={"data": data}), cached)
    assert isinstance(datamodule, EmbeddingCacheDataModule)
    cached_trainer = _fit(cached, datamodule, epochs)

    for before, after_uncached, after_cached in zip(
        initial_head, uncached.head.parameters(), cached.head.parameters(), strict=True
    ):
        assert not torch.allclose(before, after_uncached), "the head must have trained"
        torch.testing.assert_close(after_cached, after_uncached, atol=1e-5, rtol=1e-4)
    for metric in ("validation/loss", "validation/accuracy", "train/loss"):
        torch.testing.assert_close(
            cached_trainer.callback_metrics[metric], uncached_trainer.callback_metrics[metric], atol=1e-5, rtol=1e-4
        )
    with h5py.File(datamodule.cache_path, "r") as handle:
        train_views = handle["train/embeddings"][()]
        assert train_views.shape[:2] == (epochs, datamodule.datasets["train"].length)
        assert not np.allclose(train_views[0], train_views[1]), "each epoch has its own augmented view"
        assert handle["val/embeddings"].shape[0] == 1


def test_the_cache_is_reused_for_the_same_encoder_and_views_and_keyed_on_both(train_data, tmp_path):
    config = run_config(train_data, tmp_path, "classifier", model={"training_mode": "head_only"})
    model = build_model(config)
    first = _cache_datamodule(config, model, views=0, cache_dir=None)
    first.prepare_data()
    assert first.cache_path.parent == train_data / "embedding_cache"
    written = first.cache_path.stat().st_mtime_ns

    again = _cache_datamodule(config, build_model(config), views=0, cache_dir=None)
    again.prepare_data()
    assert again.cache_path == first.cache_path and again.cache_path.stat().st_mtime_ns == written

    assert _cache_datamodule(config, model, views=3, cache_dir=None).cache_path != first.cache_path
    with torch.no_grad():
        next(model.encoder.parameters()).add_(0.01)
    assert _cache_datamodule(config, model, views=0, cache_dir=None).cache_path != first.cache_path


class StopAfter:
    """A `should_stop` that turns true at its call after `calls` (the build checks it before every view of a batch),
    counting its calls."""

    def __init__(self, calls: int | None = None) -> None:
        self.limit = calls
        self.calls = 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.limit is not None and self.calls > self.limit


def cache_contents(path) -> dict[str, np.ndarray]:
    """Every dataset of a cache file by its name."""
    arrays: dict[str, np.ndarray] = {}

    def read(name: str, item) -> None:
        if isinstance(item, h5py.Dataset):
            arrays[name] = item[()]

    with h5py.File(path, "r") as handle:
        handle.visititems(read)
    return arrays


def assert_same_contents(a, b) -> None:
    """Two cache files hold the same datasets, bit for bit."""
    first, second = cache_contents(a), cache_contents(b)
    assert first.keys() == second.keys()
    for name in first:
        assert first[name].dtype == second[name].dtype and np.array_equal(first[name], second[name]), name


def _build(datamodule: EmbeddingCacheDataModule, cache_dir, spec, should_stop=None, tag="run-a"):
    """`compute_embedding_cache` of `spec` in `cache_dir`, with the datamodule's encoder, dataset and views."""
    return compute_embedding_cache(
        cache_path(cache_dir, spec),
        spec,
        datamodule.encoder,
        datamodule.dataset_dir,
        datamodule.augment,
        batch_size=16,
        should_stop=should_stop,
        partial_tag=tag,
    )


def test_a_stopped_build_keeps_its_rows_and_the_next_call_continues_it_to_the_same_cache(
    train_data, tmp_path, caplog, monkeypatch
):
    config = run_config(train_data, tmp_path, "classifier", model={"training_mode": "head_only"})
    datamodule = _cache_datamodule(config, build_model(config), views=2, cache_dir=None)
    spec = datamodule.spec
    uninterrupted = StopAfter()
    reference = _build(datamodule, tmp_path / "reference", spec, uninterrupted)
    # Two views per batch: 5 checks are two whole batches and the first view of the third, which is not kept.
    assert _build(datamodule, tmp_path / "stopped", spec, StopAfter(5)) is None
    target = cache_path(tmp_path / "stopped", spec)
    partial = partial_path(target, "run-a")
    assert partial.exists() and not target.exists()
    with h5py.File(partial, "r") as handle:
        assert handle["train"].attrs[ROWS_DONE_ATTR] == 32 and "val" not in handle

    resumed = StopAfter()
    monkeypatch.setattr(embedding_cache, "PROGRESS_EVERY_S", 0.0)
    with caplog.at_level(logging.INFO, logger="zoobot_hpc"):
        assert _build(datamodule, tmp_path / "stopped", spec, resumed) == target
    assert "(32/96 rows already done)" in caplog.text
    assert "embedding cache: 48/96 rows done (train;" in caplog.text, "a progress line (here after every batch)"
    assert resumed.calls == uninterrupted.calls - 4, "the two batches done are not embedded again"
    assert not partial.exists()
    assert_same_contents(target, reference)


def test_a_partial_file_of_another_cache_spec_or_unreadable_is_started_afresh(train_data, tmp_path):
    config = run_config(train_data, tmp_path, "classifier", model={"training_mode": "head_only"})
    datamodule = _cache_datamodule(config, build_model(config), views=2, cache_dir=None)
    spec = datamodule.spec
    other = dataclasses.replace(spec, seed=spec.seed + 1)  # same shapes, other augmented views
    reference = _build(datamodule, tmp_path / "reference", other)
    assert _build(datamodule, tmp_path / "stopped", spec, StopAfter(4)) is None
    target = cache_path(tmp_path / "stopped", other)
    partial_path(cache_path(tmp_path / "stopped", spec), "run-a").rename(partial_path(target, "run-a"))
    assert _build(datamodule, tmp_path / "stopped", other) == target
    assert_same_contents(target, reference)
    own = cache_contents(_build(datamodule, tmp_path / "own", spec))["train/embeddings"][:, :32]
    assert not np.array_equal(own, cache_contents(target)["train/embeddings"][:, :32]), "the stale rows would differ"

    torn = cache_path(tmp_path / "torn", other)
    torn.parent.mkdir()
    partial_path(torn, "run-a").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    assert _build(datamodule, tmp_path / "torn", other) == torn
    assert_same_contents(torn, reference)
