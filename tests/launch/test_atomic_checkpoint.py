"""A process killed hard (SIGKILL) while it writes a checkpoint leaves the previous checkpoint loadable."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch

from zoobot_hpc.checkpointing import is_loadable_checkpoint, newest_valid_checkpoint

WRITER = """
import sys, torch
from zoobot_hpc.checkpointing import AtomicCheckpointIO
io, target = AtomicCheckpointIO(), sys.argv[1]
version = 0
while True:
    io.save_checkpoint({"global_step": version, "weights": torch.full((24_000_000,), float(version))}, target)
    version += 1
"""


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kill_after_s", [0.0, 0.1])
def test_sigkill_during_checkpoint_write_keeps_previous_checkpoint(tmp_path, kill_after_s):
    target = tmp_path / "checkpoints" / "resume.ckpt"
    tmp = target.with_name(target.name + ".tmp")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target)])
    try:
        deadline = time.monotonic() + 120
        while not (target.exists() and tmp.exists() and tmp.stat().st_size > 0):
            assert writer.poll() is None, "the writer died"
            assert time.monotonic() < deadline, "no checkpoint write was observed"
            time.sleep(0.005)
        time.sleep(kill_after_s)
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert is_loadable_checkpoint(target)
    checkpoint = torch.load(target, map_location="cpu", weights_only=True)
    assert torch.all(checkpoint["weights"] == float(checkpoint["global_step"]))
    assert newest_valid_checkpoint(target.parent) == target
