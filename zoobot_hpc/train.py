"""Train one run: build the datamodule, model and Trainer from a RunConfig, resume, fit, summarise.

This is the single code path behind `zoobot-hpc train`, submitit's SLURM jobs and submitit's local executor.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger

from zoobot_hpc import run_dir as layout
from zoobot_hpc.checkpointing import (
    AtomicCheckpointIO,
    ResumeCheckpointer,
    RNGStateCallback,
    keep_own_signal_handlers,
    newest_valid_checkpoint,
)
from zoobot_hpc.config import RunConfig, dump_config
from zoobot_hpc.data.datamodule import ShardDataModule
from zoobot_hpc.data.embedding_cache import EmbeddingCacheDataModule
from zoobot_hpc.model import MODEL_CLASSES, FinetuneableZoobotAbstract
from zoobot_hpc.monitoring import LogLineProgress, ProgressFile, ThroughputMonitor
from zoobot_hpc.preemption import PreemptedStop, PreemptionFlag
from zoobot_hpc.tracking import SegmentWandbLogger, create_wandb_logger, scheduler_job_key

log = logging.getLogger("zoobot_hpc")


@dataclass
class TrainingOutcome:
    """What one segment of a run ended with."""

    preempted: bool
    resumed_from: str | None
    metrics: dict[str, float]
    best_checkpoint: str | None


def build_model(config: RunConfig) -> FinetuneableZoobotAbstract:
    """The finetuneable model a config describes."""
    settings = config.model.model_dump(exclude={"kind"})
    settings["zoobot_checkpoint_loc"] = (
        str(settings["zoobot_checkpoint_loc"]) if settings["zoobot_checkpoint_loc"] else None
    )
    return MODEL_CLASSES[config.model.kind](**settings, seed=config.trainer.seed)


def build_datamodule(
    config: RunConfig, model: FinetuneableZoobotAbstract
) -> ShardDataModule | EmbeddingCacheDataModule:
    """The datamodule a config describes, reading only the label columns the model needs: shards, or (head_only
    with `data.embedding_cache`) the frozen encoder's embeddings, computed once and cached next to the dataset."""
    data = config.data
    augment = data.augment.model_copy(update={"greyscale": config.model.greyscale})
    if data.embedding_cache:
        return EmbeddingCacheDataModule(
            data.dataset_dir,
            encoder=model.encoder,
            encoder_name=config.model.name,
            batch_size=data.batch_size,
            label_cols=model.label_cols,
            seed=config.trainer.seed,
            augment=augment,
            views=data.embedding_cache_views,
            locking=data.hdf5_locking,
        )
    return ShardDataModule(
        dataset_dir=data.dataset_dir,
        batch_size=data.batch_size,
        num_workers=data.num_workers,
        label_cols=model.label_cols,
        seed=config.trainer.seed,
        augment=augment,
        locking=data.hdf5_locking,
        pin_memory=config.resources.gpus_per_node > 0,
    )


def import_callback_class(class_path: str) -> type[Callback]:
    """The class an extra callback's import path names; a one-line ValueError when it does not import."""
    module_name, _, class_name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"trainer.callbacks: cannot import {class_path!r} ({exc})") from None


def build_extra_callbacks(config: RunConfig) -> list[Callback]:
    """Instantiate the config's extra callbacks from their import paths."""
    return [import_callback_class(spec.class_path)(**spec.init_args) for spec in config.trainer.callbacks]


def resolve_precision(precision: str) -> str:
    """`auto` is bf16 mixed precision on GPUs with native bf16 (Ampere and newer), full precision otherwise
    (`is_bf16_supported()` also accepts the slow emulation of V100 and T4)."""
    if precision != "auto":
        return precision
    if torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8:
        return "bf16-mixed"
    return "32-true"


def default_cluster_environment() -> ClusterEnvironment | None:
    """Under SLURM, Lightning's SLURM environment with its own requeue switched off (we own preemption)."""
    if SLURMEnvironment.detect():
        return SLURMEnvironment(auto_requeue=False)
    return None


def _loggers(config: RunConfig, run_dir: Path, group: str | None, task: str) -> list[Logger]:
    loggers: list[Logger] = [CSVLogger(str(run_dir), name=layout.METRICS)]
    wandb_logger = create_wandb_logger(config, run_dir, group=group, task=task)
    if wandb_logger is not None:
        loggers.append(wandb_logger)
    return loggers


def finish_wandb(trainer: L.Trainer, preempted: bool) -> None:
    """Flush and close this segment's W&B run on rank 0 before the job may be killed by its requeue."""
    if trainer.global_rank != 0:
        return
    for logger in trainer.loggers:
        if isinstance(logger, SegmentWandbLogger):
            logger.finish(preempted)


def record_stop(run_dir: Path, flag: PreemptionFlag) -> None:
    """Add how this segment stopped to its record: the signal, the step, and `stop_and_save_s` (seconds from the
    signal's arrival on rank 0 to the checkpoint on disk), which `submit` compares with the partition's grace time."""
    stop = flag.stopped
    if stop is None:
        return
    record: dict[str, Any] = {"stop": stop.signal_name, "stop_step": stop.step, "stopped": stop.saved_at}
    if flag.first_at is not None:
        record["stop_and_save_s"] = round(stop.saved_at - flag.first_at, 3)
    layout.update_last_segment(run_dir, record)


