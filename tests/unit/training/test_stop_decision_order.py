"""The step's stop-and-save decision (`ResumeCheckpointer.on_train_batch_end`) runs after every other callback's hook
of that step, wherever the callback list puts it: a callback listed after it still sees the step a stop happens at."""

from __future__ import annotations

import signal

import lightning as L
import pytest
import torch

from zoobot_hpc.core.stop_signals import PreemptionFlag
from zoobot_hpc.runtime.preemption import PreemptedStop
from zoobot_hpc.training.checkpointing import RESUME_CHECKPOINT, AtomicCheckpointIO, ResumeCheckpointer

STOP_AT_STEP = 3


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(4))

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return (self.w * batch).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class StepsSeen(L.Callback):
    """Records each step's end; raises the stop flag (as a signal handler would) once STOP_AT_STEP is reached."""

    def __init__(self, flag: PreemptionFlag) -> None:
        self.flag = flag
        self.steps: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append(trainer.global_step)
        if trainer.global_step == STOP_AT_STEP:
            self.flag.signals.add(signal.SIGTERM)


def test_a_callback_listed_after_the_checkpointer_sees_the_stop_step(tmp_path):
    flag = PreemptionFlag()
    resume = ResumeCheckpointer(tmp_path, flag=flag)
    seen = StepsSeen(flag)
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        plugins=[AtomicCheckpointIO()],
        callbacks=[resume, seen],
    )
    with pytest.raises(PreemptedStop):
        trainer.fit(Tiny(), torch.utils.data.DataLoader(torch.ones(20, 4), batch_size=1))
    assert trainer.callbacks[-1] is resume
    assert seen.steps == [1, 2, STOP_AT_STEP]
    assert flag.stopped is not None and flag.stopped.step == STOP_AT_STEP
    assert torch.load(tmp_path / RESUME_CHECKPOINT, weights_only=False)["global_step"] == STOP_AT_STEP
