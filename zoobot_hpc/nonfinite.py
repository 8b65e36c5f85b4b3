"""Non-finite training: how a step's loss and gradients are checked, and the one line a run stops with.

`ResumeCheckpointer` folds the check into its per-step agreement of the ranks, so every rank stops at the same
step; nothing of a non-finite step is ever saved, and the newest checkpoint (finite) stays the one to resume from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch


class NonFiniteTraining(RuntimeError):
    """Raised on every rank at the same step once any rank's loss or gradients were NaN or infinite."""


def loss_is_finite(outputs: Any) -> bool:
    """Whether a training step's output (a loss tensor, or a mapping holding one under "loss") is finite."""
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    if not isinstance(loss, torch.Tensor):
        return True
    return bool(torch.isfinite(loss.detach()).all())


def gradients_are_finite(module: torch.nn.Module) -> bool:
    """Whether every gradient of `module` is finite (DDP has already averaged them: equal on every rank)."""
    grads = [p.grad.detach() for p in module.parameters() if p.grad is not None]
    if not grads:
        return True
    return bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))


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


def nonfinite_message(step: int, epoch: int, ranks: Sequence[int], resume_from: str | None) -> str:
    """The one line a run stops with after a non-finite step; `ranks`: those whose own loss was not finite (none:
    the gradients overflowed, on every rank alike)."""
    where = f"rank {', '.join(str(rank) for rank in ranks)}" if ranks else "every rank (gradients only)"
    newest = f"the newest checkpoint ({resume_from}) is finite" if resume_from else "no checkpoint was saved yet"
    return (
        f"non-finite loss or gradients at step {step} (epoch {epoch}) on {where}: stopped without saving this "
        f"step; {newest}. Check the labels of the batch named in that rank's log (NaN or negative values), "
        "or lower model.learning_rate"
    )
