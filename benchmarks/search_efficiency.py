"""A 3x3 grid against a 9-trial search (TPE + successive-halving pruning) over the same ranges, on the demo data,
side by side on the loopback SLURM cluster (`slurm/cluster.sh start` first): both submitted with `zoobot-hpc submit`
at the same time, each `--parallel` tasks at once. Prints the best validation loss each reached and the training
epochs each spent, and writes both reports (the search's plots: `--images DIR` copies them there).

    python benchmarks/search_efficiency.py [--epochs 6] [--parallel 2] [--images docs/images]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.data.demo import write_demo_dataset
from zoobot_hpc.login.report import collect_runs, write_report
from zoobot_hpc.search.study import load_study

REPO = Path(__file__).resolve().parents[1]
LEARNING_RATES = [3.0e-4, 3.0e-3, 3.0e-2]
LAYER_DECAYS = [0.5, 0.7, 0.9]


def write_inputs(tmp: Path, dataset: Path, epochs: int, parallel: int) -> tuple[Path, Path, Path]:
    raw = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    raw["output_dir"] = str(tmp / "runs")
    raw["data"].update(dataset_dir=str(dataset), batch_size=16, num_workers=0)
    raw["data"]["augment"]["output_size"] = 32
    raw["model"]["scheduler_kwargs"] = {"sched": "cosine", "num_epochs": epochs, "warmup_epochs": 0}
    raw["trainer"].update(max_epochs=epochs, log_every_n_steps=10, seed=0)
    raw["resources"].update(executor="slurm", cpus_per_task=1, time_min=60, array_parallelism=parallel)
    raw["tracking"]["mode"] = "disabled"
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    grid = tmp / "grid.yaml"
    grid.write_text(
        yaml.safe_dump({"grid": {"model.learning_rate": LEARNING_RATES, "model.layer_decay": LAYER_DECAYS}})
    )
    search = tmp / "search.yaml"
    spec = {
        "trials": 9,
        "parallel": parallel,
        "sampler": "tpe",
        "pruner": {"kind": "asha", "min_epochs": 2},
        "parameters": {
            "model.learning_rate": {"loguniform": [LEARNING_RATES[0], LEARNING_RATES[-1]]},
            "model.layer_decay": {"uniform": [LAYER_DECAYS[0], LAYER_DECAYS[-1]]},
        },
    }
    search.write_text(yaml.safe_dump(spec, sort_keys=False))
    return config, grid, search


def submit(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "zoobot_hpc.cli", "submit", *args], capture_output=True, text=True, check=True
    ).stdout
    return out.split("job ", 1)[1].split("_", 1)[0]


def wait(array_ids: list[str]) -> float:
    start = time.monotonic()
    while True:
        out = subprocess.run(
            ["squeue", "-h", "-j", ",".join(array_ids), "-o", "%i"], capture_output=True, text=True
        ).stdout
        if not out.strip():
            return time.monotonic() - start
        time.sleep(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--parallel", type=int, default=2, help="tasks at once, for each of the two")
    parser.add_argument("--galaxies", type=int, default=600)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--images", type=Path, default=None, help="copy the search's report plots here")
    args = parser.parse_args()
    tmp = args.workdir or Path(tempfile.mkdtemp(prefix="search-efficiency-"))
    dataset = tmp / "demo"
    if not dataset.exists():
        write_demo_dataset(dataset, n_galaxies=args.galaxies, image_size=32, seed=0)
    config, grid, search = write_inputs(tmp, dataset, args.epochs, args.parallel)
    arrays = [
        submit(str(config), "--grid", str(grid), "--sweep-name", "grid"),
        submit(str(config), "--search", str(search), "--sweep-name", "search"),
    ]
    print(f"submitted grid {arrays[0]} and search {arrays[1]} under {tmp}/runs", flush=True)
    wall = wait(arrays)

    grid_runs = collect_runs(tmp / "runs" / "grid")
    grid_best = min(run.best for run in grid_runs if run.best is not None)
    grid_epochs = sum(run.epochs for run in grid_runs)
    study = load_study(tmp / "runs" / "search")[0]
    trials = study.get_trials()
    search_epochs = sum(max(t.intermediate_values, default=0) for t in trials)
    states = {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
    for sweep in ("grid", "search"):
        write_report(tmp / "runs" / sweep)
    best = study.best_trial
    print(f"\nboth done in {wall:.0f} s ({args.epochs} epochs max, {args.parallel} tasks at once each)\n")
    print("| | runs | best validation/loss | training epochs |")
    print("|---|---|---|---|")
    print(f"| 3x3 grid | 9 | {grid_best:.4f} | {grid_epochs} |")
    print(
        f"| TPE + ASHA search | 9 ({states['COMPLETE']} complete, {states['PRUNED']} pruned, {states['FAIL']} failed) "
        f"| {best.value:.4f} | {search_epochs} |"
    )
    print(f"\nbest trial {best.number}: {best.params}")
    best_grid = min((r for r in grid_runs if r.best is not None), key=lambda r: r.best)
    print(f"best grid run: {best_grid.name}")
    if args.images:
        args.images.mkdir(parents=True, exist_ok=True)
        for name in ("optimization_history.png", "intermediate_values.png", "param_importances.png"):
            shutil.copy(tmp / "runs" / "search" / "report" / name, args.images / f"search_{name}")
        for path in (tmp / "runs" / "search" / "report").glob("validation_loss_vs_*.png"):
            shutil.copy(path, args.images / f"search_{path.name}")
        print(f"copied the search's plots to {args.images}")
    summary = {
        "grid": {"best": grid_best, "epochs": grid_epochs},
        "search": {"best": best.value, "epochs": search_epochs},
    }
    layout.write_json(tmp / "search_efficiency.json", summary)


if __name__ == "__main__":
    main()
