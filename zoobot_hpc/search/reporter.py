"""The Lightning callback of a search trial: reports the validation metric every epoch, prunes, marks W&B."""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from zoobot_hpc.runtime.preemption import PreemptedStop
from zoobot_hpc.search.study import reporting_trial
from zoobot_hpc.training.segment_logger import SegmentWandbLogger

log = logging.getLogger(__name__)


class TrialReporter(Callback):
    """Reports the monitored validation metric to the trial after every epoch (step = epochs completed); when the
    pruner says stop, every rank stops after this epoch. Puts the trial's number and state into W&B."""

    def __init__(self, study: Any, trial: Any, monitor: str) -> None:
        self.trial = reporting_trial(study, trial)
        self.number = trial.number
        self.study_name = study.study_name
        self.monitor = monitor
        self.pruned = False

    def _wandb_runs(self, trainer: Trainer) -> list[Any]:
        if trainer.global_rank:
            return []
        return [lg.experiment for lg in trainer.loggers if isinstance(lg, SegmentWandbLogger)]

    def _mark(self, trainer: Trainer, state: str) -> None:
        for run in self._wandb_runs(trainer):
            run.config.update({"trial/state": state}, allow_val_change=True)
            run.summary.update({"trial/number": self.number, "trial/state": state})
            if state == "PRUNED":
                run.tags = (*run.tags, "pruned")

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for run in self._wandb_runs(trainer):
            run.config.update(
                {"trial/number": self.number, "trial/study": self.study_name, "trial/state": "RUNNING"},
                allow_val_change=True,
            )

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        prune = False
        if trainer.global_rank == 0:
            value = trainer.callback_metrics.get(self.monitor)
            if value is not None:
                self.trial.report(float(value), step=trainer.current_epoch + 1)
                prune = self.trial.should_prune()
        if trainer.strategy.broadcast(prune, src=0) and trainer.current_epoch + 1 < trainer.max_epochs:
            self.pruned = True
            trainer.should_stop = True
            log.info("trial %d pruned after epoch %d", self.number, trainer.current_epoch + 1)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._mark(trainer, "PRUNED" if self.pruned else "COMPLETE")

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, PreemptedStop):
            self._mark(trainer, "FAIL")
