"""A training process killed hard (SIGKILL) while it writes a checkpoint leaves the previous checkpoint loadable."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch

from zoobot_hpc.training.checkpointing import RESUME_CHECKPOINT, is_loadable_checkpoint, newest_valid_checkpoint

WRITER = """
import sys, torch, lightning as L
from zoobot_hpc.training.checkpointing import AtomicCheckpointIO, ResumeCheckpointer

class Big(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(24_000_000))

    def training_step(self, batch, batch_idx):
        return (self.w[:8] * batch).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)

trainer = L.Trainer(
    max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    plugins=[AtomicCheckpointIO()], callbacks=[ResumeCheckpointer(sys.argv[1], every_n_steps=1)],
)
trainer.fit(Big(), torch.utils.data.DataLoader(torch.ones(100_000, 8), batch_size=1))
"""


def _writing(target) -> bool:
    """True while a temp file of `target` (a name unique to its writer) holds data."""
    for tmp in target.parent.glob(target.name + ".tmp*"):
        try:
            if tmp.stat().st_size > 0:
                return True
        except FileNotFoundError:
            continue
    return False


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kill_after_s", [0.0, 0.1])
def test_sigkill_during_checkpoint_write_keeps_previous_checkpoint(tmp_path, kill_after_s):
    target = tmp_path / "checkpoints" / RESUME_CHECKPOINT
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target.parent)])
    try:
        deadline = time.monotonic() + 120
        while not (target.exists() and _writing(target)):
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
    step = checkpoint["global_step"]
    assert step >= 1
    assert torch.all(checkpoint["state_dict"]["w"][:8] == -0.5 * step), "weights and step from different saves"
    assert newest_valid_checkpoint(target.parent) == target
