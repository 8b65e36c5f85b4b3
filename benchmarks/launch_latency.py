"""Launch latency on the loopback SLURM cluster (`slurm/cluster.sh start` first, as root):

1. `submit` of a 100-point grid -> all 100 array tasks known to SLURM (one sbatch call), held so nothing runs;
   compared with 100 separate `sbatch` calls of the same script (the baseline a naive sweep would pay).
2. requeue -> first training step after resume: a running job is sent USR2 mid-epoch (the time-limit path; it
   requeues itself), then a `low` job is preempted by a `high` one (the SIGTERM path; SLURM kills it after the
   partition's GraceTime and requeues it): the time from the signal to the checkpoint on disk, to the requeued job's
   start, and to its first training step. The SIGTERM path needs `slurm/cluster.sh start --preemption`.

    python benchmarks/launch_latency.py [--root /tmp/zoobot-hpc-slurm]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.data.demo import write_demo_dataset
from zoobot_hpc.login.submit import plan_runs, submit_plan

REPO = Path(__file__).resolve().parents[1]


def squeue_count(job_id: str) -> int:
    out = subprocess.run(["squeue", "-h", "-r", "-j", job_id, "-o", "%i"], capture_output=True, text=True).stdout
    return len(out.split())


def write_config(tmp: Path, dataset: Path, **extra) -> Path:
    raw = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    raw["output_dir"] = str(tmp / "runs")
    raw["data"].update(dataset_dir=str(dataset), batch_size=8, num_workers=1)
    raw["data"]["augment"]["output_size"] = 32
    raw["trainer"].update(max_epochs=2, log_every_n_steps=5)
    raw["resources"].update(executor="slurm", cpus_per_task=1, time_min=10, **extra)
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def grid_submission(tmp: Path, dataset: Path) -> None:
    config = write_config(tmp, dataset, sbatch_extra={"hold": True})
    lrs = ",".join(f"{x:.1e}" for x in [1e-5 * 1.6**i for i in range(10)])
    wds = ",".join(f"{x:.3f}" for x in [0.01 * i for i in range(10)])
    start = time.perf_counter()
    plan = plan_runs(config, [f"model.learning_rate={lrs}", f"model.weight_decay={wds}"], sweep_name="grid100")
    submission = submit_plan(plan)
    submitted = time.perf_counter()
    array_id = submission.jobs[0].job_id.split("_")[0]
    while squeue_count(array_id) < 100:
        time.sleep(0.01)
    known = time.perf_counter()
    subprocess.run(["scancel", array_id], check=True)

    script = tmp / "one.sh"
    script.write_text("#!/bin/bash\n#SBATCH --hold\n#SBATCH --time=10\nsrun true\n")
    start_naive = time.perf_counter()
    ids = [
        subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, check=True).stdout.strip()
        for _ in range(100)
    ]
    naive = time.perf_counter() - start_naive
    subprocess.run(["scancel", *ids], check=True)
    print(
        f"100-point grid: submit (plan + login-node checks + one sbatch) {submitted - start:6.2f} s; "
        f"all 100 tasks pending {known - start:6.2f} s"
    )
    print(
        f"baseline, 100 separate sbatch calls:                            {naive:6.2f} s; "
        f"ratio {naive / (known - start):.1f}x"
    )


def log_time(line: str) -> float:
    stamp = line[:23]
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def preempt_with_high_job(node: str) -> None:
    """A `high` job needing every free core of `node` plus one: SLURM preempts the `low` job there (SIGTERM)."""
    info = subprocess.run(["scontrol", "show", "node", node], capture_output=True, text=True, check=True).stdout
    total, allocated = (int(re.search(rf"\b{key}=(\d+)", info).group(1)) for key in ("CPUTot", "CPUAlloc"))
    cpus = str(total - allocated + 1)
    command = ["sbatch", "-o", "/dev/null", "-p", "high", "-w", node, "-n", "1", "-c", cpus, "--wrap", "true"]
    subprocess.run(command, check=True, capture_output=True)


def requeue_latency(tmp: Path, dataset: Path, path: str) -> None:
    """`path` 'usr2': the time-limit signal (`scancel --signal=USR2`), the job requeues itself; 'sigterm': a `high`
    job preempts it (SIGTERM, killed after the partition's GraceTime, requeued by SLURM)."""
    config = write_config(tmp, dataset, partition="low") if path == "sigterm" else write_config(tmp, dataset)
    submission = submit_plan(plan_runs(config))
    job_id = submission.jobs[0].job_id
    run_dir = submission.plan.runs[0].run_dir
    log_path = submission.jobs[0].paths.stdout
    while not (log_path.exists() and "epoch 1/2 batch" in log_path.read_text()):
        time.sleep(0.05)
    if path == "sigterm":
        node = subprocess.run(["squeue", "-h", "-o", "%N", "-j", job_id], capture_output=True, text=True).stdout
        preempt_with_high_job(node.strip().split(",")[0])
    else:
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    while len(layout.read_segments(run_dir)) < 2:
        time.sleep(0.05)
    first, second = layout.read_segments(run_dir)[:2]
    arrived = first["stopped"] - first["stop_and_save_s"]
    pattern = re.compile(r"^(\S+ \S+) INFO zoobot_hpc[\w.]*: (.*)$", re.MULTILINE)
    while True:
        batches = [log_time(t) for t, m in pattern.findall(log_path.read_text()) if " batch " in m]
        resumed = [t for t in batches if t > second["start"]]
        if resumed:
            break
        time.sleep(0.05)
    print(f"{first['stop']}: signal -> checkpoint on disk, all ranks stopped: {first['stop_and_save_s']:6.2f} s")
    print(f"{first['stop']}: signal -> requeued job running again:          {second['start'] - arrived:6.2f} s")
    print(f"{first['stop']}: signal -> first training step resumed:         {resumed[0] - arrived:6.2f} s")
    subprocess.run(["scancel", job_id], check=True)
    while squeue_count(job_id):  # a cancelled job still saves on SIGTERM: let it end before its folder goes
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.environ.get("ZOOBOT_SLURM_ROOT", "/tmp/zoobot-hpc-slurm"))
    args = parser.parse_args()
    env_file = Path(args.root) / "env.sh"
    if not env_file.exists() or shutil.which("sbatch") is None:
        raise SystemExit(f"no loopback cluster at {args.root}: run `slurm/cluster.sh start` first")
    os.environ["SLURM_CONF"] = str(Path(args.root) / "etc" / "slurm.conf")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        dataset = tmp / "demo"
        write_demo_dataset(dataset, n_galaxies=400, image_size=32, seed=0)
        grid_submission(tmp / "grid", dataset)
        requeue_latency(tmp / "requeue", dataset, "usr2")
        if (
            "PartitionName=low"
            in subprocess.run(["scontrol", "show", "partition"], capture_output=True, text=True).stdout
        ):
            requeue_latency(tmp / "preempted", dataset, "sigterm")
        else:
            print("SIGTERM path skipped: the cluster has no `low` partition (slurm/cluster.sh start --preemption)")


if __name__ == "__main__":
    main()
