"""Run configuration: YAML files plus dotted command-line overrides, validated by pydantic.

Every section forbids unknown keys, so a typo is an error that names the key before anything is submitted.
Login-node code loads configs, so this module (and what it imports) never imports torch, Lightning or timm.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from zoobot_hpc.core.augment_config import AugmentConfig
from zoobot_hpc.core.label_schemas import resolve_schema
from zoobot_hpc.core.model_kinds import Mode, monitored
from zoobot_hpc.core.redaction import REDACTED, looks_secret, redact_text, redact_value


class ConfigError(ValueError):
    """A configuration problem, described in one line that names the key and the value."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataSettings(_Section):
    dataset_dir: Path
    batch_size: int = Field(64, gt=0, description="per device")
    num_workers: int = Field(4, ge=0)
    hdf5_locking: bool = False
    batch_pool: bool = Field(False, description="loader workers reuse shared-memory batch blocks (opt-in)")
    shuffle_window_shards: int = Field(4, ge=1, description="training order: shards whose samples shuffle together")
    max_open_shards: int = Field(16, ge=1, description="HDF5 handles each loader process keeps open")
    augment: AugmentConfig = AugmentConfig()
    embedding_cache: bool = Field(False, description="head_only: train the head on cached encoder embeddings")
    embedding_cache_views: int = Field(0, ge=0, description="augmented views to cache (0: the evaluation view)")
    allow_missing_labels: bool = Field(
        False, description="a regressor's label may be NaN where the manifest allows it (trainer.nonfinite decides)"
    )


class _ModelCommon(_Section):
    name: str = Field(description="encoder: timm name, hf_hub:owner/repo or local-dir:/path")
    pretrained: bool = True
    zoobot_checkpoint_loc: Path | None = None
    timm_kwargs: dict[str, Any] | None = None
    greyscale: bool = False
    learning_rate: float = Field(1e-4, gt=0)
    training_mode: Literal["full", "head_only"] = "full"
    layer_decay: float = Field(0.75, ge=0, le=1)
    weight_decay: float = Field(0.05, ge=0)
    head_dropout_prob: float = Field(0.5, ge=0, lt=1)
    scheduler_kwargs: dict[str, Any] | None = None


class ClassifierSettings(_ModelCommon):
    kind: Literal["classifier"]
    label_col: str = "label"
    num_classes: int = Field(ge=2)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    class_weights: list[float] | None = None
    class_names: list[str] | None = None


class RegressorSettings(_ModelCommon):
    kind: Literal["regressor"]
    label_col: str = "label"
    loss: Literal["mse", "mae"] = "mse"
    unit_interval: bool = False


class TreeSettings(_ModelCommon):
    kind: Literal["tree"]
    schema_name: str | None = Field(None, alias="schema", description="a named Galaxy Zoo tree, e.g. gz2, desi")
    question_answer_pairs: dict[str, list[str]] | None = None
    dependencies: dict[str, str | None] | None = None

    model_config = ConfigDict(extra="forbid", validate_assignment=False, populate_by_name=True, serialize_by_alias=True)

    @model_validator(mode="after")
    def _check_schema(self) -> TreeSettings:
        pairs, dependencies = resolve_schema(self.schema_name, self.question_answer_pairs, self.dependencies)
        self.question_answer_pairs, self.dependencies = pairs, dependencies
        return self


ModelSettings = Annotated[ClassifierSettings | RegressorSettings | TreeSettings, Field(discriminator="kind")]


class CallbackSpec(_Section):
    """An extra Lightning callback, by import path (Lightning CLI's `class_path` / `init_args` convention)."""

    class_path: str = Field(pattern=r"^[A-Za-z_][\w.]*\.[A-Za-z_]\w*$")
    init_args: dict[str, Any] = Field(default_factory=dict)


class TrainerSettings(_Section):
    max_epochs: int = Field(10, gt=0)
    precision: Literal["auto", "32-true", "16-mixed", "bf16-mixed"] = "auto"
    deterministic: bool = False
    seed: int = 42
    gradient_clip_val: float | None = Field(None, gt=0)
    accumulate_grad_batches: int = Field(1, gt=0)
    nonfinite: Literal["stop", "skip"] = Field(
        "stop", description="a non-finite loss or gradient: stop the run, or skip that optimiser step (counted)"
    )
    early_stopping_patience: int | None = Field(None, gt=0)
    checkpoint_every_n_steps: int | None = Field(None, gt=0)
    checkpoint_every_minutes: float | None = Field(30.0, gt=0)
    heartbeat_every_s: float = Field(30.0, gt=0)  # how often a job start records how far it got
    # No progress (a batch, a prediction chunk) for this long (or STALL_MARGIN x the slowest step or save seen,
    # if longer) ends the job for a requeue; the process groups' timeouts are derived from it.
    stall_timeout_s: float = Field(300.0, gt=0)
    allow_dataset_change: bool = Field(False, description="resume from checkpoints trained on another dataset")
    monitor: str | None = None  # the validation metric for best.ckpt, early stopping, the summary (None: the kind's)
    log_every_n_steps: int = Field(50, gt=0)
    channels_last: bool = True
    limit_train_batches: int | None = Field(None, gt=0)
    limit_val_batches: int | None = Field(None, gt=0)
    callbacks: list[CallbackSpec] = Field(default_factory=list)


