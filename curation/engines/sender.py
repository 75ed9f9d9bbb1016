"""The send loop: one request through a transport, under the rate limits, with retries, to one response row.

`RequestSender` holds the concurrency semaphore, takes rpm/tpm leases, retries by `curation.engines.retry`,
stops issuing when told (Ctrl-C, the driver gone) and counts what it did. Every request ends as exactly one
response row, success or error; it never writes the ledger (that is `curation.engines.ledger_sink`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from curation.engines.config import OpenAIEngineConfig
from curation.engines.cost import response_cost
from curation.engines.ratelimit import (
    LimiterClient,
    estimate_prompt_tokens,
)
from curation.engines.request import engine_params, response_row
from curation.engines.retry import (
    RETRYABLE_STATUS,
    MalformedResponse,
    StatusError,
    TransportError,
    backoff_s,
    parse_body,
    retry_after_s,
    scrub,
)
from curation.engines.transports import TRANSPORTS


class RequestSender:
    """Sends requests with retries, limits and per-request accounting through one HTTP transport.

    Must be created inside the event loop that will run it (the aiohttp session binds to that loop).
    """

    def __init__(
        self,
        cfg: OpenAIEngineConfig,
        limiter: LimiterClient | None,
        concurrency: int,
        api_key: str | None = None,
        alive: Callable[[], bool] | None = None,
    ) -> None:
        self.cfg = cfg
        # Asked right before every attempt: a worker whose driver is gone must not pay for unrecorded answers.
        self.alive = alive
        self._key = api_key or cfg.api_key()
        self.transport = TRANSPORTS[cfg.transport](cfg, self._key, concurrency)
        self.limiter = limiter
        self.semaphore = asyncio.Semaphore(concurrency)
        self.engine = cfg.engine_name
        self.stopping = False
        self.inflight: set[asyncio.Future] = set()
        self.counters: dict[str, float] = {}

    def _count(self, name: str, value: float = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + value

    def _reserve_tokens(self, request: Mapping[str, Any], params: Mapping[str, Any]) -> int:
        if self.limiter is None or not self.cfg.tpm:
            return 0
        completion = self.cfg.expected_completion_tokens
        if completion is None:
            completion = params.get("max_tokens") or params.get("max_completion_tokens") or 0
        return estimate_prompt_tokens(request) + int(completion)

    def _body(self, request: Mapping[str, Any], params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        sent = engine_params(params)  # salts (_attempt, ...) are ours: part of the id, never on the wire
        body: dict[str, Any] = {**self.cfg.extra_body, **sent, "model": self.cfg.model or request["model"]}
        if request["kind"] == "chat":
            body["messages"] = request["messages"]
            return "/chat/completions", body
        if request["kind"] == "completion":
            body["prompt"] = request["prompt"]
            return "/completions", body
        raise ValueError(f"unknown request kind {request['kind']!r} (expected chat or completion)")

    def _fail(
        self,
        request: Mapping[str, Any],
        kind: str,
        detail: str,
        attempts: int,
        latency: float | None,
        **extra: Any,
    ) -> dict:
        message = (
            f"{kind}: request {request['request_id']} (key {request['key']!r}): {scrub(detail, self._key)}"
        )
        self._count("failed")
        return response_row(
            request, engine=self.engine, error=message, attempts=attempts, latency_s=latency, **extra
        )

    async def send(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """One response row for ``request``, after as many attempts as the policy allows. Never raises
        (except when the surrounding task itself is cancelled)."""
        try:
            params = json.loads(request["params"]) if request["params"] else {}
            path, body = self._body(request, params)
        except Exception as exc:  # a broken request row fails alone, not the batch
            return self._fail(request, "BadRequestRow", f"{type(exc).__name__}: {exc}", 0, None)
        cfg = self.cfg
        headers = {"X-M1-Request-Id": request["request_id"]}
        reserve = self._reserve_tokens(request, params)
        attempts = 0
        latency: float | None = None
        last = ""
        while True:
            delay: float | None = None
            async with self.semaphore:
                if self.limiter is not None:
                    await self.limiter.acquire(reserve)
                if self.stopping:  # checked after queueing for a slot: a stop may have come meanwhile
                    return self._fail(
                        request, "Cancelled", "run interrupted before an answer", attempts, latency
                    )
                if self.alive is not None and not self.alive():
                    self.stopping = True
                    return self._fail(request, "Cancelled", "the driver is gone; not sent", attempts, latency)
                attempts += 1
                self._count("attempts")
                started = time.perf_counter()
                # A future of its own, so a graceful stop can cancel the attempt without cancelling us.
                attempt = asyncio.ensure_future(self.transport.post(path, body, headers))
                self.inflight.add(attempt)
                try:
                    content = await attempt
                    latency = time.perf_counter() - started
                    result = parse_body(content, request["kind"])
                except asyncio.CancelledError:
                    latency = time.perf_counter() - started
                    current = asyncio.current_task()
                    if self.stopping and attempt.cancelled() and not (current and current.cancelling()):
                        return self._fail(
                            request, "Cancelled", "run interrupted in flight", attempts, latency
                        )
                    raise
                except StatusError as exc:
                    latency = time.perf_counter() - started
                    if self.limiter is not None:
                        self.limiter.reconcile(reserve, 0)  # refused requests are not billed
                    last = f"{exc.name}: HTTP {exc.status}: {exc.message}"
                    if not (exc.status in RETRYABLE_STATUS or exc.status >= 500):
                        return self._fail(
                            request, exc.name, f"HTTP {exc.status}: {exc.message}", attempts, latency
                        )
                    server_wait = retry_after_s(exc.headers)
                    if server_wait is not None:
                        delay = min(server_wait, cfg.retry_after_max_s)
                except TransportError as exc:
                    latency = time.perf_counter() - started
                    last = f"{exc.name}: {exc.message}"
                except MalformedResponse as exc:
                    last = f"MalformedResponse: {exc}"
                except Exception as exc:  # anything unforeseen fails this request only
                    latency = time.perf_counter() - started
                    return self._fail(request, type(exc).__name__, str(exc), attempts, latency)
                else:
                    return self._succeed(request, result, attempts, latency, reserve)
                finally:
                    self.inflight.discard(attempt)
            if attempts >= cfg.max_attempts:
                kind, _, detail = last.partition(": ")
                return self._fail(
                    request, kind, f"{detail} (gave up after {attempts} attempts)", attempts, latency
                )
            self._count("retries")
            await asyncio.sleep(
                delay if delay is not None else backoff_s(attempts, cfg.backoff_base_s, cfg.backoff_max_s)
            )

    def _succeed(
        self, request: Mapping[str, Any], result: dict, attempts: int, latency: float, reserve: int
    ) -> dict:
        prompt_tokens, completion_tokens = result["prompt_tokens"], result["completion_tokens"]
        if self.limiter is not None:
            used = None if prompt_tokens is None else (prompt_tokens or 0) + (completion_tokens or 0)
            self.limiter.reconcile(reserve, used)
        cost = response_cost(self.cfg.price, prompt_tokens, completion_tokens)
        self._count("prompt_tokens", prompt_tokens or 0)
        self._count("completion_tokens", completion_tokens or 0)
        if cost:
            self._count("cost_usd", cost)
        common = {
            "finish_reason": result["finish_reason"],
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "cost_usd": cost,
        }
        # Truncated (length) or withheld (content_filter) answers are paid for like any other: they are
        # successes, kept in the ledger with their finish_reason, and the stage decides what they are worth.
        # A rerun must not pay for them again.
        if result["finish_reason"] in ("length", "content_filter"):
            self._count(f"finish_{result['finish_reason']}")
        self._count("done")
        return response_row(
            request,
            engine=self.engine,
            text=result["text"],
            reasoning=result["reasoning"],
            latency_s=latency,
            attempts=attempts,
            **common,
        )

    def stop(self, grace_s: float) -> None:
        """Stop issuing; cancel what is still on the wire after ``grace_s``."""
        if self.stopping:
            return
        self.stopping = True
        asyncio.get_running_loop().call_later(grace_s, self._cancel_inflight)

    def _cancel_inflight(self) -> None:
        for task in list(self.inflight):
            task.cancel()

    async def close(self) -> None:
        await self.transport.close()
