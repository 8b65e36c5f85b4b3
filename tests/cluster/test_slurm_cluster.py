"""The loopback SLURM cluster of `slurm/cluster.sh`: scheduling, accounting, requeue, and submitit on it."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import submitit

from tests.cluster.slurm_cluster import CLUSTER_SCRIPT, REPO_ROOT, SlurmCluster

pytestmark = pytest.mark.slurm

T = TypeVar("T")


def poll(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Call `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def sbatch(cluster: SlurmCluster, *args: str, cwd: Path) -> str:
    """Submit a batch job; return its id."""
    return cluster.run("sbatch", "--parsable", f"--chdir={cwd}", *args).stdout.strip().split(";")[0]


def sacct_allocation_states(cluster: SlurmCluster, job_id: str) -> list[str]:
    return [record["State"].split()[0] for record in cluster.sacct(job_id, allocations_only=True)]


@pytest.mark.timeout(30)
def test_start_on_running_cluster_is_a_noop(slurm_cluster: SlurmCluster) -> None:
    started = subprocess.run(
        [str(CLUSTER_SCRIPT), "start", "--root", str(slurm_cluster.root)], capture_output=True, text=True
    )
    assert started.returncode == 0, started.stderr
    assert "already running" in started.stdout
    assert os.environ["SLURM_CONF"] == slurm_cluster.env["SLURM_CONF"]
    assert slurm_cluster.nodes[:2] == ("n1", "n2")


@pytest.mark.timeout(60)
def test_batch_job_completes_and_is_accounted(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    submitted_at = time.monotonic()
    job_id = sbatch(slurm_cluster, "--output=out.txt", "--wrap", "echo hello from $SLURMD_NODENAME", cwd=tmp_path)
    slurm_cluster.wait_for_state(job_id, ["RUNNING", "COMPLETED"], timeout=20)
    started_after = time.monotonic() - submitted_at

    poll(lambda: sacct_allocation_states(slurm_cluster, job_id) == ["COMPLETED"], 20, "COMPLETED in sacct")
    assert (tmp_path / "out.txt").read_text().strip() in {f"hello from {node}" for node in slurm_cluster.nodes}
    assert started_after < 10, f"the job took {started_after:.1f}s to start"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("nodes", "tasks"), [(2, 2), (1, 2)])
def test_srun_places_ranks_on_nodes(slurm_cluster: SlurmCluster, nodes: int, tasks: int) -> None:
    step = slurm_cluster.run(
        "srun", f"--nodes={nodes}", f"--ntasks={tasks}", "bash", "-c", "echo $SLURM_PROCID $SLURMD_NODENAME"
    )
    ranks = dict(line.split() for line in step.stdout.splitlines())
    assert sorted(ranks) == [str(rank) for rank in range(tasks)]
    assert len(set(ranks.values())) == nodes
    assert set(ranks.values()) <= set(slurm_cluster.nodes)


@pytest.mark.timeout(60)
def test_array_tasks_run_concurrently(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    script = "date +%s.%N > start_$SLURM_ARRAY_TASK_ID; sleep 2; date +%s.%N > end_$SLURM_ARRAY_TASK_ID"
    job_id = sbatch(slurm_cluster, "--array=0-3", "--output=/dev/null", "--wrap", script, cwd=tmp_path)
    slurm_cluster.wait_for_state(job_id, ["COMPLETED"], timeout=40)

    spans = [
        (float((tmp_path / f"start_{task}").read_text()), float((tmp_path / f"end_{task}").read_text()))
        for task in range(4)
    ]
    most_at_once = max(sum(start <= moment < end for start, end in spans) for moment, _ in spans)
    assert most_at_once >= 2, spans
    poll(
        lambda: sacct_allocation_states(slurm_cluster, job_id) == ["COMPLETED"] * 4,
        20,
        "4 COMPLETED array tasks in sacct",
    )


@pytest.mark.timeout(60)
def test_requeued_job_restarts_with_restart_count(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    script = (
        'echo "${SLURM_RESTART_COUNT:-0} $(date +%s.%N)" >> runs.txt; [ "${SLURM_RESTART_COUNT:-0}" -ge 1 ] || sleep 60'
    )
    job_id = sbatch(slurm_cluster, "--requeue", "--output=/dev/null", "--wrap", script, cwd=tmp_path)
    runs = tmp_path / "runs.txt"
    poll(runs.exists, 20, "the first run")
    requeued_at = time.time()
    slurm_cluster.run("scontrol", "requeue", job_id)
    slurm_cluster.wait_for_state(job_id, ["COMPLETED"], timeout=40)

    counts_and_times = [line.split() for line in runs.read_text().splitlines()]
    assert [count for count, _ in counts_and_times] == ["0", "1"]
    restarted_after = float(counts_and_times[1][1]) - requeued_at
    assert restarted_after < 20, f"the requeued job took {restarted_after:.1f}s to restart"
    poll(
        lambda: sacct_allocation_states(slurm_cluster, job_id) == ["REQUEUED", "COMPLETED"],
        20,
        "REQUEUED then COMPLETED in sacct",
    )


@pytest.mark.timeout(60)
def test_sbatch_template_runs_tasks_and_requeues_on_usr2(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    stub = tmp_path / "bin" / "zoobot-hpc"
    stub.parent.mkdir()
    stub.write_text(
        "#!/bin/bash\n"
        'echo "rank $SLURM_PROCID restart ${SLURM_RESTART_COUNT:-0}: $*" >> calls.txt\n'
        '[ "${SLURM_RESTART_COUNT:-0}" -ge 1 ] && exit 0\n'
        'trap \'[ "$SLURM_PROCID" = 0 ] && scontrol requeue "$SLURM_JOB_ID"; exit 0\' USR2\n'
        "while true; do sleep 0.1; done\n"
    )
    stub.chmod(0o755)
    job_id = slurm_cluster.run(
        "sbatch",
        "--parsable",
        f"--chdir={tmp_path}",
        f"--export=ALL,PATH={stub.parent}:{os.environ['PATH']}",
        "--gpus-per-node=0",
        "--ntasks-per-node=2",
        "--cpus-per-task=1",
        "--time=5",
        str(REPO_ROOT / "slurm" / "sbatch_template.sh"),
        "run.yaml",
        "model.learning_rate=0.1",
    ).stdout.strip()
    calls = tmp_path / "calls.txt"
    poll(lambda: calls.exists() and len(calls.read_text().splitlines()) == 2, 20, "both tasks to start")
    slurm_cluster.run("scancel", "--signal=USR2", job_id)
    slurm_cluster.wait_for_state(job_id, ["COMPLETED"], timeout=40)

    assert sorted(calls.read_text().splitlines()) == [
        f"rank {rank} restart {restart}: train run.yaml model.learning_rate=0.1"
        for rank in (0, 1)
        for restart in (0, 1)
    ]


def report_rank() -> dict[str, int | str]:
    """Runs inside a submitit task: where this task sits in the job."""
    env = submitit.JobEnvironment()
    return {"global_rank": env.global_rank, "num_tasks": env.num_tasks, "node": os.environ["SLURMD_NODENAME"]}


class SleepUntilRequeued(submitit.helpers.Checkpointable):
    """Sleeps on its first run (after touching `started`); returns the restart count once requeued."""

    def __call__(self, started: str) -> int:
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        if restarts:
            return restarts
        Path(started).touch()
        time.sleep(120)
        return 0


@pytest.fixture
def slurm_executor(
    slurm_cluster: SlurmCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> submitit.AutoExecutor:
    """A submitit executor on the cluster whose tasks can import this test module (jobs must ask for requeue:
    the cluster has `JobRequeue=0`)."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    executor.update_parameters(
        timeout_min=5, cpus_per_task=1, slurm_signal_delay_s=30, slurm_additional_parameters={"requeue": True}
    )
    return executor


