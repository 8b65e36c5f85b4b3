"""The config a submitted job trains: the pickled one, with the values redaction hid taken back from the run's own
`config.yaml`.

`submit` pickles every job with its secrets redacted (`zoobot_hpc.core.redaction`); only the run's `config.yaml` (0600)
and the sbatch script keep them. A callback's `init_args` (an API key, a webhook URL) must still reach the
callback, so the job reads `config.yaml` (YAML, never a pickle) and uses it when, redacted, it is exactly the
config that was pickled: it can fill in hidden values and change nothing else. A `config.yaml` edited since the
submit is not used (the job trains the pickled config and says so).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from zoobot_hpc.core.config import RunConfig
from zoobot_hpc.core.redaction import redact_config

log = logging.getLogger(__name__)


def with_kept_values(pickled: dict[str, Any], config_yaml: str | Path) -> dict[str, Any]:
    """`pickled` with its redacted values restored from `config_yaml`, when that file matches it."""
    try:
        kept = yaml.safe_load(Path(config_yaml).read_text())
        matches = redact_config(RunConfig.model_validate(kept)).model_dump(mode="json") == pickled
    except FileNotFoundError:
        return pickled
    except Exception as error:  # an unreadable or invalid file: train what was submitted
        log.warning("%s not used (%s); training the submitted config", config_yaml, type(error).__name__)
        return pickled
    if not matches:
        log.warning("%s differs from the submitted config; training the submitted one", config_yaml)
        return pickled
    return dict(kept)