# What a job script's directive line accepts where a config value becomes one. A value that breaks the line (a
# newline from a YAML `|` block) would end the directives there: the scheduler ignores every directive after the
# first other line.
SCHEDULER_NAME = re.compile(r"^[A-Za-z0-9_.+-]+(,[A-Za-z0-9_.+-]+)*$")  # partition, account, qos (comma lists)
SCHEDULER_CONSTRAINT = re.compile(r"^[A-Za-z0-9_.:=,&|*\[\]()!+-]+$")  # features with & | * [ ] ( ) operators
DIRECTIVE_OPTION = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:[_-][A-Za-z0-9]+)*$")  # `mail-type`, `exclusive`, `gres`


def _control_character(value: str) -> str | None:
    """A description of the first character that does not belong in one printable line, or None."""
    for index, char in enumerate(value):
        if char != " " and not char.isprintable():
            return f"{char!a} at position {index}"
    return None


def _check_directive_value(value: str | None, pattern: re.Pattern[str], what: str) -> str | None:
    if value is None:
        return value
    bad = _control_character(value)
    if bad:
        raise ValueError(f"control character {bad} (it would end the job script's directive line)")
    if not pattern.fullmatch(value):
        shown = REDACTED if redact_text(value) != value else repr(value)
        raise ValueError(f"{shown} is not {what}")
    return value


# The scheduler backends (`zoobot_hpc.backends.registry.BACKENDS`) and `auto`, the first that answers.
ExecutorName = Literal["auto", "slurm", "local"]


class ResourceSettings(_Section):
    executor: ExecutorName = "auto"
    nodes: int = Field(1, gt=0)
    tasks_per_node: int = Field(1, gt=0)
    gpus_per_node: int = Field(0, ge=0)
    cpus_per_task: int = Field(4, gt=0)
    mem_gb: float | None = Field(None, gt=0)
    time_min: int = Field(60, gt=0)
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    signal_delay_s: int = Field(120, ge=0)
    max_time_limit_requeues: int = Field(10, ge=0)
    max_stall_requeues: int = Field(3, ge=0)  # requeues after a stalled rank, then the job ends FAILED
    array_parallelism: int = Field(64, gt=0)
    sbatch_extra: dict[str, Any] = Field(default_factory=dict)
    setup: list[str] = Field(default_factory=list)

    @field_validator("partition", "account", "qos")
    @classmethod
    def _scheduler_name(cls, value: str | None) -> str | None:
        what = "a scheduler name (letters, digits, _ . + -; several separated by commas)"
        return _check_directive_value(value, SCHEDULER_NAME, what)

    @field_validator("constraint")
    @classmethod
    def _node_constraint(cls, value: str | None) -> str | None:
        what = "a node constraint (feature names joined by & | , * [ ] ( ))"
        return _check_directive_value(value, SCHEDULER_CONSTRAINT, what)

    @field_validator("sbatch_extra")
    @classmethod
    def _directive_options(cls, extra: dict[str, Any]) -> dict[str, Any]:
        for name, value in extra.items():
            if not isinstance(name, str) or not DIRECTIVE_OPTION.fullmatch(name):
                shown = REDACTED if redact_text(str(name)) != str(name) else repr(name)
                raise ValueError(f"key {shown} is not a job-script option name (such as mail-type)")
            if not isinstance(value, str | int | float | bool):
                raise ValueError(f"{name}: expected a string, number or true (got a {type(value).__name__})")
            bad = _control_character(str(value))
            if bad:
                raise ValueError(f"{name}: control character {bad} (it would end the job script's directive line)")
        return extra


class TrackingSettings(_Section):
    project: str = "zoobot-hpc"
    entity: str | None = None
    mode: Literal["online", "offline", "disabled"] = "offline"
    tags: list[str] = Field(default_factory=list)
    # The W&B table of validation galaxies: a fixed sample (0 turns the table off), the worst-predicted of each
    # pass, and how often (every n-th validation pass).
    galaxy_table: int = Field(16, ge=0, le=256)
    galaxy_table_worst: int = Field(8, ge=0, le=256)
    galaxy_table_every: int = Field(1, ge=1)


