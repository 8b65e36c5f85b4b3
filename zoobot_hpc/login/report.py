"""Results of a sweep from its run directories (offline, no W&B): a table and PNG plots.

`write_report(sweep_dir)` reads each run's summary/progress, segments and Lightning CSV metrics and writes, under
`SWEEP_DIR/report/`: `runs.csv` (one row per run), `<metric>_vs_<param>.png` for every swept parameter, a heatmap
for a 2-D grid (e.g. learning_rate x layer_decay) and `learning_curves.png`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from zoobot_hpc.core import run_dir as layout

REPORT_DIR = "report"
TABLE_NAME = "runs.csv"
DEFAULT_MONITOR = "validation/loss"


@dataclass
class RunRecord:
    """What one run directory says about its run."""

    name: str
    run_dir: Path
    point: dict[str, Any]
    monitor: str
    best: float | None
    best_epoch: int | None  # 1-based, as `epochs` counts
    epochs: int
    requeues: int
    wall_time_s: float | None
    images_per_sec: float | None
    finished: bool
    curves: pd.DataFrame = field(repr=False)

    def row(self) -> dict[str, Any]:
        return {
            "run": self.name,
            **self.point,
            "state": "finished" if self.finished else "unfinished",
            f"best {self.monitor}": self.best,
            "best_epoch": self.best_epoch,
            "epochs": self.epochs,
            "requeues": self.requeues,
            "wall_time_s": self.wall_time_s,
            "images_per_sec": self.images_per_sec,
        }


def read_metrics(run_dir: Path) -> pd.DataFrame:
    """Per-epoch metrics of every segment's CSV log, one row per epoch (a resumed epoch keeps its latest value)."""
    frames = [
        pd.read_csv(path).assign(_segment=int(path.parent.name.split("_")[-1]))
        for path in sorted(Path(run_dir, layout.METRICS).glob("version_*/metrics.csv"))
        if path.stat().st_size
    ]
    if not frames:
        return pd.DataFrame(columns=["epoch"])
    metrics = pd.concat(frames, ignore_index=True).dropna(subset=["epoch"])
    epoch_columns = [c for c in metrics.columns if c.startswith(("validation/", "train/"))]
    per_epoch = metrics.sort_values(["_segment", "step"]).groupby("epoch")[epoch_columns].last()
    return per_epoch.reset_index().astype({"epoch": int})


def _best(curves: pd.DataFrame, monitor: str, mode: str = "min") -> tuple[float | None, int | None]:
    if monitor not in curves or curves[monitor].isna().all():
        return None, None
    best_row = curves.loc[curves[monitor].idxmax() if mode == "max" else curves[monitor].idxmin()]
    return float(best_row[monitor]), int(best_row["epoch"]) + 1


def read_run(run_dir: Path, name: str | None = None, point: dict[str, Any] | None = None) -> RunRecord:
    """A run's record from its run directory (finished or not)."""
    run_dir = Path(run_dir)
    summary = layout.read_json(run_dir / layout.SUMMARY) or {}
    progress = layout.read_json(run_dir / layout.PROGRESS) or {}
    segments = layout.read_segments(run_dir)
    curves = read_metrics(run_dir)
    monitor = summary.get("monitor") or progress.get("monitor") or DEFAULT_MONITOR
    best, best_epoch = _best(curves, monitor, summary.get("mode") or progress.get("mode") or "min")
    if summary.get("best") is not None:
        best = float(summary["best"])
    end = summary.get("finished") or progress.get("time")
    start = segments[0]["start"] if segments else None
    images_per_sec = summary.get("images_per_sec")
    if images_per_sec is None and "train/images_per_sec" in curves:
        logged = curves["train/images_per_sec"].dropna()
        images_per_sec = logged.iloc[-1] if len(logged) else None
    return RunRecord(
        name=name or run_dir.name,
        run_dir=run_dir,
        point=dict(point or {}),
        monitor=monitor,
        best=best,
        best_epoch=best_epoch,
        epochs=int(summary.get("epochs") or progress.get("epoch") or len(curves)),
        requeues=int(summary.get("requeues", max(len(segments) - 1, 0))),
        wall_time_s=float(end - start) if end is not None and start is not None else None,
        images_per_sec=float(images_per_sec) if images_per_sec is not None else None,
        finished=bool(summary),
        curves=curves,
    )


