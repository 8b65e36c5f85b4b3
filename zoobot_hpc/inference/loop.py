"""The per-rank inference code path: read the planned splits in manifest order, predict, write part files, merge.

Each chunk (`plan.chunk_size` galaxies for every rank) is split into one contiguous block per rank (no padding, so no
duplicates); batches never cross a block, so a requeued job that skips finished part files forms the same
batches as an uninterrupted one. After every rank is done (a barrier), rank 0 merges the parts into one file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.fabric.plugins.environments import ClusterEnvironment
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Sampler

from zoobot_hpc.backends.registry import job_key
from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.core.config import RunConfig
from zoobot_hpc.core.stop_signals import PreemptionFlag, StopRecord
from zoobot_hpc.data.augment import augment_batch
from zoobot_hpc.data.batch_memory import forget_mappings
from zoobot_hpc.data.dataset import ManifestOrderDataset, collate_samples
from zoobot_hpc.data.workers import loader_settings
from zoobot_hpc.inference.parts import export_table, merge_parts, part_path, write_part
from zoobot_hpc.inference.request import (
    PLAN_FILE,
    InferenceError,
    InferencePlan,
    InferenceRequest,
    plan_attributes,
    read_plan,
)
from zoobot_hpc.model import MODEL_CLASSES, FinetuneableZoobotAbstract
from zoobot_hpc.runtime.preemption import PreemptedStop
from zoobot_hpc.runtime.rank_agreement import host_flag_group
from zoobot_hpc.runtime.stall_ending import StallEnding
from zoobot_hpc.runtime.stall_watchdog import StallWatchdog
from zoobot_hpc.training.checkpointing import keep_own_signal_handlers
from zoobot_hpc.training.stall_progress import StallProgress

log = logging.getLogger(__name__)


class BlockBatches(Sampler[list[int]]):
    """Batches of consecutive positions that never cross a block boundary."""

    def __init__(self, blocks: Sequence[tuple[int, int]], batch_size: int) -> None:
        self.blocks = list(blocks)
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for start, stop in self.blocks:
            for first in range(start, stop, self.batch_size):
                yield list(range(first, min(first + self.batch_size, stop)))

    def __len__(self) -> int:
        return sum(-(-(stop - start) // self.batch_size) for start, stop in self.blocks)


def pending_blocks(plan: InferencePlan, parts_dir: Path, rank: int) -> list[tuple[int, int]]:
    """This rank's non-empty blocks whose part file is not written yet, in chunk order."""
    blocks = []
    for chunk in range(plan.num_chunks):
        start, stop = plan.rank_block(chunk, rank)
        if stop > start and not part_path(parts_dir, rank, chunk).exists():
            blocks.append((start, stop))
    return blocks


class InferenceDataModule(L.LightningDataModule):
    """This rank's pending blocks, as uint8 batches turned into the model's evaluation view on the device."""

    def __init__(self, plan: InferencePlan, config: RunConfig, parts_dir: Path) -> None:
        super().__init__()
        self.plan = plan
        self.parts_dir = parts_dir
        self.data = config.data
        self.augment = config.data.augment.model_copy(update={"greyscale": config.model.greyscale})
        self.pin_memory = config.resources.gpus_per_node > 0

    def predict_dataloader(self) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        dataset = ManifestOrderDataset(Path(self.plan.dataset_dir), self.plan.splits, self.data.hdf5_locking)
        return DataLoader(
            dataset,
            batch_sampler=BlockBatches(pending_blocks(self.plan, self.parts_dir, rank), self.plan.batch_size),
            **loader_settings(
                num_workers=self.data.num_workers,
                seed=self.plan.seed,
                locking=self.data.hdf5_locking,
                collate_fn=collate_samples,
                pin_memory=self.pin_memory,
            ),
        )

    def teardown(self, stage: str) -> None:
        """Let go of the worker batch blocks this process kept mapped."""
        forget_mappings()

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        batch["image"] = augment_batch(
            batch["image"], batch["index"], epoch=0, seed=self.plan.seed, config=self.augment, training=False
        )
        return batch


