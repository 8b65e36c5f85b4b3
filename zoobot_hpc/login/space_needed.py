"""Will a submitted run fit on its output filesystem? Its checkpoints (the parameter count x what a full-state
checkpoint holds x how many exist at once) plus its logs, against the free space and inodes there."""

from __future__ import annotations

from pathlib import Path

from zoobot_hpc.core.config import RunConfig
from zoobot_hpc.core.disk_space import human_bytes, space_warning

BYTES_PER_PARAMETER = 12  # a full-state checkpoint: fp32 weights and AdamW's two moments
CHECKPOINTS_AT_ONCE = 3  # resume.ckpt (last.ckpt is a hard link to it), best.ckpt, and the one being written
LOG_BYTES_PER_RUN = 50_000_000  # CSV metrics, W&B offline files, job logs
INODES_PER_RUN = 500


def parameters_request(config: RunConfig) -> tuple[str, dict] | None:
    """The check (for `check_cache`) that counts the encoder's parameters; None for a Zoobot checkpoint (its
    file's size says)."""
    model = config.model
    if model.zoobot_checkpoint_loc is not None:
        return None
    body = {"name": model.name, "timm_kwargs": dict(model.timm_kwargs or {}), "greyscale": bool(model.greyscale)}
    return "parameters", body


def checkpoint_bytes(parameters: int) -> int:
    """The size of one full-state checkpoint of a model with `parameters` parameters."""
    return parameters * BYTES_PER_PARAMETER


def run_bytes(config: RunConfig, parameters: int | None) -> int:
    """What one run writes at most: its checkpoints at once and its logs."""
    if config.model.zoobot_checkpoint_loc is not None:
        checkpoints = 3 * Path(config.model.zoobot_checkpoint_loc).stat().st_size  # weights: a third of a full state
    else:
        checkpoints = checkpoint_bytes(parameters or 0)
    return checkpoints * CHECKPOINTS_AT_ONCE + LOG_BYTES_PER_RUN


def output_space_warnings(configs: list[RunConfig], output_dir: Path, parameters: list[int | None]) -> list[str]:
    """One line when `output_dir`'s filesystem has less space or fewer inodes than the runs need together."""
    needed = sum(run_bytes(config, count) for config, count in zip(configs, parameters, strict=True))
    what = f"{len(configs)} run(s)" if len(configs) > 1 else "the run"
    largest = max(parameters, key=lambda count: count or 0)
    if largest:
        what += f" ({largest / 1e6:.1f}M parameters: {human_bytes(checkpoint_bytes(largest))} a checkpoint)"
    warning = space_warning(output_dir, needed, INODES_PER_RUN * len(configs), what)
    return [f"output_dir={warning}"] if warning else []
