"""`shard --submit` on the loopback cluster: a preempted build task is requeued, and the dataset is the one a
build here writes (the same shards, the same manifest checksums)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.cluster.test_slurm_jobs import cli
from tests.support.jobs import wait_for
from zoobot_hpc.data.build import build_dataset
from zoobot_hpc.data.shard_format import MANIFEST_NAME, STATE_DIR, read_manifest
from zoobot_hpc.login.build_status import SUBMISSION

pytestmark = pytest.mark.slurm

ROWS, PER_SHARD, SIZE = 120, 12, 16
PIXELS = 3000  # each row decodes a 3000-px JPEG (~60 ms): a task is still writing when its preemption arrives


def write_catalog(folder: Path) -> Path:
    """ROWS rows over two large smooth JPEGs (small files, real decoding work), with a label."""
    y, x = np.mgrid[0:PIXELS, 0:PIXELS]
    (folder / "images").mkdir(parents=True)
    for index in range(2):
        base = ((np.sin(x / (40.0 + index)) + np.cos(y / 70.0)) * 60 + 128).astype(np.uint8)
        Image.fromarray(np.stack([base, base.T, base[::-1]], -1)).save(folder / f"images/{index}.jpg", quality=90)
    rows = [{"file_loc": f"images/{i % 2}.jpg", "id_str": f"g{i}", "label": i % 3} for i in range(ROWS)]
    catalog = folder / "catalog.csv"
    pd.DataFrame(rows).to_csv(catalog, index=False)
    return catalog


def shard_digests(dataset: Path) -> dict[str, tuple[str, int]]:
    manifest = read_manifest(dataset)
    return {shard.file: (shard.sha256, shard.count) for shards in manifest.splits.values() for shard in shards}


@pytest.mark.timeout(300)
def test_shard_submit_with_a_preempted_task_builds_the_dataset_a_build_here_does(tmp_path, slurm_cluster):
    slurm_cluster.require_preemption()
    catalog = write_catalog(tmp_path)
    shard_bytes = SIZE * SIZE * 3 * PER_SHARD
    out = tmp_path / "job"
    started = time.monotonic()
    result = cli(
        "shard", str(catalog), "--out", str(out), "--label-col", "label", "--size", str(SIZE),
        "--shard-size", str(shard_bytes), "--no-progress", "--submit", "--images-per-task", str(ROWS // 2),
        "--resource", "executor=slurm", "--resource", "partition=low", "--resource", "cpus_per_task=1",
        "--resource", "time_min=5",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads((out / STATE_DIR / SUBMISSION).read_text())
    first, _ = record["tasks"]
    records = out / STATE_DIR / "records"
    wait_for(lambda: any((records / f"{s}.json").exists() for s in first["shards"]), 120, "the first task's shard")
    assert not all((records / f"{s}.json").exists() for s in first["shards"])
    node_list = slurm_cluster.run("squeue", "-h", "-o", "%N", "-j", first["job_id"]).stdout.strip()
    before = {path.name: path.read_text() for path in records.glob("*.json")}
    slurm_cluster.preempt_low_jobs_on(slurm_cluster.run("scontrol", "show", "hostnames", node_list).stdout.split()[0])
    # the build here runs while the preempted task waits out its grace time and its requeue
    build_dataset(
        catalog,
        tmp_path / "here",
        label_cols=["label"],
        size=SIZE,
        shard_size_bytes=shard_bytes,
        num_workers=2,
        progress=False,
    )

    slurm_cluster.wait_for_state(record["finish"]["job_id"], ["COMPLETED"], timeout=240)
    print(f"shard --submit with a preemption took {time.monotonic() - started:.1f} s")
    starts = slurm_cluster.settled_accounting(first["job_id"])
    assert len(starts) >= 2, starts
    log = Path(record["finish"]["stdout"]).parent
    [task_log] = log.glob(f"{first['job_id']}_0_log.out")
    assert "stop signal after" in task_log.read_text()
    assert (out / MANIFEST_NAME).exists() and not (out / STATE_DIR / "units").exists()
    assert {name: (records / name).read_text() for name in before} == before  # not written again by the requeue
    assert shard_digests(out) == shard_digests(tmp_path / "here")
    assert read_manifest(out).splits == read_manifest(tmp_path / "here").splits
