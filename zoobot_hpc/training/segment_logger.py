"""The W&B logger of a job segment: Lightning's, made to survive a W&B service that SLURM's stop signal killed,
and to continue the history of the run's earlier segments instead of overwriting it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.core.redaction import redact_value
from zoobot_hpc.core.segment_records import segment_records, segment_totals

log = logging.getLogger(__name__)


class SegmentWandbLogger(WandbLogger):
    """Lightning's W&B logger, except that a lost W&B service costs only this segment's remaining W&B output,
    and that every segment's history lands after the earlier segments' (one unbroken history across requeues).

    SLURM signals every process of a job step: at preemption the W&B service dies of SIGTERM (it is a Go program
    that unblocks it), and the next W&B call raises `ConnectionResetError`. Training must still reach its save, so
    the first failing call stops W&B logging for the segment with one warning instead of ending the job.

    Each start of a job is its own offline W&B run folder with the same run id, and `zoobot-hpc sync` uploads them
    in order into one run. W&B's step (`_step`) is the trainer's global step, shifted past the last step that an
    earlier segment logged when this one resumed from before it (work redone after a lost node): no row of an
    earlier segment is overwritten and every step is logged once. `trainer/global_step` stays the charts' x-axis.
    """

    _lost = False

    def __init__(self, *args: Any, run_dir: Path | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._step_offset: int | None = None
        self._last_step = -1

    def _guarded(self, method: Any, *args: Any, **kwargs: Any) -> None:
        if self._lost:
            return
        try:
            method(*args, **kwargs)
        except Exception as error:
            self._lost = True
            log.warning("W&B logging stopped for this job segment (%s: %s)", type(error).__name__, error)

    def wandb_step(self, global_step: int) -> int:
        """The W&B step of a trainer step in this segment: after every step any earlier segment logged."""
        if self._step_offset is None:
            from zoobot_hpc.training.wandb_history import last_step_before, offline_segments

            earlier = -1
            if self.run_dir is not None:
                earlier = last_step_before(offline_segments(self.run_dir), Path(self.experiment.dir).parent)
            earlier = max(earlier, int(getattr(self.experiment, "starting_step", 0) or 0) - 1)
            self._step_offset = max(0, earlier + 1 - global_step)
            self._record_segments()
        return max(global_step + self._step_offset, self._last_step)

    def _log_row(self, row: dict[str, Any], step: int | None) -> None:
        if step is None:
            self.experiment.log(row)
            return
        wandb_step = self.wandb_step(step)
        self.experiment.log({**row, "trainer/global_step": step}, step=wandb_step)
        self._last_step = wandb_step

    @rank_zero_only
    def log_metrics(self, metrics: Any, step: int | None = None) -> None:
        self._guarded(self._log_row, dict(metrics), step)

    @rank_zero_only
    def log_row(self, build: Callable[[], dict[str, Any]], step: int) -> None:
        """Log the W&B objects (tables, plots) that `build()` makes at a trainer step, on this segment's steps;
        building them is guarded too, so that a figure that fails costs only the figure."""
        self._guarded(lambda: self._log_row(build(), step))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """The model's hyper-parameters, redacted like the run config (`timm_kwargs` may hold a URL password)."""
        params = redact_value(dict(params) if isinstance(params, dict) else dict(vars(params)))
        self._guarded(super().log_hyperparams, params, *args, **kwargs)

    def _record_segments(self, finished: bool = False) -> None:
        """Put the run's per-segment records in its config and their totals in its summary."""
        if self.run_dir is None:
            return
        records = segment_records(layout.read_segments(self.run_dir), finished)
        self.experiment.config.update({"segments": redact_value(records)}, allow_val_change=True)
        self.experiment.summary.update(segment_totals(records))

    def update_summary(self, values: dict[str, Any]) -> None:
        """Set values in the run's summary (guarded)."""
        self._guarded(lambda: self.experiment.summary.update(values))

    def after_save_checkpoint(self, *args: Any, **kwargs: Any) -> None:
        self._guarded(super().after_save_checkpoint, *args, **kwargs)

    def finalize(self, *args: Any, **kwargs: Any) -> None:
        self._guarded(super().finalize, *args, **kwargs)

    def finish(self, preempted: bool) -> None:
        """Flush and close this segment's run (marked preempting when the job stopped on a signal), with the
        segment records as they stand at its end."""
        if self._experiment is None:
            return

        def close() -> None:
            self._record_segments(finished=not preempted)
            if preempted:
                self.experiment.mark_preempting()
            self.experiment.finish()

        self._guarded(close)
