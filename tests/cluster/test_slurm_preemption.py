"""How production SLURM takes a training job away, on the loopback cluster with preemption switched on, with the
layouts GPU clusters use: several tasks per node.

Two uninterrupted runs are the baselines: one of 2 nodes x 2 tasks (n1, n2) and one of 1 node x 4 tasks (n3). Each
records its weights after every optimiser step (rank 0's digest) and at the end of training. The scenarios run
alongside them, each compared bit for bit with the baseline of its own layout:
- 2 x 2 on `low`: stopped by USR2 during validation, preempted mid-epoch by a `high` job (SLURM's SIGTERM, requeued
  by SLURM), then `scancel`led and resumed with `zoobot-hpc resume`;
- 1 x 4 on `low`: preempted mid-epoch, then stopped twice by its real time limit (SLURM's own USR2), then finishes;
- 2 x 2 on `debug`: stopped twice by its real time limit (USR2), out of time-limit requeues, resumed;
- 2 x 2 under a user's own sbatch script without `--signal`: the time limit's SIGTERM saves and requeues;
- 2 x 2 on n4 + n5, whose second node is lost mid-epoch: SLURM requeues it (NODE_FAIL) and it resumes from its
  newest periodic checkpoint.
Time limits are submitted long and shortened with `scontrol update TimeLimit=` once a start trains, so that the
limit meets every start mid-training however busy the machine is; after each stop the limit is lengthened again.
Each scenario is driven (signals, limits, scancel, resume) by its own thread from the moment it is submitted, so
that none finishes unstopped while the tests before it wait; each test takes its driver's outcome and asserts.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from tests.support.jobs import segments, write_test_config
from tests.support.probes import step_digests
from tests.support.wandb_records import offline_run_files, read_offline_run
from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.login.submit import plan_runs, submit_plan
from zoobot_hpc.training.checkpointing import newest_valid_checkpoint, stored_step

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module", autouse=True)
def _preemption_partitions(slurm_cluster):
    slurm_cluster.require_preemption()


MAX_EPOCHS = 4
BATCH_SIZE = 4  # per rank: 13 steps an epoch on 4 ranks, 52 in all
GRACE_LIMIT_S = 10  # the `low` partition's GraceTime in slurm/cluster.sh --preemption
SIGNAL_DELAY_S = 30  # USR2 this long before a time limit
LONG_LIMIT = "10:00"  # what time limits are submitted with, and lengthened back to after each stop
DRIVER_TIMEOUT_S = 840  # how long a test waits for its scenario's driver, which waits on events with their own limits
ABORT = threading.Event()  # set when the module's runs are torn down: every driver still waiting gives up
STEP_SLEEP_S = 2.0  # a stopped run's steps, while its driver still has stops to make (< KillWait, the save follows)
LAYOUTS = {  # the runs read in their main processes (28 ranks with a loader each would not fit in 24 GB); the
    # preempted one reads through a loader worker: the batches are the same
    "2x2": {
        "resources__nodes": 2,
        "resources__tasks_per_node": 2,
        "data__num_workers": 0,
        "sbatch_extra": {"nodelist": "n[1-2]"},
    },
    "1x4": {
        "resources__nodes": 1,
        "resources__tasks_per_node": 4,
        "data__num_workers": 0,
        "sbatch_extra": {"nodelist": "n3"},
    },
}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zoobot_hpc.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
        check=False,
    )


def wait_for(predicate: Callable[[], object], timeout: float, what: str, poll: float = 0.2) -> object:
    """Poll until `predicate()` is truthy (from a driver thread); fail after `timeout` s, or once ABORT is set."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not ABORT.is_set():
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    pytest.fail(f"{'gave up' if ABORT.is_set() else f'timed out after {timeout}s'} waiting for {what}")


def job_id_of(output: str) -> str:
    return re.findall(r"\bjob (\d+)", output)[0]


def probe_spec(out_dir: Path, **init_args) -> dict:
    return {"class_path": "tests.support.probes.StepDigests", "init_args": {"out_dir": str(out_dir), **init_args}}