class InferenceModule(L.LightningModule):
    """A finetuned model in `Trainer.predict`: its predictions, MC-dropout samples of them, or its embeddings.

    MC dropout keeps the head's dropout on (the encoder runs once, in eval mode) and seeds each batch by its first
    position, so samples do not depend on which job or requeue computed them.
    """

    def __init__(self, model: FinetuneableZoobotAbstract, mode: str, mc_samples: int | None, seed: int) -> None:
        super().__init__()
        # a requeued rank may have written all its parts already: it predicts nothing but still joins the others
        self.allow_zero_length_dataloader_with_multiple_devices = True
        self.model = model
        self.mode = mode
        self.mc_samples = mc_samples
        self.seed = seed

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        images = batch["image"]
        if self.mode == "embed":
            return {"embeddings": self.model.embed(images)}
        if self.mc_samples is None:
            return self.model.predictions(self.model(images))
        embedding = self.model.embed(images)
        devices = [images.device] if images.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed((self.seed << 32) + int(batch["index"][0]))
            self.model.head.train()
            samples = [self.model.predictions(self.model.head_outputs(embedding)) for _ in range(self.mc_samples)]
            self.model.head.eval()
        return {key: torch.stack([sample[key] for sample in samples], dim=1) for key in samples[0]}


class PartWriter(BasePredictionWriter):
    """Collects a block's batches and writes its part file once complete; stops at a batch after a signal."""

    def __init__(self, plan: InferencePlan, parts_dir: Path, flag: PreemptionFlag | None) -> None:
        super().__init__(write_interval="batch")
        self.plan = plan
        self.parts_dir = parts_dir
        self.flag = flag
        self.flag_group: Any = None
        self._pending: dict[int, list[tuple[np.ndarray, list[str], dict[str, np.ndarray]]]] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.flag_group = host_flag_group()

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: dict[str, torch.Tensor],
        batch_indices: Sequence[int] | None,
        batch: dict[str, Any],
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        positions = batch["index"].cpu().numpy()
        chunk = int(positions[0]) // self.plan.galaxies_per_chunk
        outputs = {name: values.detach().float().cpu().numpy() for name, values in prediction.items()}
        rows = self._pending.setdefault(chunk, [])
        rows.append((positions, list(batch["id"]), outputs))
        start, stop = self.plan.rank_block(chunk, trainer.global_rank)
        if sum(len(r[0]) for r in rows) == stop - start:
            write_part(
                part_path(self.parts_dir, trainer.global_rank, chunk),
                np.concatenate([r[0] for r in rows]),
                [i for r in rows for i in r[1]],
                {name: np.concatenate([r[2][name] for r in rows]) for name in outputs},
            )
            del self._pending[chunk]
        if self.flag is not None and self.flag.received:
            self.flag.stopped = StopRecord(terminated=self.flag.terminated, step=batch_idx, saved_at=time.time())
            log.info(
                "preemption signal (%s): stopping rank %d after batch %d",
                self.flag.stopped.signal_name,
                trainer.global_rank,
                batch_idx,
            )
            raise PreemptedStop(f"preempted at batch {batch_idx}")


@dataclass
class InferenceOutcome:
    """How one start of an inference run ended."""

    preempted: bool
    out: Path | None


def load_model(plan: InferencePlan) -> FinetuneableZoobotAbstract:
    """The finetuned model of the plan's checkpoint (offline: no pretrained weights are fetched)."""
    return MODEL_CLASSES[plan.kind].load_from_checkpoint(plan.checkpoint, map_location="cpu", weights_only=True)


def output_columns(model: FinetuneableZoobotAbstract, plan: InferencePlan) -> dict[str, list[str]]:
    """Names of the last axis of each output (class names, answers, embedding features)."""
    if plan.mode == "embed":
        return {"embeddings": [str(j) for j in range(model.encoder.num_features)]}
    if plan.kind == "classifier":
        names = model.hparams.get("class_names") or [str(i) for i in range(model.hparams.num_classes)]
        return {"probabilities": list(names)}
    if plan.kind == "tree":
        return {"concentrations": model.label_cols, "vote_fractions": model.label_cols}
    return {}


def model_attributes(model: FinetuneableZoobotAbstract, plan: InferencePlan, config: RunConfig) -> dict[str, str]:
    """Provenance of the output: the plan, the config, the task and its class names or tree schema."""
    hparams = model.hparams
    schema = {key: hparams.get(key) for key in ("schema", "question_answer_pairs", "dependencies") if key in hparams}
    return {
        **plan_attributes(plan, config),
        "task": model.kind,
        "label_cols": json.dumps(model.label_cols),
        "class_names": json.dumps(hparams.get("class_names")),
        "tree_schema": json.dumps(schema or None),
    }


