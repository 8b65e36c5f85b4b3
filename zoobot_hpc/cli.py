"""`zoobot-hpc` command line: each command parses its options, calls one function and prints the result.

Commands import what they use inside their functions, so `--help` and the login-node commands start fast.
"""

from __future__ import annotations

import re
from pathlib import Path

import click

from zoobot_hpc.core.model_kinds import MODEL_KINDS

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


class Numbers(click.ParamType):
    """Comma-separated numbers, e.g. `0.5,99.5` or `2,1,0`."""

    name = "numbers"

    def __init__(self, kind: type, count: int | None = None) -> None:
        self.kind, self.count = kind, count

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> tuple:
        if isinstance(value, tuple):
            return value
        try:
            numbers = tuple(self.kind(part) for part in str(value).split(","))
        except ValueError:
            self.fail(f"{value!r} is not comma-separated {self.kind.__name__}s", param, ctx)
        if self.count is not None and len(numbers) != self.count:
            self.fail(f"{value!r} must give {self.count} numbers", param, ctx)
        return numbers


@main.command()
@click.argument("catalog", type=click.Path(exists=True))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Dataset directory.")
@click.option("--image-col", default="file_loc", show_default=True, help="Column with image paths or image bytes.")
@click.option("--id-col", default="id_str", show_default=True, help="Column with unique ids.")
@click.option("--label-col", "label_cols", multiple=True, help="Label column (repeat for several).")
@click.option("--schema", default=None, help="Add the label columns of a named Galaxy Zoo tree, e.g. decals_dr5.")
@click.option("--allow-nan", multiple=True, help="Label column where NaN (missing) is allowed (repeatable).")
@click.option("--size", default=224, show_default=True, type=click.IntRange(min=1), help="Image size (px).")
@click.option("--channels", default=3, show_default=True, type=click.Choice(["1", "3"]), help="Image channels.")
@click.option("--split-fractions", default="0.8,0.1,0.1", show_default=True, type=Fractions())
@click.option("--split-col", default=None, help="Column naming each row's split instead of the id hash.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1), help="Worker processes.")
@click.option("--shard-size", default="2GB", show_default=True, type=ByteSize(), help="Max bytes per shard.")
@click.option("--on-error", default="fail", show_default=True, type=click.Choice(["fail", "skip"]))
@click.option(
    "--stretch", type=click.Choice(["asinh", "percentile"]), help="Scale FITS, 16-bit and float pixels to 8 bits."
)
@click.option("--percentiles", default="0.5,99.5", show_default=True, type=Numbers(float, 2), help="Stretch range.")
@click.option("--asinh-softening", default=0.1, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--bands", type=Numbers(int), default=None, help="FITS image planes to use as channels, e.g. 2,1,0.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--submit", is_flag=True, help="Write the shards as a job array (resources.executor; local without one).")
@click.option(
    "--config", "job_config", type=click.Path(exists=True, dir_okay=False), help="--submit: YAML with resources."
)
@click.option("--resource", "resources", multiple=True, help="--submit: a resources KEY=VALUE, e.g. partition=low.")
@click.option(
    "--images-per-task", default=100_000, show_default=True, type=click.IntRange(min=1), help="--submit: task size."
)
def shard(
    catalog: str,
    out_dir: str,
    image_col: str,
    id_col: str,
    label_cols: tuple[str, ...],
    schema: str | None,
    allow_nan: tuple[str, ...],
    size: int,
    channels: str,
    split_fractions: tuple[float, float, float],
    split_col: str | None,
    workers: int,
    shard_size: int,
    on_error: str,
    stretch: str | None,
    percentiles: tuple[float, float],
    asinh_softening: float,
    bands: tuple[int, ...] | None,
    progress: bool,
    submit: bool,
    job_config: str | None,
    resources: tuple[str, ...],
    images_per_task: int,
) -> None:
    """Build HDF5 shards from a CSV/parquet CATALOG or a Hugging Face dataset (parquet file or folder, or a
    `save_to_disk` folder) whose --image-col holds encoded images. With --submit the shards are written by a job
    array (tasks of --images-per-task images, each with resources.cpus_per_task processes) and the manifest by
    its last step; the catalog is planned here."""
    from zoobot_hpc.core.disk_space import OutOfSpace
    from zoobot_hpc.data.build import build_dataset, failure_lines
    from zoobot_hpc.data.stretch import ImageScaling
    from zoobot_hpc.login.preflight import PreflightError

    try:
        if schema is not None:
            from zoobot_hpc.core.label_schemas import answer_column, preset_schema

            pairs, _ = preset_schema(schema)
            label_cols = (*label_cols, *(answer_column(q, a) for q, answers in pairs.items() for a in answers))
        scaling = None
        if stretch is not None:
            scaling = ImageScaling(stretch, *percentiles, asinh_softening=asinh_softening, bands=bands)
        elif bands is not None:
            raise ValueError("--bands selects FITS planes, which need --stretch as well")
        options = {
            "image_col": image_col,
            "id_col": id_col,
            "label_cols": label_cols,
            "size": size,
            "channels": int(channels),
            "split_fractions": split_fractions,
            "split_col": split_col,
            "shard_size_bytes": shard_size,
            "on_error": on_error,
            "allow_nan": allow_nan,
            "scaling": scaling,
        }
        from zoobot_hpc.login.build_status import refuse_active_build

        refuse_active_build(Path(out_dir))
        if submit:
            _submit_shard(catalog, out_dir, options, job_config, resources, images_per_task)
            return
        manifest = build_dataset(catalog, out_dir, num_workers=workers, progress=progress, **options)
    except OutOfSpace as error:
        _fail(error)
    except (ValueError, PreflightError) as error:
        if "unreadable images" in str(error):
            for line in failure_lines(out_dir):
                click.echo(line, err=True)
        raise click.ClickException(str(error)) from error
    for line in failure_lines(out_dir):
        click.echo(line, err=True)
    counts = ", ".join(f"{split} {manifest.split_count(split)}" for split in manifest.splits)
    click.echo(f"wrote {out_dir}: {counts}")


def _submit_shard(
    catalog: str, out_dir: str, options: dict, job_config: str | None, resources: tuple[str, ...], images_per_task: int
) -> None:
    """`shard --submit`: plan here, submit the build's array and its last step."""
    from zoobot_hpc.core.config import load_job_config
    from zoobot_hpc.data.build import prepare_build
    from zoobot_hpc.login.shard_submit import submit_build

    name = re.sub(r"[^A-Za-z0-9_.=,+-]", "-", f"shard-{Path(out_dir).name}")
    config = load_job_config(job_config, resources, name=name)
    prepared = prepare_build(catalog, out_dir, **options)
    done = submit_build(prepared, config, images_per_task)
    click.echo(
        f"submitted {len(done.tasks)} build task(s) for {len(prepared.tasks)} shard(s) and the last step "
        f"{done.finish.job_id} (it writes the manifest) with the {done.executor} executor; record: {done.record}"
    )
    for job in done.tasks:
        click.echo(f"  job {job.job_id}  log: {job.paths.stdout}")
    click.echo(f"  job {done.finish.job_id}  last step, log: {done.finish.paths.stdout}")


@main.command("demo-data")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--n", "n_galaxies", default=1200, show_default=True, type=click.IntRange(min=1))
@click.option("--size", "image_size", default=64, show_default=True, type=click.IntRange(min=8))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--shard-size", default="2GB", show_default=True, type=ByteSize(), help="Max bytes per shard.")
@click.option("--submit", is_flag=True, help="Write it in a job (resources.executor; local without a scheduler).")
@click.option("--resource", "resources", multiple=True, help="--submit: a resources KEY=VALUE, e.g. cpus_per_task=8.")
def demo_data(
    out_dir: str,
    n_galaxies: int,
    image_size: int,
    seed: int,
    workers: int,
    shard_size: int,
    submit: bool,
    resources: tuple[str, ...],
) -> None:
    """Write a synthetic galaxy dataset to OUT_DIR (no download needed)."""
    from zoobot_hpc.data.demo import write_demo_dataset

    if submit:
        from zoobot_hpc.core.config import ConfigError, load_job_config
        from zoobot_hpc.login.shard_submit import submit_demo

        name = re.sub(r"[^A-Za-z0-9_.=,+-]", "-", f"demo-{Path(out_dir).name}")
        try:
            config = load_job_config(None, resources, name)
            job = submit_demo(Path(out_dir), config, n_galaxies, image_size, seed, shard_size)
        except ConfigError as error:
            _fail(error)
        click.echo(f"submitted demo-data job {job.job_id}; log: {job.paths.stdout}")
        return

    manifest = write_demo_dataset(
        out_dir, n_galaxies, image_size, seed, num_workers=workers, shard_size_bytes=shard_size
    )
    counts = ", ".join(f"{split} {manifest.split_count(split)}" for split in manifest.splits)
    click.echo(f"wrote {out_dir}: {counts}")


@main.command()
@click.argument("dataset_dir", type=click.Path())
@click.option(
    "--checksums/--no-checksums",
    default=False,
    show_default=True,
    help="Also verify every shard's sha256 (in parallel; shards verified before and unchanged are not hashed again).",
)
@click.option("--rehash", is_flag=True, help="With --checksums: hash every shard, verified before or not.")
@click.option("--workers", default=None, type=click.IntRange(min=1), help="Checksum threads (default: CPUs, max 8).")
@click.option(
    "--locking/--no-locking", default=False, show_default=True, help="HDF5 file locking (off for Lustre/GPFS/NFS)."
)
@click.option("--label-col", "label_cols", multiple=True, help="Label column that must exist (repeatable).")
@click.option("--submit", is_flag=True, help="With --checksums: hash in a job (resources.executor), not here.")
@click.option(
    "--config", "job_config", type=click.Path(exists=True, dir_okay=False), help="--submit: YAML with resources."
)
@click.option("--resource", "resources", multiple=True, help="--submit: a resources KEY=VALUE, e.g. partition=low.")
def inspect(
    dataset_dir: str,
    checksums: bool,
    rehash: bool,
    workers: int | None,
    locking: bool,
    label_cols: tuple[str, ...],
    submit: bool,
    job_config: str | None,
    resources: tuple[str, ...],
) -> None:
    """Validate a shard dataset and print its summary; exit code 0 only when it is valid.

    By default: structure, counts, ids (unique), labels and a sample of every shard's pixels, read from the
    shards' metadata (seconds for millions of images). `--checksums --submit` hashes every shard in a job, whose
    verdict is written to DATASET/.zoobot-build/checksum_job.json."""
    from zoobot_hpc.data.shard_format import DatasetError
    from zoobot_hpc.data.validate import inspect_dataset

    if submit:
        _submit_checksums(dataset_dir, checksums, rehash, label_cols, job_config, resources)
        return
    try:
        summary = inspect_dataset(
            dataset_dir,
            required_label_cols=label_cols,
            verify_checksums=checksums,
            locking=locking,
            workers=workers,
            rehash=rehash,
        )
    except DatasetError as error:
        raise click.ClickException(str(error)) from error
    click.echo(summary.format())
    if not summary.is_valid:
        raise SystemExit(1)


def _submit_checksums(
    dataset_dir: str,
    checksums: bool,
    rehash: bool,
    label_cols: tuple[str, ...],
    job_config: str | None,
    resources: tuple[str, ...],
) -> None:
    """`inspect --checksums --submit`: the checksum job, submitted."""
    from pathlib import Path

    from zoobot_hpc.core.config import ConfigError, load_job_config
    from zoobot_hpc.data.shard_format import DatasetError
    from zoobot_hpc.login.shard_submit import submit_checksums
    from zoobot_hpc.runtime.inspect_job import result_path

    if not checksums:
        _fail(
            ValueError("--submit runs the checksums as a job: add --checksums (the default checks take seconds here)")
        )
    name = re.sub(r"[^A-Za-z0-9_.=,+-]", "-", f"checksums-{Path(dataset_dir).name}")
    try:
        job = submit_checksums(Path(dataset_dir), load_job_config(job_config, resources, name), label_cols, rehash)
    except (ConfigError, DatasetError) as error:
        _fail(error)
    click.echo(f"submitted checksum job {job.job_id}; log: {job.paths.stdout}")
    click.echo(f"  its verdict: {result_path(Path(dataset_dir))}")


def _fail(error: Exception) -> None:
    """End a command with one line; secrets the error quotes are hidden (zoobot_hpc.core.redaction)."""
    from zoobot_hpc.core.redaction import redact_text

    raise click.ClickException(redact_text(str(error))) from error


@main.command(context_settings={"ignore_unknown_options": False})
@click.argument("config", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--grid", "grid_file", type=click.Path(exists=True, dir_okay=False), help="Grid file to sweep.")
@click.option(
    "--search", "search_file", type=click.Path(exists=True, dir_okay=False), help="Search file (Optuna trials)."
)
@click.option("--sweep-name", default=None, help="Name of the sweep directory (default: config name + time).")
@click.option(
    "--dry-run", is_flag=True, help="Run every check submit runs, print the config(s) and job script; queue nothing."
)
@click.option("--follow", is_flag=True, help="Stream the job's log until it ends, then print its results.")
@click.option("--no-download", is_flag=True, help="Fail instead of downloading missing encoder weights.")
def submit(
    config: str,
    overrides: tuple[str, ...],
    grid_file: str | None,
    search_file: str | None,
    sweep_name: str | None,
    dry_run: bool,
    follow: bool,
    no_download: bool,
) -> None:
    """Submit CONFIG (with KEY=VALUE overrides; KEY=a,b,c sweeps) as one job or one job array."""
    from zoobot_hpc.core.config import ConfigError
    from zoobot_hpc.data.shard_format import DatasetError
    from zoobot_hpc.login.preflight import PreflightError
    from zoobot_hpc.login.status import follow as follow_logs
    from zoobot_hpc.login.submit import check_plan, describe_plan, plan_runs, submit_plan, submit_warnings

    if search_file:
        if grid_file:
            _fail(ConfigError("--grid and --search: choose one (a search file may use sampler: grid)"))
        _submit_search(config, overrides, search_file, sweep_name, dry_run, no_download)
        return
    try:
        plan = plan_runs(config, overrides, grid_file, sweep_name)
        if dry_run:
            warnings = check_plan(plan, allow_download=not no_download, dry_run=True)
            click.echo(describe_plan(plan))
            _echo_warnings(warnings + submit_warnings(plan))
            return
        submission = submit_plan(plan, allow_download=not no_download)
    except (ConfigError, PreflightError, DatasetError) as error:
        _fail(error)
    where = plan.base_dir.resolve()
    click.echo(f"submitted {len(submission.jobs)} run(s) with the {plan.executor} executor; run dir: {where}")
    for run, job, log_path in zip(plan.runs, submission.jobs, submission.log_paths(), strict=True):
        click.echo(f"  job {job.job_id}  {run.name}  log: {log_path}")
    _echo_warnings(submit_warnings(plan))
    if plan.sweep_name:
        click.echo(f"watch it: zoobot-hpc status {where}")
    if follow:
        follow_logs(submission.log_paths(), lambda: all(job.done() for job in submission.jobs))
        click.echo(_results_text(plan.runs[0].run_dir))


def _echo_warnings(lines: list[str]) -> None:
    for line in lines:
        click.echo(f"warning: {line}", err=True)


def _submit_search(
    config: str, overrides: tuple[str, ...], search_file: str, sweep_name: str | None, dry_run: bool, no_download: bool
) -> None:
    from zoobot_hpc.core.config import ConfigError
    from zoobot_hpc.data.shard_format import DatasetError
    from zoobot_hpc.login.preflight import PreflightError
    from zoobot_hpc.search.submit import describe_search, plan_search, search_warnings, submit_search

    try:
        plan = plan_search(config, overrides, search_file, sweep_name)
        if dry_run:
            from zoobot_hpc.login.preflight import preflight

            warnings = preflight(
                [plan.config], plan.executor, plan.base_dir, allow_download=not no_download, dry_run=True
            )
            click.echo(describe_search(plan))
            _echo_warnings([*warnings, *search_warnings(plan)])
            return
        jobs = submit_search(plan, allow_download=not no_download)
    except (ConfigError, PreflightError, DatasetError) as error:
        _fail(error)
    where = plan.base_dir.resolve()
    click.echo(
        f"submitted a search of {plan.spec.trials} trials ({plan.spec.parallel} at a time) with the "
        f"{plan.executor} executor; search dir: {where}"
    )
    for job in jobs:
        click.echo(f"  job {job.job_id}  log: {job.paths.stdout}")
    _echo_warnings(search_warnings(plan))
    click.echo(f"watch it: zoobot-hpc status {where}")


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--follow", is_flag=True, help="Stream the job's log until it ends, then print its results.")
def resume(run_dir: str, follow: bool) -> None:
    """Submit a stopped run again (cancelled, out of time-limit requeues, preempted where preemption cancels):
    it continues from the newest checkpoint in RUN_DIR."""
    from zoobot_hpc.core.config import ConfigError
    from zoobot_hpc.data.shard_format import DatasetError
    from zoobot_hpc.login.preflight import PreflightError
    from zoobot_hpc.login.status import follow as follow_logs
    from zoobot_hpc.login.submit import plan_resume, submit_plan

    try:
        plan = plan_resume(run_dir)
        submission = submit_plan(plan)
    except (ConfigError, PreflightError, DatasetError) as error:
        _fail(error)
    [job] = submission.jobs
    click.echo(f"resumed {plan.runs[0].run_dir} as job {job.job_id} ({plan.executor}); log: {job.paths.stdout}")
    if follow:
        follow_logs(submission.log_paths(), job.done)
        click.echo(_results_text(plan.runs[0].run_dir))


def _results_text(run_dir) -> str:
    from zoobot_hpc.core import run_dir as layout
    from zoobot_hpc.training.tracking import offline_segments

    summary = layout.read_json(run_dir / layout.SUMMARY)
    if summary is None:
        from zoobot_hpc.login.status import collect_status

        why = next((row.why for row in collect_status(run_dir) if row.why), "")
        return f"the run did not finish ({why}); see {run_dir}" if why else f"the run did not finish; see {run_dir}"
    metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(summary["metrics"].items()) if k.startswith("validation/"))
    lines = [
        f"validation: {metrics}",
        f"best {summary['monitor']}={summary['best']:.4g}: {summary['best_checkpoint']}",
        f"checkpoints: {run_dir / layout.CHECKPOINTS}",
    ]
    segments = offline_segments(run_dir)
    if segments:
        lines.append(f"W&B offline run: {segments[-1]} (upload: zoobot-hpc sync {run_dir})")
    return "\n".join(lines)


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--run-dir", type=click.Path(file_okay=False), default=None, help="Default: OUTPUT_DIR/NAME.")
def train(config: str, overrides: tuple[str, ...], run_dir: str | None) -> None:
    """Run CONFIG in this process or allocation (salloc, workstation, your own sbatch script)."""
    from pathlib import Path

    from zoobot_hpc.core.config import ConfigError, load_config
    from zoobot_hpc.login.preflight import PreflightError, check_run_dir
    from zoobot_hpc.runtime.node import configure_job_logging
    from zoobot_hpc.runtime.preemption import run_preemptible
    from zoobot_hpc.training.run import run_training

    try:
        run_config = load_config(config, overrides)
    except ConfigError as error:
        _fail(error)
    target = Path(run_dir) if run_dir else run_config.output_dir / run_config.name
    try:
        run_config = check_run_dir(run_config, target)
    except PreflightError as error:
        _fail(error)
    configure_job_logging()
    from torch import OutOfMemoryError

    from zoobot_hpc.core.disk_space import OutOfSpace
    from zoobot_hpc.data.shard_format import DatasetError
    from zoobot_hpc.runtime.run_lease import RunDirOwned
    from zoobot_hpc.training.checkpointing import NoValidCheckpoint
    from zoobot_hpc.training.nonfinite import NonFiniteTraining

    try:
        run_preemptible(lambda flag: run_training(run_config, target, flag=flag), submitted=False)
    except (OutOfSpace, NonFiniteTraining, DatasetError, NoValidCheckpoint, RunDirOwned, OutOfMemoryError) as error:
        _fail(error)
    click.echo(_results_text(target))


@main.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False))
def status(path: str) -> None:
    """One line per run of a sweep or run directory: state, requeues, epoch, best metric, checkpoint; for a
    search, one line per trial (parameters, state, epochs, best metric) and the best so far; for a dataset built
    by `shard --submit`, one line per task and the last step."""
    from pathlib import Path

    from zoobot_hpc.data.shard_format import STATE_DIR
    from zoobot_hpc.login.arrays import arrays_line
    from zoobot_hpc.login.build_status import SUBMISSION, build_status_lines
    from zoobot_hpc.login.status import collect_status
    from zoobot_hpc.search.study import is_search_dir

    if (Path(path) / STATE_DIR / SUBMISSION).exists():
        click.echo("\n".join(build_status_lines(Path(path))))
        return
    if is_search_dir(Path(path)):
        from zoobot_hpc.core.config import ConfigError
        from zoobot_hpc.search.status import status_lines

        try:
            click.echo("\n".join(status_lines(Path(path))))
        except ConfigError as error:  # e.g. a storage URL whose password search.json does not record
            _fail(error)
        return
    rows = collect_status(Path(path))
    if not rows:
        _fail(ValueError(f"{path}: no run directories (with config.yaml) found"))
    header = arrays_line(Path(path))
    if header:
        click.echo(header)
    for row in rows:
        click.echo(row.line())


