"""Sweeps: `key=a,b,c` overrides and grid files expand into points, each a set of dotted overrides.

A grid file (`configs/grids/*.yaml`):

```yaml
grid:                      # the product of these values
  model.learning_rate: [1.0e-4, 3.0e-4]
  model.layer_decay: [0.5, 0.75]
include:                   # optional extra points, added as they are
  - {model.learning_rate: 1.0e-3, model.layer_decay: 1.0}
```
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

from zoobot_hpc.core.config import ConfigError, load_yaml, parse_value, split_override

Point = dict[str, Any]


def split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets or braces (`a,[1,2],b` -> 3 items)."""
    items, depth, current = [], 0, []
    for char in text:
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        if char == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    return items


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> tuple[Point, dict[str, list[Any]]]:
    """Separate fixed overrides from swept ones (`key=a,b`), values parsed as YAML scalars."""
    fixed: Point = {}
    swept: dict[str, list[Any]] = {}
    for text in overrides:
        key, raw = split_override(text)
        values = [parse_value(item) for item in split_top_level(raw)]
        if len(values) > 1:
            swept[key] = values
        else:
            fixed[key] = values[0]
    return fixed, swept


def load_grid(path: str | Path) -> tuple[dict[str, list[Any]], list[Point]]:
    """Read a grid file: (product axes, explicit extra points)."""
    raw = load_yaml(path)
    unknown = set(raw) - {"grid", "include"}
    if unknown:
        raise ConfigError(f"{path}: unknown key {sorted(unknown)[0]!r} (expected 'grid' and/or 'include')")
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError(f"{path}: 'grid' must map each dotted key to a non-empty list of values")
    include = raw.get("include") or []
    if not isinstance(include, list) or not all(isinstance(p, dict) for p in include):
        raise ConfigError(f"{path}: 'include' must be a list of mappings")
    return grid, include


def expand_points(axes: dict[str, list[Any]], include: list[Point] | None = None) -> list[Point]:
    """The product of the axes (in key order), then the explicit points; duplicates removed."""
    points: list[Point] = []
    if axes:
        keys = list(axes)
        points = [dict(zip(keys, values, strict=True)) for values in itertools.product(*(axes[k] for k in keys))]
    for point in include or []:
        if point not in points:
            points.append(dict(point))
    return points or [{}]


def _short_key(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _short_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return re.sub(r"[^A-Za-z0-9_.+-]", "", str(value))[:24]


def run_name(point: Point) -> str:
    """A directory-safe name from the swept parameters: `learning_rate=0.0003,layer_decay=0.5`."""
    if not point:
        return "run"
    return ",".join(f"{_short_key(k)}={_short_value(v)}" for k, v in point.items())
