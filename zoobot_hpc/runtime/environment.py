"""Lightning's view of a submitit job: ranks, nodes and the rendezvous address, for SLURM and local jobs alike."""

from __future__ import annotations

import os
import zlib

import submitit
from lightning.fabric.plugins.environments import ClusterEnvironment


def rendezvous_port(job_id: str) -> int:
    """Rank 0's rendezvous port, the same on every rank: fixed by the job id and below Linux's ephemeral range
    (32768+), where submitit's random choice can hit a port a client connection already holds (EADDRINUSE)."""
    return 20000 + zlib.crc32(job_id.encode()) % 12000


class SubmititEnvironment(ClusterEnvironment):
    """A ClusterEnvironment backed by `submitit.JobEnvironment`: one process per task, started by the executor."""

    def __init__(self) -> None:
        super().__init__()
        self._job = submitit.JobEnvironment()
        distributed = submitit.helpers.TorchDistributedEnvironment()
        local = type(self._job).__name__.startswith("Local")
        self._main_address = "127.0.0.1" if local else distributed.master_addr
        self._main_port = int(os.environ.get("MASTER_PORT") or rendezvous_port(str(self._job.job_id)))

    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        return self._main_address

    @property
    def main_port(self) -> int:
        return self._main_port

    @staticmethod
    def detect() -> bool:
        try:
            submitit.JobEnvironment()
        except RuntimeError:
            return False
        return True

    def world_size(self) -> int:
        return self._job.num_tasks

    def set_world_size(self, size: int) -> None:
        if size != self._job.num_tasks:
            raise ValueError(f"Lightning expects {size} processes but the job has {self._job.num_tasks} tasks")

    def global_rank(self) -> int:
        return self._job.global_rank

    def set_global_rank(self, rank: int) -> None:
        pass

    def local_rank(self) -> int:
        return self._job.local_rank

    def node_rank(self) -> int:
        return self._job.node

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        if num_devices * num_nodes != self._job.num_tasks or num_nodes != self._job.num_nodes:
            raise ValueError(
                f"devices={num_devices} x num_nodes={num_nodes} does not match the job's "
                f"{self._job.num_nodes} node(s) and {self._job.num_tasks} task(s)"
            )
