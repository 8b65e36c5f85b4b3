"""Pytest plugin: the loopback SLURM cluster of `slurm/cluster.sh` as a session fixture.

Tests marked `slurm` get the cluster automatically. When it cannot be started (not root, packages missing,
a daemon failing) they are skipped with the reason, or fail when the `CI` environment variable is set.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPT = REPO_ROOT / "slurm" / "cluster.sh"
INSTALL_SCRIPT = REPO_ROOT / "slurm" / "install.sh"
DEFAULT_ROOT = Path("/tmp/zoobot-hpc-slurm")
TEST_NODES = 5  # n1 + n2 hold the 2-node x 2-task runs, n3 the 1-node x 4-task ones, n4 + n5 the lost-node run
TEST_CPUS_PER_NODE = 8  # virtual CPUs: with --preemption, `debug` does not oversubscribe its cores
REQUIRED_BINARIES = ("slurmctld", "slurmd", "slurmdbd", "sbatch", "sacct", "munged", "mariadbd")
START_TIMEOUT_S = 300
# States a job does not leave by itself (PREEMPTED and REQUEUED jobs come back as PENDING).
FINAL_STATES = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"}
)
SACCT_FIELDS = ("JobID", "JobName", "State", "ExitCode", "NodeList", "Start", "End")


class ClusterUnavailable(RuntimeError):
    """The loopback cluster is not running and cannot be started here."""


@dataclass(frozen=True)
class SlurmCluster:
    """A running loopback cluster: `env` holds its variables (`SLURM_CONF`, `ZOOBOT_SLURM_ROOT`)."""

    root: Path
    nodes: tuple[str, ...]
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a SLURM client command (`sbatch`, `scontrol`, ...) against this cluster."""
        return subprocess.run(
            args, env={**os.environ, **self.env}, capture_output=True, text=True, timeout=timeout, check=check
        )

    def sacct(self, job_id: str | int, *, allocations_only: bool = False) -> list[dict[str, str]]:
        """Accounting records of a job, oldest first: one per run (requeues included) and per step."""
        args = ["sacct", "--noheader", "--parsable2", "--duplicates", "--jobs", str(job_id)]
        args += ["--format", ",".join(SACCT_FIELDS)]
        if allocations_only:
            args.append("--allocations")
        lines = self.run(*args).stdout.splitlines()
        return [dict(zip(SACCT_FIELDS, line.split("|"), strict=True)) for line in lines if line]

    def settled_accounting(self, job_id: str | int, timeout: float = 30) -> list[dict[str, str]]:
        """The job's allocation records once accounting has caught up with the controller: slurmdbd records a
        job's end a moment after squeue shows it, so wait until no record is still PENDING or RUNNING."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.sacct(job_id, allocations_only=True)
            unsettled = [r for r in records if r["State"].split()[0] in ("PENDING", "RUNNING")]
            if (records and not unsettled) or time.monotonic() > deadline:
                return records
            time.sleep(0.2)

    def states(self, job_id: str | int) -> list[str]:
        """Current state of a job, or of each task of an array job; empty while SLURM does not know it yet."""
        queue = self.run("squeue", "--noheader", "--states=all", "--jobs", str(job_id), "--format=%T", check=False)
        if queue.returncode == 0 and queue.stdout.strip():
            return queue.stdout.split()
        latest: dict[str, str] = {}
        for record in self.sacct(job_id, allocations_only=True):
            latest[record["JobID"]] = record["State"].split()[0]
        return list(latest.values())

    def require_preemption(self) -> None:
        """Skip (fail under CI) unless the cluster was started with `cluster.sh start --preemption`."""
        partitions = self.run("sinfo", "--noheader", "--format=%R", check=False).stdout.split()
        if not {"low", "high"} <= set(partitions):
            message = f"the cluster at {self.root} has no low/high partitions: restart it with --preemption"
            if os.environ.get("CI"):
                pytest.fail(message, pytrace=False)
            pytest.skip(message)

    def preempt_low_jobs_on(self, node: str) -> str:
        """Submit a job to `high` that needs every free core of `node` and one more, so that SLURM must preempt a
        job of `low` there (`debug` jobs are never preempted); it ends at once. Needs `cluster.sh --preemption`."""
        info = self.run("scontrol", "show", "node", node).stdout
        total, allocated = (int(re.search(rf"\b{key}=(\d+)", info).group(1)) for key in ("CPUTot", "CPUAlloc"))
        submitted = self.run(
            "sbatch",
            "--parsable",
            "-p",
            "high",
            "-w",
            node,
            "-n",
            "1",
            "-c",
            str(total - allocated + 1),
            "-o",
            "/dev/null",
            "--wrap",
            "true",
        )
        return submitted.stdout.strip()

    def fail_node(self, node: str) -> None:
        """`node` stops answering, with every process of its job steps (`cluster.sh fail-node`): SLURM sets it
        DOWN after SlurmdTimeout and requeues its jobs."""
        _check(_cluster_command("fail-node", self.root, node))

    def reboot_node(self, node: str) -> None:
        """`node` comes back empty (`cluster.sh reboot-node`), and idle once this returns."""
        _check(_cluster_command("reboot-node", self.root, node, timeout=START_TIMEOUT_S))

    def config_value(self, key: str) -> str | None:
        """`KEY` as the controller reports it now (`scontrol show config`)."""
        shown = self.run("scontrol", "show", "config").stdout
        found = re.search(rf"^{key}\s*=\s*(\S+)", shown, flags=re.MULTILINE)
        return found.group(1) if found else None

    @contextmanager
    def configured(self, key: str, value: str, timeout: float = 30) -> Iterator[None]:
        """slurm.conf with `KEY=VALUE` (`scontrol reconfigure`) for the block, then the original file again.
        Only what the controller reports changes at once; some values (MaxArraySize) it enforces only after a
        restart."""
        conf = Path(self.env["SLURM_CONF"])
        original = conf.read_text()
        before = self.config_value(key)
        conf.write_text(f"{original}{key}={value}\n")
        try:
            self._reconfigure_until(key, value, timeout)
            yield
        finally:
            conf.write_text(original)
            self._reconfigure_until(key, before, timeout)

    def _reconfigure_until(self, key: str, value: str | None, timeout: float) -> None:
        self.run("scontrol", "reconfigure")
        deadline = time.monotonic() + timeout
        while self.config_value(key) != value:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{key} still {self.config_value(key)} after reconfigure, not {value}")
            time.sleep(0.1)

    def wait_for_state(self, job_id: str | int, states: Iterable[str], timeout: float = 60) -> str:
        """Wait until the job (every task of an array) is in one of `states`; return that state.

        Raises RuntimeError when it ends in another final state, TimeoutError when time runs out.
        """
        wanted = {state.upper() for state in states}
        deadline = time.monotonic() + timeout
        current: list[str] = []
        while time.monotonic() < deadline:
            current = self.states(job_id)
            if current and all(state in wanted for state in current):
                return current[0]
            if current and all(state in FINAL_STATES for state in current):
                raise RuntimeError(f"job {job_id} ended {current}, not in {sorted(wanted)}: {self.sacct(job_id)}")
            time.sleep(0.1)
        raise TimeoutError(f"job {job_id} not in {sorted(wanted)} after {timeout}s (last seen {current})")


def _cluster_root() -> Path:
    return Path(os.environ.get("ZOOBOT_SLURM_ROOT", DEFAULT_ROOT))


def _cluster_command(command: str, root: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLUSTER_SCRIPT), command, "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _check(done: subprocess.CompletedProcess[str]) -> None:
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(done.args)} failed: {(done.stdout + done.stderr)[-2000:]}")


def _ensure_packages() -> None:
    missing = [binary for binary in REQUIRED_BINARIES if shutil.which(binary) is None]
    if not missing:
        return
    if not os.environ.get("CI"):
        raise ClusterUnavailable(f"SLURM packages missing ({', '.join(missing)}): run slurm/install.sh as root")
    installed = subprocess.run([str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=600, check=False)
    if installed.returncode != 0:
        raise ClusterUnavailable(f"slurm/install.sh failed:\n{installed.stderr[-2000:]}")


def _start_if_needed(root: Path) -> bool:
    """Start the cluster unless it runs already; return whether this call started it."""
    if _cluster_command("status", root).returncode == 0:
        return False
    if os.geteuid() != 0:
        raise ClusterUnavailable(f"no SLURM cluster running at {root}, and starting one needs root")
    _ensure_packages()
    started = _cluster_command(
        "start",
        root,
        "--nodes",
        str(TEST_NODES),
        "--cpus-per-node",
        str(TEST_CPUS_PER_NODE),
        "--preemption",
        timeout=START_TIMEOUT_S,
    )
    if started.returncode != 0:
        raise ClusterUnavailable(f"slurm/cluster.sh start failed:\n{(started.stdout + started.stderr)[-3000:]}")
    return True


def _read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = shlex.split(value)[0]
    return env


def _connect(root: Path) -> SlurmCluster:
    env = _read_env_file(root / "env.sh")
    probe = SlurmCluster(root=root, nodes=(), env=env)
    nodes = tuple(sorted(set(probe.run("sinfo", "--noheader", "--Node", "--format=%N").stdout.split())))
    if len(nodes) < TEST_NODES:
        raise ClusterUnavailable(f"the cluster at {root} has nodes {nodes}; tests need {TEST_NODES}: restart it")
    return SlurmCluster(root=root, nodes=nodes, env=env)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """The loopback cluster (started with `TEST_NODES` nodes unless running); `SLURM_CONF` is exported to os.environ."""
    root = _cluster_root()
    started = False
    try:
        started = _start_if_needed(root)
        cluster = _connect(root)
    except (ClusterUnavailable, subprocess.SubprocessError) as error:
        if started:
            _cluster_command("stop", root)
        if os.environ.get("CI"):
            pytest.fail(f"loopback SLURM cluster unavailable: {error}", pytrace=False)
        pytest.skip(f"loopback SLURM cluster unavailable: {error}")
    previous = {name: os.environ.get(name) for name in cluster.env}
    os.environ.update(cluster.env)
    try:
        yield cluster
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if started:
            _cluster_command("stop", root)


@pytest.fixture(autouse=True)
def _slurm_marked_tests_use_cluster(request: pytest.FixtureRequest) -> None:
    """Tests marked `slurm` get the cluster (and are skipped or fail with it) even without asking."""
    if request.node.get_closest_marker("slurm") is not None:
        request.getfixturevalue("slurm_cluster")