@main.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False))
def cancel(path: str) -> None:
    """Cancel the jobs of a sweep, search or run directory."""
    from pathlib import Path

    from zoobot_hpc.login.status import cancel_runs
    from zoobot_hpc.search.study import is_search_dir

    if is_search_dir(Path(path)):
        from zoobot_hpc.search.status import cancel_search

        cancelled = cancel_search(Path(path))
    else:
        cancelled = cancel_runs(Path(path))
    click.echo(f"cancelled {len(cancelled)} job(s): {' '.join(cancelled)}" if cancelled else "nothing to cancel")


@main.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--dry-run", is_flag=True, help="Print what would be uploaded, in order (each segment's steps), and the commands."
)
def sync(path: str, dry_run: bool) -> None:
    """Upload the offline W&B runs under PATH, each requeued run's segments joined into one run."""
    import shlex
    from pathlib import Path

    from zoobot_hpc.core import run_dir as layout
    from zoobot_hpc.core.config import load_config
    from zoobot_hpc.training.tracking import sync_command, sync_plan, sync_run

    failures = 0
    for run in layout.find_run_dirs(Path(path)):
        config = load_config(run / layout.CONFIG)
        command = sync_command(run, config)
        if command is None:
            continue
        for line in sync_plan(run):
            click.echo(line)
        click.echo(shlex.join(command))
        if not dry_run:
            failures += sync_run(run, config) != 0
    if failures:
        raise SystemExit(1)


