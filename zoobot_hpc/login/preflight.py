"""Checks run on the login node before anything is queued; each failure is one line naming what is wrong.

Each check imports what it needs (torch, timm, the training module) only when it has something to check, so a
`submit` whose config needs none of them stays free of those imports.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from zoobot_hpc.backends.base import SchedulerMissing
from zoobot_hpc.backends.registry import get_backend, resolve_backend
from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.core.config import ConfigError, RunConfig, build_config, load_yaml
from zoobot_hpc.core.global_batch import GlobalBatchError, accumulation_for
from zoobot_hpc.core.model_kinds import kind_spec


class PreflightError(RuntimeError):
    """A problem found before submission; nothing was submitted."""


def required_label_columns(config: RunConfig) -> list[str]:
    """The dataset columns the configured model trains on."""
    return kind_spec(config.model.kind).label_columns(config.model)


def resolve_executor(config: RunConfig) -> str:
    """The scheduler backend a config asks for; `auto` is the first whose scheduler answers (else local)."""
    return resolve_backend(config.resources.executor)


def check_resources(config: RunConfig, executor: str, dry_run: bool = False) -> list[str]:
    """The resources fit the scheduler and the time limit; returns warnings (a dry run that would not submit
    only warns of a missing scheduler client)."""
    res = config.resources
    warnings = []
    try:
        get_backend(executor).check_resources(config)
    except SchedulerMissing as error:
        if not dry_run:
            raise PreflightError(str(error)) from None
        warnings.append(str(error))
    except ValueError as error:
        raise PreflightError(str(error)) from None
    if res.signal_delay_s >= res.time_min * 60:
        raise PreflightError(
            f"resources.signal_delay_s={res.signal_delay_s} is not shorter than resources.time_min={res.time_min} "
            "minutes: the job would be told to stop as soon as it starts"
        )
    return warnings


def check_dataset(config: RunConfig) -> list[str]:
    """The dataset validates and holds what the model needs: label columns, channels, a train and val split.
    Returns a warning when its train shards would thrash the loader's HDF5 handle cache."""
    from zoobot_hpc.data.handle_budget import thrash_warning
    from zoobot_hpc.data.shard_format import DatasetError
    from zoobot_hpc.data.validate import validate_dataset

    try:
        summary = validate_dataset(
            config.data.dataset_dir,
            required_label_cols=required_label_columns(config),
            locking=config.data.hdf5_locking,
        )
    except DatasetError as exc:
        raise PreflightError(f"data.dataset_dir: {exc}") from None
    for split in ("train", "val"):
        if summary.split_counts.get(split, 0) == 0:
            raise PreflightError(f"data.dataset_dir={config.data.dataset_dir}: no '{split}' split to train on")
    channels = summary.image_shape[2]
    if channels == 1 and not config.model.greyscale:
        raise PreflightError(
            f"data.dataset_dir={config.data.dataset_dir} has 1-channel images; set model.greyscale=true"
        )
    train_count = summary.split_counts["train"]
    if train_count < config.world_size:
        raise PreflightError(
            f"the train split has {train_count} images, fewer than the {config.world_size} ranks of the job"
        )
    data = config.data
    sizes = list(summary.shard_counts["train"].values())
    warning = thrash_warning(sizes, data.batch_size, data.shuffle_window_shards, data.max_open_shards)
    return [warning] if warning and not data.embedding_cache else []


def check_label_values(config: RunConfig) -> list[str]:
    """The label values are ones the model can train on (`data.label_checks`); returns the warnings."""
    from zoobot_hpc.data.label_checks import LabelValueError, label_rule, require_trainable_labels

    if config.data.allow_missing_labels and config.model.kind != "regressor":
        raise PreflightError(
            f"data.allow_missing_labels=true is for a regressor's label (model.kind={config.model.kind!r}: "
            "a tree reads NaN as no votes, a classifier needs a class index)"
        )
    rule = label_rule(config.model, config.data.allow_missing_labels)
    try:
        warnings = require_trainable_labels(config.data.dataset_dir, rule, config.data.hdf5_locking)
    except LabelValueError as exc:
        raise PreflightError(f"data.dataset_dir: {exc}") from None
    if config.data.allow_missing_labels and config.trainer.nonfinite == "stop":
        warnings.append(
            "data.allow_missing_labels=true with trainer.nonfinite=stop: the first batch holding a NaN label stops "
            "the run; set trainer.nonfinite=skip to skip such batches instead"
        )
    return warnings


