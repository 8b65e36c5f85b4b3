"""Train one run: build the datamodule, model and Trainer from a RunConfig, resume, fit, summarise.

This is the single code path behind `zoobot-hpc train`, submitit's SLURM jobs and submitit's local executor.
"""

from __future__ import annotations

import importlib
import logging
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.environments import ClusterEnvironment
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from zoobot_hpc.backends.registry import running_backend, task_rank
from zoobot_hpc.core import atomic
from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.core.config import RunConfig, dump_config
from zoobot_hpc.core.disk_space import out_of_space, says_out_of_space
from zoobot_hpc.core.stop_signals import PreemptionFlag
from zoobot_hpc.data.datamodule import ShardDataModule
from zoobot_hpc.data.shard_format import DatasetError, read_manifest
from zoobot_hpc.data.shard_identity import (
    ShardChanged,
    check_same_dataset,
    check_shard_sizes,
    manifest_checksum,
    one_line,
)
from zoobot_hpc.model import MODEL_CLASSES, FinetuneableZoobotAbstract
from zoobot_hpc.model.schedulers import updates_per_epoch
from zoobot_hpc.runtime.preemption import PreemptedStop
from zoobot_hpc.runtime.process_groups import set_group_timeouts
from zoobot_hpc.runtime.run_lease import check_lease, release_lease, take_lease
from zoobot_hpc.runtime.stall_ending import STALLED, StallEnding
from zoobot_hpc.runtime.stall_watchdog import StallWatchdog
from zoobot_hpc.training.checkpoint_digest import read_digest
from zoobot_hpc.training.checkpointing import (
    AtomicCheckpointIO,
    NoValidCheckpoint,
    ResumeCheckpointer,
    ResumeVerdict,
    RNGStateCallback,
    keep_own_signal_handlers,
    last_state_checkpoint,
    newest_valid_checkpoint,
)
from zoobot_hpc.training.ddp_strategy import ddp_strategy
from zoobot_hpc.training.elastic import ElasticResume
from zoobot_hpc.training.embedding_cache import EmbeddingCacheDataModule, run_partial_tag
from zoobot_hpc.training.galaxy_table import GalaxyTable
from zoobot_hpc.training.learning_rates import NamedLearningRates
from zoobot_hpc.training.monitoring import (
    LogLineProgress,
    ProgressFile,
    SegmentHeartbeat,
    StartupLog,
    StartupPhases,
    ThroughputMonitor,
)
from zoobot_hpc.training.rank_errors import RankErrorRecorder, explained
from zoobot_hpc.training.segment_logger import SegmentWandbLogger
from zoobot_hpc.training.stall_progress import StallProgress
from zoobot_hpc.training.tracking import create_wandb_logger, scheduler_job_key
from zoobot_hpc.training.wandb_figures import ValidationFigures

log = logging.getLogger(__name__)


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
    config: RunConfig,
    model: FinetuneableZoobotAbstract,
    flag: PreemptionFlag | None = None,
    run_dir: Path | None = None,
) -> ShardDataModule | EmbeddingCacheDataModule:
    """The datamodule a config describes, reading only the label columns the model needs: shards, or (head_only
    with `data.embedding_cache`) the frozen encoder's embeddings, computed once and cached next to the dataset.
    A cache build stops on the run's `flag`, and the run's next job (same `run_dir`) continues it."""
    if config.data.embedding_cache:
        partial_tag = run_partial_tag(run_dir) if run_dir is not None else None
        return EmbeddingCacheDataModule.from_config(config, model.encoder, model.label_cols, flag, partial_tag)
    return ShardDataModule.from_config(config, model.label_cols)


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
    """In a job its scheduler started without submitit (the user's own job script), the Lightning environment the
    scheduler's backend names (SLURM's with Lightning's own requeue switched off: we own preemption)."""
    backend = running_backend()
    named = backend.lightning_environment() if backend is not None else None
    if named is None:
        return None
    module, _, name = named[0].rpartition(".")
    environment = getattr(importlib.import_module(module), name)
    return environment(**named[1]) if environment.detect() else None


