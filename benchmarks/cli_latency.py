"""Login-node latency of the command line: wall time of `zoobot-hpc --help`, `status`, `submit --dry-run` and
`report`, each in a fresh interpreter, against `python -c "import torch"` measured in the same run.

Targets on the 2-core machine: `--help` and `status` <= 0.5 s, `submit --dry-run` <= 1 s. Each figure is the median
of `--repeats` runs (the machine may be shared). SLURM is not asked (`--dry-run` of a local-executor config), so
the figures are the command's own cost.

    python benchmarks/cli_latency.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TARGETS_S = {"--help": 0.5, "status RUN_DIR": 0.5, "submit CONFIG --dry-run": 1.0}


def median_wall_s(command: list[str], repeats: int, cwd: Path) -> float:
    """Median wall time of `command` over `repeats` runs (it must succeed)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def write_fixtures(tmp: Path) -> tuple[Path, Path]:
    """A local-executor copy of the demo config, and a finished run directory for `status` and `report`."""
    raw = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    raw["resources"]["executor"] = "local"
    config = tmp / "demo.yaml"
    config.write_text(yaml.safe_dump(raw))
    run = tmp / "runs" / "demo"
    (run / "metrics" / "version_0").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(raw))
    (run / "summary.json").write_text('{"monitor": "validation/loss", "best": 0.5, "epochs": 1, "metrics": {}}')
    (run / "metrics" / "version_0" / "metrics.csv").write_text("epoch,step,validation/loss\n0,10,0.5\n")
    return config, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    cli = [sys.executable, "-m", "zoobot_hpc.cli"]
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        config, run = write_fixtures(tmp)
        commands = {
            'python -c "import torch"': [sys.executable, "-c", "import torch"],
            "python -c pass": [sys.executable, "-c", "pass"],
            "--help": [*cli, "--help"],
            "status RUN_DIR": [*cli, "status", str(run)],
            "submit CONFIG --dry-run": [*cli, "submit", str(config), "--dry-run"],
            "report RUN_DIR": [*cli, "report", str(run), "--out", str(tmp / "report")],
        }
        figures = {label: median_wall_s(command, args.repeats, tmp) for label, command in commands.items()}
    torch_s = figures['python -c "import torch"']
    print(f"| command | median wall s ({args.repeats} runs) | / import torch | target |")
    print("|---|---|---|---|")
    for label, seconds in figures.items():
        target = TARGETS_S.get(label)
        verdict = "" if target is None else f"<= {target} s: {'met' if seconds <= target else 'NOT met'}"
        print(f"| `{label}` | {seconds:.2f} | {seconds / torch_s:.2f} | {verdict} |")


if __name__ == "__main__":
    main()