class RunConfig(_Section):
    """Everything one finetuning run needs; a sweep expands into several of these."""

    name: str = Field("run", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.=,+-]*$")
    output_dir: Path = Path("runs")
    data: DataSettings
    model: ModelSettings
    trainer: TrainerSettings = TrainerSettings()
    resources: ResourceSettings = ResourceSettings()
    tracking: TrackingSettings = TrackingSettings()

    @model_validator(mode="after")
    def _check_devices(self) -> RunConfig:
        res = self.resources
        if res.gpus_per_node and res.gpus_per_node != res.tasks_per_node:
            raise ValueError(
                f"resources.tasks_per_node={res.tasks_per_node} must equal resources.gpus_per_node="
                f"{res.gpus_per_node} (one task per device)"
            )
        if self.data.embedding_cache and self.model.training_mode != "head_only":
            raise ValueError(
                f"data.embedding_cache=true needs model.training_mode=head_only (got {self.model.training_mode!r})"
            )
        if self.data.augment.greyscale and not self.model.greyscale:
            raise ValueError(
                f"data.augment.greyscale={self.data.augment.greyscale} disagrees with "
                f"model.greyscale={self.model.greyscale}; set model.greyscale (the view follows it)"
            )
        try:
            monitored(self.model.kind, self.trainer.monitor)
        except ValueError as error:
            raise ValueError(f"trainer.monitor: {error}") from None
        return self

    @property
    def monitored(self) -> tuple[str, Mode]:
        """The validation metric this run monitors and the direction it improves in."""
        return monitored(self.model.kind, self.trainer.monitor)

    @property
    def world_size(self) -> int:
        return self.resources.nodes * self.resources.tasks_per_node


class JobConfig(_Section):
    """The config of a job that trains nothing (a shard build): its name and resources."""

    name: str = Field("job", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.=,+-]*$")
    resources: ResourceSettings = ResourceSettings()


SubmittedConfig = RunConfig | JobConfig  # what a scheduler backend makes an executor for


def split_override(text: str) -> tuple[str, str]:
    """Split `a.b.c=value` into ('a.b.c', 'value'), with a one-line error for anything else."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {redact_text(text)!r}: expected KEY=VALUE, e.g. model.learning_rate=3e-4")
    return key, raw


def parse_value(raw: str) -> Any:
    """An override's value as YAML; numbers such as `3e-4` (a string to YAML 1.1) become floats."""
    value = yaml.safe_load(raw) if raw else None
    if isinstance(value, str) and _is_float_literal(value):
        return float(value)
    return value


def _is_float_literal(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return any(c in text.lower() for c in "e.") and text.lower() not in {"nan", "inf", "-inf", ".inf"}


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into (['a','b','c'], value parsed as YAML)."""
    key, raw = split_override(text)
    return key.split("."), parse_value(raw)


def apply_override(raw: dict[str, Any], path: list[str], value: Any) -> None:
    """Set `raw[path[0]][path[1]]... = value`, creating intermediate sections."""
    node = raw
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(path)}: {part!r} is not a section")
        node = child
    node[path[-1]] = value


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with one-line errors naming the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def build_config(raw: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a raw mapping into a RunConfig; the first error becomes a one-line ConfigError."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc)}") from None


def _describe(exc: ValidationError) -> str:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("function-", "tagged-union")))
    key = key.replace(".classifier", "").replace(".regressor", "").replace(".tree", "")
    if err["type"] == "extra_forbidden":
        return f"unknown key {key!r}"
    if err["type"] == "missing":
        return f"missing key {key!r}"
    if err["type"] == "union_tag_invalid":
        return f"{key}.kind: {err['ctx']['tag']!r} is not one of {err['ctx']['expected_tags']}"
    if err["type"] == "value_error":
        return f"{key}: {err['ctx']['error']!s}" if key else str(err["ctx"]["error"])
    value = err.get("input")
    last = str(err["loc"][-1]) if err["loc"] else ""
    value = REDACTED if looks_secret(last) and value is not None else redact_value(value)
    shown = f" (got {value!r})" if not isinstance(value, dict) else ""
    return f"{key}: {err['msg']}{shown}" if key else f"{err['msg']}"


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load a YAML config and apply `key=value` overrides (each value a single value, not a sweep)."""
    raw = load_yaml(path)
    for text in overrides:
        apply_override(raw, *parse_override(text))
    return build_config(raw, source=str(path))


def dump_config(config: RunConfig) -> str:
    """The resolved config as YAML (round-trips through load_config)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def load_job_config(path: str | Path | None, overrides: Sequence[str], name: str) -> JobConfig:
    """The resources of a job that trains nothing: a YAML file's `resources:` section (a run config will do),
    then `KEY=VALUE` overrides of it (`partition=low` or `resources.partition=low`)."""
    raw = load_yaml(path) if path else {}
    resources = raw.get("resources") or {}
    if not isinstance(resources, dict):
        raise ConfigError(f"{path}: 'resources' must be a mapping")
    document: dict[str, Any] = {"name": name, "resources": dict(resources)}
    for text in overrides:
        key, value = parse_override(text)
        apply_override(document["resources"], key[1:] if key[0] == "resources" else key, value)
    try:
        return JobConfig.model_validate(document)
    except ValidationError as exc:
        raise ConfigError(f"{path or 'resources'}: {_describe(exc)}") from None
