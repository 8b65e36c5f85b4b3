"""`zoobot-hpc` command line: each command parses its options, calls one function and prints the result."""

from __future__ import annotations

import re

import click

from zoobot_hpc.data.shard_format import DatasetError

_BYTE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


class ByteSize(click.ParamType):
    """A size in bytes: `2147483648`, `512MB`, `2G`, `1.5GiB` (binary units)."""

    name = "size"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?B)?\s*", str(value), flags=re.IGNORECASE)
        if match is None or float(match.group(1)) <= 0:
            self.fail(f"{value!r} is not a positive size such as 2GB or 500MB", param, ctx)
        return int(float(match.group(1)) * _BYTE_UNITS[match.group(2).upper()])


class Fractions(click.ParamType):
    """Comma-separated train,val,test fractions, e.g. `0.8,0.1,0.1`."""

    name = "fractions"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> tuple:
        if isinstance(value, tuple):
            return value
        try:
            fractions = tuple(float(part) for part in str(value).split(","))
        except ValueError:
            self.fail(f"{value!r} is not comma-separated numbers such as 0.8,0.1,0.1", param, ctx)
        if len(fractions) != 3:
            self.fail(f"{value!r} must give three fractions (train,val,test)", param, ctx)
        return fractions


@click.group()
@click.version_option(package_name="zoobot-hpc")
def main() -> None:
    """Finetune Zoobot-style galaxy-morphology models at scale on SLURM clusters."""


@main.command()
@click.argument("catalog", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Dataset directory.")
@click.option("--image-col", default="file_loc", show_default=True, help="Column with image paths.")
@click.option("--id-col", default="id_str", show_default=True, help="Column with unique ids.")
@click.option("--label-col", "label_cols", multiple=True, help="Label column (repeat for several).")
@click.option("--allow-nan", multiple=True, help="Label column where NaN (missing) is allowed (repeatable).")
@click.option("--size", default=224, show_default=True, type=click.IntRange(min=1), help="Image size (px).")
@click.option(
    "--channels", default=3, show_default=True, type=click.Choice(["1", "3"]), help="Image channels."
)
@click.option("--split-fractions", default="0.8,0.1,0.1", show_default=True, type=Fractions())
@click.option("--split-col", default=None, help="Column naming each row's split instead of the id hash.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1), help="Worker processes.")
@click.option("--shard-size", default="2GB", show_default=True, type=ByteSize(), help="Max bytes per shard.")
@click.option("--on-error", default="fail", show_default=True, type=click.Choice(["fail", "skip"]))
@click.option("--progress/--no-progress", default=True, show_default=True)
def shard(
    catalog: str,
    out_dir: str,
    image_col: str,
    id_col: str,
    label_cols: tuple[str, ...],
    allow_nan: tuple[str, ...],
    size: int,
    channels: str,
    split_fractions: tuple[float, float, float],
    split_col: str | None,
    workers: int,
    shard_size: int,
    on_error: str,
    progress: bool,
) -> None:
    """Build HDF5 shards from a CSV/parquet CATALOG."""
    from zoobot_hpc.data.build import build_dataset

    try:
        manifest = build_dataset(
            catalog,
            out_dir,
            image_col=image_col,
            id_col=id_col,
            label_cols=label_cols,
            size=size,
            channels=int(channels),
            split_fractions=split_fractions,
            split_col=split_col,
            num_workers=workers,
            shard_size_bytes=shard_size,
            on_error=on_error,
            progress=progress,
            allow_nan=allow_nan,
        )
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    counts = ", ".join(f"{split} {manifest.split_count(split)}" for split in manifest.splits)
    click.echo(f"wrote {out_dir}: {counts}")


@main.command("demo-data")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--n", "n_galaxies", default=1200, show_default=True, type=click.IntRange(min=1))
@click.option("--size", "image_size", default=64, show_default=True, type=click.IntRange(min=8))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1))
def demo_data(out_dir: str, n_galaxies: int, image_size: int, seed: int, workers: int) -> None:
    """Write a synthetic galaxy dataset to OUT_DIR (no download needed)."""
    from zoobot_hpc.data.demo import write_demo_dataset

    manifest = write_demo_dataset(out_dir, n_galaxies, image_size, seed, num_workers=workers)
    counts = ", ".join(f"{split} {manifest.split_count(split)}" for split in manifest.splits)
    click.echo(f"wrote {out_dir}: {counts}")


@main.command()
@click.argument("dataset_dir", type=click.Path())
@click.option("--checksums/--no-checksums", default=True, show_default=True, help="Verify shard sha256.")
@click.option("--locking/--no-locking", default=None, help="HDF5 file locking (default: HDF5's).")
@click.option("--label-col", "label_cols", multiple=True, help="Label column that must exist (repeatable).")
def inspect(dataset_dir: str, checksums: bool, locking: bool | None, label_cols: tuple[str, ...]) -> None:
    """Validate a shard dataset and print its summary; exit code 0 only when it is valid."""
    from zoobot_hpc.data.validate import inspect_dataset

    try:
        summary = inspect_dataset(
            dataset_dir, required_label_cols=label_cols, verify_checksums=checksums, locking=locking
        )
    except DatasetError as error:
        raise click.ClickException(str(error)) from error
    click.echo(summary.format())
    if not summary.is_valid:
        raise SystemExit(1)
