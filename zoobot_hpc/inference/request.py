"""What an inference run computes, the checks made before it starts, and the plan every rank follows.

`prepare_inference` runs once, before any job starts (on the login node, or in the process that runs the
inference itself): it checks the inputs, then writes `OUT.work/plan.json`. A later run with the same plan keeps
the part files already written (a re-run or a requeue continues); a different plan discards them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.core.config import ConfigError, RunConfig, apply_override, build_config, load_yaml, parse_override
from zoobot_hpc.core.disk_space import space_warning
from zoobot_hpc.core.model_kinds import MODEL_KINDS, stored_kind
from zoobot_hpc.core.redaction import redact_config
from zoobot_hpc.data.shard_format import MANIFEST_NAME, DatasetError, file_sha256, read_manifest

MODES = ("predict", "embed")
EXPORT_FORMATS = ("csv", "parquet", "zoobot-csv")
PLAN_FILE = "plan.json"
PARTS_DIR = "parts"


log = logging.getLogger(__name__)


class InferenceError(ValueError):
    """A problem with an inference request, described in one line; nothing was written."""


@dataclass(frozen=True)
class InferenceRequest:
    """One inference run.

    Args:
        checkpoint: a Lightning checkpoint written by `zoobot-hpc train`.
        dataset_dir: the shard dataset to run over.
        out: the HDF5 file to write.
        mode: 'predict' (the model's predictions) or 'embed' (the encoder's pooled embeddings).
        task: the model kind the caller expects ('classifier', 'regressor', 'tree'); None accepts any.
        mc_samples: keep the head's dropout on and store this many samples per galaxy (predict only).
        export_format: also write the table as 'csv' or 'parquet' next to `out` (same stem), or as 'zoobot-csv':
            the columns of Zoobot's `predict_on_catalog` (`id_str`, `{answer}_pred`), to `out` with suffix .csv.
        splits: the splits to run over, in this order; None: every split, in manifest order.
        overwrite: replace existing outputs (only once the new ones are complete).
        chunk_size: galaxies per rank per chunk; each rank writes one part file per chunk.
    """

    checkpoint: Path
    dataset_dir: Path
    out: Path
    mode: str = "predict"
    task: str | None = None
    mc_samples: int | None = None
    export_format: str | None = None
    splits: tuple[str, ...] | None = None
    overwrite: bool = False
    chunk_size: int = 4096

    @property
    def work_dir(self) -> Path:
        """`OUT.work/`: the plan, the part files and the submitit logs."""
        return self.out.with_name(self.out.name + ".work")

    @property
    def parts_dir(self) -> Path:
        return self.work_dir / PARTS_DIR

    @property
    def export_path(self) -> Path | None:
        """The exported table (`out` with the format's suffix), or None."""
        if self.export_format is None:
            return None
        return self.out.with_suffix(".csv" if self.export_format == "zoobot-csv" else f".{self.export_format}")


@dataclass(frozen=True)
class InferencePlan:
    """Everything the ranks of an inference job agree on; two runs with equal plans write equal part files."""

    mode: str
    kind: str
    encoder: str
    checkpoint: str
    checkpoint_sha256: str
    dataset_dir: str
    manifest_sha256: str
    splits: tuple[str, ...]
    split_counts: tuple[int, ...]
    image_shape: tuple[int, ...]
    trained_image_shape: tuple[int, ...] | None
    mc_samples: int | None
    chunk_size: int
    world_size: int
    batch_size: int
    seed: int

    @property
    def total(self) -> int:
        """Galaxies over all planned splits."""
        return sum(self.split_counts)

    @property
    def galaxies_per_chunk(self) -> int:
        """`chunk_size` galaxies for each rank: part files and batches keep their size however many ranks run."""
        return self.chunk_size * self.world_size

    @property
    def num_chunks(self) -> int:
        return -(-self.total // self.galaxies_per_chunk)

    def chunk_bounds(self, chunk: int) -> tuple[int, int]:
        """Global positions [start, stop) of a chunk."""
        start = chunk * self.galaxies_per_chunk
        return start, min(start + self.galaxies_per_chunk, self.total)

    def rank_block(self, chunk: int, rank: int) -> tuple[int, int]:
        """The contiguous positions [start, stop) of a chunk that `rank` computes (may be empty)."""
        start, stop = self.chunk_bounds(chunk)
        size, extra = divmod(stop - start, self.world_size)
        first = start + rank * size + min(rank, extra)
        return first, first + size + (rank < extra)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> InferencePlan:
        tuples = {"splits", "split_counts", "image_shape", "trained_image_shape"}
        return cls(**{k: tuple(v) if k in tuples and v is not None else v for k, v in raw.items()})


def read_model_header(checkpoint: Path) -> tuple[str, dict[str, Any]]:
    """The model kind and hyper-parameters a checkpoint stores (memory-mapped, no weights are loaded)."""
    if not checkpoint.is_file():
        raise InferenceError(f"checkpoint={checkpoint}: file not found")
    try:
        data = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:
        raise InferenceError(f"checkpoint={checkpoint}: not a readable checkpoint ({type(error).__name__})") from None
    kind = stored_kind(data)
    if kind is None:
        raise InferenceError(f"checkpoint={checkpoint}: not a zoobot-hpc model checkpoint (no model kind)")
    return kind, dict(data.get("hyper_parameters") or {})


def run_config_path(checkpoint: Path) -> Path:
    """Where `zoobot-hpc train` left the config of the run that wrote `checkpoint` (RUN_DIR/checkpoints/x.ckpt)."""
    return checkpoint.resolve().parent.parent / layout.CONFIG


def inference_config(
    request: InferenceRequest, config_path: Path | None = None, overrides: tuple[str, ...] | list[str] = ()
) -> tuple[RunConfig, RunConfig]:
    """(config to run inference with, config the model was trained with).

    The training config is `config_path`, else the run directory's config.yaml. Inference uses it with the
    dataset replaced by `request.dataset_dir` and the `key=value` overrides (batch size, resources...) applied.
    """
    path = config_path or run_config_path(request.checkpoint)
    if not path.is_file():
        raise InferenceError(f"checkpoint={request.checkpoint}: no run config at {path}; pass one with --config")
    raw = load_yaml(path)
    trained = build_config(raw, source=str(path))
    raw["data"]["dataset_dir"] = str(request.dataset_dir)
    for text in overrides:
        apply_override(raw, *parse_override(text))
    try:
        return build_config(raw, source=f"{path} with overrides"), trained
    except ConfigError as error:
        raise InferenceError(str(error)) from None


def _trained_image_shape(trained: RunConfig) -> tuple[int, ...] | None:
    """The image shape of the dataset the model was trained on, when that dataset is still readable."""
    try:
        return tuple(read_manifest(trained.data.dataset_dir).image_shape)
    except DatasetError:
        return None


def _check_request(request: InferenceRequest) -> None:
    if request.mode not in MODES:
        raise InferenceError(f"mode={request.mode!r} must be one of {MODES}")
    if request.task is not None and request.task not in MODEL_KINDS:
        raise InferenceError(f"task={request.task!r} must be one of {MODEL_KINDS}")
    if request.mc_samples is not None and (request.mode != "predict" or request.mc_samples < 1):
        raise InferenceError(f"mc_samples={request.mc_samples!r} must be >= 1, and only with mode='predict'")
    if request.export_format is not None and request.export_format not in EXPORT_FORMATS:
        raise InferenceError(f"export_format={request.export_format!r} must be one of {EXPORT_FORMATS}")
    if request.export_format == "zoobot-csv" and request.mode != "predict":
        raise InferenceError("export_format='zoobot-csv' writes predictions: use it with mode='predict'")
    if request.chunk_size < 1:
        raise InferenceError(f"chunk_size={request.chunk_size!r} must be >= 1")
    if request.out.suffix in {".csv", ".parquet"}:
        raise InferenceError(f"out={request.out}: the output is an HDF5 file (use --format for a table)")
    if not request.overwrite:
        for path in (request.out, request.export_path):
            if path is not None and path.exists():
                raise InferenceError(f"out={path} exists; pass --overwrite to replace it")


def _check_images(
    image_shape: tuple[int, ...], trained_shape: tuple[int, ...] | None, in_channels: int, dataset_dir: Path
) -> None:
    def shown(shape: tuple[int, ...]) -> str:
        return "x".join(str(n) for n in shape)

    if trained_shape is not None and tuple(image_shape) != tuple(trained_shape):
        raise InferenceError(
            f"dataset_dir={dataset_dir}: images are {shown(image_shape)} (HxWxC) but the model was trained "
            f"on {shown(trained_shape)} images"
        )
    if image_shape[2] < in_channels:
        raise InferenceError(
            f"dataset_dir={dataset_dir}: images have {image_shape[2]} channel(s) but the encoder takes {in_channels}"
        )


def _selected_splits(request: InferenceRequest, available: dict[str, Any]) -> tuple[str, ...]:
    present = tuple(split for split, shards in available.items() if shards)
    if request.splits is None:
        return present
    unknown = [split for split in request.splits if split not in present]
    if unknown:
        raise InferenceError(f"splits={list(request.splits)}: {unknown} not in {request.dataset_dir} ({present})")
    return tuple(request.splits)


def build_plan(request: InferenceRequest, config: RunConfig, trained: RunConfig) -> InferencePlan:
    """Check the request against the checkpoint and the dataset, and describe the work (writes nothing)."""
    _check_request(request)
    kind, hyper_parameters = read_model_header(request.checkpoint)
    if request.task is not None and request.task != kind:
        raise InferenceError(f"checkpoint={request.checkpoint} is a {kind} model, not the {request.task} asked for")
    try:
        manifest = read_manifest(request.dataset_dir)
    except DatasetError as error:
        raise InferenceError(f"dataset_dir: {error}") from None
    trained_shape = _trained_image_shape(trained)
    in_channels = 1 if hyper_parameters.get("greyscale") else 3
    _check_images(tuple(manifest.image_shape), trained_shape, in_channels, request.dataset_dir)
    splits = _selected_splits(request, manifest.splits)
    return InferencePlan(
        mode=request.mode,
        kind=kind,
        encoder=str(hyper_parameters.get("name")),
        checkpoint=str(request.checkpoint.resolve()),
        checkpoint_sha256=file_sha256(request.checkpoint),
        dataset_dir=str(request.dataset_dir.resolve()),
        manifest_sha256=hashlib.sha256((request.dataset_dir / MANIFEST_NAME).read_bytes()).hexdigest(),
        splits=splits,
        split_counts=tuple(manifest.split_count(split) for split in splits),
        image_shape=tuple(manifest.image_shape),
        trained_image_shape=trained_shape,
        mc_samples=request.mc_samples,
        chunk_size=request.chunk_size,
        world_size=config.world_size,
        batch_size=config.data.batch_size,
        seed=config.trainer.seed,
    )


ASSUMED_EMBEDDING_FLOATS = 1024  # an embedding's width, for the space estimate (encoders give 256-2048)


def outputs_per_galaxy(mode: str, kind: str, hyper_parameters: dict[str, Any]) -> int:
    """The float32 values written per galaxy (per MC sample): the head's outputs, or an embedding."""
    if mode == "embed":
        return ASSUMED_EMBEDDING_FLOATS
    if kind == "classifier":
        return int(hyper_parameters.get("num_classes") or 1)
    if kind == "tree":
        return sum(len(answers) for answers in (hyper_parameters.get("question_answer_pairs") or {}).values()) or 1
    return 1


def space_warnings(request: InferenceRequest, plan: InferencePlan) -> list[str]:
    """One line when the output's filesystem holds less space or fewer inodes than the parts and the merged
    output will take (each about galaxies x outputs x float32, plus the ids)."""
    _, hyper_parameters = read_model_header(request.checkpoint)
    per_galaxy = 4 * outputs_per_galaxy(plan.mode, plan.kind, hyper_parameters) * max(1, plan.mc_samples or 1) + 64
    what = f"the {plan.mode} output of {plan.total} galaxies"
    warning = space_warning(request.out.parent, 2 * plan.total * per_galaxy, plan.num_chunks + 8, what)
    return [f"out={warning}"] if warning else []


def prepare_inference(request: InferenceRequest, config: RunConfig, trained: RunConfig) -> InferencePlan:
    """Check everything, then write the plan; part files of an earlier, different plan are discarded."""
    plan = build_plan(request, config, trained)
    for warning in space_warnings(request, plan):
        log.warning("%s", warning)
    request.work_dir.mkdir(parents=True, exist_ok=True)
    plan_path = request.work_dir / PLAN_FILE
    if read_plan(request.work_dir) != plan:
        shutil.rmtree(request.parts_dir, ignore_errors=True)
        layout.write_json(plan_path, plan.to_json())
    request.parts_dir.mkdir(exist_ok=True)
    return plan


def wait_for_plan(request: InferenceRequest, plan: InferencePlan, timeout_s: float = 600.0) -> None:
    """The other ranks of `srun zoobot-hpc predict --here`: wait until rank 0 has written `plan`.

    Only rank 0 prepares, so that no rank discards part files another rank has begun to write.
    """
    deadline = time.monotonic() + timeout_s
    while read_plan(request.work_dir) != plan or not request.parts_dir.is_dir():
        if time.monotonic() > deadline:
            raise InferenceError(
                f"{request.work_dir / PLAN_FILE}: rank 0 did not write this request's plan within {timeout_s:.0f} s"
            )
        time.sleep(0.2)


def read_plan(work_dir: Path) -> InferencePlan | None:
    """The plan written by `prepare_inference`, or None."""
    raw = layout.read_json(Path(work_dir) / PLAN_FILE)
    if raw is None:
        return None
    try:
        return InferencePlan.from_json(raw)
    except TypeError:
        return None


def plan_attributes(plan: InferencePlan, config: RunConfig) -> dict[str, str]:
    """Provenance stored on the output file."""
    return {
        **{key: json.dumps(value) if not isinstance(value, str) else value for key, value in plan.to_json().items()},
        "config": json.dumps(redact_config(config).model_dump(mode="json")),
    }


def default_output(checkpoint: Path, dataset_dir: Path, mode: str) -> Path:
    """`RUN_DIR/<mode>-<dataset name>.h5` next to the run's checkpoints directory."""
    return Path(checkpoint).resolve().parent.parent / f"{mode}-{Path(dataset_dir).resolve().name}.h5"
