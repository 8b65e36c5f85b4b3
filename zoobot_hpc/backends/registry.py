"""The scheduler backends by name: the config's `resources.executor` literal, and the one this process runs under.

A new backend (PBS Pro, HTCondor, Flux) is one module implementing `SchedulerBackend`, one entry in `BACKENDS`,
and its name in `core.config.ExecutorName`.
"""

from __future__ import annotations

import importlib
from functools import cache

from zoobot_hpc.backends.base import SchedulerBackend

# name -> "module:Class"; the order is the order `auto` tries them in (the local backend is always reachable).
BACKENDS: dict[str, str] = {
    "slurm": "zoobot_hpc.backends.slurm:SlurmBackend",
    "local": "zoobot_hpc.backends.local:LocalBackend",
}


@cache
def get_backend(name: str) -> SchedulerBackend:
    """The backend registered under `name`."""
    if name not in BACKENDS:
        raise ValueError(f"unknown scheduler backend {name!r} (known: {', '.join(BACKENDS)})")
    module, _, cls = BACKENDS[name].partition(":")
    backend: SchedulerBackend = getattr(importlib.import_module(module), cls)()
    return backend


def resolve_backend(choice: str) -> str:
    """The backend a config's `resources.executor` asks for; `auto` is the first reachable one."""
    if choice != "auto":
        get_backend(choice)
        return choice
    return next(name for name in BACKENDS if get_backend(name).reachable())


def running_backend() -> SchedulerBackend | None:
    """The backend whose job this process is a task of (None: a plain process, e.g. on a workstation)."""
    return next((get_backend(name) for name in BACKENDS if get_backend(name).in_job()), None)


def job_key() -> str | None:
    """This job's id under the scheduler that started it, the same in every requeue (None outside any job)."""
    backend = running_backend()
    return backend.job_key() if backend is not None else None


def job_id() -> str:
    """This job's id as `submit` recorded it ('' outside any job)."""
    backend = running_backend()
    return (backend.job_id() if backend is not None else None) or ""


def task_rank() -> int:
    """This process's task rank in its job (0 outside any job)."""
    backend = running_backend()
    return backend.task_rank() if backend is not None else 0
