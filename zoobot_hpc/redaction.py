"""Secrets in a config: the values of environment variables whose names look secret (`WANDB_API_KEY=...`,
`export HF_TOKEN=...`) in `resources.setup` lines and `resources.sbatch_extra` values.

They are hidden wherever a config is logged or stored (W&B config and logs, the pickled job, prediction-file
provenance, sweep records, `--dry-run` output); only the run's own `config.yaml` and the sbatch script that runs
the job keep them.
"""

from __future__ import annotations

import re
from typing import Any

from zoobot_hpc.config import RunConfig

SECRET_NAME_PARTS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL")
REDACTED = "<redacted>"
_ASSIGNMENT = re.compile(r"""(?P<name>\b[A-Za-z_][A-Za-z0-9_]*)=(?P<value>'[^']*'|"[^"]*"|[^\s,;&|'"]+)""")


def looks_secret(name: str) -> bool:
    """Whether a variable or option name looks like it holds a secret (KEY, TOKEN, SECRET, PASSWORD, CREDENTIAL)."""
    upper = name.upper()
    return any(part in upper for part in SECRET_NAME_PARTS)


def redact_text(text: str) -> str:
    """`text` with the value of every `NAME=value` whose NAME looks secret replaced by `<redacted>`."""
    return _ASSIGNMENT.sub(
        lambda match: f"{match['name']}={REDACTED}" if looks_secret(match["name"]) else match[0], text
    )


def _redact_option(name: str, value: Any) -> Any:
    if looks_secret(name):
        return REDACTED
    return redact_text(value) if isinstance(value, str) else value


def redact_config(config: RunConfig) -> RunConfig:
    """A copy of `config` whose setup lines and sbatch_extra values hide secret values: the one config every
    outlet except `config.yaml` and the sbatch script writes or logs."""
    resources = config.resources
    hidden = resources.model_copy(
        update={
            "setup": [redact_text(line) for line in resources.setup],
            "sbatch_extra": {name: _redact_option(name, value) for name, value in resources.sbatch_extra.items()},
        }
    )
    return config.model_copy(update={"resources": hidden})