def _loggers(
    config: RunConfig, run_dir: Path, group: str | None, task: str, params: Mapping[str, Any] | None = None
) -> list[Logger]:
    loggers: list[Logger] = [CSVLogger(str(run_dir), name=layout.METRICS)]
    wandb_logger = create_wandb_logger(config, run_dir, group=group, task=task, params=params)
    if wandb_logger is not None:
        loggers.append(wandb_logger)
    return loggers


def make_trainer(
    config: RunConfig,
    *,
    callbacks: list[Callback],
    cluster_environment: ClusterEnvironment | None,
    interactive: bool,
    plugins: Sequence[Any] = (),
    **settings: Any,
) -> L.Trainer:
    """The Trainer of a config's resources and precision, for training and inference alike: one process per
    device, started by the scheduler (`cluster_environment`, else SLURM's when detected); our samplers split the
    data, so Lightning's is off; the process groups time out after `process_groups.group_timeout_s` of the stall
    timeout. `settings` are the remaining `L.Trainer` arguments."""
    resources = config.resources
    cluster_environment = cluster_environment or default_cluster_environment()
    plugins = [*plugins, *([cluster_environment] if cluster_environment is not None else [])]
    timeout = set_group_timeouts(config.trainer.stall_timeout_s)
    return L.Trainer(
        accelerator="gpu" if resources.gpus_per_node else "cpu",
        devices=resources.tasks_per_node,
        num_nodes=resources.nodes,
        strategy=ddp_strategy(config.trainer.deterministic, timeout=timeout) if config.world_size > 1 else "auto",
        precision=resolve_precision(config.trainer.precision),
        use_distributed_sampler=False,
        enable_progress_bar=interactive,
        callbacks=callbacks,
        plugins=plugins or None,
        **settings,
    )


def build_training_trainer(
    config: RunConfig,
    run_dir: Path,
    callbacks: list[Callback],
    loggers: list[Logger],
    cluster_environment: ClusterEnvironment | None,
    interactive: bool,
) -> L.Trainer:
    """The training Trainer: `make_trainer` with the config's trainer settings and atomic checkpoint IO. No
    sanity-check pass: the login node validated the dataset, and it would start the val workers before training."""
    settings = config.trainer
    return make_trainer(
        config,
        callbacks=callbacks,
        cluster_environment=cluster_environment,
        interactive=interactive,
        plugins=[AtomicCheckpointIO(dataset=dataset_identity(config))],
        max_epochs=settings.max_epochs,
        deterministic=settings.deterministic,
        gradient_clip_val=settings.gradient_clip_val,
        accumulate_grad_batches=settings.accumulate_grad_batches,
        limit_train_batches=settings.limit_train_batches,
        limit_val_batches=settings.limit_val_batches,
        log_every_n_steps=settings.log_every_n_steps,
        num_sanity_val_steps=0,
        enable_model_summary=interactive,
        logger=loggers,
        default_root_dir=str(run_dir),
    )


def dataset_identity(config: RunConfig) -> str | None:
    """The checksum of the manifest of the dataset a config trains on (None when it has none to read)."""
    try:
        return manifest_checksum(config.data.dataset_dir)
    except OSError:
        return None


def choose_resume_checkpoint(config: RunConfig, run_dir: Path, global_rank: int) -> Path | None:
    """The checkpoint this job resumes from. Rank 0 verifies each one's digest, newest first, and takes the first
    valid one (the others take its choice when the checkpoint is loaded: `AtomicCheckpointIO`). A checkpoint of
    another dataset is refused unless `trainer.allow_dataset_change`."""
    checkpoints = run_dir / layout.CHECKPOINTS
    chosen = newest_valid_checkpoint(checkpoints, verify=global_rank == 0)
    if global_rank != 0:
        return chosen
    if chosen is None:
        if newest_valid_checkpoint(checkpoints, verify=False) is not None:
            raise NoValidCheckpoint(f"no checkpoint in {checkpoints} is valid (see above): move them aside to restart")
        return None
    current = dataset_identity(config)
    digest = read_digest(chosen)
    if current is not None and digest is not None:
        check_same_dataset(digest.dataset, current, chosen, config.trainer.allow_dataset_change)
    return chosen