def _write_empty_blocks(plan: InferencePlan, parts_dir: Path, rank: int) -> None:
    for chunk in range(plan.num_chunks):
        start, stop = plan.rank_block(chunk, rank)
        path = part_path(parts_dir, rank, chunk)
        if start == stop and not path.exists():
            write_part(path, np.zeros(0, dtype=np.int64), [], {})


def _wait_for_every_rank(flag: PreemptionFlag | None, group: Any) -> bool:
    """Wait until every rank has written its parts; False when the preemption signal arrives first.

    A host-side (gloo) barrier polled against the flag: a blocking barrier would hang under NCCL once another
    rank has stopped on the signal and left.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return True
    work = dist.barrier(group=group, async_op=True)
    try:
        while not work.is_completed():
            if flag is not None and flag.received:
                return False
            time.sleep(0.05)
        work.wait()
    except RuntimeError:
        if flag is not None and flag.received:
            return False
        raise
    return True


def remove_work_dir(request: InferenceRequest) -> None:
    """After a successful merge: the plan goes, and `OUT.work/` with it unless a submitted job's logs are there."""
    (request.work_dir / PLAN_FILE).unlink(missing_ok=True)
    shutil.rmtree(request.work_dir / layout.RANKS, ignore_errors=True)  # the stall watchdog's beats
    with contextlib.suppress(OSError):  # the submitit folder (the job's own logs) stays
        request.work_dir.rmdir()


def stall_progress(request: InferenceRequest, config: RunConfig) -> Callback:
    """The stall watchdog of a prediction (its beats and claims under the request's work dir)."""
    ending = StallEnding(request.work_dir, job_key() or "here", config.resources.max_stall_requeues)
    beats = request.work_dir / layout.RANKS
    return StallProgress(StallWatchdog(config.trainer.stall_timeout_s, ending, beat_dir=beats))


def run_inference(
    request: InferenceRequest,
    config: RunConfig,
    *,
    flag: PreemptionFlag | None = None,
    cluster_environment: ClusterEnvironment | None = None,
    interactive: bool = False,
) -> InferenceOutcome:
    """Run this rank's share of a prepared request (see `prepare_inference`); rank 0 then merges and exports."""
    from zoobot_hpc.training.run import build_extra_callbacks, make_trainer

    plan = read_plan(request.work_dir)
    if plan is None:
        raise InferenceError(f"{request.work_dir}: no plan; call prepare_inference first")
    if not config.resources.gpus_per_node:
        torch.set_num_threads(config.resources.cpus_per_task)  # as in training: the loader workers have their own
    model = load_model(plan)
    if config.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    trainer = make_trainer(
        config,
        callbacks=[
            PartWriter(plan, request.parts_dir, flag),
            *build_extra_callbacks(config),
            stall_progress(request, config),
        ],
        cluster_environment=cluster_environment,
        interactive=interactive,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    keep_own_signal_handlers(trainer)
    rank = trainer.global_rank
    _write_empty_blocks(plan, request.parts_dir, rank)
    log.info(
        "rank %d: %d of its %d part files already written",
        rank,
        plan.num_chunks - len(pending_blocks(plan, request.parts_dir, rank)),
        plan.num_chunks,
    )
    module = InferenceModule(model, plan.mode, plan.mc_samples, plan.seed)
    datamodule = InferenceDataModule(plan, config, request.parts_dir)
    try:
        trainer.predict(module, datamodule=datamodule, return_predictions=False)
    except PreemptedStop:
        return InferenceOutcome(preempted=True, out=None)
    writer = next(c for c in trainer.callbacks if isinstance(c, PartWriter))
    if not _wait_for_every_rank(flag, writer.flag_group):
        return InferenceOutcome(preempted=True, out=None)
    if rank != 0:
        return InferenceOutcome(preempted=False, out=request.out)
    merge_parts(
        plan, request.parts_dir, request.out, output_columns(model, plan), model_attributes(model, plan, config)
    )
    if request.export_format:
        export_table(request.out, request.export_path, request.export_format)
    shutil.rmtree(request.parts_dir, ignore_errors=True)
    remove_work_dir(request)
    log.info("wrote %s (%d galaxies)", request.out, plan.total)
    return InferenceOutcome(preempted=False, out=request.out)
