"""The search journal's lock is released only by its owner and broken only when its holder is gone or its lease
expired; a torn journal line is reported in one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from zoobot_hpc.core.config import ConfigError
from zoobot_hpc.search.journal_lock import OwnedJournalLock
from zoobot_hpc.search.study import open_storage

HOLDER = """
import sys
from zoobot_hpc.search.journal_lock import OwnedJournalLock
lock = OwnedJournalLock(sys.argv[1], lease_s=float(sys.argv[2]))
lock.acquire()
print("held", flush=True)
sys.stdin.readline()  # stalled (a slow write, a stopped process) until told to go on
lock.release()
print("released", flush=True)
"""


def start_holder(journal, lease_s: float) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(journal), str(lease_s)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.timeout(60)
def test_a_holder_stalled_past_its_lease_does_not_remove_the_next_holders_lock(tmp_path):
    journal = tmp_path / "study.journal"
    stalled = start_holder(journal, lease_s=0.5)
    try:
        mine = OwnedJournalLock(journal, lease_s=0.5)
        assert mine.acquire()  # waits until the stalled holder's lease has expired, then breaks it
        token = json.loads(mine.path.read_text())["token"]
        stalled.stdin.write("go\n")
        stalled.stdin.flush()
        assert stalled.stdout.readline().strip() == "released"
        assert stalled.wait(timeout=30) == 0
        assert json.loads(mine.path.read_text())["token"] == token, "the stalled holder removed the new lock"
        mine.release()
        assert not mine.path.exists()
    finally:
        stalled.kill()


@pytest.mark.timeout(60)
def test_a_lock_whose_holder_is_gone_is_broken_at_once_and_a_live_one_is_not(tmp_path):
    journal = tmp_path / "study.journal"
    holder = start_holder(journal, lease_s=3600)
    lock = OwnedJournalLock(journal, lease_s=3600)
    lock._break_if_abandoned()
    assert lock.path.exists(), "a live holder's lock was broken"
    holder.kill()
    holder.wait(timeout=30)
    assert lock.acquire()
    lock.release()


def test_a_torn_journal_line_is_reported_in_one_line(tmp_path):
    import optuna

    storage = open_storage(tmp_path)
    study = optuna.create_study(study_name="s", storage=storage)
    for _ in range(3):
        study.tell(study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), 0.5)
    journal = tmp_path / "study.journal"
    lines = journal.read_text().splitlines(keepends=True)
    lines[3] = lines[3][: len(lines[3]) // 2] + "\n"
    journal.write_text("".join(lines))
    with pytest.raises(ConfigError) as caught:
        optuna.load_study(study_name="s", storage=open_storage(tmp_path)).get_trials()
    message = str(caught.value)
    assert "\n" not in message and f"{journal} line 4" in message and "sed -i '4d'" in message
