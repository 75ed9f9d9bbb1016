"""One request model for every engine: rows of the `requests` table in, rows of `responses` out.

A request's id is a hash of everything that determines its answer (model, kind, messages or prompt,
sampling parameters), so the same call made by two stages or two runs has the same id and is paid once.

Parameters whose names start with an underscore (``_attempt=2``) are salts: they are part of the id and of
the stored ``params``, but no engine ever sees them. A stage resampling the same prompt gives each attempt
its own salt, so each attempt is its own request, paid once, and found again by a rerun.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

import schemas


def canonical_params(params: Mapping[str, Any]) -> str:
    """Sampling parameters as canonical JSON (sorted keys, no spaces, None values dropped)."""
    return json.dumps(
        {k: v for k, v in params.items() if v is not None}, sort_keys=True, separators=(",", ":")
    )


def engine_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters an engine receives: ``params`` without the underscore-prefixed salts."""
    return {k: v for k, v in params.items() if not k.startswith("_")}


def request_id(
    model: str, kind: str, messages: Sequence[Mapping[str, str]] | None, prompt: str | None, params_json: str
) -> str:
    """sha256 (32 hex chars) of the canonical JSON of everything that determines the answer."""
    msgs = [{"role": m["role"], "content": m["content"]} for m in messages] if messages is not None else None
    payload = json.dumps([model, kind, msgs, prompt, params_json], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def make_request(
    key: str,
    model: str,
    *,
    messages: Sequence[Mapping[str, str]] | None = None,
    prompt: str | None = None,
    **params: Any,
) -> dict[str, Any]:
    """A row of the `requests` table. Give ``messages`` for a chat call or ``prompt`` for a completion call.

    ``params`` are the sampling parameters sent to the engine (temperature, max_tokens, seed, ...), plus any
    salts named with a leading underscore (``_attempt=2``): salts change the request id but are never sent.
    """
    if (messages is None) == (prompt is None):
        raise ValueError(f"request {key!r}: give exactly one of messages (chat) or prompt (completion)")
    kind = "chat" if messages is not None else "completion"
    params_json = canonical_params(params)
    msgs = [{"role": m["role"], "content": m["content"]} for m in messages] if messages is not None else None
    return {
        "request_id": request_id(model, kind, msgs, prompt, params_json),
        "key": key,
        "model": model,
        "kind": kind,
        "messages": msgs,
        "prompt": prompt,
        "params": params_json,
    }


def requests_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Rows from :func:`make_request` as a table conforming to the `requests` schema."""
    return pa.Table.from_pylist(list(rows), schema=schemas.get("requests").schema)


def response_row(
    request: Mapping[str, Any],
    *,
    engine: str,
    text: str | None = None,
    reasoning: str | None = None,
    finish_reason: str | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    latency_s: float | None = None,
    attempts: int = 1,
    error: str | None = None,
    cost_usd: float | None = None,
    cached: bool = False,
    created_at: datetime | None = None,
) -> dict[str, Any]:
    """A row of the `responses` table for ``request`` (a `requests` row)."""
    return {
        "request_id": request["request_id"],
        "key": request["key"],
        "model": request["model"],
        "engine": engine,
        "text": text,
        "reasoning": reasoning,
        "finish_reason": finish_reason,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "latency_s": latency_s,
        "attempts": attempts,
        "error": error,
        "cost_usd": cost_usd,
        "cached": cached,
        "created_at": created_at or datetime.now(UTC),
    }


def responses_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Rows from :func:`response_row` as a table conforming to the `responses` schema."""
    return pa.Table.from_pylist(list(rows), schema=schemas.get("responses").schema)
