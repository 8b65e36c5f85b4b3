"""The learning rate of every layer-decay layer, one history key each (`lr/head`, `lr/top`, ..., `lr/stem`), in
depth order: the layer-decay curve, readable on a dashboard."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


def named_learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """`lr/<name>` of each named layer, head first, stem last (groups of one layer share its name and lr)."""
    groups = sorted(optimizer.param_groups, key=lambda group: -group.get("depth", 0))
    rates: dict[str, float] = {}
    for index, group in enumerate(groups):
        rates.setdefault(f"lr/{group.get('name', f'group-{index}')}", float(group["lr"]))
    return rates


class NamedLearningRates(Callback):
    """Logs `named_learning_rates` of the first optimiser before each logged training step, as Lightning's
    `LearningRateMonitor` does (plain floats, so the logged values are the optimiser's exactly), and puts them in
    `callback_metrics` for the run's summary. The layers' names in depth order are the run's `lr_layers`
    hyper-parameter (dashboards sort keys by name)."""

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_rank == 0 and trainer.optimizers:
            layers = [key.removeprefix("lr/") for key in named_learning_rates(trainer.optimizers[0])]
            for logger in trainer.loggers:
                logger.log_hyperparams({"lr_layers": layers})

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, *args: Any, **kwargs: Any) -> None:
        if not trainer._logger_connector.should_update_logs or not trainer.optimizers:
            return
        rates = named_learning_rates(trainer.optimizers[0])
        step = trainer.fit_loop.epoch_loop._batches_that_stepped
        for logger in trainer.loggers:
            logger.log_metrics(rates, step=step)
        trainer.callback_metrics.update({key: torch.tensor(value, dtype=torch.float64) for key, value in rates.items()})
