"""The cluster-wide limits of SLURM's job arrays, as `scontrol show config` reports them."""

from __future__ import annotations

import re
import shutil
import subprocess

from zoobot_hpc.backends.base import ArrayLimits


def parse_array_limits(text: str) -> ArrayLimits:
    """`MaxArraySize` and `MaxJobCount` in the output of `scontrol show config` (None where it does not say)."""
    fields = dict(re.findall(r"^(MaxArraySize|MaxJobCount)\s*=\s*(\d+)", text, flags=re.MULTILINE))
    size, count = fields.get("MaxArraySize"), fields.get("MaxJobCount")
    return ArrayLimits(
        max_array_size=int(size) if size is not None else None,
        max_job_count=int(count or 0) or None,  # 0 or missing: no limit of the controller's own
    )


def read_array_limits() -> ArrayLimits:
    """The cluster's array limits now; no limits when `scontrol` is missing or fails (a dry run on a laptop)."""
    if shutil.which("scontrol") is None:
        return ArrayLimits()
    try:
        shown = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.SubprocessError):
        return ArrayLimits()
    return parse_array_limits(shown.stdout) if shown.returncode == 0 else ArrayLimits()
