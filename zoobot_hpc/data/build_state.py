"""Writer records: what a shard writer recorded about the shard it finished, so a resumed build trusts it
without reading or hashing it again.

`DATASET/.zoobot-build/records/SHARD.json` holds the shard's size, mtime, inode, count and sha256 (computed once,
by its writer), the digest of the planned rows it was written from, and the images that could not be read.
A record is trusted only while the file's size, mtime and inode are the recorded ones and the plan is the same.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from zoobot_hpc.core.atomic import write_text
from zoobot_hpc.data.catalog_scan import ID, PATH
from zoobot_hpc.data.shard_format import FORMAT_VERSION, STATE_DIR, ShardInfo

RECORDS_DIR = "records"
PLAN_ATTR = "plan_sha256"  # shard attribute: digest of the planned rows (ids, paths, labels, shape, stretch)


def record_path(out_dir: Path, shard: str) -> Path:
    return Path(out_dir) / STATE_DIR / RECORDS_DIR / (shard + ".json")


def label_values(table: pa.Table, name: str, dtype: str) -> np.ndarray:
    """A unit's label column in its stored dtype (missing values as NaN)."""
    return np.asarray(table.column(name).to_numpy(), dtype=np.float64 if dtype == "float32" else None).astype(dtype)


def plan_digest(
    table: pa.Table, label_dtypes: dict[str, str], image_shape: tuple[int, ...], scaling: dict | None
) -> str:
    """sha256 of what a unit asks its shard to hold: ids, paths and labels in order, image shape and stretch."""
    digest = hashlib.sha256()
    header = {"format": FORMAT_VERSION, "shape": list(image_shape), "labels": label_dtypes, "scaling": scaling}
    digest.update(json.dumps(header, sort_keys=True).encode())
    for name in (ID, PATH):
        if name in table.column_names:
            column = pa.concat_arrays(table.column(name).chunks) if table.num_rows else pa.array([], pa.string())
            offsets = np.frombuffer(column.buffers()[1], dtype=np.int32)[: len(column) + 1]
            digest.update(name.encode())
            digest.update(offsets.tobytes())
            digest.update(memoryview(column.buffers()[2] or b"")[: int(offsets[-1]) if len(offsets) else 0])
    for name, dtype in label_dtypes.items():
        values = label_values(table, name, dtype)
        digest.update(name.encode())
        digest.update(values.tobytes())
    return digest.hexdigest()


@dataclass
class WriterRecord:
    """What a writer recorded about its shard (count 0 and no file when none of its images could be read)."""

    shard: str
    plan_sha256: str
    count: int
    size_bytes: int = 0
    sha256: str = ""
    mtime_ns: int = 0
    inode: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)

    def info(self) -> ShardInfo | None:
        return ShardInfo(self.shard, self.count, self.size_bytes, self.sha256) if self.count else None

    def matches_file(self, path: Path) -> bool:
        """The shard file is the one its writer finished (unchanged since), or absent when it wrote none."""
        try:
            stat = path.stat()
        except FileNotFoundError:
            return self.count == 0
        return self.count > 0 and (stat.st_size, stat.st_mtime_ns, stat.st_ino) == (
            self.size_bytes,
            self.mtime_ns,
            self.inode,
        )


def write_record(out_dir: Path, record: WriterRecord) -> None:
    path = record_path(out_dir, record.shard)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(asdict(record)) + "\n")


def stamp_record(record: WriterRecord, shard_path: Path) -> WriterRecord:
    """Fill in the finished file's size, mtime and inode."""
    if record.count:
        stat = os.stat(shard_path)
        record.size_bytes, record.mtime_ns, record.inode = stat.st_size, stat.st_mtime_ns, stat.st_ino
    return record


def read_record(out_dir: Path, shard: str) -> WriterRecord | None:
    path = record_path(out_dir, shard)
    try:
        return WriterRecord(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def remove_record(out_dir: Path, shard: str) -> None:
    record_path(out_dir, shard).unlink(missing_ok=True)