def check_encoder(config: RunConfig, allow_download: bool) -> None:
    """Pretrained weights are in the local cache now (fetched here when allowed), not on the compute node. Checked
    in a child process (timm resolves the files) and remembered while the files it found exist."""
    model = config.model
    if not model.pretrained or model.zoobot_checkpoint_loc is not None:
        if model.zoobot_checkpoint_loc is not None and not Path(model.zoobot_checkpoint_loc).is_file():
            raise PreflightError(f"model.zoobot_checkpoint_loc={model.zoobot_checkpoint_loc}: file not found")
        return
    _run_cached([("encoder", {"name": model.name, "allow_download": bool(allow_download)})])


def heavy_checks(config: RunConfig) -> list[tuple[str, dict]]:
    """The checks of `config` that need torch/timm, as (kind, payload) for `check_cache.run_checks`."""
    model = config.model
    checks = []
    if model.scheduler_kwargs:
        checks.append(("scheduler", {"scheduler_kwargs": dict(model.scheduler_kwargs)}))
    if model.timm_kwargs and model.zoobot_checkpoint_loc is None:
        payload = {"name": model.name, "timm_kwargs": dict(model.timm_kwargs), "greyscale": bool(model.greyscale)}
        checks.append(("architecture", payload))
    return checks


def _run_cached(requests: list[tuple[str, dict]]) -> None:
    from zoobot_hpc.login.check_cache import run_checks

    unique = list({json.dumps(check, sort_keys=True, default=str): check for check in requests}.values())
    for problem in run_checks(unique):
        if problem is not None:
            raise PreflightError(problem)


def run_heavy_checks(configs: list[RunConfig]) -> None:
    """Every distinct torch/timm check of `configs`, cached (`check_cache`); raises on the first problem."""
    _run_cached([check for config in configs for check in heavy_checks(config)])


def check_scheduler_kwargs(config: RunConfig) -> None:
    """`model.scheduler_kwargs` builds timm's scheduler, as the job will (cached, in a child process)."""
    _run_cached([check for check in heavy_checks(config) if check[0] == "scheduler"])


def check_timm_kwargs(config: RunConfig) -> None:
    """`model.timm_kwargs` build the encoder's architecture, so a keyword the model does not take fails here,
    naming the key (cached, in a child process)."""
    _run_cached([check for check in heavy_checks(config) if check[0] == "architecture"])


def check_callbacks(config: RunConfig) -> None:
    """Every extra callback's class imports here (the job imports it the same way)."""
    if not config.trainer.callbacks:
        return
    from zoobot_hpc.training.run import import_callback_class

    for spec in config.trainer.callbacks:
        try:
            import_callback_class(spec.class_path)
        except ValueError as exc:
            raise PreflightError(str(exc)) from None


# What a resumed run takes from its checkpoint: changing these under an existing run dir would be silently ignored.
RESUME_BOUND_KEYS = (
    "model",
    "data.dataset_dir",
    "data.batch_size",
    "data.augment",
    "trainer.seed",
    "trainer.accumulate_grad_batches",
)


