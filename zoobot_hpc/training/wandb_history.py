"""The history steps an offline W&B run file (`run-*.wandb`) holds: what `wandb sync` would upload from it.

wandb ships no reader for these files. The format: a 7-byte header, then LevelDB-log framing in 32 KiB blocks
(crc32c(4), length(2, little-endian), type(1): 1 full, 2 first, 3 middle, 4 last) of protobuf `Record`s. A file
whose writer died (a lost node) may end in a torn record: reading stops there, as `wandb sync` does.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from zoobot_hpc.core import run_dir as layout

HEADER_LEN = 7
BLOCK_LEN = 32768
CHUNK_HEADER_LEN = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _payloads(data: bytes) -> Iterator[bytes]:
    pos, pending = HEADER_LEN, b""
    while pos + CHUNK_HEADER_LEN <= len(data):
        left_in_block = BLOCK_LEN - pos % BLOCK_LEN
        if left_in_block < CHUNK_HEADER_LEN:
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER_LEN])
        payload = data[pos + CHUNK_HEADER_LEN : pos + CHUNK_HEADER_LEN + length]
        if len(payload) < length:
            return
        pos += CHUNK_HEADER_LEN + length
        if kind == FULL:
            yield payload
        elif kind == FIRST:
            pending = payload
        elif kind == MIDDLE:
            pending += payload
        elif kind == LAST:
            yield pending + payload
            pending = b""


def offline_segments(run_dir: Path) -> list[Path]:
    """The offline W&B run folders of one run, oldest first (one per job start)."""
    return sorted((Path(run_dir) / layout.WANDB / "wandb").glob("offline-run-*"))


@dataclass(frozen=True)
class StepRange:
    """The W&B steps of one run file's history rows (`first`..`last`, `rows` of them); None when it has none."""

    first: int | None
    last: int | None
    rows: int


def history_steps(path: Path) -> StepRange:
    """The step range of the history rows in one offline run file."""
    from wandb.proto import wandb_internal_pb2  # here: only the login node's `sync` and a segment's start read it

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file")
    steps: list[int] = []
    for payload in _payloads(data):
        record = wandb_internal_pb2.Record()
        try:
            record.ParseFromString(payload)
        except Exception:  # a torn record at the end of a dead writer's file
            break
        if record.WhichOneof("record_type") == "history":
            steps.append(record.history.step.num)
    return StepRange(min(steps, default=None), max(steps, default=None), len(steps))


def run_file(segment_dir: Path) -> Path | None:
    """The `.wandb` file of one offline segment folder (None before W&B wrote it)."""
    return next(iter(sorted(Path(segment_dir).glob("run-*.wandb"))), None)


def last_step_before(segment_dirs: list[Path], current: Path | None) -> int:
    """The highest W&B step any segment other than `current` logged (-1 when none did)."""
    last = -1
    for folder in segment_dirs:
        if current is not None and folder.resolve() == current.resolve():
            continue
        path = run_file(folder)
        if path is not None:
            steps = history_steps(path)
            if steps.last is not None:
                last = max(last, steps.last)
    return last