@pytest.mark.timeout(90)
def test_submitit_multinode_job_sees_global_ranks(
    slurm_cluster: SlurmCluster, slurm_executor: submitit.AutoExecutor
) -> None:
    slurm_executor.update_parameters(nodes=2, tasks_per_node=1)
    job = slurm_executor.submit(report_rank)
    results = job.results()

    assert [result["global_rank"] for result in results] == [0, 1]
    assert {result["num_tasks"] for result in results} == {2}
    assert sorted(result["node"] for result in results) == list(slurm_cluster.nodes[:2])
    poll(lambda: job.get_info(mode="force").get("State") == "COMPLETED", 20, "submitit to see COMPLETED")


@pytest.mark.timeout(90)
def test_submitit_checkpointable_requeues_on_usr2(
    slurm_cluster: SlurmCluster, slurm_executor: submitit.AutoExecutor, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    job = slurm_executor.submit(SleepUntilRequeued(), str(started))
    poll(started.exists, 30, "the first run of the submitit job")
    slurm_cluster.run("scancel", "--signal=USR2", job.job_id)

    assert job.result() == 1
    poll(
        lambda: sacct_allocation_states(slurm_cluster, job.job_id) == ["REQUEUED", "COMPLETED"],
        20,
        "REQUEUED then COMPLETED in sacct",
    )
