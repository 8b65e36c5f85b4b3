"""Ingest at survey scale: planning a 1M / 10M-row catalogue, decoding, `inspect` and `submit --dry-run` at 10M
images' shard metadata, each beside its target and, with `--baseline REV`, beside the same step of revision REV
(measured in the same run).

- **Planning**: from reading the catalogue (parquet: `id_str`, `file_loc`, two vote columns) to every shard
  planned (before the first image is read): wall time and peak RSS of a fresh process.
- **Decode**: 424-px JPEGs (as Galaxy Zoo serves them) to 224 px, one process: images/s per worker, and a whole
  `build_dataset` with one worker (decode + write + checksum).
- **Metadata-scale dataset**: the real 224-px shard layout (14,266 images per 2 GiB shard, 701 shards for 10M
  images, real ids and label columns, a real manifest) with 8x8-px pixels, so everything that grows with the number
  of images and shards is real. `inspect` default and `inspect --checksums` run on it (checksums per GB: the files
  are in the page cache, so this is the hashing rate, not the disk's), and `submit --dry-run` of a config pointing
  at it, cold (empty check cache) and warm (second run).

Every figure is a fresh child process (wall time, `ru_maxrss`). The machine may be shared: compare within a run.

```bash
python benchmarks/ingest_scale.py --baseline 404e862 --workdir /tmp/ingest-scale    # ~15 min on 2 cores
```
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TARGETS = {
    "plan_s": 15.0,
    "plan_rss_gb": 1.0,
    "inspect_s": 10.0,
    "dry_run_warm_s": 3.0,
    "dry_run_cold_s": 12.0,
}
PER_SHARD_224 = 14_266  # images of 224x224x3 uint8 in a 2 GiB shard
LABELS = ("smooth-or-featured_smooth", "smooth-or-featured_featured-or-disk")

# Peak RSS is VmHWM (this process's own address space): ru_maxrss would also count the parent's RSS at fork.
_RUNNER = """
import json, sys, time
start = time.perf_counter()
{body}
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0].split()[1]
print("RESULT=" + json.dumps({{**result, "max_rss_mb": int(hwm) / 1024}}))
"""

PLAN_NEW = """
from pathlib import Path
from zoobot_hpc.data.build_planning import plan_build
from zoobot_hpc.data.catalog_scan import open_catalog
t0 = time.perf_counter()
scan = open_catalog(Path({catalog!r}), "file_loc", "id_str", None, {labels!r})
plan = plan_build(scan, Path({out!r}), (224, 224, 3), 2 * 1024**3, (0.8, 0.1, 0.1), ())
result = {{"plan_s": time.perf_counter() - t0, "shards": len(plan.units)}}
"""

PLAN_OLD = """
from pathlib import Path
from zoobot_hpc.data import build as b
t0 = time.perf_counter()
cat, labels = Path({catalog!r}), {labels!r}
source = b._read_source(cat, "file_loc", None)
frame = source.frame
b._check_build_args(cat, frame, {{"image": "file_loc", "id": "id_str", "split": None}}, labels, (), 3, 224, "fail")
ids = b._unique_ids(cat, frame, "id_str")
values = b._label_arrays(cat, frame, "id_str", labels, ())
splits = b._assign_splits(cat, frame, ids, None, (0.8, 0.1, 0.1), True)
paths = b._image_paths(cat, frame, "file_loc")
tasks = b._plan_tasks(Path({out!r}), cat, frame, ids, splits, values, paths, 224, 3, 2 * 1024**3, "fail", None, None)
result = {{"plan_s": time.perf_counter() - t0, "shards": len(tasks)}}
"""

DECODE = """
from pathlib import Path
from zoobot_hpc.data.build import load_image
files = sorted(Path({folder!r}).glob("*.jpg"))
load_image(files[0], 224, 3)
t0 = time.perf_counter()
for path in files:
    load_image(path, 224, 3)
elapsed = time.perf_counter() - t0
result = {{"images_per_s": len(files) / elapsed, "ms_per_image": 1000 * elapsed / len(files)}}
"""

BUILD = """
from zoobot_hpc.data.build import build_dataset
t0 = time.perf_counter()
manifest = build_dataset({catalog!r}, {out!r}, label_cols={labels!r}, size=224, progress=False)
n = sum(manifest.split_count(split) for split in manifest.splits)
result = {{"images_per_s": n / (time.perf_counter() - t0)}}
"""

CLI = """
from zoobot_hpc.cli import main
code = 0
try:
    main({args!r}, prog_name="zoobot-hpc")
