"""Start-up of a training job: submit the demo (local executor, 3 steps) and read from its log how long it took
from the job's start to its run directory and to its first training step; median of `--repeats` jobs.

    python benchmarks/job_startup.py [--repeats 3] [--tree PATH]

`--tree` runs another checkout's code (e.g. the main branch) on the same data, for before/after figures. The job's
own `start-up:` lines (phases, where this checkout logs them) are printed for the last job.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STARTED = re.compile(r"\((\S+ \S+)\) - Starting with")
RUN_DIR = re.compile(r"^(\S+ \S+) INFO zoobot_hpc[\w.]*: run dir", re.MULTILINE)
FIRST_STEP = re.compile(r"^(\S+ \S+) INFO zoobot_hpc[\w.]*: epoch 1/1 batch 1/", re.MULTILINE)


def _time(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def one_job(tree: Path, workdir: Path, name: str) -> tuple[float, float, str]:
    """(start -> run dir, start -> first step) in seconds, and the job's log."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, "-m", "zoobot_hpc.cli", "submit", str(tree / "configs" / "demo.yaml"), f"name={name}"]
    command += ["resources.executor=local", "trainer.max_epochs=1", "trainer.limit_train_batches=3"]
    command += ["trainer.limit_val_batches=1", "--follow"]
    subprocess.run(command, env=env, cwd=workdir, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = next((workdir / "runs" / name / "submitit").glob("*_0_log.out")).read_text()
    start = _time(STARTED.search(log).group(1))
    return _time(RUN_DIR.search(log).group(1)) - start, _time(FIRST_STEP.search(log).group(1)) - start, log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tree", type=Path, default=REPO, help="checkout whose code the jobs run")
    args = parser.parse_args()
    tree = args.tree.resolve()
    with tempfile.TemporaryDirectory(prefix="job-startup-") as name:
        workdir = Path(name)
        env = {**os.environ, "PYTHONPATH": str(tree)}
        demo = [sys.executable, "-m", "zoobot_hpc.cli", "demo-data", "demo_data"]
        subprocess.run(demo, env=env, cwd=workdir, check=True, stdout=subprocess.DEVNULL)
        figures = [one_job(tree, workdir, f"startup-{index}") for index in range(args.repeats)]
    to_run_dir = statistics.median(f[0] for f in figures)
    to_step = statistics.median(f[1] for f in figures)
    print(f"code: {tree}; {args.repeats} demo jobs; load average (1 min) {os.getloadavg()[0]:.1f}")
    print(f"job start -> run directory:       {to_run_dir:6.2f} s (median; each: {[round(f[0], 1) for f in figures]})")
    print(f"job start -> first training step: {to_step:6.2f} s (median; each: {[round(f[1], 1) for f in figures]})")
    print("\n".join(line for line in figures[-1][2].splitlines() if "start-up:" in line))


if __name__ == "__main__":
    main()
