"""When an OpenAI-compatible API call is tried again, and how long to wait: the retry policy and its errors.

Retryable: 408/409/425/429 and any 5xx (`RETRYABLE_STATUS`), no HTTP answer at all (`TransportError`: timeout,
refused or reset connection) and a 2xx body that is not a usable completion (`MalformedResponse`, raised by
`parse_body`). Other 4xx fail fast. The wait is the server's own (`retry_after_s`: retry-after-ms, Retry-After
seconds or an HTTP date) when it gives one, else exponential backoff with full jitter (`backoff_s`). Messages
pass `scrub`, so a server echoing the key never puts it in a response row.
"""

from __future__ import annotations

import email.utils
import json
import random
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

RETRYABLE_STATUS = frozenset({408, 409, 425, 429})


class MalformedResponse(Exception):
    """A 2xx response whose body is not a usable completion (bad JSON, no choices)."""


# ---- one request ------------------------------------------------------------------------------------------
def parse_body(content: bytes, kind: str) -> dict[str, Any]:
    """Text, reasoning, finish_reason and usage from a completion body; MalformedResponse if unusable."""
    try:
        body = json.loads(content)
    except ValueError as exc:
        raise MalformedResponse(
            f"body is not JSON ({exc.__class__.__name__} at byte {getattr(exc, 'pos', '?')})"
        ) from None
    if not isinstance(body, dict):
        raise MalformedResponse(f"body is a JSON {type(body).__name__}, expected an object")
    choices = body.get("choices")
    if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
        raise MalformedResponse("response has no choices")
    choice = choices[0]
    if kind == "chat":
        message = choice.get("message")
        if not isinstance(message, dict):
            raise MalformedResponse("choice has no message")
        text = message.get("content")
        # DeepSeek (and vLLM's reasoning parsers) return the chain of thought beside the answer; newer vLLM
        # calls the field `reasoning`. Neither is in the OpenAI schema, hence the raw-dict read.
        reasoning = message.get("reasoning_content") or message.get("reasoning")
    else:
        text = choice.get("text")
        reasoning = choice.get("reasoning_content")
    usage = body.get("usage") or {}
    return {
        "text": text,
        "reasoning": reasoning,
        "finish_reason": choice.get("finish_reason"),
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
    }


def retry_after_s(headers: Mapping[str, str] | None) -> float | None:
    """Seconds the server asked us to wait (retry-after-ms, Retry-After seconds or HTTP date), if any."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def backoff_s(attempt: int, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform(0, min(max_s, base_s * 2**(attempt-1)))."""
    return (rng or random).uniform(0.0, min(max_s, base_s * (2.0 ** (attempt - 1))))


def scrub(message: str, secret: str | None) -> str:
    """Remove the API key from a message, in case a server echoed it back."""
    if secret and secret != "EMPTY" and len(secret) >= 4:
        message = message.replace(secret, "***")
    return message


class StatusError(Exception):
    """The API answered with an HTTP error status."""

    def __init__(self, status: int, name: str, message: str, headers: Mapping[str, str] | None) -> None:
        super().__init__(message)
        self.status, self.name, self.message, self.headers = status, name, message, headers


class TransportError(Exception):
    """No HTTP answer: timeout, refused or reset connection."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name, self.message = name, message


# The openai SDK's exception names, so both transports write the same `error` strings.
STATUS_NAMES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    409: "ConflictError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
}
