"""The W&B logger of a job segment: Lightning's, made to survive a W&B service that SLURM's stop signal killed."""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch.loggers import WandbLogger

log = logging.getLogger(__name__)


class SegmentWandbLogger(WandbLogger):
    """Lightning's W&B logger, except that a lost W&B service costs only this segment's remaining W&B output.

    SLURM signals every process of a job step: at preemption the W&B service dies of SIGTERM (it is a Go program
    that unblocks it), and the next W&B call raises `ConnectionResetError`. Training must still reach its save, so
    the first failing call stops W&B logging for the segment with one warning instead of ending the job.
    """

    _lost = False

    def _guarded(self, method: Any, *args: Any, **kwargs: Any) -> None:
        if self._lost:
            return
        try:
            method(*args, **kwargs)
        except Exception as error:
            self._lost = True
            log.warning("W&B logging stopped for this job segment (%s: %s)", type(error).__name__, error)

    def log_metrics(self, *args: Any, **kwargs: Any) -> None:
        self._guarded(super().log_metrics, *args, **kwargs)

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """The model's hyper-parameters, redacted like the run config (`timm_kwargs` may hold a URL password)."""
        from zoobot_hpc.core.redaction import redact_value

        params = redact_value(dict(params) if isinstance(params, dict) else dict(vars(params)))
        self._guarded(super().log_hyperparams, params, *args, **kwargs)

    def after_save_checkpoint(self, *args: Any, **kwargs: Any) -> None:
        self._guarded(super().after_save_checkpoint, *args, **kwargs)

    def finalize(self, *args: Any, **kwargs: Any) -> None:
        self._guarded(super().finalize, *args, **kwargs)

    def finish(self, preempted: bool) -> None:
        """Flush and close this segment's run (marked preempting when the job stopped on a signal)."""
        if self._experiment is None:
            return

        def close() -> None:
            if preempted:
                self.experiment.mark_preempting()
            self.experiment.finish()

        self._guarded(close)
