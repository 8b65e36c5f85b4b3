"""What W&B logging costs per epoch: the same small run trained with tracking off and with offline W&B logging
(named lrs, per-task metrics and charts, the galaxy table), per-epoch wall time and the bytes written per validation
pass; then the run's page figure (README) rendered from the logged run by `zoobot_hpc.login.run_page`.

    python benchmarks/wandb_logging_cost.py --galaxies 600 --epochs 3 --kind tree --figure docs/images/run_page.png
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from tests.support.trained_runs import run_config
from zoobot_hpc.data.demo import write_demo_dataset
from zoobot_hpc.login.run_page import plot_run_page
from zoobot_hpc.training.galaxy_table import GalaxyTable
from zoobot_hpc.training.run import run_training
from zoobot_hpc.training.segment_logger import SegmentWandbLogger
from zoobot_hpc.training.wandb_figures import ValidationFigures

SPENT: dict[str, float] = defaultdict(float)
TIMED = [
    (GalaxyTable, "on_validation_batch_end"),
    (GalaxyTable, "on_validation_end"),
    (ValidationFigures, "on_validation_end"),
    (SegmentWandbLogger, "log_metrics"),
]


def time_logging_hooks() -> None:
    """Add the seconds spent in each W&B logging hook to SPENT (`log_metrics` includes the lr/<layer> rows)."""
    for cls, name in TIMED:
        original = getattr(cls, name)

        @functools.wraps(original)
        def timed(*args, _original=original, _key=f"{cls.__name__}.{name}", **kwargs):
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                SPENT[_key] += time.perf_counter() - start

        setattr(cls, name, timed)


def fit_seconds(dataset: Path, root: Path, kind: str, epochs: int, size: int, tracking: dict) -> float:
    config = run_config(dataset, root, kind, tracking=tracking, trainer={"max_epochs": epochs, "log_every_n_steps": 5})
    config = config.model_copy(
        update={
            "data": config.data.model_copy(
                update={"augment": config.data.augment.model_copy(update={"output_size": size})}
            )
        }
    )
    start = time.perf_counter()
    run_training(config, root / kind, interactive=False)
    return time.perf_counter() - start


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--galaxies", type=int, default=600)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--kind", default="tree", choices=["classifier", "regressor", "tree"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--figure", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dataset = root / "data"
        write_demo_dataset(dataset, n_galaxies=args.galaxies, image_size=args.size, seed=1)
        results: dict[str, list[float]] = {"disabled": [], "offline": []}
        time_logging_hooks()
        for repeat in range(args.repeats):
            for mode in ("disabled", "offline"):
                out = root / f"{mode}-{repeat}"
                results[mode].append(
                    fit_seconds(dataset, out, args.kind, args.epochs, args.size, {"mode": mode, "project": "bench"})
                )
        off, on = min(results["disabled"]), min(results["offline"])
        run_dir = root / "offline-0" / args.kind
        wandb_bytes = directory_bytes(run_dir / "wandb")
        print(f"{args.kind}, {args.galaxies} galaxies at {args.size} px, {args.epochs} epochs, best of {args.repeats}:")
        print(f"  tracking disabled: {off / args.epochs:.2f} s/epoch; W&B offline: {on / args.epochs:.2f} s/epoch")
        print(f"  W&B cost: {(on - off) / args.epochs:+.3f} s/epoch ({(on - off) / off:+.1%}); all runs: {results}")
        hooks = sum(SPENT.values()) / args.repeats / args.epochs
        print(f"  in the W&B logging hooks: {hooks:.3f} s/epoch ({hooks / (off / args.epochs):.1%} of the epoch)")
        for key, seconds in SPENT.items():
            print(f"    {key}: {seconds / args.repeats / args.epochs * 1000:.1f} ms/epoch")
        print(f"  written by W&B: {wandb_bytes / 1e6:.2f} MB in all, {wandb_bytes / args.epochs / 1e6:.2f} MB per pass")
        if args.figure:
            print("  figure:", plot_run_page(run_dir, args.figure))


if __name__ == "__main__":
    main()
