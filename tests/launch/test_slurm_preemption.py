"""How production SLURM takes a training job away, on the loopback cluster with preemption switched on.

One uninterrupted 2-node run (`debug`, never preempted) is the baseline of every scenario: its weights after each
optimiser step (rank 0's digest) and at the end of training. The scenarios run alongside it:
- a `low` job preempted twice by `high` jobs (SLURM's SIGTERM, requeued by SLURM), then `scancel`led and resumed
  with `zoobot-hpc resume`;
- a `debug` job whose real time limit sends USR2 (SLURM's own `--signal`), requeued twice, then out of requeues.
Every step either run trained must end with the baseline's weights, bit for bit.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.launch.conftest import segments, wait_for, write_test_config
from tests.launch.probes import step_digests
from zoobot_hpc import run_dir as layout
from zoobot_hpc.launch.submit import plan_runs, submit_plan

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module", autouse=True)
def _preemption_partitions(slurm_cluster):
    slurm_cluster.require_preemption()


MAX_EPOCHS = 4
GRACE_LIMIT_S = 10  # the `low` partition's GraceTime in slurm/cluster.sh --preemption


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zoobot_hpc.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
        check=False,
    )


def job_id_of(output: str) -> str:
    return re.findall(r"\bjob (\d+)", output)[0]


def submit_run(tmp_path: Path, dataset: Path, name: str, step_sleep_s: float = 0.0, **overrides) -> Path:
    """Submit a 2-node x 1-task run that records its step digests; returns its run dir."""
    probe = {
        "class_path": "tests.launch.probes.StepDigests",
        "init_args": {"out_dir": str(tmp_path / "probe"), "step_sleep_s": step_sleep_s},
    }
    config = write_test_config(
        tmp_path,
        dataset,
        name=name,
        resources__executor="slurm",
        resources__nodes=2,
        trainer__max_epochs=MAX_EPOCHS,
        trainer__callbacks=[probe],
        **overrides,
    )
    submit_plan(plan_runs(config))
    return tmp_path / "runs" / name


def job_of(run_dir: Path) -> str:
    return str(layout.read_json(run_dir / layout.SUBMISSION)["job_id"])


def log_of(run_dir: Path) -> str:
    path = Path(layout.read_json(run_dir / layout.SUBMISSION)["stdout"])
    return path.read_text() if path.exists() else ""


def trained_in_this_segment(run_dir: Path):
    """True once the newest segment has logged a training batch."""

    def check() -> bool:
        text = log_of(run_dir)
        starts = [m.end() for m in re.finditer(r"zoobot_hpc: run dir ", text)]
        return bool(starts) and len(starts) == len(segments(run_dir)) and " batch " in text[starts[-1] :]

    return check


def assert_steps_match(run_probe: Path, baseline_probe: Path) -> int:
    """Every step the run trained (redone ones too) ended with the baseline's weights; returns the last step."""
    run, baseline = step_digests(run_probe), step_digests(baseline_probe)
    assert run, "the run trained no step"
    different = sorted(step for step, digests in run.items() if digests != baseline.get(step))
    assert not different, f"steps {different[:5]} differ from the uninterrupted run"
    return max(run)


def assert_same_final_weights(run_probe: Path, baseline_probe: Path) -> None:
    run = torch.load(run_probe / "final.pt", weights_only=True)
    baseline = torch.load(baseline_probe / "final.pt", weights_only=True)
    assert run.keys() == baseline.keys()
    assert not [k for k in run if not torch.equal(run[k], baseline[k])], "final weights differ"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_dataset, slurm_cluster):
    """All three runs, running alongside each other. The `low` one starts first: it takes a core of each node for
    itself (`OverSubscribe=NO`), and the `debug` ones then share the other cores (`OverSubscribe=FORCE:2`)."""
    root = tmp_path_factory.mktemp("preemption")
    preempted = submit_run(root / "preempted", demo_dataset, "preempted", resources__partition="low")
    slurm_cluster.wait_for_state(job_of(preempted), ["RUNNING"], timeout=240)
    baseline = submit_run(root / "baseline", demo_dataset, "baseline")
    time_limited = submit_run(
        root / "time-limit",
        demo_dataset,
        "time-limit",
        step_sleep_s=4.0,
        resources__time_min=1,
        resources__signal_delay_s=30,
        resources__max_time_limit_requeues=2,
        resources__sbatch_extra={"time": "2:00"},
    )
    return {"root": root, "preempted": preempted, "baseline": baseline, "time-limit": time_limited}