def run_training(
    config: RunConfig,
    run_dir: Path,
    *,
    flag: PreemptionFlag | None = None,
    cluster_environment: ClusterEnvironment | None = None,
    group: str | None = None,
    interactive: bool | None = None,
) -> TrainingOutcome:
    """Fit one run in `run_dir`, resuming from its newest valid checkpoint; returns how this segment ended."""
    run_dir = Path(run_dir)
    checkpoint_dir = run_dir / layout.CHECKPOINTS
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / layout.CONFIG).write_text(dump_config(config))
    if interactive is None:
        interactive = sys.stderr.isatty()
    requeue_count = len(layout.read_segments(run_dir))
    if not config.resources.gpus_per_node:
        torch.set_num_threads(config.resources.cpus_per_task)
    L.seed_everything(config.trainer.seed, workers=True, verbose=False)

    model = build_model(config)
    if config.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    datamodule = build_datamodule(config, model)

    resume = ResumeCheckpointer(
        checkpoint_dir,
        flag=flag,
        every_n_steps=config.trainer.checkpoint_every_n_steps,
        every_minutes=config.trainer.checkpoint_every_minutes,
    )
    callbacks: list[Any] = [
        RNGStateCallback(),
        ModelCheckpoint(
            dirpath=checkpoint_dir,
            filename="best",
            monitor=model.monitor_metric,
            mode=model.monitor_mode,
            save_last=True,
            enable_version_counter=False,
        ),
        ThroughputMonitor(config.data.batch_size, requeue_count=requeue_count),
        ProgressFile(run_dir, model.monitor_metric, model.monitor_mode),
        LearningRateMonitor(logging_interval="step"),
    ]
    callbacks += build_extra_callbacks(config)
    if not interactive:
        callbacks.append(LogLineProgress())
    if config.trainer.early_stopping_patience:
        callbacks.append(
            EarlyStopping(
                monitor=model.monitor_metric,
                mode=model.monitor_mode,
                patience=config.trainer.early_stopping_patience,
            )
        )
    callbacks.append(resume)  # last: the other callbacks see (and log) the step at which a stop happens

    resources = config.resources
    distributed = config.world_size > 1
    plugins: list[Any] = [AtomicCheckpointIO()]
    cluster_environment = cluster_environment or default_cluster_environment()
    if cluster_environment is not None:
        plugins.append(cluster_environment)
    trainer = L.Trainer(
        accelerator="gpu" if resources.gpus_per_node else "cpu",
        devices=resources.tasks_per_node,
        num_nodes=resources.nodes,
        strategy=("ddp" if distributed else "auto"),
        precision=resolve_precision(config.trainer.precision),
        max_epochs=config.trainer.max_epochs,
        deterministic=config.trainer.deterministic,
        gradient_clip_val=config.trainer.gradient_clip_val,
        accumulate_grad_batches=config.trainer.accumulate_grad_batches,
        limit_train_batches=config.trainer.limit_train_batches,
        limit_val_batches=config.trainer.limit_val_batches,
        log_every_n_steps=config.trainer.log_every_n_steps,
        use_distributed_sampler=False,
        enable_progress_bar=interactive,
        enable_model_summary=interactive,
        callbacks=callbacks,
        logger=_loggers(config, run_dir, group, model.task),
        plugins=plugins,
        default_root_dir=str(run_dir),
    )
    keep_own_signal_handlers(trainer)

    resume_from = newest_valid_checkpoint(checkpoint_dir)
    if trainer.global_rank == 0:
        layout.append_segment(
            run_dir,
            {
                "start": time.time(),
                "job": scheduler_job_key(),
                "host": socket.gethostname(),
                "world_size": config.world_size,
                "resumed_from": str(resume_from) if resume_from else None,
                "slurm_restart_count": os.environ.get("SLURM_RESTART_COUNT"),
            },
        )
        log.info("run dir %s; %s", run_dir, f"resuming from {resume_from}" if resume_from else "fresh start")
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=str(resume_from) if resume_from else None)
        preempted = False
    except PreemptedStop:
        preempted = True
        if trainer.global_rank == 0 and flag is not None:
            record_stop(run_dir, flag)
    finish_wandb(trainer, preempted)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else None
    outcome = TrainingOutcome(
        preempted=preempted,
        resumed_from=str(resume_from) if resume_from else None,
        metrics=metrics,
        best_checkpoint=best or None,
    )
    if not preempted and trainer.global_rank == 0:
        throughput = next((c for c in callbacks if isinstance(c, ThroughputMonitor)), None)
        layout.write_json(
            run_dir / layout.SUMMARY,
            {
                "name": config.name,
                "monitor": model.monitor_metric,
                "best": float(trainer.checkpoint_callback.best_model_score)
                if trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_score is not None
                else None,
                "best_checkpoint": outcome.best_checkpoint,
                "epochs": trainer.current_epoch,
                "global_step": trainer.global_step,
                "requeues": requeue_count,
                "images_per_sec": throughput.images_per_sec if throughput else None,
                "metrics": metrics,
                "finished": time.time(),
            },
        )
    return outcome
