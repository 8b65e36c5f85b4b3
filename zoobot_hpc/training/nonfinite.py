"""Non-finite training: how a step's loss and gradients are checked, and the one line a run stops with.

`ResumeCheckpointer` records every step on the device (no host sync) and reads the record every
FINITE_CHECK_EVERY_N_STEPS steps, before every save and at each epoch's end, in one all-reduce of the ranks: every
rank stops at the same step, nothing from the first non-finite step on is ever saved, and the newest checkpoint
(finite) stays the one to resume from.

With `trainer.nonfinite: skip` a step whose gradients are not finite is skipped instead: its gradients are
dropped before the optimiser step (no parameter or moment moves), and counted. The decision needs no vote: the
gradients it reads are the all-reduced ones, the same on every rank (a NaN loss on one rank makes them NaN on
all), so every rank skips the same steps. It costs one host sync per step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch


class NonFiniteTraining(RuntimeError):
    """Raised on every rank at the same step once any rank's loss or gradients were NaN or infinite."""


FINITE_CHECK_EVERY_N_STEPS = 10  # and before every save and at each epoch's end: one host sync per check
SKIPPED_METRIC = "train/skipped_nonfinite_batches"  # trainer.nonfinite=skip: the optimiser steps skipped so far


def _loss_of(outputs: Any) -> torch.Tensor | None:
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    return loss.detach() if isinstance(loss, torch.Tensor) else None


class FiniteWatch:
    """Whether each training step's loss and gradients were finite, recorded on the device without a host sync;
    `first_bad()` reads the steps since the last call at once. Keeps each step's ids and labels (not its images)
    so that the step which went wrong can be named."""

    def __init__(self, skip: bool = False) -> None:
        self.skip = skip
        self.skipped = 0  # optimiser steps skipped (skip mode), over the whole run
        self._skipping = False
        self._boundary = False
        self._window = 0  # steps recorded since the last optimiser step (an accumulation window's batches)
        self._grads_ok: torch.Tensor | None = None
        self._steps: list[tuple[int, torch.Tensor, torch.Tensor, dict[str, Any]]] = []

    def record_gradients(self, module: torch.nn.Module) -> None:
        """Before the optimiser step: are the (already all-reduced, equal on every rank) gradients finite. In
        skip mode, drop them when they are not (the optimiser then skips every parameter), with the record of the
        accumulation window's batches."""
        self._boundary = True
        grads = [p.grad.detach() for p in module.parameters() if p.grad is not None]
        if not grads:
            return
        finite = torch.isfinite(torch.nn.utils.get_total_norm(grads))
        if self.skip and not bool(finite):
            for parameter in module.parameters():
                parameter.grad = None
            del self._steps[max(0, len(self._steps) - self._window) :]
            self.skipped += 1
            self._skipping = True
            return
        self._grads_ok = finite

    def record_step(self, step: int, outputs: Any, batch: Any) -> None:
        boundary, self._boundary = self._boundary, False
        self._window = 0 if boundary else self._window + 1
        if self._skipping:  # skipped whole: nothing of it reaches the weights
            self._skipping = False
            return
        loss, grads_ok = _loss_of(outputs), self._grads_ok
        device = loss.device if loss is not None else grads_ok.device if grads_ok is not None else torch.device("cpu")
        finite = torch.ones((), dtype=torch.bool, device=device)
        loss_ok = torch.isfinite(loss).all() if loss is not None else finite
        grads_ok = grads_ok.to(device) if grads_ok is not None else finite
        labels = {k: v for k, v in batch.items() if k != "image"} if isinstance(batch, Mapping) else {}
        self._steps.append((step, loss_ok, grads_ok, labels))
        self._grads_ok = None

    def first_bad(self) -> tuple[int | None, bool, dict[str, Any]]:
        """The first step recorded since the last call whose loss or gradients were not finite (None: all were),
        whether its loss was, and its ids and labels; forgets the steps."""
        steps, self._steps = self._steps, []
        if not steps:
            return None, False, {}
        flags = torch.stack([torch.stack([loss_ok, grads_ok]) for _, loss_ok, grads_ok, _ in steps]).tolist()
        for (step, *_, labels), (loss_ok, grads_ok) in zip(steps, flags, strict=True):
            if not (loss_ok and grads_ok):
                return step, not loss_ok, labels
        return None, False, {}


def suspect_ids(batch: Any, limit: int = 8) -> str:
    """For the stop line of a rank whose loss was not finite: the ids of the batch's galaxies whose labels are not
    finite, else the first `limit` ids of the batch."""
    if not isinstance(batch, Mapping) or "id" not in batch:
        return "(no ids in the batch)"
    ids = [str(value) for value in batch["id"]]
    bad = torch.zeros(len(ids), dtype=torch.bool)
    labels = {key: value for key, value in batch.items() if key not in ("image", "index", "id")}
    for values in labels.values():
        if isinstance(values, torch.Tensor) and values.is_floating_point() and values.shape[:1] == (len(ids),):
            bad |= ~torch.isfinite(values.detach().cpu().reshape(len(ids), -1)).all(dim=1)
    if bad.any():
        return f"non-finite labels at ids {[ids[i] for i in bad.nonzero().flatten().tolist()][:limit]}"
    return f"batch ids {ids[:limit]}"


def nonfinite_message(step: int, found_at: int, epoch: int, ranks: Sequence[int], resume_from: str | None) -> str:
    """The one line a run stops with after a non-finite step (found at step `found_at`); `ranks`: those whose own
    loss was not finite (none: the gradients overflowed, on every rank alike)."""
    where = f"rank {', '.join(str(rank) for rank in ranks)}" if ranks else "every rank (gradients only)"
    newest = f"the newest checkpoint ({resume_from}) is finite" if resume_from else "no checkpoint was saved yet"
    return (
        f"non-finite loss or gradients at step {step} (epoch {epoch}) on {where}: stopped without saving this "
        f"step or any after it (found at step {found_at}); {newest}. Check the labels of the batch named in that "
        "rank's log (NaN or negative values), or lower model.learning_rate"
    )
