"""The whole job on the real loopback SLURM cluster: submit, DDP, job arrays, preemption and requeue, crashes."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from tests.support.jobs import (
    write_test_config,
)
from tests.support.probes import read_probes
from tests.support.wandb_records import offline_run_files, read_offline_run
from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.data.shard_format import read_manifest

pytestmark = pytest.mark.slurm

SECRET = "wandb-test-secret-0123456789abcdef"
SETUP_SECRET = "hf-setup-secret-0123456789abcdef"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real `zoobot-hpc` console script."""
    return subprocess.run(
        [sys.executable, "-m", "zoobot_hpc.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


def submitted_job_ids(output: str) -> list[str]:
    return re.findall(r"^\s+job (\S+)", output, flags=re.MULTILINE)


def probe(out_dir: Path) -> list[dict]:
    return [{"class_path": "tests.support.probes.RankProbe", "init_args": {"out_dir": str(out_dir)}}]


@pytest.mark.timeout(420)
def test_submit_trains_writes_checkpoints_and_a_wandb_offline_run(tmp_path, demo_dataset, slurm_cluster):
    config = write_test_config(
        tmp_path,
        demo_dataset,
        name="single",
        resources__executor="slurm",
        resources__setup=[f"export HF_TOKEN={SETUP_SECRET}"],
    )
    result = cli("submit", str(config), env={"WANDB_API_KEY": SECRET})
    assert result.returncode == 0, result.stderr
    [job_id] = submitted_job_ids(result.stdout)
    slurm_cluster.wait_for_state(job_id, ["COMPLETED"], timeout=360)

    run_dir = tmp_path / "runs" / "single"
    for name in ("best.ckpt", "last.ckpt"):
        assert (run_dir / layout.CHECKPOINTS / name).stat().st_size > 0
    summary = layout.read_json(run_dir / layout.SUMMARY)
    assert summary["epochs"] == 2

    [run_file] = offline_run_files(run_dir)
    run = read_offline_run(run_file)
    assert run.run_id == f"single-{job_id}"
    assert run.job_type == "classifier"
    assert run.config["model"]["learning_rate"] == pytest.approx(1e-3)
    accuracy = run.metric("validation/accuracy")
    assert len(accuracy) == 2
    assert accuracy[-1] == pytest.approx(summary["metrics"]["validation/accuracy"], rel=1e-5)
    assert run.metric("train/images_per_sec")
    assert run.metric("lr/stem")
    assert run.metric("requeue_count")[-1] == 0

    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not leaked, f"the W&B API key was written to {leaked}"
    scripts = list((run_dir / "submitit").glob("*.sh"))
    holding = {p for p in tmp_path.rglob("*") if p.is_file() and SETUP_SECRET.encode() in p.read_bytes()}
    assert scripts and holding == {config, run_dir / layout.CONFIG, *scripts}


@pytest.mark.timeout(480)
def test_ddp_two_nodes_of_two_tasks_split_data_evenly_and_stay_in_sync(tmp_path, demo_dataset, slurm_cluster):
    config = write_test_config(
        tmp_path,
        demo_dataset,
        name="ddp-2x2",
        resources__executor="slurm",
        resources__nodes=2,
        resources__tasks_per_node=2,
        trainer__max_epochs=1,
        trainer__callbacks=probe(tmp_path / "probe"),
    )
    result = cli("submit", str(config))
    assert result.returncode == 0, result.stderr
    [job_id] = submitted_job_ids(result.stdout)
    slurm_cluster.wait_for_state(job_id, ["COMPLETED"], timeout=420)
    ranks = read_probes(tmp_path / "probe")
    assert [r["rank"] for r in ranks] == [0, 1, 2, 3]
    assert all(r["world_size"] == 4 for r in ranks)
    nodes = [r["node"] for r in ranks]
    assert nodes[0] == nodes[1] != nodes[2] == nodes[3], f"global ranks by node: {nodes}"
    assert all(r["hf_hub_offline"] == "1" for r in ranks), "compute nodes must not reach the Hub"
    assert len({r["train_batches"] for r in ranks}) == 1 and ranks[0]["train_batches"] > 0
    assert len({r["val_batches"] for r in ranks}) == 1 and ranks[0]["val_batches"] > 0
    seen = [set(r["train_indices"]) for r in ranks]
    shared = sum(len(a & b) for a, b in itertools.combinations(seen, 2))
    assert shared <= len(ranks) - 1, "ranks share more than DistributedSampler's padding"
    assert set().union(*seen) == set(range(read_manifest(demo_dataset).split_count("train")))
    assert len({(r["weights_sum"], r["weights_abs_sum"]) for r in ranks}) == 1, "the ranks' weights differ"


@pytest.mark.timeout(480)
def test_grid_past_max_array_size_is_two_arrays_of_one_sweep_with_its_own_run_dirs_and_wandb_names(
    tmp_path, demo_dataset, slurm_cluster
):
    config = write_test_config(
        tmp_path,
        demo_dataset,
        name="grid",
        resources__executor="slurm",
        resources__array_parallelism=4,  # two lanes of 2: the four runs at once, as one array ran them
        trainer__max_epochs=1,
        trainer__limit_train_batches=3,
        trainer__limit_val_batches=2,
        data__num_workers=0,
    )
    grid = Path(__file__).resolve().parents[2] / "configs" / "grids" / "lr_layer_decay.yaml"
    with slurm_cluster.configured("MaxArraySize", "2"):
        result = cli("submit", str(config), "--grid", str(grid), "--sweep-name", "lr-ld")
    assert result.returncode == 0, result.stderr
    job_ids = submitted_job_ids(result.stdout)
    assert len(job_ids) == 4
    array_ids = sorted({job.split("_")[0] for job in job_ids})
    assert len(array_ids) == 2, job_ids
    assert sorted(job.split("_")[1] for job in job_ids) == ["0", "0", "1", "1"]
    for array_id in array_ids:
        slurm_cluster.wait_for_state(array_id, ["COMPLETED"], timeout=420)

    sweep_dir = tmp_path / "runs" / "lr-ld"
    sweep = layout.read_json(sweep_dir / layout.SWEEP)
    assert [array["job_id"] for array in sweep["arrays"]] == array_ids
    names = sorted(run["name"] for run in sweep["runs"])
    assert names == sorted(
        f"learning_rate={lr},layer_decay={ld}" for lr in ("0.0003", "0.001") for ld in ("0.5", "0.75")
    )
    for name in names:
        [run_file] = offline_run_files(sweep_dir / name)
        run = read_offline_run(run_file)
        assert (run.group, run.name) == ("lr-ld", name)

    status = cli("status", str(sweep_dir))
    assert status.returncode == 0, status.stderr
    header, *lines = status.stdout.strip().splitlines()
    assert header == f"sweep lr-ld: 4 runs in 2 job arrays ({' '.join(array_ids)}), 4 at a time over all of them"
    assert len(lines) == 4
    assert all("COMPLETED" in line and "epoch=1/1" in line for line in lines), status.stdout


@pytest.mark.timeout(300)
def test_a_crashing_rank_ends_the_job_promptly_with_failure(tmp_path, demo_dataset, slurm_cluster):
    config = write_test_config(
        tmp_path,
        demo_dataset,
        name="crash",
        resources__executor="slurm",
        resources__tasks_per_node=2,
        trainer__callbacks=[{"class_path": "tests.support.probes.CrashOnRank", "init_args": {"rank": 1, "step": 3}}],
    )
    result = cli("submit", str(config))
    [job_id] = submitted_job_ids(result.stdout)
    slurm_cluster.wait_for_state(job_id, ["RUNNING"], timeout=120)
    with pytest.raises(RuntimeError, match="FAILED"):
        slurm_cluster.wait_for_state(job_id, ["COMPLETED"], timeout=180)
    log_text = Path(layout.read_json(tmp_path / "runs" / "crash" / layout.SUBMISSION)["stdout"]).read_text()
    crashed_at = max(datetime.fromisoformat(t) for t in re.findall(r"(\S+ \S+),\d+ INFO zoobot_hpc", log_text))
    [record] = slurm_cluster.sacct(job_id, allocations_only=True)
    ended = datetime.fromisoformat(record["End"])
    assert (ended - crashed_at).total_seconds() < 60, "the surviving rank hung instead of ending the job"
    status = cli("status", str(tmp_path / "runs" / "crash")).stdout
    assert "FAILED" in status and "RuntimeError: rank 1 crashed on purpose at step 3 on rank 1 (host " in status, status


@pytest.mark.timeout(180)
def test_cancel_stops_the_jobs_of_a_run_dir(tmp_path, demo_dataset, slurm_cluster):
    config = write_test_config(tmp_path, demo_dataset, name="to-cancel", resources__executor="slurm")
    [job_id] = submitted_job_ids(cli("submit", str(config)).stdout)
    slurm_cluster.wait_for_state(job_id, ["RUNNING"], timeout=120)
    result = cli("cancel", str(tmp_path / "runs" / "to-cancel"))
    assert result.returncode == 0, result.stderr
    assert job_id in result.stdout
    slurm_cluster.wait_for_state(job_id, ["CANCELLED"], timeout=60)
    status = cli("status", str(tmp_path / "runs" / "to-cancel"))
    assert "CANCELLED" in status.stdout