except SystemExit as stop:
    code = stop.code
result = {{"wall_s": time.perf_counter() - start, "code": code}}
"""

PREFLIGHT_OLD = """
from zoobot_hpc.login.preflight import check_run_dir, preflight
from zoobot_hpc.login.submit import plan_runs
plan = plan_runs({config!r})
preflight([run.config for run in plan.runs], plan.executor, plan.base_dir)
result = {{"wall_s": time.perf_counter() - start}}
"""


def best(body: str, src: Path | None, repeats: int, key: str, env: dict[str, str] | None = None) -> dict | None:
    """The fastest of `repeats` runs (by `key`): the machine is shared, the minimum is the least disturbed."""
    if src is None:
        return None
    return min((child(body, src, env) for _ in range(repeats)), key=lambda result: result[key])


def child(body: str, src: Path, env: dict[str, str] | None = None, quiet: bool = True) -> dict:
    """Run `body` in a fresh interpreter importing zoobot_hpc from `src`; its RESULT, wall time and peak RSS."""
    environment = {**os.environ, "PYTHONPATH": str(src), **(env or {})}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _RUNNER.format(body=body)],
        env=environment,
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
        check=False,
    )
    wall = time.perf_counter() - start
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT=")]
    if not lines:
        raise RuntimeError(f"child failed ({done.returncode}): {done.stderr[-2000:]}")
    result = json.loads(lines[-1].partition("=")[2])
    result["process_s"] = wall
    if not quiet:
        print(done.stdout)
    return result


def baseline_source(revision: str, workdir: Path) -> Path:
    """`zoobot_hpc` of `revision`, extracted (git archive) into the work dir: nothing in the repository changes."""
    target = workdir / f"baseline-{revision}"
    if not (target / "zoobot_hpc").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", revision, "zoobot_hpc"], capture_output=True, check=True
        ).stdout
        with tempfile.TemporaryFile() as handle:
            handle.write(archive)
            handle.seek(0)
            with tarfile.open(fileobj=handle) as tar:
                tar.extractall(target, filter="data")
    return target


def write_catalogue(path: Path, rows: int) -> Path:
    """A parquet catalogue like Galaxy Zoo DESI's: id_str, a relative file_loc, two vote columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.exists():
        return path
    rng = np.random.default_rng(0)
    writer = None
    for start in range(0, rows, 1_000_000):
        n = min(1_000_000, rows - start)
        index = np.arange(start, start + n)
        ra = (index * 0.0003) % 360
        ids = np.char.add(np.char.add("J", np.char.mod("%010.5f", ra)), np.char.mod("+%08d", index))
        folders = np.char.mod("%06d", index // 1000)
        files = np.char.add(np.char.add(np.char.add("images/", folders), "/"), np.char.add(ids, ".jpg"))
        table = pa.table(
            {
                "id_str": pa.array(ids.astype(object)),
                "file_loc": pa.array(files.astype(object)),
                LABELS[0]: rng.integers(0, 40, n).astype(np.float64),
                LABELS[1]: rng.integers(0, 40, n).astype(np.float64),
            }
        )
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()
    return path


def write_jpegs(folder: Path, count: int, size: int = 424) -> Path:
    """`count` galaxy-like 424-px JPEGs (a smooth profile plus noise, quality 90) and a catalogue of them."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:size, 0:size] - size / 2
    rows = []
    for index in range(count):
        path = folder / f"g{index:05d}.jpg"
        if not path.exists():
            radius = np.hypot(x * rng.uniform(0.5, 1), y) / (size * rng.uniform(0.05, 0.15))
            light = np.exp(-radius)[..., None] * rng.uniform(0.5, 1, 3) + rng.normal(0, 0.04, (size, size, 3))
            Image.fromarray(np.clip(light * 255, 0, 255).astype(np.uint8)).save(path, quality=90)
        rows.append(f"{path.name},g{index},{index % 40},{(index * 7) % 40}")
    catalogue = folder / "catalog.csv"
    catalogue.write_text("file_loc,id_str," + ",".join(LABELS) + "\n" + "\n".join(rows) + "\n")
    return catalogue


def write_metadata_dataset(out: Path, images: int, pixels: int = 8) -> Path:
    """The 224-px shard layout (14,266 images per shard) with `pixels`-px images, train/val/test 80/10/10 by
    shard, ids and two label columns, and its manifest."""
    sys.path.insert(0, str(REPO))
    from datetime import datetime, timezone

    from zoobot_hpc.data.shard_format import FORMAT_VERSION, Manifest, ShardWriter, shard_file_name, write_manifest

    if (out / "manifest.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    shards = -(-images // PER_SHARD_224)
    splits: dict[str, list] = {}
    blank = np.zeros((PER_SHARD_224, pixels, pixels, 3), dtype=np.uint8)
    for index in range(shards):
        split = "train" if index % 10 < 8 else ("val" if index % 10 == 8 else "test")
        start, count = index * PER_SHARD_224, min(PER_SHARD_224, images - index * PER_SHARD_224)
        position = len(splits.get(split, []))
        ids = np.char.mod("J%012d", np.arange(start, start + count)).tolist()
        with ShardWriter(out / shard_file_name(split, position), (pixels, pixels, 3), split) as writer:
            writer.append(blank[:count], ids)
            labels = {LABELS[0]: np.arange(count, dtype=np.float32) % 40, "label": np.arange(count) % 3}
            splits.setdefault(split, []).append(writer.finish(labels))
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        image_shape=(pixels, pixels, 3),
        label_columns={LABELS[0]: "float32", "label": "int64"},
        allow_nan=(),
        splits={split: tuple(infos) for split, infos in splits.items()},
        id_column="id_str",
        source="benchmarks/ingest_scale.py metadata-scale dataset",
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    write_manifest(out, manifest)
    return out


def dry_run_config(workdir: Path, dataset: Path) -> Path:
    import yaml

    raw = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    raw["data"]["dataset_dir"] = str(dataset)
    raw["output_dir"] = str(workdir / "runs")
    raw["resources"]["executor"] = "local"
    path = workdir / "dry_run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def row(name: str, new: float, unit: str, target: float | None = None, old: float | None = None) -> str:
    """A table row; the last column is how many times better this revision is (lower time/RSS, higher rate)."""
    target_text = f"<= {target:g} {unit}" if target is not None else ""
    old_text = f"{old:.3g} {unit}" if old is not None else ""
    better = ""
    if old is not None and new and old:
        better = f"{(new / old if unit.endswith('/s') else old / new):.2g}x"
    return f"| {name} | {new:.3g} {unit} | {target_text} | {old_text} | {better} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000], help="Catalogue sizes.")
    parser.add_argument("--images", type=int, default=10_000_000, help="Images of the metadata-scale dataset.")
    parser.add_argument("--jpegs", type=int, default=300, help="424-px JPEGs for the decode rate.")
    parser.add_argument("--baseline", default=None, help="A git revision to measure beside (e.g. 404e862).")
    parser.add_argument("--workdir", type=Path, default=None, help="Keep the data here (reused when present).")
    parser.add_argument("--repeats", type=int, default=2, help="Runs of each inspect/submit figure (the fastest).")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ingest-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    new_src = REPO
    old_src = baseline_source(args.baseline, workdir) if args.baseline else None
    lines = ["| figure | this revision | target | baseline | better by |", "|---|---|---|---|---|"]

    def both(body: str, **kwargs) -> tuple[dict, dict | None]:
        new = child(body, new_src, **kwargs)
        return new, (child(body, old_src, **kwargs) if old_src else None)

    for rows in args.rows:
        catalogue = write_catalogue(workdir / f"catalog-{rows}.parquet", rows)
        out = workdir / f"plan-{rows}"
        new = child(PLAN_NEW.format(catalog=str(catalogue), labels=list(LABELS), out=str(out)), new_src)
        old = None
        if old_src:
            old = child(PLAN_OLD.format(catalog=str(catalogue), labels=list(LABELS), out=str(out)), old_src)
        shutil.rmtree(out, ignore_errors=True)
        label = f"{rows / 1e6:g}M"
        lines.append(row(f"plan {label} rows: time", new["plan_s"], "s", TARGETS["plan_s"], old and old["plan_s"]))
        lines.append(
            row(
                f"plan {label} rows: peak RSS",
                new["max_rss_mb"] / 1024,
                "GB",
                TARGETS["plan_rss_gb"],
                old and old["max_rss_mb"] / 1024,
            )
        )
        print("\n".join(lines[-2:]), flush=True)

    jpeg_catalogue = write_jpegs(workdir / "jpegs", args.jpegs)
    new, old = both(DECODE.format(folder=str(jpeg_catalogue.parent)))
    lines.append(
        row("decode 424->224 px JPEG, 1 worker", new["images_per_s"], "img/s", None, old and old["images_per_s"])
    )
    builds = []
    for src in (new_src, old_src):
        if src is None:
            continue
        out = workdir / "jpeg-build"
        shutil.rmtree(out, ignore_errors=True)
        builds.append(child(BUILD.format(catalog=str(jpeg_catalogue), out=str(out), labels=list(LABELS)), src))
        shutil.rmtree(out, ignore_errors=True)
    lines.append(
        row(
            "build (decode+write+hash), 1 worker",
            builds[0]["images_per_s"],
            "img/s",
            None,
            builds[1]["images_per_s"] if len(builds) > 1 else None,
        )
    )
    print("\n".join(lines[-2:]), flush=True)

    dataset = write_metadata_dataset(workdir / f"meta-{args.images}", args.images)
    gigabytes = sum(path.stat().st_size for path in dataset.glob("*.h5")) / 1e9
    shutil.rmtree(dataset / ".zoobot-build", ignore_errors=True)
    label = f"{args.images / 1e6:g}M images ({len(list(dataset.glob('*.h5')))} shards, {gigabytes:.1f} GB)"
    reps = args.repeats
    first = child(CLI.format(args=["inspect", str(dataset)]), new_src)
    new = best(CLI.format(args=["inspect", str(dataset)]), new_src, reps, "wall_s")
    old = best(CLI.format(args=["inspect", str(dataset), "--no-checksums"]), old_src, reps, "wall_s")
    lines.append(
        row(f"inspect default first, {label}", first["wall_s"], "s", TARGETS["inspect_s"], old and old["wall_s"])
    )
    lines.append(
        row("inspect default again (unchanged shards)", new["wall_s"], "s", TARGETS["inspect_s"], old and old["wall_s"])
    )
    lines.append(row("inspect default first: peak RSS", first["max_rss_mb"], "MB", None, old and old["max_rss_mb"]))
    cold = best(CLI.format(args=["inspect", str(dataset), "--checksums", "--rehash"]), new_src, reps, "wall_s")
    warm = best(CLI.format(args=["inspect", str(dataset), "--checksums"]), new_src, reps, "wall_s")
    old = best(CLI.format(args=["inspect", str(dataset)]), old_src, reps, "wall_s")
    lines.append(
        row(
            "inspect --checksums, every shard hashed",
            cold["wall_s"] / gigabytes,
            "s/GB",
            None,
            old and old["wall_s"] / gigabytes,
        )
    )
    lines.append(row("inspect --checksums again (unchanged: none hashed)", warm["wall_s"], "s", None))
    print("\n".join(lines[-4:]), flush=True)

    config = dry_run_config(workdir, dataset)
    cache = workdir / "check-cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = {"XDG_CACHE_HOME": str(cache)}
    shutil.rmtree(dataset / ".zoobot-build", ignore_errors=True)
    cold = child(CLI.format(args=["submit", str(config), "--dry-run"]), new_src, env=env)
    warm = best(CLI.format(args=["submit", str(config), "--dry-run"]), new_src, reps, "wall_s", env=env)
    old_checks = best(PREFLIGHT_OLD.format(config=str(config)), old_src, reps, "wall_s")
    old_dry = child(CLI.format(args=["submit", str(config), "--dry-run"]), old_src) if old_src else None
    lines.append(
        row(
            "submit --dry-run cold (all checks)",
            cold["wall_s"],
            "s",
            TARGETS["dry_run_cold_s"],
            old_checks and old_checks["wall_s"],
        )
    )
    lines.append(
        row(
            "submit --dry-run warm (all checks)",
            warm["wall_s"],
            "s",
            TARGETS["dry_run_warm_s"],
            old_checks and old_checks["wall_s"],
        )
    )
    if old_dry:
        lines.append(f"| baseline `submit --dry-run` (checked nothing) | | | {old_dry['wall_s']:.3g} s | |")
    lines.append(f"| submit --dry-run warm: peak RSS | {warm['max_rss_mb']:.0f} MB | | | |")
    assert cold["code"] in (0, None) and warm["code"] in (0, None), (cold, warm)
    print("\n".join(lines))
    print(f"(baseline: {args.baseline or 'none'}; the baseline's checks: `preflight` as its real submit runs it)")


if __name__ == "__main__":
    main()
