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


# Shapes of real credentials, not of ordinary words that share a prefix (a folder `hf_cache`, a `sk-learn` note):
# OpenAI/DeepSeek `sk-` keys (with `sk-proj-`, `sk-ant-`, ... prefixes: 20+ characters, at least one digit),
# Stripe-style `sk_live_`, Hugging Face `hf_` + 30+ alphanumerics (real tokens have 34), GitHub `ghp_`/`gho_`/`ghs_`/
# `github_pat_` tokens, Slack `xox?-` tokens, AWS access key ids (AKIA/ASIA + 16), bearer tokens, `key=value` pairs
# whose key names a secret (`api_key=`, `HF_TOKEN=`, `aws_secret_access_key:`), and long mixed-case alphanumeric
# runs (hex digests, qids and paths do not mix upper case, lower case and digits in 32+ characters).
_SECRET_PATTERNS = [
    re.compile(r"\b(?:sk|pk|rk)-(?:proj-|ant-|svcacct-|admin-)?(?=[A-Za-z0-9_\-]*[0-9])[A-Za-z0-9_\-]{20,}"),
    re.compile(r"\b(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{8,}"),
    re.compile(r"\bhf_[A-Za-z0-9]{30,}"),
    re.compile(r"\b(?:ghp|gho|ghs|ghu|ghr)_[A-Za-z0-9]{30,}|\bgithub_pat_[A-Za-z0-9_]{30,}"),
    re.compile(r"\bxox[abposr]-[A-Za-z0-9\-]{10,}"),
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/\-]{12,}=*"),
    re.compile(
        r"(?i)\b((?:[a-z0-9]+_)*(?:api[_-]?key|access[_-]?key|access[_-]?token|token|secret|password|passwd|"
        r"authorization)(?:_(?!env\b)[a-z0-9]+)*['\"]?\s*[:=]\s*['\"]?)(?!<redacted>)[^\s'\",;&]{6,}"
    ),
    re.compile(r"\b(?=[A-Za-z0-9]*[a-z])(?=[A-Za-z0-9]*[A-Z])(?=[A-Za-z0-9]*[0-9])[A-Za-z0-9]{32,}\b"),
]


def looks_secret(text: str) -> bool:
    """Whether ``text`` holds something shaped like a credential (what :func:`redact_secrets` would remove)."""
    return redact_secrets(text) != text


def redact_secrets(text: str) -> str:
    """``text`` with every key-shaped substring replaced by ``<redacted>``."""
    for pattern in _SECRET_PATTERNS:
        if pattern.groups:
            text = pattern.sub(lambda m: m.group(1) + "<redacted>", text)
        else:
            text = pattern.sub("<redacted>", text)
    return text
