"""Errors meant for the user: the CLI prints their message (which names the file, row or request) without a
traceback. Never put secrets in a message: :func:`redact_secrets` scrubs anything key-shaped from every message
the CLI prints, as a last line of defence."""

from __future__ import annotations

import re


class UserError(Exception):
    """Something the user can fix: bad input file, bad config, missing table."""


class RunDirError(UserError):
    """The run directory is missing, unreadable, or not a run (a file, a corrupt manifest, lost table files)."""


class RunConflictError(UserError):
    """The run directory holds committed stages made from different inputs; ``--force`` replaces them."""


# Shapes of credentials: provider prefixes (OpenAI/DeepSeek sk-, Anthropic sk-ant-, Hugging Face hf_, GitHub
# ghp_/gho_/github_pat_, Slack xox?-, AWS AKIA), bearer tokens, `key=value` pairs whose key names a secret,
# and long mixed-case alphanumeric runs (hex digests, qids and paths do not mix upper case, lower case and digits
# in 32+ characters without a separator).
_SECRET_PATTERNS = [
    re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_\-]{6,}"),
    re.compile(r"\b(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9_]{6,}"),
    re.compile(r"\b(?:hf_|ghp_|gho_|ghs_|github_pat_)[A-Za-z0-9_]{8,}"),
    re.compile(r"\bxox[abposr]-[A-Za-z0-9\-]{8,}"),
    re.compile(r"\bAKIA[0-9A-Z]{12,}"),
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/\-]{8,}=*"),
    re.compile(
        r"(?i)\b((?:api[_-]?key|access[_-]?token|token|secret|password|passwd|authorization)['\"]?\s*[:=]\s*['\"]?)"
        r"(?!<redacted>)[^\s'\",;&]{6,}"
    ),
    re.compile(r"\b(?=[A-Za-z0-9]*[a-z])(?=[A-Za-z0-9]*[A-Z])(?=[A-Za-z0-9]*[0-9])[A-Za-z0-9]{32,}\b"),
]


def redact_secrets(text: str) -> str:
    """``text`` with every key-shaped substring replaced by ``<redacted>``."""
    for pattern in _SECRET_PATTERNS:
        if pattern.groups:
            text = pattern.sub(lambda m: m.group(1) + "<redacted>", text)
        else:
            text = pattern.sub("<redacted>", text)
    return text
