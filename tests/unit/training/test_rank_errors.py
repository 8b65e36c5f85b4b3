"""The first failing rank's error is the one `status` shows: rank 1's out-of-memory, not rank 0's lost peer."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.support.jobs import segments, write_test_config
from tests.support.wandb_records import offline_run_files, read_offline_run
from zoobot_hpc.cli import main
from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.core.job_result import RANK_ERRORS, record_rank_error, root_cause


def test_the_root_cause_is_the_earliest_error_that_is_not_a_lost_peer(tmp_path):
    start = time.time()
    lines = {
        0: "RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [1.2.3.4]:5",
        1: "ValueError: a bad batch",
        2: "DistBackendError: NCCL communicator was aborted",
    }
    (tmp_path / RANK_ERRORS).mkdir()
    for order, rank in enumerate((2, 1, 0)):  # the lost peers' symptoms may come first
        record = {"job_id": "42", "rank": rank, "host": f"node{rank}", "time": start + order, "error": lines[rank]}
        layout.write_json(tmp_path / RANK_ERRORS / f"42-rank{rank}.json", record)
    assert root_cause(tmp_path, "42", start) == "ValueError: a bad batch on rank 1 (host node1)"
    assert root_cause(tmp_path, "42", start + 3) is None  # an earlier start's records are not this start's
    record_rank_error(tmp_path, "43", 0, lines[0])
    assert root_cause(tmp_path, "43", start).startswith("RuntimeError: [")  # only symptoms: the earliest


@pytest.mark.timeout(300)
def test_rank_1_out_of_memory_is_what_status_shows_and_the_job_is_not_requeued(tmp_path, demo_dataset):
    oom = {"class_path": "tests.support.probes.OutOfMemoryOnRank", "init_args": {"rank": 1, "step": 3}}
    config = write_test_config(
        tmp_path,
        demo_dataset,
        name="oom",
        resources__executor="local",
        resources__tasks_per_node=2,
        data__num_workers=0,
        tracking__galaxy_table=0,
        trainer__callbacks=[oom],
    )
    followed = CliRunner().invoke(main, ["submit", str(config), "--follow"]).output
    run_dir = tmp_path / "runs" / "oom"
    last = followed.strip().splitlines()[-1]
    assert last.startswith("the run did not finish (OutOfMemoryError: out of memory at data.batch_size=8"), last
    assert "on rank 1 (host " in last, last

    status = CliRunner().invoke(main, ["status", str(run_dir)]).output
    assert "FAILED" in status, status
    assert "OutOfMemoryError: out of memory at data.batch_size=8 per rank on the CPU" in status, status
    assert "on rank 1 (host " in status and "trainer.accumulate_grad_batches=1" in status, status
    assert "bf16-mixed" in status and "Connection closed" not in status, status
    assert len(segments(Path(run_dir))) == 1, "the out-of-memory job was started again"
    [offline] = offline_run_files(Path(run_dir))
    summary_error = read_offline_run(offline).summary.get("error", "")
    assert summary_error.startswith("OutOfMemoryError: out of memory at data.batch_size=8"), summary_error
    assert "on rank 1 (host " in summary_error, summary_error
    assert re.search(r"\(\d+\.\d [MG]B free\)", status), status  # the space left where the run writes
