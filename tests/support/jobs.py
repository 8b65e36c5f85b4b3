"""Fixtures and helpers for launch tests: a small demo dataset, run configs, waiting and signalling jobs."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.data.demo import write_demo_dataset

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory) -> Path:
    """A small synthetic galaxy dataset (32 px) shared by the launch tests."""
    path = tmp_path_factory.mktemp("launch-data") / "demo"
    write_demo_dataset(path, n_galaxies=240, image_size=32, seed=1)
    return path


def write_test_config(tmp_path: Path, dataset: Path, **overrides) -> Path:
    """configs/demo.yaml shrunk for tests (32 px, tiny batches, deterministic), with dotted overrides."""
    raw = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    raw["output_dir"] = str(tmp_path / "runs")
    raw["data"].update(dataset_dir=str(dataset), batch_size=8, num_workers=2)
    raw["data"]["augment"]["output_size"] = 32
    raw["model"]["scheduler_kwargs"] = {"sched": "cosine", "num_epochs": 2, "warmup_epochs": 0}
    raw["trainer"].update(max_epochs=2, deterministic=True, log_every_n_steps=5, checkpoint_every_minutes=None)
    raw["resources"].update(cpus_per_task=1, time_min=10)
    for dotted, value in overrides.items():
        node = raw
        *parents, last = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def wait_for(predicate: Callable[[], object], timeout: float, what: str, poll: float = 0.2) -> object:
    """Poll until `predicate()` is truthy; fail the test with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def child_pids(pid: int) -> list[int]:
    """Direct children of a process, from /proc."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def signal_local_tasks(controller_pid: int, signum: int = signal.SIGUSR2) -> list[int]:
    """Signal every task of a submitit local job, as SLURM signals every task of a job step."""
    tasks = child_pids(controller_pid)
    for pid in tasks:
        os.kill(pid, signum)
    return tasks


def segments(run_dir: Path) -> list[dict]:
    return layout.read_segments(run_dir)


def trained_steps(run_dir: Path) -> int:
    """Steps logged so far by the run's CSV metrics (all segments)."""
    steps = 0
    for csv in Path(run_dir, layout.METRICS).glob("version_*/metrics.csv"):
        lines = csv.read_text().splitlines()
        if len(lines) > 1:
            header = lines[0].split(",")
            column = header.index("step")
            steps = max([steps] + [int(float(row.split(",")[column])) for row in lines[1:] if row])
    return steps


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The model weights the run ended with: its `last.ckpt`, checked to hold the step the run's summary says
    training ended at (a stale `last.ckpt`, e.g. one from the best epoch, fails here)."""
    summary = layout.read_json(Path(run_dir) / layout.SUMMARY)
    assert summary is not None, f"{run_dir} has no {layout.SUMMARY}: the run did not finish"
    checkpoint = torch.load(Path(run_dir) / layout.CHECKPOINTS / "last.ckpt", map_location="cpu", weights_only=True)
    step = checkpoint["global_step"]
    assert step == summary["global_step"], f"last.ckpt holds step {step}; the run ended at {summary['global_step']}"
    return checkpoint["state_dict"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
