"""Read the records of an offline W&B run file (`run-*.wandb`) back from disk, as the tests need.

wandb ships no Python reader: the file is a 7-byte header, then LevelDB-log framing in 32 KiB blocks
(crc32c(4), length(2, little-endian), type(1): 1 full, 2 first, 3 middle, 4 last) of protobuf Records.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

HEADER_LEN = 7
BLOCK_LEN = 32768
CHUNK_HEADER_LEN = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def iter_records(path: Path):
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file")
    pos, pending = HEADER_LEN, b""
    while pos + CHUNK_HEADER_LEN <= len(data):
        left_in_block = BLOCK_LEN - pos % BLOCK_LEN
        if left_in_block < CHUNK_HEADER_LEN:
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER_LEN])
        payload = data[pos + CHUNK_HEADER_LEN : pos + CHUNK_HEADER_LEN + length]
        pos += CHUNK_HEADER_LEN + length
        if kind == 0 and length == 0:
            continue
        if kind == FULL:
            pending = payload
        elif kind == FIRST:
            pending = payload
            continue
        elif kind == MIDDLE:
            pending += payload
            continue
        elif kind == LAST:
            pending += payload
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        pending = b""
        yield record


@dataclass
class OfflineRun:
    run_id: str = ""
    name: str = ""
    group: str = ""
    job_type: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    def metric(self, key: str) -> list[Any]:
        return [row[key] for row in self.history if key in row]


def _update_config(config: dict[str, Any], items) -> None:
    for item in items:
        key = item.key or "/".join(item.nested_key)
        value = json.loads(item.value_json)
        config[key] = (
            value.get("value", value) if isinstance(value, dict) and set(value) <= {"value", "desc"} else value
        )


def read_offline_run(path: Path) -> OfflineRun:
    """The run id, name, group, job type, tags, config, summary and history rows of one `.wandb` file."""
    run = OfflineRun()
    for record in iter_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_id = record.run.run_id or run.run_id
            run.name = record.run.display_name or run.name
            run.group = record.run.run_group or run.group
            run.job_type = record.run.job_type or run.job_type
            run.tags = list(record.run.tags) or run.tags
            _update_config(run.config, record.run.config.update)
        elif kind == "config":
            _update_config(run.config, record.config.update)
        elif kind == "summary":
            for item in record.summary.update:
                run.summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "history":
            run.history.append(
                {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item}
            )
    return run


def offline_run_files(run_dir: Path) -> list[Path]:
    return sorted(Path(run_dir).glob("wandb/wandb/offline-run-*/run-*.wandb"))


def logged_tables(run_dir: Path, key: str = "validation/galaxies") -> list[dict[str, Any]]:
    """Every W&B Table logged under `key` in a run's segments, in order: its JSON (`columns`, `data`)."""
    tables = []
    for path in offline_run_files(run_dir):
        for row in read_offline_run(path).history:
            if f"{key}/path" in row:
                tables.append(json.loads((path.parent / "files" / row[f"{key}/path"]).read_text()))
    return tables