def collect_runs(sweep_dir: Path) -> list[RunRecord]:
    """Every run of a sweep (from `sweep.json`, in submission order), or of a directory of run directories."""
    sweep_dir = Path(sweep_dir)
    sweep = layout.read_json(sweep_dir / layout.SWEEP)
    if sweep is not None:
        return [
            read_run(_resolve(sweep_dir, run["run_dir"], run["name"]), run["name"], run.get("point"))
            for run in sweep["runs"]
        ]
    runs = []
    for run_dir in layout.find_run_dirs(sweep_dir):
        submission = layout.read_json(run_dir / layout.SUBMISSION) or {}
        runs.append(read_run(run_dir, point=submission.get("point")))
    return runs


def _resolve(sweep_dir: Path, run_dir: str, name: str) -> Path:
    """The run directory as recorded, or by name inside the sweep directory (a moved or copied sweep)."""
    recorded = Path(run_dir)
    return recorded if recorded.is_dir() else sweep_dir / name


def runs_table(runs: list[RunRecord]) -> pd.DataFrame:
    return pd.DataFrame([run.row() for run in runs])


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text.rsplit(".", 1)[-1] if "/" not in text else text.replace("/", "_"))


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _is_log_axis(values: list[Any]) -> bool:
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if len(numbers) != len(values) or min(numbers, default=0) <= 0:
        return False
    return max(numbers) / min(numbers) >= 10


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _axis_positions(values: list[Any]) -> tuple[list[Any], bool]:
    """Sorted distinct values and whether they are numbers (plotted on a numeric axis)."""
    distinct = list(dict.fromkeys(values))
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in distinct)
    return (sorted(distinct) if numeric else distinct), numeric


def plot_metric_vs_param(runs: list[RunRecord], param: str, others: list[str], path: Path) -> None:
    """Best validation metric against one swept parameter; one line per value of another swept parameter."""
    monitor = runs[0].monitor
    fig = Figure(figsize=(6, 4.2), layout="constrained")
    ax = fig.add_subplot()
    group_key = others[0] if len(others) == 1 else None
    groups: dict[Any, list[RunRecord]] = {}
    for run in runs:
        groups.setdefault(run.point.get(group_key) if group_key else None, []).append(run)
    xs_all, numeric = _axis_positions([run.point.get(param) for run in runs])
    for value, members in groups.items():
        members = [m for m in members if m.best is not None]
        members.sort(key=lambda m: xs_all.index(m.point.get(param)))
        xs = [m.point.get(param) if numeric else xs_all.index(m.point.get(param)) for m in members]
        label = f"{_short(group_key)}={_fmt(value)}" if group_key else None
        ax.plot(xs, [m.best for m in members], marker="o", label=label)
    if numeric and _is_log_axis(xs_all):
        ax.set_xscale("log")
    if numeric:
        ax.set_xticks(xs_all, [_fmt(v) for v in xs_all])
        ax.minorticks_off()
    else:
        ax.set_xticks(range(len(xs_all)), [_fmt(v) for v in xs_all])
    ax.set_xlabel(param)
    ax.set_ylabel(f"best {monitor}")
    ax.set_title(f"best {monitor} vs {_short(param)}")
    ax.grid(alpha=0.3)
    if group_key:
        ax.legend(title=None, fontsize="small")
    fig.savefig(path, dpi=120)