@pytest.mark.timeout(480)
def test_preempted_twice_by_sigterm_then_cancelled_and_resumed_ends_with_uninterrupted_weights(runs, slurm_cluster):
    root = runs["root"] / "preempted"
    run_dir = runs["preempted"]
    job = job_of(run_dir)
    for preemption in (1, 2):
        wait_for(trained_in_this_segment(run_dir), 240, f"training before preemption {preemption}")
        slurm_cluster.preempt_low_jobs_on("n1")
        wait_for(lambda n=preemption: len(segments(run_dir)) == n + 1, 240, f"SLURM's requeue {preemption}")
    states = [r["State"] for r in slurm_cluster.sacct(job, allocations_only=True)]
    assert states[:2] == ["PREEMPTED", "PREEMPTED"], states

    wait_for(trained_in_this_segment(run_dir), 240, "training before scancel")
    slurm_cluster.run("scancel", job)
    slurm_cluster.wait_for_state(job, ["CANCELLED"], timeout=60)
    status = cli("status", str(run_dir))
    assert "CANCELLED" in status.stdout and "zoobot-hpc resume" in status.stdout, status.stdout

    resumed = cli("resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr
    new_job = job_id_of(resumed.stdout)
    assert new_job != job
    slurm_cluster.wait_for_state(new_job, ["COMPLETED"], timeout=300)

    starts = segments(run_dir)
    assert len(starts) == 4
    assert [s.get("stop") for s in starts] == ["SIGTERM", "SIGTERM", "SIGTERM", None]
    assert all(0 <= s["stop_and_save_s"] < GRACE_LIMIT_S for s in starts[:3]), starts
    assert all(s["resumed_from"].endswith("resume.ckpt") for s in starts[1:])
    assert starts[1]["slurm_restart_count"] == "1" and starts[2]["slurm_restart_count"] == "2"
    assert "Traceback" not in log_of(run_dir)

    slurm_cluster.wait_for_state(job_of(runs["baseline"]), ["COMPLETED"], timeout=300)
    assert_steps_match(root / "probe", runs["root"] / "baseline" / "probe")
    assert_same_final_weights(root / "probe", runs["root"] / "baseline" / "probe")


@pytest.mark.timeout(420)
def test_real_time_limit_requeues_twice_then_the_run_ends_and_status_says_why(runs, slurm_cluster):
    run_dir = runs["time-limit"]
    job = job_of(run_dir)
    with pytest.raises(RuntimeError, match="FAILED"):
        slurm_cluster.wait_for_state(job, ["COMPLETED"], timeout=400)
    starts = segments(run_dir)
    assert len(starts) == 3, starts
    assert [s.get("stop") for s in starts] == ["SIGUSR2"] * 3
    assert [s["slurm_restart_count"] for s in starts] == [None, "1", "2"]
    status = cli("status", str(run_dir))
    assert "time-limit requeues exhausted" in status.stdout, status.stdout

    slurm_cluster.wait_for_state(job_of(runs["baseline"]), ["COMPLETED"], timeout=300)
    assert_steps_match(runs["root"] / "time-limit" / "probe", runs["root"] / "baseline" / "probe")
    reached = [0] + [s["stop_step"] for s in starts]
    trained = sum(after > before for before, after in itertools.pairwise(reached))
    assert trained >= 2, f"steps reached at each stop {reached[1:]}: too few segments trained to test the resume"
