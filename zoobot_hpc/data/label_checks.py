"""The label values a model can train on, checked before submission (`submit`, `submit --dry-run`, each point of a
sweep): a tree's vote counts finite and not negative, a classifier's labels whole numbers in [0, num_classes), a
regressor's finite (NaN only with `data.allow_missing_labels`). Each needed column of each shard is read once,
whole, and checked vectorised (numpy); a shard's answer is remembered with its stat next to the dataset (as
`validate` remembers its checks), so an unchanged dataset is not read again for the same rule.

`inspect`/`validate` check what the manifest promises (columns, dtypes, NaN only where it allows); these checks
add what the model needs of the values.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np

from zoobot_hpc.core.atomic import write_text
from zoobot_hpc.core.model_kinds import kind_spec
from zoobot_hpc.data.shard_format import IDS_KEY, LABELS_GROUP, ShardInfo, open_shard, read_manifest
from zoobot_hpc.data.validate import check_state_dir, stat_key

CACHE_NAME = "label_checks.json"
NO_VOTES_WARN_FRACTION = 0.10  # warn when more of a tree's rows than this have no votes at all
Rule = Literal["votes", "classes", "values"]


class LabelValueError(ValueError):
    """A label value the model cannot train on; one line naming the shard, split, column, value and id."""


@dataclass(frozen=True)
class LabelRule:
    """What the model needs of its label columns."""

    rule: Rule
    columns: tuple[str, ...]
    num_classes: int | None = None
    allow_missing: bool = False

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def label_rule(model: Any, allow_missing: bool) -> LabelRule:
    """The rule of a model's settings (`RunConfig.model`); `allow_missing`: `data.allow_missing_labels`."""
    columns = tuple(kind_spec(model.kind).label_columns(model))
    if model.kind == "tree":
        return LabelRule("votes", columns)
    if model.kind == "classifier":
        return LabelRule("classes", columns, num_classes=int(model.num_classes))
    return LabelRule("values", columns, allow_missing=allow_missing)


@dataclass
class LabelReport:
    """What the checks found over every shard: the first problem (None: none), rows, and a tree's empty rows."""

    problem: str | None = None
    rows: int = 0
    no_vote_rows: int = 0

    def no_votes_warning(self, dataset_dir: Path) -> str | None:
        """One line when many of a tree's rows have no votes at all (they add nothing to the loss)."""
        if not self.rows or self.no_vote_rows <= NO_VOTES_WARN_FRACTION * self.rows:
            return None
        return (
            f"data.dataset_dir={dataset_dir}: {self.no_vote_rows} of {self.rows} rows "
            f"({100 * self.no_vote_rows / self.rows:.0f}%) have no votes in any of the tree's columns; "
            "they add nothing to the loss"
        )


def _first_id(handle: h5py.File, row: int) -> str:
    return str(handle[IDS_KEY].asstr()[row]) if IDS_KEY in handle else f"row {row}"


def _column_problem(rule: LabelRule, values: np.ndarray) -> tuple[np.ndarray, str] | None:
    """The rows of one column that break `rule`, and what is wrong with them; None when none do."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    if rule.rule == "votes":
        bad = np.isinf(values) | (values < 0)  # NaN: a question never asked, 0 votes (as the model reads it)
        return (bad, "negative or infinite vote counts") if bad.any() else None
    if rule.rule == "classes":
        bad = ~finite | (values < 0) | (values >= (rule.num_classes or 0)) | (values != np.floor(values))
        what = f"values that are not a class index in [0, {rule.num_classes}) (model.num_classes)"
        return (bad, what) if bad.any() else None
    bad = np.isinf(values) | (np.isnan(values) & (not rule.allow_missing))
    what = "infinite values" if rule.allow_missing else "non-finite values (NaN needs data.allow_missing_labels=true)"
    return (bad, what) if bad.any() else None


def check_shard_labels(path: Path, split: str, rule: LabelRule, locking: bool | None) -> tuple[str | None, int]:
    """The first problem of one shard's labels (None: none) and, for a tree, its rows without any vote."""
    with open_shard(path, locking=locking) as handle:
        group = handle[LABELS_GROUP]
        total: np.ndarray | None = None
        for name in rule.columns:
            values = group[name][:]
            found = _column_problem(rule, values)
            if found is not None:
                bad, what = found
                row = int(np.argmax(bad))
                return (
                    f"{path} (split {split}): label {name!r} has {int(bad.sum())} {what}, "
                    f"first {values[row]} at id {_first_id(handle, row)!r}"
                ), 0
            if rule.rule == "votes":
                counts = np.nan_to_num(values.astype(np.float64, copy=False), nan=0.0)
                total = counts if total is None else total + counts
    return None, int((total == 0).sum()) if total is not None else 0


class _Remembered:
    """Each shard's answer for one rule, with the stat the shard had then (`CACHE_NAME` next to the dataset)."""

    def __init__(self, dataset_dir: Path, rule: LabelRule) -> None:
        self.path = check_state_dir(dataset_dir) / CACHE_NAME
        self.rule = rule.digest()
        try:
            self.entries: dict[str, dict] = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.entries = {}
        self.changed = False

    @staticmethod
    def identity(path: Path, split: str, shard: ShardInfo) -> list:
        return [stat_key(path), split, shard.count, shard.sha256]

    def get(self, identity: list, file: str) -> dict | None:
        entry = self.entries.get(self.rule, {}).get(file)
        return entry if entry is not None and entry.get("identity") == identity else None

    def put(self, identity: list, file: str, no_votes: int) -> None:
        self.entries.setdefault(self.rule, {})[file] = {"identity": identity, "no_votes": no_votes}
        self.changed = True

    def save(self) -> None:
        if self.changed:
            with contextlib.suppress(OSError):  # a cache only: the next check reads the shards again
                self.path.parent.mkdir(parents=True, exist_ok=True)
                write_text(self.path, json.dumps(self.entries) + "\n")


def check_labels(dataset_dir: str | Path, rule: LabelRule, locking: bool | None = None) -> LabelReport:
    """Check every shard's `rule.columns` against `rule`; stops at the first problem (shards checked before and
    unchanged since are not read again). Assumes the dataset validated (columns, dtypes, lengths)."""
    dataset_dir = Path(dataset_dir)
    manifest = read_manifest(dataset_dir)
    remembered = _Remembered(dataset_dir, rule)
    report = LabelReport()
    try:
        for split, shards in manifest.splits.items():
            for shard in shards:
                path = dataset_dir / shard.file
                identity = remembered.identity(path, split, shard)
                entry = remembered.get(identity, shard.file)
                if entry is None:
                    problem, no_votes = check_shard_labels(path, split, rule, locking)
                    if problem is not None:
                        report.problem = problem
                        return report
                    remembered.put(identity, shard.file, no_votes)
                else:
                    no_votes = int(entry["no_votes"])
                report.rows += shard.count
                report.no_vote_rows += no_votes
    finally:
        remembered.save()
    return report


def require_trainable_labels(dataset_dir: str | Path, rule: LabelRule, locking: bool | None = None) -> list[str]:
    """Raise LabelValueError (one line) on the first label the model cannot train on; returns the warnings."""
    report = check_labels(dataset_dir, rule, locking)
    if report.problem is not None:
        raise LabelValueError(report.problem)
    warning = report.no_votes_warning(Path(dataset_dir)) if rule.rule == "votes" else None
    return [warning] if warning else []
