"""`zoobot-hpc report SEARCH_DIR`: the runs table and learning curves of every trial, plus the search's plots.

Written under `SEARCH_DIR/report/`: `runs.csv` (one row per trial: number, state, parameters, best metric, epochs,
requeues, wall time), `learning_curves.png`, `optimization_history.png`, `intermediate_values.png` (the metric each
trial reported per epoch: where pruning stopped it), `param_importances.png` (PED-ANOVA, needs no scikit-learn)
and `<metric>_vs_<param>.png` for every parameter (every trial's best, by state, log axis for log ranges).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from zoobot_hpc.login.report import REPORT_DIR, TABLE_NAME, RunRecord, _slug, plot_learning_curves, read_run
from zoobot_hpc.search.study import load_study, require_optuna

STATE_STYLE = {"COMPLETE": ("C0", "o"), "PRUNED": ("C1", "v"), "FAIL": ("C3", "x"), "RUNNING": ("C2", "s")}


def trial_records(sweep_dir: Path, study: Any) -> list[tuple[Any, RunRecord | None]]:
    """Each trial with the record of its run directory (None before its task wrote one)."""
    records = []
    for trial in study.get_trials(deepcopy=False):
        name = trial.user_attrs.get("run_dir")
        run_dir = Path(sweep_dir) / name if name else None
        record = read_run(run_dir, name, trial.params) if run_dir and run_dir.is_dir() else None
        records.append((trial, record))
    return records


def objective(study: Any) -> tuple[str, Any]:
    """The name of the metric a study optimises and the function that picks a trial's best value of it."""
    metric = study.user_attrs.get("metric", "validation/loss")
    return metric, max if study.direction.name == "MAXIMIZE" else min


def trials_table(records: list[tuple[Any, RunRecord | None]], study: Any) -> pd.DataFrame:
    metric, pick = objective(study)
    rows = []
    for trial, record in records:
        best = pick(trial.intermediate_values.values(), default=None)
        row = {"trial": trial.number, "state": trial.state.name, **trial.params}
        if record is not None:
            row.update({k: v for k, v in record.row().items() if k not in ("run", "state", *trial.params)})
            row["run"] = record.name
        else:
            row.update({f"best {metric}": best, "epochs": max(trial.intermediate_values, default=0)})
        rows.append(row)
    return pd.DataFrame(rows)


def plot_metric_vs_parameter(study: Any, param: str, log_x: bool, path: Path) -> None:
    """Best reported metric of every trial against one parameter, coloured by state."""
    metric, pick = objective(study)
    fig = Figure(figsize=(6, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for state, (colour, marker) in STATE_STYLE.items():
        trials = [
            t
            for t in study.get_trials(deepcopy=False)
            if t.state.name == state and param in t.params and t.intermediate_values
        ]
        if trials:
            xs = [t.params[param] for t in trials]
            ys = [pick(t.intermediate_values.values()) for t in trials]
            ax.scatter(xs, ys, color=colour, marker=marker, label=state.lower(), s=36)
    if log_x:
        ax.set_xscale("log")
    if pick is min:
        ax.set_yscale("log")
    ax.set_xlabel(param)
    ax.set_ylabel(f"best {metric}")
    ax.set_title(f"best {metric} vs {param.rsplit('.', 1)[-1]}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)


def _log_y(ax: Any) -> Any:
    ax.set_yscale("log")
    return ax


def _save_optuna_plot(plot: Any, path: Path, size: tuple[float, float] = (7, 4.5)) -> None:
    import matplotlib.pyplot as plt

    ax = plot()
    figure = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    figure.set_size_inches(*size)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_search_report(sweep_dir: Path, out_dir: Path | None = None) -> tuple[pd.DataFrame, list[Path]]:
    """Write the table and the plots of a search; returns the table and the files written."""
    import matplotlib

    matplotlib.use("Agg")
    optuna = require_optuna()
    from optuna.visualization import matplotlib as optuna_plots

    study, spec, _ = load_study(Path(sweep_dir))
    records = trial_records(Path(sweep_dir), study)
    if not records:
        raise ValueError(f"sweep_dir={sweep_dir}: the search has no trials yet")
    out_dir = Path(out_dir) if out_dir else Path(sweep_dir) / REPORT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    table = trials_table(records, study)
    written = [out_dir / TABLE_NAME]
    table.to_csv(written[0], index=False)
    runs = [record for _, record in records if record is not None and not record.curves.empty]
    if runs:
        written.append(out_dir / "learning_curves.png")
        plot_learning_curves(runs, written[-1])
    for parameter in spec.parameters:
        written.append(out_dir / f"validation_loss_vs_{_slug(parameter.key)}.png")
        plot_metric_vs_parameter(study, parameter.key, parameter.kind == "loguniform", written[-1])
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    plots = {
        "optimization_history.png": lambda: optuna_plots.plot_optimization_history(study),
        "intermediate_values.png": lambda: _log_y(optuna_plots.plot_intermediate_values(study)),
    }
    if len(complete) >= 2 and len(spec.parameters) >= 2:
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
        plots["param_importances.png"] = lambda: optuna_plots.plot_param_importances(study, evaluator=evaluator)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, plot in plots.items():
            _save_optuna_plot(plot, out_dir / name)
            written.append(out_dir / name)
    return table, written
