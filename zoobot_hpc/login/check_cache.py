"""Login-node checks that need torch/timm, run once per distinct input and remembered.

A check is a kind (`scheduler`: timm builds the scheduler; `architecture`: timm builds the encoder on the meta
device; `encoder`: the pretrained weights are in the local caches, fetched when allowed; `parameters`: the
encoder's parameter count, from its architecture on the meta device) and its JSON payload.
Checks not passed before run together in one child process, so the login-node process itself never imports
torch or timm; those that pass are remembered in the user's cache, keyed by the payload, the versions of torch
and timm and the source of the code that checks (an encoder check also by the weight files it found: it holds
while they exist). A second submit, and each point of a sweep with the same scheduler and encoder, pays nothing.

`python -m zoobot_hpc.login.check_cache` is the child: JSON requests on stdin, one [problem or None, files, value]
each on stdout (`value`: what a check measures, such as the parameter count; None for the others).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from zoobot_hpc.core.atomic import write_text

_CHECKED_SOURCES = ("login/heavy_checks.py", "model/schedulers.py", "model/encoders.py", "login/check_cache.py")
_CHILD_TIMEOUT_S = 600


def cache_path() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "zoobot-hpc" / "login-checks.json"


@cache
def library_versions() -> dict[str, str]:
    """Versions of what the checks run on, and a digest of the code that runs them (read without importing)."""
    versions = {}
    for package in ("torch", "timm", "zoobot-hpc"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "absent"
    digest = hashlib.sha256()
    package_dir = Path(__file__).resolve().parents[1]
    for relative in _CHECKED_SOURCES:
        path = package_dir / relative
        digest.update(path.read_bytes() if path.is_file() else b"")
    versions["checks"] = digest.hexdigest()[:16]
    return versions


def check_key(kind: str, payload: dict[str, Any]) -> str:
    payload = {key: value for key, value in payload.items() if key != "allow_download"}  # how, not what
    text = json.dumps([kind, payload, library_versions()], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _load() -> dict[str, Any]:
    try:
        return json.loads(cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _save(entries: dict[str, Any]) -> None:
    try:
        cache_path().parent.mkdir(parents=True, exist_ok=True)
        write_text(cache_path(), json.dumps(entries) + "\n")
    except OSError:
        pass  # a cache only


def run_checks(requests: Sequence[tuple[str, dict[str, Any]]]) -> list[str | None]:
    """The problem each (kind, payload) check finds (None: it passes); passed checks are not run again."""
    return [problem for problem, _ in _answered(requests)]


def check_values(requests: Sequence[tuple[str, dict[str, Any]]]) -> list[Any]:
    """What each (kind, payload) check measured (None where it found a problem); remembered like `run_checks`."""
    return [value for _, value in _answered(requests)]


def _answered(requests: Sequence[tuple[str, dict[str, Any]]]) -> list[tuple[str | None, Any]]:
    entries = _load()
    keys = [check_key(kind, payload) for kind, payload in requests]
    results: list[tuple[str | None, Any]] = [(None, (entries.get(key) or {}).get("value")) for key in keys]
    todo = [index for index, key in enumerate(keys) if not _still_valid(entries.get(key))]
    if not todo:
        return results
    unique = list(dict.fromkeys(keys[index] for index in todo))
    first = {key: next(index for index in todo if keys[index] == key) for key in unique}
    answers = _run_child([requests[first[key]] for key in unique])
    by_key = dict(zip(unique, answers, strict=True))
    for index in todo:
        problem, _, value = by_key[keys[index]]
        results[index] = (problem, value)
    for key, (problem, files, value) in by_key.items():
        if problem is None:
            kind = requests[first[key]][0]
            entries[key] = {"kind": kind, "versions": library_versions(), "files": files, "value": value}
    if any(problem is None for problem, _, _ in answers):
        _save(entries)
    return results


def _still_valid(entry: dict | None) -> bool:
    return entry is not None and all(Path(file).exists() for file in entry.get("files") or ())


def _run_child(requests: list[tuple[str, dict[str, Any]]]) -> list[tuple[str | None, list[str], Any]]:
    payload = json.dumps([[kind, body] for kind, body in requests])
    child = subprocess.run(
        [sys.executable, "-m", "zoobot_hpc.login.check_cache"],
        input=payload,
        capture_output=True,
        text=True,
        timeout=_CHILD_TIMEOUT_S,
        check=False,
    )
    lines = [line for line in child.stdout.splitlines() if line.startswith("CHECKS=")]
    if child.returncode != 0 or not lines:
        tail = (child.stderr.strip().splitlines() or ["no output"])[-1]
        return [(f"the torch/timm checks could not run ({tail})", [], None)] * len(requests)
    return [(problem, files, value) for problem, files, value in json.loads(lines[-1].partition("=")[2])]


def _answer(kind: str, body: dict[str, Any]) -> tuple[str | None, list[str], Any]:
    """(problem or None, files the result depends on, the value measured or None)."""
    from zoobot_hpc.login.heavy_checks import (
        architecture_problem,
        encoder_problem,
        parameter_count,
        scheduler_problem,
    )

    if kind == "scheduler":
        return scheduler_problem(body["scheduler_kwargs"]), [], None
    if kind == "architecture":
        return architecture_problem(body["name"], body["timm_kwargs"], body["greyscale"]), [], None
    if kind == "encoder":
        return (*encoder_problem(body["name"], body["allow_download"]), None)
    if kind == "parameters":
        count = parameter_count(body["name"], body["timm_kwargs"], body["greyscale"])
        return (None, [], count) if count is not None else (f"{body['name']}: parameters not counted", [], None)
    return f"unknown check {kind!r}", [], None


def main() -> None:
    requests = json.loads(sys.stdin.read())
    print("CHECKS=" + json.dumps([list(_answer(kind, body)) for kind, body in requests]))


if __name__ == "__main__":
    main()