def submit_run(
    tmp_path: Path, dataset: Path, name: str, layout_name: str, probe: dict | None = None, **overrides
) -> Path:
    """Submit a run of `layout_name` ("2x2" or "1x4") that records its step digests; returns its run dir."""
    placement = dict(LAYOUTS[layout_name])
    sbatch_extra = {**placement.pop("sbatch_extra"), **overrides.pop("resources__sbatch_extra", {})}
    extra_callbacks = overrides.pop("extra_callbacks", [])
    config = write_test_config(
        tmp_path,
        dataset,
        name=name,
        resources__executor="slurm",
        resources__sbatch_extra=sbatch_extra,
        data__batch_size=BATCH_SIZE,
        trainer__max_epochs=MAX_EPOCHS,
        trainer__callbacks=[probe or probe_spec(tmp_path / "probe"), *extra_callbacks],
        **{"tracking__mode": "disabled", **placement, **overrides},
    )
    submit_plan(plan_runs(config))
    return tmp_path / "runs" / name


def submit_own_sbatch_script(tmp_path: Path, dataset: Path, name: str) -> tuple[Path, str]:
    """`zoobot-hpc train` of a 2 x 2 config under a plain sbatch script (slurm/sbatch_template.sh's form) without
    `--signal`: the time limit ends it with SIGTERM. Its first start is slowed down (1.5 s a step, well inside
    KillWait, which the save follows); returns the run dir and the job id."""
    config = write_test_config(
        tmp_path,
        dataset,
        name=name,
        resources__nodes=2,
        resources__tasks_per_node=2,
        data__batch_size=BATCH_SIZE,
        data__num_workers=LAYOUTS["2x2"]["data__num_workers"],
        tracking__mode="disabled",
        trainer__max_epochs=MAX_EPOCHS,
        trainer__callbacks=[probe_spec(tmp_path / "probe", step_sleep_s=1.5, first_start_only=True)],
    )
    script = tmp_path / "job.sh"
    script.write_text(
        "#!/bin/bash\n"
        "#SBATCH --nodes=2 --ntasks-per-node=2 --cpus-per-task=1 --nodelist=n[1-2]\n"
        f"#SBATCH --time={LONG_LIMIT} --requeue --open-mode=append\n"
        f"#SBATCH --output={tmp_path / 'job.out'}\n"
        f"srun --kill-on-bad-exit=1 {sys.executable} -m zoobot_hpc.cli train {config}\n"
    )
    submitted = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, check=True)
    return tmp_path / "runs" / name, submitted.stdout.strip()


def job_of(run_dir: Path) -> str:
    return str(layout.read_json(run_dir / layout.SUBMISSION)["job_id"])


def every_log_of(run_dir: Path) -> str:
    """The job logs of every job the run directory had (a resume is a new job), oldest first."""
    logs = sorted(Path(run_dir, "submitit").glob("*_log.out"), key=lambda path: path.stat().st_mtime)
    return "".join(path.read_text() for path in logs)


def log_of(run_dir: Path) -> str:
    path = Path(layout.read_json(run_dir / layout.SUBMISSION)["stdout"])
    return path.read_text() if path.exists() else ""


def trained_in_this_segment(run_dir: Path, log=log_of):
    """True once the newest segment has logged a training step (the progress line of its first batch)."""

    def check() -> bool:
        text = log(run_dir)
        starts = [m.end() for m in re.finditer(r"zoobot_hpc[\w.]*: run dir ", text)]
        trained = re.search(r"epoch \d+/\d+ batch \d+/\d+ step \d+", text[starts[-1] :]) if starts else None
        return bool(trained) and len(starts) == len(segments(run_dir))

    return check


def job_fields(slurm_cluster, job: str) -> dict[str, str]:
    shown = slurm_cluster.run("scontrol", "--oneliner", "show", "job", job, check=False)
    assert shown.returncode == 0, f"scontrol show job {job}: {shown.stdout}{shown.stderr}"
    return dict(field.split("=", 1) for field in shown.stdout.split() if "=" in field)


def duration_s(text: str) -> int:
    """SLURM's [D-]HH:MM:SS (or MM:SS) in seconds."""
    days, _, clock = text.rpartition("-")
    seconds = 0
    for part in clock.split(":"):
        seconds = seconds * 60 + int(part)
    return seconds + int(days or 0) * 86400


def set_time_limit(slurm_cluster, job: str, limit: str) -> None:
    updated = slurm_cluster.run("scontrol", "update", f"JobId={job}", f"TimeLimit={limit}", check=False)
    assert updated.returncode == 0, f"scontrol update JobId={job} TimeLimit={limit}: {updated.stderr}"


