"""Login-node commands never import torch, Lightning or timm: each runs in a fresh interpreter, which reports
which of them it imported by the time the command returned."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.support.jobs import REPO, write_test_config
from zoobot_hpc.core import run_dir as layout

HEAVY = ("torch", "lightning", "timm")

RUNNER = f"""
import json, sys
from zoobot_hpc.cli import main
try:
    main(sys.argv[1:], prog_name="zoobot-hpc")
except SystemExit as stop:
    code = stop.code
print("HEAVY-IMPORTS=" + json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))
"""


def heavy_imports(*args: str, cwd: Path = REPO) -> list[str]:
    """Run `zoobot-hpc ARGS` in a fresh interpreter; the heavy modules it had imported when it returned."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    # Output goes to a file, not a pipe: a submitted local job inherits it and would hold a pipe open.
    with tempfile.TemporaryFile("w+") as output:
        subprocess.run(
            [sys.executable, "-c", RUNNER, *args], cwd=cwd, env=env, stdout=output, stderr=output, timeout=120
        )
        output.seek(0)
        text = output.read()
    marker = [line for line in text.splitlines() if line.startswith("HEAVY-IMPORTS=")]
    assert marker, f"the command did not return: {text[-3000:]}"
    return json.loads(marker[0].partition("=")[2])


@pytest.fixture
def finished_run(tmp_path) -> Path:
    """A run directory as a finished local run leaves it (config, submission, summary, metrics, a W&B segment)."""
    run = tmp_path / "runs" / "sweep" / "lr=0.001"
    config = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    (run / layout.METRICS / "version_0").mkdir(parents=True)
    (run / layout.CONFIG).write_text(yaml.safe_dump(config))
    layout.write_json(run / layout.SUBMISSION, {"executor": "local", "job_id": "999999999", "submitit_folder": "x"})
    layout.write_json(run / layout.SUMMARY, {"monitor": "validation/loss", "best": 0.5, "epochs": 1, "metrics": {}})
    (run / layout.METRICS / "version_0" / "metrics.csv").write_text("epoch,step,validation/loss\n0,10,0.5\n")
    (run / layout.WANDB / "wandb" / "offline-run-20260101_000000-x").mkdir(parents=True)
    (run / layout.WANDB_RUN_ID).write_text("x\n")
    return run.parent


@pytest.mark.timeout(120)
def test_config_cli_and_login_commands_leave_torch_unimported(finished_run):
    config = str(REPO / "configs" / "demo.yaml")
    assert heavy_imports("--help") == []
    assert heavy_imports("submit", config, "--dry-run") == []
    assert heavy_imports("submit", config, "--dry-run", "model.learning_rate=1e-3,3e-3") == []
    assert heavy_imports("status", str(finished_run)) == []
    assert heavy_imports("cancel", str(finished_run)) == []
    assert heavy_imports("sync", "--dry-run", str(finished_run)) == []
    assert heavy_imports("report", str(finished_run)) == []
    assert (finished_run / "report" / "runs.csv").exists()


def _submit_locally(config: Path, name: str, cwd: Path) -> list[str]:
    """`zoobot-hpc submit` of a local job (cancelled afterwards): the heavy modules the submitting process imported."""
    try:
        return heavy_imports("submit", str(config), f"name={name}", cwd=cwd)
    finally:
        run_dir = cwd / "runs" / name
        if (run_dir / layout.SUBMISSION).exists():
            subprocess.run([sys.executable, "-m", "zoobot_hpc.cli", "cancel", str(run_dir)], check=False)
        assert layout.read_json(run_dir / layout.SUBMISSION)["executor"] == "local"


@pytest.mark.timeout(180)
def test_a_real_local_submit_imports_only_what_its_checks_need(tmp_path, demo_dataset):
    """The submitting process validates the dataset and starts the job; the job (another process) imports torch.
    A config with `scheduler_kwargs` has timm build its scheduler in a child process (cached afterwards), so the
    submitting process imports none of torch, timm or Lightning either way."""
    plain = write_test_config(
        tmp_path / "plain",
        demo_dataset,
        resources__executor="local",
        trainer__max_epochs=1,
        model__scheduler_kwargs=None,
    )
    assert _submit_locally(plain, "login-imports", tmp_path / "plain") == []
    scheduled = write_test_config(tmp_path / "scheduled", demo_dataset, resources__executor="local")
    assert _submit_locally(scheduled, "scheduled", tmp_path / "scheduled") == []
