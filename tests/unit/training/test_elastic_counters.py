"""Lightning's batch counters moved to another world size: mid-epoch exactly, a finished epoch stays finished."""

from __future__ import annotations

import pytest

from zoobot_hpc.training.elastic import rescale_batch_progress


def checkpoint(ready: int, is_last_batch: bool = False) -> dict:
    current = {"ready": ready, "started": ready, "processed": ready, "completed": ready - 1}
    total = {name: value + 100 for name, value in current.items()}
    progress = {"current": current, "total": total, "is_last_batch": is_last_batch}
    return {"loops": {"fit_loop": {"epoch_loop.batch_progress": progress}}}


def progress_of(state: dict) -> dict:
    return state["loops"]["fit_loop"]["epoch_loop.batch_progress"]


def test_mid_epoch_counters_move_to_the_same_global_position() -> None:
    state = checkpoint(6)
    rescale_batch_progress(state, saved_world_size=2, world_size=1)
    assert progress_of(state)["current"] == {"ready": 12, "started": 12, "processed": 12, "completed": 11}
    assert progress_of(state)["total"]["ready"] == 112 and progress_of(state)["total"]["completed"] == 111
    rescale_batch_progress(state, saved_world_size=1, world_size=4)
    assert progress_of(state)["current"]["ready"] == 3


def test_a_position_between_steps_of_the_new_world_is_refused_unless_the_epoch_is_done() -> None:
    with pytest.raises(ValueError, match="not a whole number of batches of 2"):
        rescale_batch_progress(checkpoint(3), saved_world_size=1, world_size=2)
    state = checkpoint(3, is_last_batch=True)
    rescale_batch_progress(state, saved_world_size=1, world_size=2)
    assert progress_of(state)["current"]["ready"] == 2