def _flatten(raw: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def check_run_dir(config: RunConfig, run_dir: Path) -> RunConfig:
    """A run dir that already holds checkpoints resumes; refuse when the new config changes what it resumes.

    Returns the config to run: on another world size than the run's (other `resources`), with the accumulation
    that keeps the run's global batch (refused in one line when no whole number does)."""
    previous_path = Path(run_dir) / layout.CONFIG
    if not previous_path.exists() or not any((Path(run_dir) / layout.CHECKPOINTS).glob("*.ckpt")):
        return config
    try:
        previous_config = build_config(load_yaml(previous_path), str(previous_path))
    except ConfigError as exc:
        raise PreflightError(f"{run_dir} already holds a run whose config does not load ({exc})") from None
    config = keep_global_batch(previous_config, config, run_dir)
    previous = _flatten(previous_config.model_dump(mode="json"))
    current = _flatten(config.model_dump(mode="json"))
    elastic = previous_config.world_size != config.world_size  # the accumulation keeps the global batch
    for key in sorted(set(previous) | set(current)):
        if elastic and key == "trainer.accumulate_grad_batches":
            continue
        if key.startswith(RESUME_BOUND_KEYS) and previous.get(key) != current.get(key):
            raise PreflightError(
                f"{run_dir} already holds a run with {key}={previous.get(key)!r} (now {current.get(key)!r}); "
                "it would resume with the old value: choose another name= or remove the run dir"
            )
    return config


def keep_global_batch(previous: RunConfig, config: RunConfig, run_dir: Path) -> RunConfig:
    """`config` with the accumulation that keeps `previous`'s global batch (per-rank batch x ranks x accumulation)
    on `config`'s world size; unchanged at the same world size or another per-rank batch (refused as a bound key)."""
    if previous.world_size == config.world_size or previous.data.batch_size != config.data.batch_size:
        return config
    global_batch = previous.data.batch_size * previous.world_size * previous.trainer.accumulate_grad_batches
    try:
        accumulation = accumulation_for(global_batch, config.data.batch_size, config.world_size)
    except GlobalBatchError as exc:
        raise PreflightError(f"{run_dir}: {exc}") from None
    trainer = config.trainer.model_copy(update={"accumulate_grad_batches": accumulation})
    return config.model_copy(update={"trainer": trainer})


def check_writable(directory: Path, what: str = "output_dir", create: bool = True) -> None:
    """A directory the job writes to (the output dir, the embedding cache) can be created and written to;
    `create=False` (a dry run) creates nothing: the nearest existing folder must be writable."""
    if not create:
        existing = Path(directory)
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK):
            raise PreflightError(f"{what}={directory}: not writable ({existing} is not a writable folder)")
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise PreflightError(f"{what}={directory}: not writable ({exc.strerror or exc})") from None
    if not os.access(directory, os.W_OK):
        raise PreflightError(f"{what}={directory}: not writable")


def preflight(
    configs: list[RunConfig],
    executor: str,
    output_dir: Path,
    allow_download: bool = True,
    dry_run: bool = False,
) -> list[str]:
    """Run every check once per distinct dataset / encoder among `configs`; raises PreflightError.

    A dry run runs them all too, but creates no directory, and a missing `sbatch` (it would submit) is
    returned as a warning instead of failing. Returns the warnings."""
    warnings = []
    seen_datasets: set[tuple] = set()
    seen_encoders: set[tuple] = set()
    seen_labels: set[tuple] = set()
    for config in configs:
        warnings += check_resources(config, executor, dry_run)
        check_callbacks(config)
        key = (str(config.data.dataset_dir), tuple(required_label_columns(config)), config.model.greyscale)
        if key not in seen_datasets:
            warnings += check_dataset(config)
            if config.data.embedding_cache:
                from zoobot_hpc.training.embedding_cache import CACHE_DIR_NAME

                check_writable(Path(config.data.dataset_dir) / CACHE_DIR_NAME, "embedding cache", create=not dry_run)
            seen_datasets.add(key)
        label_key = (str(config.data.dataset_dir), config.model.kind, *required_label_columns(config))
        label_key += (getattr(config.model, "num_classes", None), config.data.allow_missing_labels)
        if label_key not in seen_labels:
            warnings += check_label_values(config)
            seen_labels.add(label_key)
        encoder_key = (config.model.name, config.model.pretrained, str(config.model.zoobot_checkpoint_loc))
        if encoder_key not in seen_encoders:
            check_encoder(config, allow_download)
            seen_encoders.add(encoder_key)
    run_heavy_checks(configs)
    check_writable(output_dir, create=not dry_run)
    return warnings + space_warnings(configs, output_dir)


def space_warnings(configs: list[RunConfig], output_dir: Path) -> list[str]:
    """One line when the output filesystem is too small for the runs (their encoders' parameters counted on the
    meta device, in a child process, remembered)."""
    from zoobot_hpc.login.check_cache import check_values
    from zoobot_hpc.login.space_needed import output_space_warnings, parameters_request

    requests = [parameters_request(config) for config in configs]
    asked = list({json.dumps(r, sort_keys=True): r for r in requests if r is not None}.values())
    counts = dict(zip((json.dumps(r, sort_keys=True) for r in asked), check_values(asked), strict=True))
    parameters = [counts.get(json.dumps(r, sort_keys=True)) if r is not None else None for r in requests]
    return output_space_warnings(configs, output_dir, parameters)
