"""The layout of a run directory: what each file is called, and small readers/writers for its JSON files.

```
RUN_DIR/config.yaml         the resolved config this run trains
RUN_DIR/submission.json     how it was submitted (executor, job id, array index, submitit folder)
RUN_DIR/segments.jsonl      one line per start of the job (a requeued run has several): the step it resumed from,
                            how far it got (`reached_step`, every 30 s); one stopped by a signal adds `stop`,
                            `stop_step` and `stop_and_save_s` (signal to checkpoint on disk)
RUN_DIR/progress.json       epoch, step, best validation metric, latest checkpoint (rewritten each validation)
RUN_DIR/summary.json        final metrics, written when training ends
RUN_DIR/lease.json          the job that owns the run dir (job id, host, pid; renewed by its heartbeat)
RUN_DIR/checkpoints/        resume.ckpt (periodic / preemption), last.ckpt (the newest state), best.ckpt, each
                            with NAME.digest.json beside it (sha256, size, step, dataset manifest checksum)
RUN_DIR/metrics/            Lightning CSV logs (one version per segment), read by `report`
RUN_DIR/wandb/              W&B run files (offline segments are synced by `zoobot-hpc sync`)
RUN_DIR/job_result.json     how the submitted job ended (success, or the first failing rank's error), for `status`
RUN_DIR/rank_errors/        JOB-rankR.json: each rank's error, host and time (`status` names the root cause)
RUN_DIR/ranks/              rank-R.json: each rank's stall-watchdog beat (host, pid, last progress, timeout);
                            stalled.N: the claim of the rank that ends segment N after a stall
```

`config.yaml` keeps the config's secrets (the run's only file that does, with the sbatch script): it is written
owner-only (0600), and so is every rewrite. A search directory has one too, the base config of its trials.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoobot_hpc.core import atomic
from zoobot_hpc.core.disk_space import out_of_space, says_out_of_space

log = logging.getLogger(__name__)

CONFIG = "config.yaml"
SUBMISSION = "submission.json"
SEGMENTS = "segments.jsonl"
PROGRESS = "progress.json"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
RANKS = "ranks"  # each rank's stall-watchdog beat (`runtime.stall_watchdog`)
METRICS = "metrics"
WANDB = "wandb"
WANDB_RUN_ID = "wandb_run_id"
SWEEP = "sweep.json"
SEARCH = "search.json"  # a search directory: its config.yaml is the base config of its trials, not a run


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically and durably (`zoobot_hpc.core.atomic`)."""
    atomic.write_text(path, json.dumps(data, indent=2, default=str))


def read_json(path: Path) -> dict[str, Any] | None:
    """Read a JSON file, or None when it does not exist."""
    try:
        record: dict[str, Any] | None = json.loads(Path(path).read_text())
        return record
    except FileNotFoundError:
        return None


def append_segment(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one record to `segments.jsonl`: one write, then fsync. After a torn last line (a full disk, a crash
    mid-write) the record starts on a line of its own, so only the torn line is lost."""
    path = Path(run_dir) / SEGMENTS
    line = (json.dumps(record, default=str) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size and not _ends_with_newline(path):
            line = b"\n" + line
        os.write(fd, line)
        os.fsync(fd)
    except OSError as error:
        full = out_of_space(error, path, "a segment record to", len(line)) if says_out_of_space(error) else None
        if full is None:
            raise
        raise full from None
    finally:
        os.close(fd)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


def update_last_segment(run_dir: Path, fields: dict[str, Any]) -> dict[str, Any] | None:
    """Add `fields` to the record of the newest segment (the job start that is running now); returns it."""
    records = read_segments(run_dir)
    if not records:
        return None
    records[-1].update(fields)
    atomic.write_text(Path(run_dir) / SEGMENTS, "".join(json.dumps(record, default=str) + "\n" for record in records))
    return records[-1]


def read_segments(run_dir: Path) -> list[dict[str, Any]]:
    """The records of `segments.jsonl`; a line that does not parse (a torn append) is skipped with a warning."""
    path = Path(run_dir) / SEGMENTS
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            log.warning("%s line %d is not a whole record (a torn append): skipped", path, number)
            continue
        records.append(record)
    return records


def find_run_dirs(path: Path) -> list[Path]:
    """A run directory itself, or every run directory of a sweep directory, in name order."""
    path = Path(path)
    if (path / CONFIG).exists() and not (path / SEARCH).exists():
        return [path]
    return sorted(p.parent for p in path.glob(f"*/{CONFIG}"))


@dataclass(frozen=True)
class RedoneWork:
    """Steps a start of the job trained again: its predecessor reached `reached_step` and saved nothing after
    `resumed_step` (a lost node, a kill), or saved less than it trained."""

    segment: int
    resumed_step: int
    reached_step: int

    @property
    def steps(self) -> int:
        return self.reached_step - self.resumed_step


def redone_work(segments: list[dict[str, Any]]) -> list[RedoneWork]:
    """Each restart that resumed from a step before where the previous start had got to (by its last record)."""
    redone = []
    for number, (before, after) in enumerate(itertools.pairwise(segments), start=1):
        reached = max(before.get("reached_step") or 0, before.get("stop_step") or 0)
        resumed = after.get("resumed_step")
        if resumed is not None and reached > resumed:
            redone.append(RedoneWork(segment=number, resumed_step=resumed, reached_step=reached))
    return redone
