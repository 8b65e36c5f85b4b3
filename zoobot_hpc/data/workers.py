"""How DataLoader workers start, for every loader of the package (training, evaluation, inference, embedding cache).

Workers come from a forkserver that preloads the reading modules, started with the stop signals blocked.
This module imports only the standard library, so a job can start the forkserver first thing, before it imports
torch and Lightning itself: the forkserver then preloads torch while the job imports it (two processes, in parallel).
Everything a worker unpickles (dataset, `collate_fn`, `worker_init_fn`) must live in modules the forkserver
preloads or that import no Lightning: a worker that imports Lightning spends seconds before its first batch.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zoobot_hpc.core.stop_signals import stop_signals

log = logging.getLogger(__name__)
FORKSERVER_PRELOAD = ["torch", "h5py", "zoobot_hpc.data.dataset"]


def worker_context() -> multiprocessing.context.BaseContext:
    """The start method of every loader worker: a forkserver, started with the stop signals blocked.

    Forking the training process itself, which runs gloo/NCCL, W&B and other loaders' threads, can leave a worker
    deadlocked on a lock held at fork time (seen with DDP on CPU). The forkserver preloads the reading modules once,
    so each worker still starts in a fraction of a second. SLURM's stop signals (``--signal=USR2`` before the time
    limit, SIGTERM at preemption or ``scancel``) reach every process of the job step, and kill a process that has no
    handler: the forkserver and the resource tracker start with them blocked (a signal mask survives fork and exec),
    so they and every worker forked from them outlive the signal while the training process saves, and only the
    training process acts on it. A signal arriving while they start stays pending here, not lost.
    Idempotent: the first call starts the forkserver, later ones return the same context.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(FORKSERVER_PRELOAD)
    blocked = stop_signals()
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        multiprocessing.resource_tracker.ensure_running()
        signal.pthread_sigmask(signal.SIG_BLOCK, blocked)  # starting the tracker unblocks SIGINT and SIGTERM
        multiprocessing.forkserver.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
    forkserver_pid = getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None)
    unblocked = [s for s in sorted(blocked) if forkserver_pid is not None and not _blocks_signal(forkserver_pid, s)]
    if unblocked:
        log.warning(
            "the forkserver (pid %d) was started before zoobot-hpc's loaders, without %s blocked: a preemption "
            "signal will kill the loader workers; start no forkserver before training",
            forkserver_pid,
            "/".join(s.name for s in unblocked),
        )
    return context


def _blocks_signal(pid: int, signum: int) -> bool:
    """Whether process `pid` blocks `signum` (True when that cannot be read, e.g. off Linux)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    for line in status.splitlines():
        if line.startswith("SigBlk:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return True


def set_hdf5_locking_env(locking: bool | None, worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: make ``HDF5_USE_FILE_LOCKING`` agree with ``locking``."""
    if locking is not None:
        os.environ["HDF5_USE_FILE_LOCKING"] = "TRUE" if locking else "FALSE"


def loader_settings(
    *,
    num_workers: int,
    seed: int,
    batch_size: int = 1,
    locking: bool | None = False,
    collate_fn: Callable | None = None,
    pin_memory: bool = False,
    prefetch_factor: int = 2,
    persistent_workers: bool = False,
) -> dict[str, Any]:
    """The `DataLoader` keyword arguments of every loader of the package (add the sampler or batch sampler):
    forkserver workers (see `worker_context`) that set HDF5 locking, pinned memory only where CUDA is, and the
    loader's own seeded generator, so that iterating never draws from the global RNG a training run continues."""
    import torch

    workers = num_workers > 0
    return {
        "batch_size": batch_size,
        "num_workers": num_workers,
        "collate_fn": collate_fn,
        "pin_memory": pin_memory and torch.cuda.is_available(),
        "prefetch_factor": prefetch_factor if workers else None,
        "persistent_workers": persistent_workers and workers,
        "worker_init_fn": functools.partial(set_hdf5_locking_env, locking) if workers else None,
        "generator": torch.Generator().manual_seed(seed),
        "multiprocessing_context": worker_context() if workers else None,
    }
