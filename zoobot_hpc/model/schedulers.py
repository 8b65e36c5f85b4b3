"""timm learning-rate schedulers from `scheduler_kwargs` (the keywords of timm's `create_scheduler_v2`).

timm's contract: `scheduler.step(epoch + 1)` at the end of each epoch, or `scheduler.step_update(num_updates)`
after each optimiser step; only the call matching `step_on_epochs` acts.
"""

import difflib
import inspect
import math
from collections.abc import Mapping
from typing import Any

import torch
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler

SCHEDULER_KEYS = frozenset(inspect.signature(create_scheduler_v2).parameters) - {"optimizer"}
UNSUPPORTED_SCHEDULERS = frozenset({"plateau"})


def steps_on_epochs(scheduler_kwargs: Mapping[str, Any]) -> bool:
    """Whether the schedule advances per epoch (True, timm's default) or per optimiser update."""
    return bool(scheduler_kwargs.get("step_on_epochs", True))


def validate_scheduler_kwargs(scheduler_kwargs: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Check `scheduler_kwargs` against `create_scheduler_v2` (keys and a dry run); return a plain copy."""
    if scheduler_kwargs is None:
        return None
    if not isinstance(scheduler_kwargs, Mapping):
        raise ValueError(f"scheduler_kwargs={scheduler_kwargs!r} must be a dict of create_scheduler_v2 keywords")
    kwargs = dict(scheduler_kwargs)
    unknown = sorted(set(kwargs) - SCHEDULER_KEYS)
    if unknown:
        close = difflib.get_close_matches(unknown[0], SCHEDULER_KEYS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(
            f"scheduler_kwargs has unknown keys {unknown}; {hint}create_scheduler_v2 takes {sorted(SCHEDULER_KEYS)}"
        )
    if kwargs.get("sched") in UNSUPPORTED_SCHEDULERS:
        raise ValueError(f"scheduler_kwargs sched={kwargs['sched']!r} is not supported (timm deprecates it)")
    dummy = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    create_scheduler(dummy, kwargs, updates_per_epoch=kwargs.get("updates_per_epoch") or 1)
    return kwargs


def create_scheduler(
    optimizer: torch.optim.Optimizer,
    scheduler_kwargs: Mapping[str, Any],
    updates_per_epoch: int | None = None,
) -> Scheduler | None:
    """timm's scheduler for `optimizer` (None for sched='none'); it sets each group's lr to value*lr_scale."""
    kwargs = dict(scheduler_kwargs)
    if updates_per_epoch is not None:
        kwargs["updates_per_epoch"] = updates_per_epoch
    try:
        scheduler, _ = create_scheduler_v2(optimizer, **kwargs)
    except (AssertionError, TypeError, ValueError, ZeroDivisionError) as error:
        raise ValueError(f"scheduler_kwargs={dict(scheduler_kwargs)!r} rejected by timm: {error}") from error
    return scheduler


def updates_per_epoch(batches: int | float, limit_train_batches: int | float | None, accumulation: int) -> int:
    """Optimiser steps in one epoch of `batches` training batches (per rank), cut by Lightning's
    `limit_train_batches` (a count or a fraction) and divided by the gradient accumulation."""
    if isinstance(limit_train_batches, int):
        batches = min(batches, limit_train_batches)
    elif limit_train_batches is not None:
        batches = int(batches * limit_train_batches)
    if not math.isfinite(batches):
        raise ValueError(
            "scheduler_kwargs step_on_epochs=False needs updates_per_epoch (the train dataloader has no length)"
        )
    return max(1, math.ceil(batches / accumulation))


def set_schedule_position(scheduler: Scheduler, epoch: int, num_updates: int) -> None:
    """Set the lrs for `epoch` (per-epoch schedules) or after `num_updates` updates (per-update schedules)."""
    if scheduler.t_in_epochs:
        scheduler.step(epoch=epoch)
    else:
        scheduler.step_update(num_updates=num_updates)
