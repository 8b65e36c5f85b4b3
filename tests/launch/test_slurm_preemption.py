"""How production SLURM takes a training job away, on the loopback cluster with preemption switched on.

One uninterrupted 2-node run (`debug`, never preempted) is the baseline of every scenario: its weights after each
optimiser step (rank 0's digest) and at the end of training. The scenarios run alongside it:
- a `low` job preempted twice by `high` jobs (SLURM's SIGTERM, requeued by SLURM), then `scancel`led and resumed
  with `zoobot-hpc resume`;
- a `debug` job whose real time limit sends USR2 (SLURM's own `--signal`), requeued twice, then out of requeues;
- `zoobot-hpc train` under a user's own sbatch script without `--signal`: the time limit's SIGTERM saves and requeues;
- (last, once the others are done) a `debug` job whose second node is lost mid-epoch: SLURM requeues it (NODE_FAIL)
  and it resumes from its newest periodic checkpoint.
Every step any run trained must end with the baseline's weights, bit for bit.
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
from zoobot_hpc.checkpointing import newest_valid_checkpoint, stored_step
from zoobot_hpc.launch.submit import plan_runs, submit_plan

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module", autouse=True)
def _preemption_partitions(slurm_cluster):
    slurm_cluster.require_preemption()


MAX_EPOCHS = 4
GRACE_LIMIT_S = 10  # the `low` partition's GraceTime in slurm/cluster.sh --preemption
LATE_STEP = 24  # of the 48 steps of MAX_EPOCHS on 2 ranks: the first start ends at the limit, 60-90 s in


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


def submit_own_sbatch_script(tmp_path: Path, dataset: Path, name: str, step_sleep_s: float) -> tuple[Path, str]:
    """`zoobot-hpc train` of the baseline's config under a plain sbatch script with a 1-minute limit and no
    `--signal` (slurm/sbatch_template.sh without that line); returns the run dir and the job id. Only the first
    start is slowed down, and only from `LATE_STEP`: it meets the limit near the end of training, and the requeued
    start has little left to do. A step's sleep must end well inside KillWait (5 s): the save follows it."""
    probe = {
        "class_path": "tests.launch.probes.StepDigests",
        "init_args": {
            "out_dir": str(tmp_path / "probe"),
            "step_sleep_s": step_sleep_s,
            "first_start_only": True,
            "sleep_from_step": LATE_STEP,
        },
    }
    config = write_test_config(
        tmp_path, dataset, name=name, resources__nodes=2, trainer__max_epochs=MAX_EPOCHS, trainer__callbacks=[probe]
    )
    script = tmp_path / "job.sh"
    script.write_text(
        "#!/bin/bash\n"
        f"#SBATCH --nodes=2 --ntasks-per-node=1 --cpus-per-task=1 --time=1 --requeue --open-mode=append\n"
        f"#SBATCH --output={tmp_path / 'job.out'}\n"
        f"srun --kill-on-bad-exit=1 {sys.executable} -m zoobot_hpc.cli train {config}\n"
    )
    submitted = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, check=True)
    return tmp_path / "runs" / name, submitted.stdout.strip()


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
    own_script = submit_own_sbatch_script(root / "own-script", demo_dataset, "own-script", step_sleep_s=3.0)
    return {
        "own-script": own_script,
        "root": root,
        "demo_dataset": demo_dataset,
        "preempted": preempted,
        "baseline": baseline,
        "time-limit": time_limited,
    }


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


@pytest.mark.timeout(420)
def test_time_limit_sigterm_without_a_signal_before_it_saves_and_requeues(runs, slurm_cluster):
    run_dir, job = runs["own-script"]
    slurm_cluster.wait_for_state(job, ["COMPLETED"], timeout=400)
    states = [r["State"] for r in slurm_cluster.settled_accounting(job)]
    assert len(states) >= 2 and set(states[:-1]) == {"REQUEUED"} and states[-1] == "COMPLETED", states
    starts = segments(run_dir)
    assert len(starts) == len(states), starts
    assert [s.get("stop") for s in starts] == ["SIGTERM"] * (len(starts) - 1) + [None], starts
    for before, after in itertools.pairwise(starts):
        assert after["resumed_step"] == before["stop_step"], (before, after)
    log = (runs["root"] / "own-script" / "job.out").read_text()
    assert "the SIGTERM was SLURM's time limit" in log, log[-3000:]

    slurm_cluster.wait_for_state(job_of(runs["baseline"]), ["COMPLETED"], timeout=300)
    assert_steps_match(runs["root"] / "own-script" / "probe", runs["root"] / "baseline" / "probe")
    assert_same_final_weights(runs["root"] / "own-script" / "probe", runs["root"] / "baseline" / "probe")


LOST_NODE = "n2"
PERIODIC_STEPS = 8  # checkpoint_every_n_steps of the lost-node run: the most work a lost node may cost


def newest_saved_step(run_dir: Path) -> int:
    newest = newest_valid_checkpoint(run_dir / layout.CHECKPOINTS)
    return stored_step(newest) if newest else 0


def trained_past_newest_checkpoint(run_dir: Path):
    """The step the running start has reported (its heartbeat), once that is past its newest checkpoint."""

    def check() -> int | None:
        starts = segments(run_dir)
        reached = starts[-1].get("reached_step", 0) if starts else 0
        return reached if reached > newest_saved_step(run_dir) else None

    return check


@pytest.mark.timeout(600)
def test_lost_node_mid_epoch_requeues_and_resumes_from_the_periodic_checkpoint(runs, slurm_cluster, tmp_path):
    wait_for(lambda: not slurm_cluster.run("squeue", "--noheader").stdout.strip(), 420, "the other runs to end")
    run_dir = submit_run(
        tmp_path,
        runs["demo_dataset"],
        "lost-node",
        step_sleep_s=0.3,
        trainer__checkpoint_every_n_steps=PERIODIC_STEPS,
        trainer__heartbeat_every_s=2.0,
    )
    job = job_of(run_dir)
    try:
        wait_for(lambda: newest_saved_step(run_dir) >= PERIODIC_STEPS, 240, "a periodic checkpoint")
        wait_for(trained_past_newest_checkpoint(run_dir), 60, "training past the newest checkpoint")
        saved_before = newest_saved_step(run_dir)
        slurm_cluster.fail_node(LOST_NODE)
        slurm_cluster.wait_for_state(job, ["PENDING"], timeout=90)
    finally:
        slurm_cluster.reboot_node(LOST_NODE)
    slurm_cluster.wait_for_state(job, ["COMPLETED"], timeout=300)

    states = [r["State"] for r in slurm_cluster.settled_accounting(job)]
    assert states == ["NODE_FAIL", "COMPLETED"], states
    lost, resumed = segments(run_dir)
    assert "stop" not in lost, lost
    assert resumed["resumed_step"] == saved_before, (saved_before, resumed)
    redone = lost["reached_step"] - resumed["resumed_step"]
    assert 0 < redone <= PERIODIC_STEPS, (lost, resumed)
    assert layout.read_json(run_dir / layout.SUMMARY)["redone_steps"] == redone

    status = cli("status", str(run_dir))
    expected = f"{redone} steps redone (steps {saved_before}-{lost['reached_step']}, restart 1 after NODE_FAIL)"
    assert expected in status.stdout, status.stdout
    assert "requeues=1" in status.stdout, status.stdout

    assert_steps_match(tmp_path / "probe", runs["root"] / "baseline" / "probe")
    assert_same_final_weights(tmp_path / "probe", runs["root"] / "baseline" / "probe")