class ShardWatch(Callback):
    """At each epoch's start, check every shard's size against the manifest (ShardChanged naming the shard): the
    newest checkpoint, of the last completed step, stands, and no epoch starts on a changed dataset."""

    def __init__(self, dataset_dir: Path) -> None:
        self.dataset_dir = Path(dataset_dir)
        self.manifest = read_manifest(self.dataset_dir)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        check_shard_sizes(self.dataset_dir, self.manifest)


def build_callbacks(
    config: RunConfig,
    run_dir: Path,
    model: FinetuneableZoobotAbstract,
    flag: PreemptionFlag | None,
    requeue_count: int,
    interactive: bool,
) -> list[Callback]:
    """The training callbacks, in the order their hooks run (see docs/architecture.md, "A training step")."""
    monitor, mode = config.monitored
    callbacks: list[Callback] = [
        RankErrorRecorder(run_dir, config),
        RNGStateCallback(),
        ElasticResume(),
        ModelCheckpoint(
            dirpath=run_dir / layout.CHECKPOINTS,
            filename="best",
            monitor=monitor,
            mode=mode,
            enable_version_counter=False,
        ),
        last_state_checkpoint(run_dir / layout.CHECKPOINTS),
        ThroughputMonitor(config.data.batch_size, requeue_count=requeue_count),
        ProgressFile(run_dir, monitor, mode),
        SegmentHeartbeat(run_dir, config.trainer.heartbeat_every_s),
        ShardWatch(config.data.dataset_dir),
        NamedLearningRates(),
        ValidationFigures(monitor, mode),
    ]
    tracking = config.tracking
    if tracking.mode != "disabled" and tracking.galaxy_table:
        callbacks.append(GalaxyTable(tracking.galaxy_table, tracking.galaxy_table_worst, tracking.galaxy_table_every))
    callbacks += build_extra_callbacks(config)
    if not interactive:
        callbacks.append(LogLineProgress())
    if config.trainer.early_stopping_patience:
        callbacks.append(
            EarlyStopping(
                monitor=monitor,
                mode=mode,
                patience=config.trainer.early_stopping_patience,
            )
        )
    resume = ResumeCheckpointer(
        run_dir / layout.CHECKPOINTS,
        flag=flag,
        every_n_steps=config.trainer.checkpoint_every_n_steps,
        every_minutes=config.trainer.checkpoint_every_minutes,
        skip_nonfinite=config.trainer.nonfinite == "skip",
    )
    return [*callbacks, resume]  # ResumeCheckpointer moves itself after every other callback at setup


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
    segments = layout.read_segments(run_dir)
    if segments and segments[-1].get("stop") == STALLED:  # a stopped rank went on, and saved, at the requeue's kill
        layout.update_last_segment(run_dir, {"saved_after_stall": stop.signal_name, "saved_step": stop.step})
        return
    record: dict[str, Any] = {"stop": stop.signal_name, "stop_step": stop.step, "stopped": stop.saved_at}
    if flag.first_at is not None:
        record["stop_and_save_s"] = round(stop.saved_at - flag.first_at, 3)
    layout.update_last_segment(run_dir, record)