def _inference_options(function):
    """Options shared by `predict` and `embed`."""
    options = [
        click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False)),
        click.argument("dataset_dir", type=click.Path(exists=True, file_okay=False)),
        click.argument("overrides", nargs=-1),
        click.option("--out", type=click.Path(dir_okay=False), default=None, help="HDF5 output (default: in RUN_DIR)."),
        click.option(
            "--format",
            "export_format",
            type=click.Choice(["csv", "parquet", "zoobot-csv"]),
            help="Also write a table; zoobot-csv: the columns of Zoobot's predict_on_catalog (id_str, {answer}_pred).",
        ),
        click.option("--split", "splits", multiple=True, help="Split to run over (repeatable; default: all)."),
        click.option("--overwrite", is_flag=True, help="Replace existing outputs once the new ones are complete."),
        click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), help="Run config."),
        click.option("--chunk-size", default=4096, show_default=True, type=click.IntRange(min=1)),
        click.option("--here", is_flag=True, help="Run in this process or allocation instead of submitting."),
        click.option("--wait", is_flag=True, help="Wait for the submitted job and print its output."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _infer(mode: str, options: dict) -> None:
    from pathlib import Path

    from zoobot_hpc.core.config import ConfigError
    from zoobot_hpc.core.disk_space import OutOfSpace
    from zoobot_hpc.data.shard_format import DatasetError
    from zoobot_hpc.inference.job import run_request_here, submit_request
    from zoobot_hpc.inference.request import InferenceError, InferenceRequest, default_output

    checkpoint, dataset_dir = Path(options["checkpoint"]), Path(options["dataset_dir"])
    request = InferenceRequest(
        checkpoint=checkpoint,
        dataset_dir=dataset_dir,
        out=Path(options["out"]) if options["out"] else default_output(checkpoint, dataset_dir, mode),
        mode=mode,
        task=options.get("task"),
        mc_samples=options.get("mc_samples"),
        export_format=options["export_format"],
        splits=tuple(options["splits"]) or None,
        overwrite=options["overwrite"],
        chunk_size=options["chunk_size"],
    )
    config_path = Path(options["config_file"]) if options["config_file"] else None
    try:
        if options["here"]:
            click.echo(f"wrote {run_request_here(request, config_path, options['overrides'])}")
            return
        job, plan = submit_request(request, config_path, options["overrides"])
    except (ConfigError, DatasetError, InferenceError, OutOfSpace) as error:
        _fail(error)
    click.echo(f"submitted {mode} job {job.job_id} over {plan.total} galaxies; log: {job.paths.stdout}")
    if options["wait"]:
        click.echo(f"wrote {job.results()[0]}")


@main.command()
@_inference_options
@click.option("--task", type=click.Choice(MODEL_KINDS), help="Fail unless the model is one.")
@click.option("--mc-samples", type=click.IntRange(min=1), default=None, help="Keep dropout on; N samples per galaxy.")
def predict(**options) -> None:
    """Predict with CHECKPOINT over every shard of DATASET_DIR (KEY=VALUE overrides: batch size, resources)."""
    _infer("predict", options)


@main.command()
@_inference_options
def embed(**options) -> None:
    """Write the encoder's pooled embeddings of every galaxy of DATASET_DIR (KEY=VALUE overrides as for predict)."""
    _infer("embed", options)


@main.command()
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--push", "repo_id", default=None, metavar="OWNER/REPO", help="Upload to this Hugging Face model repo.")
@click.option("--public", is_flag=True, help="Create the Hub repository as public (default: private).")
@click.option("--private", is_flag=True, hidden=True, help="Create the Hub repository as private (the default).")
def export(checkpoint: str, out_dir: str, repo_id: str | None, public: bool, private: bool) -> None:
    """Write CHECKPOINT's encoder and head to OUT_DIR in the timm / Hugging Face layout, with a model card
    (the run's model, data and trainer config, redacted); --push uploads it to a private Hub repository."""
    from zoobot_hpc.export import ExportError, export_checkpoint, push_export

    if public and private:
        _fail(ValueError("--public and --private: choose one"))
    try:
        exported = export_checkpoint(checkpoint, out_dir, repo_id)
    except ExportError as error:
        _fail(error)
    click.echo(f"wrote {out_dir}: {', '.join(exported.files)}")
    click.echo(f'load the encoder: timm.create_model("local-dir:{out_dir}", pretrained=True)')
    if repo_id is not None:
        try:
            url = push_export(out_dir, repo_id, private=not public)
        except ExportError as error:
            _fail(error)
        click.echo(f"pushed ({'public' if public else 'private'}): {url}")


@main.command()
@click.argument("sweep_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Default: SWEEP_DIR/report.")
def report(sweep_dir: str, out_dir: str | None) -> None:
    """Table and plots of a sweep's runs (best validation metric, epochs, requeues, wall time, images/s); for a
    search, also its optimisation history, parameter importances and metric against each parameter."""
    from zoobot_hpc.login.report import write_report
    from zoobot_hpc.search.report import write_search_report
    from zoobot_hpc.search.study import is_search_dir

    write = write_search_report if is_search_dir(Path(sweep_dir)) else write_report
    try:
        table, written = write(Path(sweep_dir), Path(out_dir) if out_dir else None)
    except ValueError as error:
        _fail(error)
    click.echo(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for path in written:
        click.echo(f"wrote {path}")


if __name__ == "__main__":
    main()
