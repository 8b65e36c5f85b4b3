"""`submit` reads the target partition's PreemptMode and GraceTime and warns, in one line each, when a checkpoint
cannot fit or a preempted run cannot come back by itself."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from tests.support.jobs import write_test_config
from zoobot_hpc.backends.base import Partition
from zoobot_hpc.backends.slurm_partition import parse_partitions, read_partition
from zoobot_hpc.cli import main
from zoobot_hpc.core import run_dir as layout
from zoobot_hpc.core.config import load_config
from zoobot_hpc.login.save_time import DEFAULT_STOP_AND_SAVE_S, preemption_warnings, save_time_needed

# `scontrol show partition` of Slurm 22.05 on a site that cancels preempted jobs, and a one-line (`-o`) listing.
CANCEL_PARTITION = """PartitionName=scavenger
   AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL
   AllocNodes=ALL Default=NO QoS=N/A
   DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=10 Hidden=NO
   MaxNodes=UNLIMITED MaxTime=2-00:00:00 MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED
   Nodes=n[1-2]
   PriorityJobFactor=1 PriorityTier=1 RootOnly=NO ReqResv=NO OverSubscribe=NO
   OverTimeLimit=NONE PreemptMode=CANCEL
   State=UP TotalCPUs=4 TotalNodes=2 SelectTypeParameters=NONE
   JobDefaults=(null)
   DefMemPerNode=UNLIMITED MaxMemPerNode=UNLIMITED
   TRES=cpu=4,mem=24104M,node=2,billing=4

"""
ONE_LINE_LISTING = (
    "PartitionName=main AllowGroups=ALL Default=YES GraceTime=00:02:00 MaxTime=UNLIMITED PreemptMode=OFF State=UP\n"
    "PartitionName=spot AllowGroups=ALL Default=NO GraceTime=300 MaxTime=UNLIMITED PreemptMode=REQUEUE State=UP\n"
)


def test_scontrol_output_gives_mode_grace_time_and_the_default_partition():
    assert parse_partitions(CANCEL_PARTITION) == [Partition("scavenger", "CANCEL", 10)]
    assert parse_partitions(ONE_LINE_LISTING) == [
        Partition("main", "OFF", 120, default=True),
        Partition("spot", "REQUEUE", 300),
    ]


def test_a_cancelling_partition_with_a_short_grace_time_gets_one_line_for_each(tmp_path, demo_dataset):
    config = load_config(write_test_config(tmp_path, demo_dataset))
    [partition] = parse_partitions(CANCEL_PARTITION)
    grace, cancel = preemption_warnings(partition, config, DEFAULT_STOP_AND_SAVE_S, "assumed", tmp_path / "runs/demo")
    assert "partition scavenger: GraceTime=10 s is shorter than the 30 s" in grace
    assert "PreemptMode=CANCEL" in cancel and f"zoobot-hpc resume {tmp_path / 'runs/demo'}" in cancel
    requeue = Partition("spot", "REQUEUE", 300)
    assert preemption_warnings(requeue, config, DEFAULT_STOP_AND_SAVE_S, "assumed", tmp_path) == []


def test_the_measured_stop_and_save_time_of_the_last_segment_decides(tmp_path, demo_dataset):
    config = load_config(write_test_config(tmp_path, demo_dataset))
    run_dir = tmp_path / "runs" / "demo"
    run_dir.mkdir(parents=True)
    assert save_time_needed([run_dir]) == (DEFAULT_STOP_AND_SAVE_S, "assumed before any measurement")
    for record in ({"stop_and_save_s": 200.0}, {"stop_and_save_s": 95.5}, {"start": 1.0}):
        layout.append_segment(run_dir, record)
    need, source = save_time_needed([run_dir])
    assert need == 95.5
    [line] = preemption_warnings(Partition("spot", "REQUEUE", 300), config, need, source, run_dir)
    assert line.startswith("resources.signal_delay_s=60 is shorter than the 96 s a stop-and-save takes (measured")


@pytest.mark.slurm
def test_submit_reads_the_real_partition_and_warns_in_one_line(tmp_path, demo_dataset, slurm_cluster):
    debug = read_partition("debug")
    raw = slurm_cluster.run("scontrol", "show", "partition", "debug").stdout
    assert debug == Partition("debug", re.search(r"PreemptMode=(\S+)", raw)[1], 0, default=True)
    assert read_partition(None) == debug
    assert read_partition("no-such-partition") is None

    config = write_test_config(tmp_path, demo_dataset, resources__executor="slurm", resources__partition="debug")
    short = CliRunner().invoke(main, ["submit", str(config), "--dry-run", "resources.signal_delay_s=10"])
    assert short.exit_code == 0
    short_delay = load_config(config, ["resources.signal_delay_s=10"])
    run_dir = tmp_path / "runs" / "demo"
    expected = preemption_warnings(
        debug, short_delay, DEFAULT_STOP_AND_SAVE_S, "assumed before any measurement", run_dir
    )
    assert short.stderr.splitlines() == [f"warning: {line}" for line in expected]
    assert expected[0].startswith("resources.signal_delay_s=10 is shorter than the 30 s a stop-and-save takes")
    assert len([line for line in expected if "partition debug: GraceTime=0 s" in line]) == int(debug.preemptible)
