"""`trainer.stall_timeout_s` sets the process groups' timeout (DDP's, the flag groups', NCCL's), so that no job
waits Lightning's 30 minutes (or NCCL's 10) in a collective whose peer hung."""

from __future__ import annotations

import os
from datetime import timedelta

from tests.support.trained_runs import run_config
from zoobot_hpc.runtime.process_groups import GROUP_TIMEOUT_ENV, NCCL_ENV, group_timeout, group_timeout_s
from zoobot_hpc.training.run import make_trainer


def test_the_stall_timeout_sets_the_ddp_flag_group_and_nccl_timeouts(tmp_path, monkeypatch):
    for name in (GROUP_TIMEOUT_ENV, *NCCL_ENV):
        monkeypatch.delenv(name, raising=False)
    config = run_config(tmp_path / "data", tmp_path, resources={"tasks_per_node": 2}, trainer={"stall_timeout_s": 7})
    trainer = make_trainer(config, callbacks=[], cluster_environment=None, interactive=False, logger=False)
    expected = timedelta(seconds=group_timeout_s(7))
    assert trainer.strategy._timeout == expected, "DDP's group keeps Lightning's 30 min default"
    assert expected > timedelta(seconds=2 * 7), "a collective must outwait the stall watchdog"
    assert group_timeout() == expected, "the host-side flag groups would keep torch's default"
    assert os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    assert float(os.environ["TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC"]) > expected.total_seconds()
