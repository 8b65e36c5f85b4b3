"""`shard --submit` with the local executor: the same dataset as a build here, the manifest by the last step."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.support.jobs import wait_for
from tests.unit.data.conftest import write_catalog_images
from zoobot_hpc.cli import main
from zoobot_hpc.data.build import build_dataset
from zoobot_hpc.data.shard_format import MANIFEST_NAME, STATE_DIR, read_manifest
from zoobot_hpc.login.build_status import SUBMISSION
from zoobot_hpc.runtime.build_job import pack_tasks

OPTIONS = {"label_cols": ["label", "redshift"], "size": 16, "shard_size_bytes": 16 * 16 * 3 * 5}


def shard_digests(dataset: Path) -> dict[str, tuple[str, int]]:
    manifest = read_manifest(dataset)
    return {shard.file: (shard.sha256, shard.count) for shards in manifest.splits.values() for shard in shards}


def test_shards_are_packed_into_tasks_of_about_equal_images():
    counts = [100, 100, 100, 40, 30, 20, 10, 5]
    groups = pack_tasks(counts, 3)
    assert sorted(index for group in groups for index in group) == list(range(len(counts)))
    loads = [sum(counts[index] for index in group) for group in groups]
    assert max(loads) - min(loads) <= max(counts[3:])
    assert all(group == sorted(group) for group in groups)
    assert pack_tasks(counts, 20) == [[index] for index in range(len(counts))]
    assert pack_tasks([7], 0) == [[0]]


def ended_status(out: Path) -> list[str] | None:
    """`status` of a build once its last step has ended."""
    status = CliRunner().invoke(main, ["status", str(out)])
    assert status.exit_code == 0, status.output
    lines = status.output.strip().splitlines()
    return lines if "last step" in lines[-1] and " ENDED " in lines[-1] else None


@pytest.mark.timeout(180)
def test_shard_submit_with_the_local_executor_builds_the_same_dataset(tmp_path: Path):
    catalog = tmp_path / "catalog.csv"
    write_catalog_images(tmp_path, 40).to_csv(catalog, index=False)
    here = build_dataset(catalog, tmp_path / "here", progress=False, **OPTIONS)
    out = tmp_path / "job"
    args = ["shard", str(catalog), "--out", str(out), "--label-col", "label", "--label-col", "redshift"]
    args += ["--size", "16", "--shard-size", str(OPTIONS["shard_size_bytes"]), "--no-progress"]
    resources = ["--resource", "executor=local", "--resource", "cpus_per_task=1", "--resource", "time_min=5"]
    started = time.monotonic()
    result = CliRunner().invoke(main, [*args, "--submit", "--images-per-task", "12", *resources])
    assert result.exit_code == 0, result.output
    record = json.loads((out / STATE_DIR / SUBMISSION).read_text())
    assert len(record["tasks"]) == 4 and len(here.splits["train"]) >= 5
    wait_for(lambda: (out / MANIFEST_NAME).exists(), timeout=150, what="the last step's manifest")
    print(f"local shard --submit took {time.monotonic() - started:.1f} s")
    assert shard_digests(out) == shard_digests(tmp_path / "here")
    assert read_manifest(out).splits == here.splits
    lines = wait_for(lambda: ended_status(out), timeout=60, what="the last step's end")
    head, *tasks, _ = lines
    shards = sum(len(task["shards"]) for task in record["tasks"])
    assert head == f"build of {out}: {shards}/{shards} shards written, manifest written"
    assert len(tasks) == 4 and all("ENDED" in line for line in tasks), lines


@pytest.mark.timeout(120)
def test_inspect_checksums_submit_with_the_local_executor_writes_the_verdict(tmp_path: Path):
    from zoobot_hpc.data.demo import write_demo_dataset
    from zoobot_hpc.runtime.inspect_job import result_path

    dataset = tmp_path / "demo"
    write_demo_dataset(dataset, n_galaxies=60, image_size=16, seed=0, shard_size_bytes=16 * 16 * 3 * 20)
    resources = ["--resource", "executor=local", "--resource", "cpus_per_task=2", "--resource", "time_min=5"]
    refused = CliRunner().invoke(main, ["inspect", str(dataset), "--submit", *resources])
    assert refused.exit_code == 1 and "add --checksums" in refused.output
    result = CliRunner().invoke(main, ["inspect", str(dataset), "--checksums", "--submit", *resources])
    assert result.exit_code == 0, result.output
    wait_for(lambda: result_path(dataset).exists(), timeout=100, what="the checksum job's verdict")
    verdict = json.loads(result_path(dataset).read_text())
    assert verdict["valid"] and "checksums verified" in verdict["summary"]
    again = CliRunner().invoke(main, ["inspect", str(dataset), "--checksums"])
    assert again.exit_code == 0 and "checksums: 0 shard(s) hashed now" in again.output


@pytest.mark.timeout(120)
def test_demo_data_submit_with_the_local_executor_writes_the_dataset_written_here(tmp_path: Path):
    from zoobot_hpc.data.demo import write_demo_dataset

    write_demo_dataset(tmp_path / "here", n_galaxies=60, image_size=16, seed=3, shard_size_bytes=16 * 16 * 3 * 20)
    out = tmp_path / "job"
    resources = ["--resource", "executor=local", "--resource", "cpus_per_task=1", "--resource", "time_min=5"]
    args = ["demo-data", str(out), "--n", "60", "--size", "16", "--seed", "3", "--shard-size", str(16 * 16 * 3 * 20)]
    result = CliRunner().invoke(main, [*args, "--submit", *resources])
    assert result.exit_code == 0, result.output
    wait_for(lambda: (out / MANIFEST_NAME).exists(), timeout=100, what="the demo job's manifest")
    assert shard_digests(out) == shard_digests(tmp_path / "here")


def test_a_second_build_is_refused_while_the_first_ones_job_runs(tmp_path: Path):
    """The recorded build job is a live local controller (a stand-in process with its command line)."""
    from zoobot_hpc.backends.local import process_start_ticks
    from zoobot_hpc.core import run_dir as layout

    catalog = tmp_path / "catalog.csv"
    write_catalog_images(tmp_path, 8).to_csv(catalog, index=False)
    out = tmp_path / "dataset"
    controller = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-m", "submitit.local._local"])
    try:
        job = {"job_id": str(controller.pid), "submitit_folder": str(tmp_path), "process_start": None}
        job["process_start"] = process_start_ticks(controller.pid)
        (out / STATE_DIR).mkdir(parents=True)
        layout.write_json(out / STATE_DIR / SUBMISSION, {"executor": "local", "tasks": [job], "finish": {}})
        refused = CliRunner().invoke(main, ["shard", str(catalog), "--out", str(out), "--label-col", "label"])
        assert refused.exit_code == 1
        assert refused.output.strip() == (
            f"Error: {out}: its build job {controller.pid} is queued or running (RUNNING): one dataset, one build "
            "(wait for it to end)"
        )
    finally:
        controller.kill()
        controller.wait()
    built = CliRunner().invoke(main, ["shard", str(catalog), "--out", str(out), "--label-col", "label", "--size", "8"])
    assert built.exit_code == 0, built.output
