"""A one-figure picture of what a run's W&B page holds, from the run dir alone: learning curves, the layer-decay
learning rates in depth order, the last validation pass's per-class or per-question metrics, and the galaxy
table's thumbnails (the files W&B staged in the run dir for `sync`)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import yaml
from matplotlib.figure import Figure
from PIL import Image

from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.login.report import read_metrics

log = logging.getLogger(__name__)

PER_TASK_PREFIXES = ("validation/f1/", "validation/loss/", "validation/vote_fraction_mae/")
MAX_THUMBNAILS = 16


def _logged_rows(run_dir: Path) -> pd.DataFrame:
    frames = [
        pd.read_csv(p) for p in sorted(Path(run_dir, layout.METRICS).glob("version_*/metrics.csv")) if p.stat().st_size
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _lr_layers(run_dir: Path, rows: pd.DataFrame) -> list[str]:
    for path in sorted(Path(run_dir, layout.METRICS).glob("version_*/hparams.yaml"), reverse=True):
        layers = (yaml.safe_load(path.read_text()) or {}).get("lr_layers")
        if layers:
            return list(layers)
    return [column.removeprefix("lr/") for column in rows.columns if column.startswith("lr/")]


def thumbnails(run_dir: Path) -> list[Image.Image]:
    """The galaxy table's thumbnails that W&B staged in the run dir (oldest first)."""
    staging = Path(run_dir) / layout.WANDB / "artifacts" / "staging"
    images = []
    for path in sorted(staging.glob("*"), key=lambda p: p.stat().st_mtime) if staging.exists() else []:
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except OSError:
            continue
    return images


def plot_run_page(run_dir: Path, path: Path) -> Path:
    """Write the run's page figure to `path`."""
    run_dir = Path(run_dir)
    curves, rows = read_metrics(run_dir), _logged_rows(run_dir)
    fig = Figure(figsize=(13, 8), layout="constrained")
    grid = fig.add_gridspec(2, 3)
    ax = fig.add_subplot(grid[0, 0])
    for column in ("validation/loss", "train/loss"):
        if column in curves:
            ax.plot(curves["epoch"] + 1, curves[column], marker=".", label=column)
    ax.set(title="loss", xlabel="epoch")
    ax.legend(fontsize="small")

    ax = fig.add_subplot(grid[0, 1])
    layers = [name for name in _lr_layers(run_dir, rows) if f"lr/{name}" in rows]
    if layers:
        last = rows[[f"lr/{name}" for name in layers]].dropna().iloc[-1]
        ax.barh(range(len(layers)), last.values, color="C2")
        ax.set_yticks(range(len(layers)), layers, fontsize="x-small")
        ax.invert_yaxis()
    ax.set(title="lr/<layer> (head to stem)", xlabel="learning rate", xscale="log")

    ax = fig.add_subplot(grid[0, 2])
    last_pass = curves.iloc[-1] if len(curves) else pd.Series(dtype=float)
    per_task = {k: v for k, v in last_pass.items() if str(k).startswith(PER_TASK_PREFIXES) and pd.notna(v)}
    if per_task:
        ax.barh(range(len(per_task)), list(per_task.values()), color="C1")
        ax.set_yticks(range(len(per_task)), [k.removeprefix("validation/") for k in per_task], fontsize="x-small")
        ax.invert_yaxis()
    ax.set(title="last validation pass")

    images = thumbnails(run_dir)[-MAX_THUMBNAILS:]
    sub = grid[1, :].subgridspec(2, MAX_THUMBNAILS // 2)
    for index, image in enumerate(images):
        cell = fig.add_subplot(sub[index // (MAX_THUMBNAILS // 2), index % (MAX_THUMBNAILS // 2)])
        cell.imshow(image)
        cell.set_axis_off()
    fig.suptitle(f"{run_dir.name}: what its W&B page holds (validation/galaxies: {len(images)} thumbnails shown)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72)
    return path