def prepare_run_dir(run_dir: Path, config: RunConfig, write_config: bool) -> int:
    """Create the run dir's checkpoint folder and (unless `submit` wrote it) its config; returns how many starts
    it has had."""
    (run_dir / layout.CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    if write_config:
        atomic.write_text(run_dir / layout.CONFIG, dump_config(config), mode=atomic.OWNER_ONLY)
    return len(layout.read_segments(run_dir))


def restart_count() -> int | None:
    """How many times the scheduler restarted this job (None where it does not say)."""
    backend = running_backend()
    return backend.restart_count() if backend is not None else None


def node_list() -> str:
    """The nodes of this job as its scheduler names them, else this host."""
    backend = running_backend()
    return (backend.node_list() if backend is not None else None) or socket.gethostname()


def hold_run_dir(run_dir: Path) -> str:
    """Take the run directory's lease for this job (rank 0), or on the other ranks of a scheduled job check that
    no other job holds it; RunDirOwned (one line naming the owner) when another job does. Returns the job key."""
    job_key = scheduler_job_key()
    run_dir.mkdir(parents=True, exist_ok=True)
    scheduled = running_backend() is not None
    if (task_rank() if scheduled else rank_zero_only.rank) == 0:
        take_lease(run_dir, job_key)
    elif scheduled:
        check_lease(run_dir, job_key)  # outside a scheduler each rank's key is its own
    return job_key


def record_segment(run_dir: Path, config: RunConfig, resume_from: Path | None, job_key: str) -> None:
    """Append this start of the job to the run dir's segments (rank 0)."""
    layout.append_segment(
        run_dir,
        {
            "start": time.time(),
            "job": job_key,
            "host": socket.gethostname(),
            "nodes": node_list(),
            "world_size": config.world_size,
            "resumed_from": str(resume_from) if resume_from else None,
            "restart_count": restart_count(),
        },
    )
    log.info("run dir %s; %s", run_dir, f"resuming from {resume_from}" if resume_from else "fresh start")


def write_summary(
    run_dir: Path, config: RunConfig, trainer: L.Trainer, outcome: TrainingOutcome, requeue_count: int
) -> None:
    """RUN_DIR/summary.json of a finished run (rank 0)."""
    checkpoint = trainer.checkpoint_callback
    throughput = next((c for c in trainer.callbacks if isinstance(c, ThroughputMonitor)), None)
    resume = next((c for c in trainer.callbacks if isinstance(c, ResumeCheckpointer)), None)
    best_score = checkpoint.best_model_score if checkpoint else None
    layout.write_json(
        run_dir / layout.SUMMARY,
        {
            "name": config.name,
            "monitor": config.monitored[0],
            "mode": config.monitored[1],
            "best": float(best_score) if best_score is not None else None,
            "best_checkpoint": outcome.best_checkpoint,
            "epochs": trainer.current_epoch,
            "global_step": trainer.global_step,
            "requeues": requeue_count,
            "redone_steps": sum(redo.steps for redo in layout.redone_work(layout.read_segments(run_dir))),
            "images_per_sec": throughput.images_per_sec if throughput else None,
            "skipped_nonfinite_batches": resume.skipped_nonfinite if resume else 0,
            "metrics": outcome.metrics,
            "finished": time.time(),
        },
    )


def fit_segment(
    trainer: L.Trainer,
    model: FinetuneableZoobotAbstract,
    datamodule: L.LightningDataModule,
    resume_from: Path | None,
    run_dir: Path,
    flag: PreemptionFlag | None,
) -> bool:
    """Fit from `resume_from` until training ends or a stop signal's checkpoint is written; True when stopped."""
    try:
        ckpt_path = str(resume_from) if resume_from else None
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        preempted = False
    except PreemptedStop:
        preempted = True
        if trainer.global_rank == 0 and flag is not None:
            record_stop(run_dir, flag)
    except ShardChanged as error:  # raised in a loader worker, it carries the worker's traceback
        raise ShardChanged(one_line(error)) from None
    finish_wandb(trainer, preempted)
    return preempted


def run_training(  # noqa: PLR0913 (the run's seams: stop flag, scheduler environment, sweep group, callbacks)
    config: RunConfig,
    run_dir: Path,
    *,
    flag: PreemptionFlag | None = None,
    cluster_environment: ClusterEnvironment | None = None,
    group: str | None = None,
    interactive: bool | None = None,
    startup: StartupLog | None = None,
    write_config: bool = True,
    extra_callbacks: Sequence[Callback] = (),
    tracked_params: Mapping[str, Any] | None = None,
) -> TrainingOutcome:
    """Fit one run in `run_dir`, resuming from its newest valid checkpoint; returns how this segment ended.

    `startup` times the job's start-up phases (from the process's start) into the log, up to the first step.
    `write_config=False` keeps the `config.yaml` that `submit` wrote (a submitted job carries a config with its
    secrets redacted). `extra_callbacks` are added to the config's (a search trial's reporter). `tracked_params`
    (a search trial's sampled values) become top-level keys of the W&B run's config, as a sweep's swept values do.
    """
    startup = startup or StartupLog()
    run_dir = Path(run_dir)
    job_key = hold_run_dir(run_dir)
    requeue_count = prepare_run_dir(run_dir, config, write_config)
    interactive = sys.stderr.isatty() if interactive is None else interactive
    if not config.resources.gpus_per_node:
        torch.set_num_threads(config.resources.cpus_per_task)
    L.seed_everything(config.trainer.seed, workers=True, verbose=False)

    check_shard_sizes(config.data.dataset_dir, read_manifest(config.data.dataset_dir))
    model = build_model(config)
    if config.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    datamodule = build_datamodule(config, model, flag, run_dir)
    startup.phase("model, datamodule")
    callbacks = build_callbacks(config, run_dir, model, flag, requeue_count, interactive)
    ending = StallEnding(run_dir, job_key, config.resources.max_stall_requeues)
    watchdog = StallWatchdog(config.trainer.stall_timeout_s, ending, beat_dir=run_dir / layout.RANKS)
    if isinstance(datamodule, EmbeddingCacheDataModule):
        datamodule.watchdog = watchdog
    trainer = build_training_trainer(
        config,
        run_dir,
        [*callbacks, *extra_callbacks, StartupPhases(startup), StallProgress(watchdog)],
        _loggers(config, run_dir, group, model.kind, tracked_params),
        cluster_environment,
        interactive,
    )
    keep_own_signal_handlers(trainer)
    model.updates_per_epoch = updates_per_epoch(
        datamodule.train_batches_per_epoch(trainer.world_size),
        trainer.limit_train_batches,
        trainer.accumulate_grad_batches,
    )
    startup.phase("trainer, loggers")

    resume_from, refusal = None, None
    try:
        resume_from = choose_resume_checkpoint(config, run_dir, trainer.global_rank)
    except (NoValidCheckpoint, DatasetError) as error:
        if trainer.world_size == 1:
            raise
        refusal = error  # raised on every rank together, inside fit (ResumeVerdict)
    trainer.callbacks.append(ResumeVerdict(refusal))
    if trainer.global_rank == 0 and refusal is None:
        record_segment(run_dir, config, resume_from, job_key)
    try:
        preempted = fit_segment(trainer, model, datamodule, resume_from, run_dir, flag)
    except torch.OutOfMemoryError as error:
        raise explained(error, config, model.device) from None
    except OSError as error:  # a log, metrics or W&B file that ran out of room: one line, not a traceback
        if not says_out_of_space(error):
            raise
        raise (out_of_space(error, run_dir, "the run's files under", 0) or error) from None

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else None
    outcome = TrainingOutcome(
        preempted=preempted,
        resumed_from=str(resume_from) if resume_from else None,
        metrics={k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1},
        best_checkpoint=best or None,
    )
    if not preempted and trainer.global_rank == 0:
        write_summary(run_dir, config, trainer, outcome, requeue_count)
        release_lease(run_dir, job_key)
    return outcome