def limit_time_from_now(slurm_cluster, job: str, spare_s: int) -> None:
    """Set the running job's time limit to its run time so far + `spare_s` (SLURM's limit counts from the start)."""
    run_s = duration_s(job_fields(slurm_cluster, job)["RunTime"])
    limit_s = run_s + spare_s
    set_time_limit(slurm_cluster, job, f"{limit_s // 60}:{limit_s % 60:02d}")


def extend_time_limit(slurm_cluster, job: str) -> None:
    set_time_limit(slurm_cluster, job, LONG_LIMIT)


def extend_time_limit_once_requeued(slurm_cluster, job: str, restarts: int) -> None:
    """Once SLURM has requeued the job `restarts` times, give it its long time limit back: the shortened one would
    count from the next start."""
    wait_for(lambda: int(job_fields(slurm_cluster, job).get("Restarts", 0)) >= restarts, 300, f"requeue {restarts}")
    extend_time_limit(slurm_cluster, job)


def assert_steps_match(run_probe: Path, baseline_probe: Path) -> int:
    """Every step the run trained (redone ones too) ended with the baseline's weights; returns the last step."""
    run, baseline = step_digests(run_probe), step_digests(baseline_probe)
    assert run, "the run trained no step"
    different = sorted(step for step, digests in run.items() if digests != baseline.get(step))
    assert not different, f"steps {different[:5]} (of {len(run)}) differ from the uninterrupted run"
    return max(run)


def assert_same_final_weights(run_probe: Path, baseline_probe: Path) -> None:
    run = torch.load(run_probe / "final.pt", weights_only=True)
    baseline = torch.load(baseline_probe / "final.pt", weights_only=True)
    assert run.keys() == baseline.keys()
    different = [k for k in run if not torch.equal(run[k], baseline[k])]
    assert not different, f"{len(different)} of {len(run)} tensors of the final weights differ, e.g. {different[:3]}"


LOST_NODES = "n[4-5]"  # the lost-node run has these for itself: the others go on while one of them is lost
LOST_NODE = "n5"
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


def drive_lost_node(submit: Callable[[], Path], baselines: list[Path], slurm_cluster) -> int:
    """Submitted once the baselines are done (at most 24 ranks at once: each needs ~0.5 GB); its second node stops
    answering once it trained past a periodic checkpoint; after SLURM requeued it, the node comes back: the step of
    the newest checkpoint when the node was lost."""
    for baseline in baselines:
        slurm_cluster.wait_for_state(job_of(baseline), ["COMPLETED"], timeout=600)
    run_dir = submit()
    job = job_of(run_dir)
    try:
        wait_for(lambda: newest_saved_step(run_dir) >= PERIODIC_STEPS, 420, "a periodic checkpoint")
        wait_for(trained_past_newest_checkpoint(run_dir), 120, "training past the newest checkpoint")
        saved_before = newest_saved_step(run_dir)
        slurm_cluster.fail_node(LOST_NODE)
        slurm_cluster.wait_for_state(job, ["PENDING"], timeout=90)
    finally:
        slurm_cluster.reboot_node(LOST_NODE)
    slurm_cluster.wait_for_state(job, ["COMPLETED"], timeout=420)
    return saved_before


