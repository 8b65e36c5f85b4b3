"""The one redaction point: secrets in a config (or any text or tree derived from it) hidden before they leave the
run's own files.

Every outlet goes through this module: `--dry-run` output (submit, sweep, search), `sweep.json`, `search.json`,
`submission.json`, submitit pickles and job logs, W&B config and metadata (the recorded command line), prediction
provenance, the export's model card and config, reports and one-line error messages. Only the run's own
`config.yaml` and the job script keep values; both are owner-only (0600), see `zoobot_hpc.core.atomic`.

What counts as secret:
- by key name, anywhere in the config tree (a callback's `init_args`, `sbatch_extra`, `timm_kwargs`, ...): a name
  containing `key`, `token`, `secret`, `pass`, `auth`, `webhook` or `credential`, or ending in `pat` (case-insensitive);
- in any string, by form: `NAME=value` with such a NAME (`export HF_TOKEN=...`, `HF_TOKEN=$(cat ~/.hf)` whole),
  `--token X` / `--api-key=X` options, `Authorization: Bearer ...` headers, passwords in URLs (shown as
  `user:***@host`), and values that look like tokens whatever their name (`hf_...`, `ghp_...`, `github_pat_...`,
  `sk-...`, `glpat-...`, `xoxb-...`, `AKIA...`).

Standard library only: the login node imports this, and so does the config module.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

from pydantic import BaseModel

Config = TypeVar("Config", bound=BaseModel)

REDACTED = "<redacted>"
URL_PASSWORD = "***"
SECRET_NAME = re.compile(r"key|token|secret|pass|auth|webhook|credential|pat$", re.IGNORECASE)

# A shell word's value: quoted, a command or parameter substitution (whole, so `$(cat ~/.hf)` is never cut in
# half), or bare.
_VALUE = r"""(?:'[^']*'|"[^"]*"|\$\([^)]*\)|\$\{[^}]*\}|`[^`]*`|[^\s,;&|'"()`]+)"""
_ASSIGNMENT = re.compile(rf"(?P<name>\b[A-Za-z_][A-Za-z0-9_]*)=(?P<value>{_VALUE})")
_OPTION = re.compile(rf"(?P<name>(?<![\w-])--?[A-Za-z][\w-]*)(?P<sep>=|[ \t]+)(?P<value>(?!-){_VALUE})")
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s'\"]*):(?P<value>[^@/\s'\"]+)@")
_HEADER = re.compile(
    r"(?P<name>\b(?:Proxy-)?Authorization|\bX-[\w-]*(?:Key|Token|Auth|Secret)[\w-]*)(?P<sep>\s*:\s*)"
    r"(?P<scheme>(?:Bearer|Basic|Token|token|Digest)\s+)?(?P<value>[^\s'\"]+)",
    re.IGNORECASE,
)
_BEARER = re.compile(r"\b(?P<scheme>Bearer\s+)(?P<value>[^\s'\"<]+)", re.IGNORECASE)
TOKEN_VALUE = re.compile(
    r"(?<![A-Za-z0-9])(?:hf_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"
    r"|sk-[A-Za-z0-9_-]{20,}|glpat-[A-Za-z0-9_-]{20,}|xox[abposr]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16})(?![A-Za-z0-9])"
)


def looks_secret(name: str) -> bool:
    """Whether a key, variable or option name looks like it holds a secret (`HF_TOKEN`, `api_key`, `DB_PASS`,
    `GITHUB_PAT`, `slack_webhook`, `--auth-token`)."""
    return bool(SECRET_NAME.search(name.strip("-")))


def is_reference(value: str) -> bool:
    """Whether a shell value names a secret instead of holding it (`$HF_TOKEN`, `${X}`, `$(cat ~/.hf)`)."""
    return value.strip("'\"").startswith(("$", "`"))


def _rewrite(text: str, replace_reference: bool) -> str:
    def secret_value(match: re.Match[str], keep: str) -> str:
        if not replace_reference and is_reference(match["value"]):
            return match[0]
        return keep

    text = _URL_PASSWORD.sub(lambda m: secret_value(m, f"{m['head']}:{URL_PASSWORD}@"), text)
    text = _HEADER.sub(lambda m: secret_value(m, f"{m['name']}{m['sep']}{m['scheme'] or ''}{REDACTED}"), text)
    text = _BEARER.sub(lambda m: secret_value(m, f"{m['scheme']}{REDACTED}"), text)

    def inside(match: re.Match[str], sep: str) -> str:  # a value that is not secret may hold one: 'URL?token=x'
        return f"{match['name']}{sep}{_rewrite(match['value'], replace_reference)}"

    def option(m: re.Match[str]) -> str:
        return secret_value(m, f"{m['name']}{m['sep']}{REDACTED}") if looks_secret(m["name"]) else inside(m, m["sep"])

    def assignment(m: re.Match[str]) -> str:
        return secret_value(m, f"{m['name']}={REDACTED}") if looks_secret(m["name"]) else inside(m, "=")

    text = _OPTION.sub(option, text)
    text = _ASSIGNMENT.sub(assignment, text)
    return TOKEN_VALUE.sub(REDACTED, text)


def redact_text(text: str) -> str:
    """`text` with every secret value hidden: `NAME=<redacted>`, `--token <redacted>`, `Bearer <redacted>`,
    `user:***@host`, and `<redacted>` for anything that looks like a token."""
    return _rewrite(text, replace_reference=True)


def literal_secret(text: str) -> bool:
    """Whether `text` writes a secret out literally (`export HF_TOKEN=hf_...`), rather than taking it from the
    environment or a file (`HF_TOKEN=$(cat ~/.hf)`, `--token "$HF_TOKEN"`)."""
    return _rewrite(text, replace_reference=False) != text


def redact_value(value: Any, name: str | None = None) -> Any:
    """A copy of a JSON-like tree (mappings, lists, strings) with secrets hidden: the whole value of a key whose
    name looks secret, and secret forms inside every string."""
    if name is not None and looks_secret(name) and value is not None and not isinstance(value, bool):
        return REDACTED
    if isinstance(value, dict):
        return {key: redact_value(item, str(key)) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(item) for item in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


def redact_argv(argv: list[str]) -> list[str]:
    """A command line with secrets hidden; an argument after a secret-looking option (`--token X`) too."""
    hidden = []
    for index, arg in enumerate(argv):
        before = argv[index - 1] if index else ""
        secret_option = before.startswith("-") and "=" not in before and looks_secret(before)
        hidden.append(REDACTED if secret_option and not arg.startswith("-") else redact_text(arg))
    return hidden


def redact_config(config: Config) -> Config:
    """A copy of `config` with every secret hidden (by key name anywhere in its tree, and by form in every string):
    the one config every outlet except `config.yaml` and the sbatch script writes or logs."""
    return type(config).model_validate(redact_value(config.model_dump(mode="json")))