def plot_heatmap(runs: list[RunRecord], rows: str, cols: str, path: Path) -> None:
    """Best validation metric over a 2-D grid, each cell annotated; the best cell is outlined."""
    monitor = runs[0].monitor
    row_values, _ = _axis_positions([run.point.get(rows) for run in runs])
    col_values, _ = _axis_positions([run.point.get(cols) for run in runs])
    grid = np.full((len(row_values), len(col_values)), np.nan)
    for run in runs:
        if run.best is not None:
            grid[row_values.index(run.point.get(rows)), col_values.index(run.point.get(cols))] = run.best
    fig = Figure(figsize=(1.3 * len(col_values) + 2.8, 1.0 * len(row_values) + 1.8), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(grid, cmap="viridis_r", aspect="auto")
    fig.colorbar(image, ax=ax, label=f"best {monitor} (lower is better)")
    ax.set_xticks(range(len(col_values)), [_fmt(v) for v in col_values])
    ax.set_yticks(range(len(row_values)), [_fmt(v) for v in row_values])
    ax.set_xlabel(cols)
    ax.set_ylabel(rows)
    finite = grid[np.isfinite(grid)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0
    for (i, j), value in np.ndenumerate(grid):
        text = "n/a" if math.isnan(value) else f"{value:.4g}"
        ax.text(j, i, text, ha="center", va="center", color="white" if value > middle else "black", fontsize=9)
    if finite.size:
        i, j = np.unravel_index(np.nanargmin(grid), grid.shape)
        ax.add_patch(_outline(j, i))
    ax.set_title(f"best {monitor}: {_short(rows)} x {_short(cols)}")
    fig.savefig(path, dpi=120)


def _outline(x: int, y: int):
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5)


def plot_learning_curves(runs: list[RunRecord], path: Path) -> None:
    """Validation metric and training loss against epoch, one line per run."""
    monitor = runs[0].monitor
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    colours = [f"C{i % 10}" for i in range(len(runs))]
    for run, colour in zip(runs, colours, strict=True):
        for ax, column in zip(axes, (monitor, "train/loss"), strict=True):
            if column in run.curves and run.curves[column].notna().any():
                curve = run.curves[["epoch", column]].dropna()
                ax.plot(curve["epoch"] + 1, curve[column], marker=".", color=colour, label=run.name)
    for ax, column in zip(axes, (monitor, "train/loss"), strict=True):
        ax.set_xlabel("epoch")
        ax.set_ylabel(column)
        ax.set_title(column)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize="small")
    fig.savefig(path, dpi=120)


def swept_params(runs: list[RunRecord]) -> list[str]:
    """Parameters that take more than one value across the runs, in first-seen order."""
    keys = list(dict.fromkeys(key for run in runs for key in run.point))
    return [key for key in keys if len({repr(run.point.get(key)) for run in runs}) > 1]


def write_report(sweep_dir: Path, out_dir: Path | None = None) -> tuple[pd.DataFrame, list[Path]]:
    """Write the runs table and the plots; returns the table and the files written (a search directory's report
    is `zoobot_hpc.search.report.write_search_report`)."""
    runs = collect_runs(Path(sweep_dir))
    if not runs:
        raise ValueError(f"sweep_dir={sweep_dir}: no runs found (no sweep.json and no run directories)")
    out_dir = Path(out_dir) if out_dir else Path(sweep_dir) / REPORT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    table = runs_table(runs)
    written = [out_dir / TABLE_NAME]
    table.to_csv(written[0], index=False)
    params = swept_params(runs)
    metric = _slug(runs[0].monitor)
    for param in params:
        path = out_dir / f"{metric}_vs_{_slug(param)}.png"
        plot_metric_vs_param(runs, param, [p for p in params if p != param], path)
        written.append(path)
    if len(params) == 2:
        path = out_dir / f"{metric}_heatmap_{_slug(params[0])}_x_{_slug(params[1])}.png"
        plot_heatmap(runs, params[0], params[1], path)
        written.append(path)
    path = out_dir / "learning_curves.png"
    plot_learning_curves(runs, path)
    written.append(path)
    return table, written