def drive_preempted(run_dir: Path, slurm_cluster) -> str:
    """Stopped by USR2 during validation (the probe), preempted mid-epoch, `scancel`led, resumed: the new job."""
    job = job_of(run_dir)
    wait_for(lambda: len(segments(run_dir)) == 2, 420, "the requeue after the stop during validation")
    wait_for(trained_in_this_segment(run_dir), 300, "training before the preemption")
    slurm_cluster.preempt_low_jobs_on("n1")
    wait_for(lambda: len(segments(run_dir)) == 3, 300, "SLURM's requeue after the preemption")
    wait_for(trained_in_this_segment(run_dir), 300, "training before scancel")
    slurm_cluster.run("scancel", job)
    slurm_cluster.wait_for_state(job, ["CANCELLED"], timeout=60)
    status = cli("status", str(run_dir))
    assert "CANCELLED" in status.stdout and "zoobot-hpc resume" in status.stdout, status.stdout
    resumed = cli("resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr
    new_job = job_id_of(resumed.stdout)
    slurm_cluster.wait_for_state(new_job, ["COMPLETED"], timeout=420)
    return new_job


def drive_four_ranks(run_dir: Path, slow_file: Path, slurm_cluster) -> None:
    """Preempted mid-epoch, then stopped twice by a real time limit, then let finish."""
    job = job_of(run_dir)
    wait_for(trained_in_this_segment(run_dir), 420, "training before the preemption")
    slurm_cluster.preempt_low_jobs_on("n3")
    for stop in (1, 2):
        wait_for(lambda n=stop: len(segments(run_dir)) == n + 1, 300, f"the start before time-limit stop {stop}")
        wait_for(trained_in_this_segment(run_dir), 300, f"training before time-limit stop {stop}")
        limit_time_from_now(slurm_cluster, job, spare_s=SIGNAL_DELAY_S + 5)
        extend_time_limit_once_requeued(slurm_cluster, job, restarts=stop + 1)
    slow_file.unlink()
    slurm_cluster.wait_for_state(job, ["COMPLETED"], timeout=420)


def drive_time_limit(run_dir: Path, slow_file: Path, slurm_cluster) -> tuple[str, str]:
    """Stopped twice by a real time limit (out of requeues after the second), then resumed at full speed: the
    status after the second stop and the resumed job."""
    job = job_of(run_dir)
    for stop in (1, 2):
        wait_for(lambda n=stop: len(segments(run_dir)) == n, 420, f"start {stop}")
        wait_for(trained_in_this_segment(run_dir), 300, f"training before time-limit stop {stop}")
        limit_time_from_now(slurm_cluster, job, spare_s=SIGNAL_DELAY_S + 5)
        if stop == 1:
            extend_time_limit_once_requeued(slurm_cluster, job, restarts=1)
    with pytest.raises(RuntimeError, match="FAILED"):
        slurm_cluster.wait_for_state(job, ["COMPLETED"], timeout=300)
    status = cli("status", str(run_dir)).stdout
    slow_file.unlink()
    resumed = cli("resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr
    new_job = job_id_of(resumed.stdout)
    slurm_cluster.wait_for_state(new_job, ["COMPLETED"], timeout=420)
    return status, new_job


def drive_own_script(run_dir: Path, job: str, log: Callable[[Path], str], slurm_cluster) -> None:
    """Its time limit meets it mid-training; once requeued, the limit is lengthened so that it finishes."""
    wait_for(lambda: segments(run_dir), 420, "the first start")
    wait_for(trained_in_this_segment(run_dir, log), 300, "training before the time limit")
    limit_time_from_now(slurm_cluster, job, spare_s=20)
    extend_time_limit_once_requeued(slurm_cluster, job, restarts=1)
    slurm_cluster.wait_for_state(job, ["COMPLETED"], timeout=420)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_dataset, slurm_cluster):
    """Every run but the lost-node one, running alongside each other, each scenario with its driver. The `low` ones
    start first: each takes cores of its nodes for itself (`OverSubscribe=NO`); the `debug` ones then fill the
    other cores of the 8 per node."""
    root = tmp_path_factory.mktemp("preemption")
    validation_stop = {
        "class_path": "tests.support.probes.SignalDuringValidation",
        "init_args": {"epoch": 0, "batch": 0, "marker": str(root / "validation-stop.done"), "signum": 12},
    }
    preempted = submit_run(
        root / "preempted",
        demo_dataset,
        "preempted",
        "2x2",
        probe=probe_spec(root / "preempted" / "probe", step_sleep_s=0.5),
        resources__partition="low",
        data__num_workers=1,
        extra_callbacks=[validation_stop],
    )
    slow_files = {name: root / name / "slow" for name in ("four-ranks", "time-limit")}
    for slow_file in slow_files.values():
        slow_file.parent.mkdir(parents=True)
        slow_file.touch()
    four_ranks = submit_run(
        root / "four-ranks",
        demo_dataset,
        "four-ranks",
        "1x4",
        probe=probe_spec(
            root / "four-ranks" / "probe", step_sleep_s=STEP_SLEEP_S, sleep_while_exists=str(slow_files["four-ranks"])
        ),
        resources__partition="low",
        resources__time_min=1,
        resources__signal_delay_s=SIGNAL_DELAY_S,
        resources__max_time_limit_requeues=2,
        resources__sbatch_extra={"time": LONG_LIMIT},
    )
    slurm_cluster.wait_for_state(job_of(preempted), ["RUNNING"], timeout=240)
    slurm_cluster.wait_for_state(job_of(four_ranks), ["RUNNING"], timeout=240)
    baseline = submit_run(root / "baseline", demo_dataset, "baseline", "2x2")
    baseline_1x4 = submit_run(root / "baseline-1x4", demo_dataset, "baseline-1x4", "1x4")
    time_limited = submit_run(
        root / "time-limit",
        demo_dataset,
        "time-limit",
        "2x2",
        probe=probe_spec(
            root / "time-limit" / "probe", step_sleep_s=STEP_SLEEP_S, sleep_while_exists=str(slow_files["time-limit"])
        ),
        resources__time_min=1,
        resources__signal_delay_s=SIGNAL_DELAY_S,
        resources__max_time_limit_requeues=1,
        resources__sbatch_extra={"time": LONG_LIMIT},
        tracking__mode="offline",
    )
    own_script_dir, own_script_job = submit_own_sbatch_script(root / "own-script", demo_dataset, "own-script")
    own_script_log = root / "own-script" / "job.out"

    def read_own_script_log(_run_dir: Path) -> str:
        return own_script_log.read_text() if own_script_log.exists() else ""

    def submit_lost_node() -> Path:
        return submit_run(
            root / "lost-node",
            demo_dataset,
            "lost-node",
            "2x2",
            probe=probe_spec(root / "lost-node" / "probe", step_sleep_s=0.3),
            resources__sbatch_extra={"nodelist": LOST_NODES},
            trainer__checkpoint_every_n_steps=PERIODIC_STEPS,
            trainer__heartbeat_every_s=2.0,
        )

    pool = ThreadPoolExecutor(max_workers=5, thread_name_prefix="driver")
    drivers: dict[str, Future] = {
        "preempted": pool.submit(drive_preempted, preempted, slurm_cluster),
        "four-ranks": pool.submit(drive_four_ranks, four_ranks, slow_files["four-ranks"], slurm_cluster),
        "time-limit": pool.submit(drive_time_limit, time_limited, slow_files["time-limit"], slurm_cluster),
        "own-script": pool.submit(drive_own_script, own_script_dir, own_script_job, read_own_script_log, slurm_cluster),
        "lost-node": pool.submit(drive_lost_node, submit_lost_node, [baseline, baseline_1x4], slurm_cluster),
    }
    yield {
        "root": root,
        "demo_dataset": demo_dataset,
        "drivers": drivers,
        "preempted": preempted,
        "four-ranks": four_ranks,
        "baseline": baseline,
        "baseline-1x4": baseline_1x4,
        "time-limit": time_limited,
        "own-script": (own_script_dir, own_script_job),
        "own-script-log": read_own_script_log,
        "lost-node": root / "lost-node" / "runs" / "lost-node",
    }
    ABORT.set()
    pool.shutdown(wait=True, cancel_futures=True)


def outcome_of(runs, scenario: str):
    """What the scenario's driver returned (its failure, re-raised, if it failed)."""
    return runs["drivers"][scenario].result(timeout=DRIVER_TIMEOUT_S)


def finished_baseline(runs, slurm_cluster, name: str) -> Path:
    slurm_cluster.wait_for_state(job_of(runs[name]), ["COMPLETED"], timeout=600)
    return runs["root"] / name / "probe"


def assert_ends_like_its_baseline(runs, slurm_cluster, scenario: str, baseline_name: str = "baseline") -> None:
    """Every step the scenario trained, and its final weights, equal the uninterrupted run's of its layout."""
    baseline = finished_baseline(runs, slurm_cluster, baseline_name)
    assert assert_steps_match(runs["root"] / scenario / "probe", baseline) == MAX_EPOCHS * 13
    assert_same_final_weights(runs["root"] / scenario / "probe", baseline)


@pytest.mark.timeout(900)
def test_uninterrupted_runs_of_four_ranks_are_bit_identical_whatever_their_layout(runs, slurm_cluster):
    """A determinism regression fails here (and a resume regression does not): 2 x 2 and 1 x 4 train the same."""
    two_by_two = finished_baseline(runs, slurm_cluster, "baseline")
    one_by_four = finished_baseline(runs, slurm_cluster, "baseline-1x4")
    assert assert_steps_match(two_by_two, one_by_four) == MAX_EPOCHS * 13
    assert_same_final_weights(two_by_two, one_by_four)


@pytest.mark.timeout(900)
def test_preempted_2x2_stopped_in_validation_preempted_cancelled_and_resumed_ends_with_uninterrupted_weights(
    runs, slurm_cluster
):
    run_dir = runs["preempted"]
    job = job_of(run_dir)
    new_job = outcome_of(runs, "preempted")
    assert new_job != job
    states = [r["State"].split()[0] for r in slurm_cluster.settled_accounting(job)]  # "CANCELLED by 0"
    assert states == ["REQUEUED", "PREEMPTED", "CANCELLED"], states

    starts = segments(run_dir)
    assert [s.get("stop") for s in starts] == ["SIGUSR2", "SIGTERM", "SIGTERM", None], starts
    assert all(0 <= s["stop_and_save_s"] < GRACE_LIMIT_S for s in starts[1:3]), starts
    assert all(s["resumed_from"].endswith("resume.ckpt") for s in starts[1:])
    assert starts[1]["restart_count"] == 1 and starts[2]["restart_count"] == 2
    logs = every_log_of(run_dir)
    assert "Traceback" not in logs
    assert re.search(r"preemption signal \(SIGUSR2\): saved the training position, validation to rerun", logs)

    assert_ends_like_its_baseline(runs, slurm_cluster, "preempted")


@pytest.mark.timeout(900)
def test_1x4_preempted_then_stopped_twice_by_its_real_time_limit_ends_with_uninterrupted_weights(runs, slurm_cluster):
    run_dir = runs["four-ranks"]
    job = job_of(run_dir)
    outcome_of(runs, "four-ranks")
    starts = segments(run_dir)
    assert [s.get("stop") for s in starts] == ["SIGTERM", "SIGUSR2", "SIGUSR2", None], starts
    assert [s["restart_count"] for s in starts] == [None, 1, 2, 3], starts
    states = [r["State"] for r in slurm_cluster.settled_accounting(job)]
    assert states == ["PREEMPTED", "REQUEUED", "REQUEUED", "COMPLETED"], states
    assert "Traceback" not in log_of(run_dir)

    assert_ends_like_its_baseline(runs, slurm_cluster, "four-ranks", "baseline-1x4")


@pytest.mark.timeout(900)
def test_real_time_limit_stops_2x2_twice_then_status_says_why_and_the_resumed_run_ends_with_uninterrupted_weights(
    runs, slurm_cluster
):
    run_dir = runs["time-limit"]
    status, resumed_job = outcome_of(runs, "time-limit")
    assert "time-limit requeues exhausted" in status, status
    starts = segments(run_dir)
    assert [s.get("stop") for s in starts] == ["SIGUSR2", "SIGUSR2", None], starts
    assert [s["restart_count"] for s in starts[:2]] == [None, 1], starts
    job = starts[0]["job"]
    assert [s["job"] for s in starts] == [job, job, resumed_job], starts
    assert all(s["resumed_from"].endswith("resume.ckpt") for s in starts[1:]), starts
    reached = [0] + [s["stop_step"] for s in starts[:2]]
    assert all(after > before for before, after in itertools.pairwise(reached)), f"stops at steps {reached[1:]}"
    wandb_runs = [read_offline_run(path) for path in offline_run_files(run_dir)]
    assert len(wandb_runs) == 3
    assert {run.run_id for run in wandb_runs} == {f"time-limit-{job}"}

    assert_ends_like_its_baseline(runs, slurm_cluster, "time-limit")


@pytest.mark.timeout(900)
def test_time_limit_sigterm_of_2x2_without_a_signal_before_it_saves_and_requeues(runs, slurm_cluster):
    run_dir, job = runs["own-script"]
    outcome_of(runs, "own-script")
    states = [r["State"] for r in slurm_cluster.settled_accounting(job)]
    assert states == ["REQUEUED", "COMPLETED"], states
    starts = segments(run_dir)
    assert [s.get("stop") for s in starts] == ["SIGTERM", None], starts
    assert starts[1]["resumed_step"] == starts[0]["stop_step"], starts
    log = runs["own-script-log"](run_dir)
    assert "the SIGTERM was the job's time limit" in log, log[-3000:]

    assert_ends_like_its_baseline(runs, slurm_cluster, "own-script")


@pytest.mark.timeout(900)
def test_lost_node_of_2x2_mid_epoch_requeues_and_resumes_from_the_periodic_checkpoint(runs, slurm_cluster):
    run_dir = runs["lost-node"]
    saved_before = outcome_of(runs, "lost-node")
    job = job_of(run_dir)
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

    assert_ends_like_its_baseline(runs, slurm_cluster, "lost-node")
