"""`zoobot-hpc report` on a small finished sweep of real runs: the table and the plots."""

from __future__ import annotations

import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from tests.support.trained_runs import run_config
from zoobot_hpc.cli import main
from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.core.config import dump_config
from zoobot_hpc.login.submit import plan_runs
from zoobot_hpc.training.run import run_training

GRID = ["model.learning_rate=1e-3,1e-2", "model.layer_decay=0.5,0.9"]


@pytest.fixture(scope="module")
def finished_sweep(train_data, tmp_path_factory):
    """A 2 x 2 learning_rate x layer_decay sweep, each run trained for 2 epochs, with the sweep.json of `submit`."""
    root = tmp_path_factory.mktemp("sweep")
    config_path = root / "config.yaml"
    config_path.write_text(dump_config(run_config(train_data, root / "runs", trainer={"max_epochs": 2})))
    plan = plan_runs(config_path, GRID, sweep_name="grid")
    for run in plan.runs:
        run_training(run.config, run.run_dir, interactive=False)
    runs = [{"name": r.name, "point": r.point, "run_dir": str(r.run_dir), "job_id": None} for r in plan.runs]
    layout.write_json(plan.base_dir / layout.SWEEP, {"sweep": "grid", "runs": runs})
    return plan


def test_report_writes_the_table_of_every_run_and_readable_plots(finished_sweep):
    sweep_dir = finished_sweep.base_dir
    result = CliRunner().invoke(main, ["report", str(sweep_dir)])
    assert result.exit_code == 0, result.output

    table = pd.read_csv(sweep_dir / "report" / "runs.csv")
    assert table["run"].tolist() == [run.name for run in finished_sweep.runs]
    for row, run in zip(table.to_dict("records"), finished_sweep.runs, strict=True):
        assert row["run"] in result.output
        assert row["model.learning_rate"] == run.point["model.learning_rate"]
        assert row["model.layer_decay"] == run.point["model.layer_decay"]
        summary = layout.read_json(run.run_dir / layout.SUMMARY)
        logged = pd.concat(pd.read_csv(p) for p in run.run_dir.glob("metrics/version_*/metrics.csv"))
        assert row["best validation/loss"] == pytest.approx(summary["best"], rel=1e-6)
        assert row["best validation/loss"] == pytest.approx(logged["validation/loss"].min(), rel=1e-6)
        assert (row["state"], row["epochs"], row["requeues"]) == ("finished", 2, 0)
        assert row["wall_time_s"] > 0 and row["images_per_sec"] > 0

    plots = {
        "validation_loss_vs_learning_rate.png",
        "validation_loss_vs_layer_decay.png",
        "validation_loss_heatmap_learning_rate_x_layer_decay.png",
        "learning_curves.png",
    }
    assert {p.name for p in (sweep_dir / "report").glob("*.png")} == plots
    for name in plots:
        assert f"wrote {sweep_dir / 'report' / name}" in result.output
        with Image.open(sweep_dir / "report" / name) as image:
            assert image.format == "PNG" and min(image.size) >= 300


def test_report_of_a_directory_without_runs_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output == f"Error: sweep_dir={tmp_path}: no runs found (no sweep.json and no run directories)\n"
