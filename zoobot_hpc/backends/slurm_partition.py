"""A SLURM partition's preemption settings, as `scontrol show partition` reports them."""

from __future__ import annotations

import re
import shutil
import subprocess

from zoobot_hpc.backends.base import Partition


def parse_duration_s(text: str) -> int:
    """Seconds of a SLURM duration: plain seconds (`60`), `MM:SS`, `HH:MM:SS` or `D-HH:MM:SS`."""
    days, _, clock = text.rpartition("-")
    seconds = 0
    for part in clock.split(":"):
        seconds = seconds * 60 + int(part)
    return seconds + int(days or 0) * 86400


def parse_partitions(text: str) -> list[Partition]:
    """Every partition in the output of `scontrol show partition [NAME]` (one- or multi-line records)."""
    partitions = []
    for record in re.split(r"(?=PartitionName=)", text):
        fields = dict(re.findall(r"(\w+)=(\S*)", record))
        if "PartitionName" not in fields:
            continue
        partitions.append(
            Partition(
                name=fields["PartitionName"],
                preempt_mode=fields.get("PreemptMode", "OFF").upper(),
                grace_time_s=parse_duration_s(fields.get("GraceTime", "0")),
                default=fields.get("Default", "NO").upper() == "YES",
            )
        )
    return partitions


def read_partition(name: str | None) -> Partition | None:
    """The named partition (the cluster's default one for None) as `scontrol` reports it; None when `scontrol` is
    missing, fails or does not list it."""
    if shutil.which("scontrol") is None:
        return None
    command = ["scontrol", "show", "partition", *([name] if name else [])]
    try:
        probe = subprocess.run(command, capture_output=True, text=True, timeout=15, check=False)
    except subprocess.TimeoutExpired:
        return None
    if probe.returncode != 0:
        return None
    partitions = parse_partitions(probe.stdout)
    chosen = [p for p in partitions if p.name == name] if name else [p for p in partitions if p.default]
    return chosen[0] if chosen else None
