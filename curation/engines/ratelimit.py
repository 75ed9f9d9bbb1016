"""Requests-per-minute and tokens-per-minute limits shared by every actor of a run.

One coordinator per run holds two token buckets. Actors lease small blocks of requests and tokens and spend
them locally, so a request costs a dict update, not a round trip; only when a block runs out does the actor
ask again. The tpm bucket is charged with an estimate before sending (prompt chars/4 + expected completion)
and reconciled with the usage the API reports afterwards: the difference is refunded to, or owed by, the
actor's local allowance, so the long-run token rate is exact.

The same classes work in-process (pass a `RunCoordinator` to `LimiterClient`) and across Ray actors (pass
the handle of the named actor from `coordinator_actor`). The coordinator also carries the run's progress
counters and stop flag, so progress display and graceful Ctrl-C cost no extra process.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Mapping
from typing import Any

# A lease covers this much time at the actor's share of the rate: one round trip to the coordinator costs
# about 2 ms of CPU (both sides), so a lease must cover dozens of requests when the limit is high; a block
# never exceeds the bucket's depth, so short-window rates stay within rpm + burst.
LEASE_WINDOW_S = 0.25
MAX_REQUEST_BLOCK = 256


class TokenBucket:
    """Classic token bucket: ``rate_per_s`` refill, ``capacity`` depth, starting full.

    A take larger than the depth (one huge request) is granted once the bucket is full and drives the level
    negative, so the long-run rate still holds.
    """

    def __init__(self, rate_per_s: float, capacity: float) -> None:
        if rate_per_s <= 0 or capacity <= 0:
            raise ValueError(f"token bucket needs positive rate and capacity, got {rate_per_s}, {capacity}")
        self.rate_per_s = rate_per_s
        self.capacity = capacity
        self.level = capacity
        self.updated = time.monotonic()

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate_per_s)
        self.updated = now

    def take(self, amount: float, now: float | None = None) -> float:
        """Take ``amount`` now and return 0, or take nothing and return the seconds until it is there.

        All or nothing: partial grants would make a client come back for the rest, one round trip each.
        """
        self._refill(time.monotonic() if now is None else now)
        threshold = min(amount, self.capacity)
        if self.level + 1e-9 < threshold:
            return (threshold - self.level) / self.rate_per_s
        self.level -= amount
        return 0.0

    def give_back(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)


class RateLimiter:
    """The rpm and tpm buckets of one run (either may be absent)."""

    def __init__(self, rpm: float | None = None, tpm: float | None = None, burst_s: float = 1.0) -> None:
        self.rpm, self.tpm = rpm, tpm
        self.requests = TokenBucket(rpm / 60.0, max(1.0, rpm / 60.0 * burst_s)) if rpm else None
        self.tokens = TokenBucket(tpm / 60.0, max(1.0, tpm / 60.0 * burst_s)) if tpm else None

    def lease(self, requests: float, tokens: float) -> dict[str, float]:
        """Grant ``requests`` and ``tokens`` allowances, each all or nothing; ``wait_s`` > 0 says when to ask
        again for what was not granted."""
        granted_requests = granted_tokens = wait_s = 0.0
        now = time.monotonic()
        if requests > 0:
            wait = self.requests.take(requests, now) if self.requests is not None else 0.0
            granted_requests = 0.0 if wait else requests
            wait_s = max(wait_s, wait)
        if tokens > 0:
            wait = self.tokens.take(tokens, now) if self.tokens is not None else 0.0
            granted_tokens = 0.0 if wait else tokens
            wait_s = max(wait_s, wait)
        return {"requests": granted_requests, "tokens": granted_tokens, "wait_s": wait_s}

    def release(self, requests: float, tokens: float) -> None:
        """Return unspent allowance (an actor finishing early), so other actors can use it."""
        if self.requests is not None and requests > 0:
            self.requests.give_back(requests)
        if self.tokens is not None and tokens > 0:
            self.tokens.give_back(tokens)


class RunCoordinator(RateLimiter):
    """One per run: the shared buckets, the run's counters (summed over actors) and its stop flag."""

    def __init__(self, rpm: float | None = None, tpm: float | None = None, burst_s: float = 1.0) -> None:
        super().__init__(rpm, tpm, burst_s)
        self.counters: dict[str, float] = {}
        self.cpu_by_worker: dict[str, float] = {}
        self.stopping = False
        self.cpu_at_start = _cpu_s()
        self.last_heartbeat: float | None = None

    def report(self, delta: Mapping[str, float], worker: str = "", cpu_s: float | None = None) -> bool:
        """Add an actor's counter increments; returns the stop flag so actors learn of Ctrl-C on the way."""
        for name, value in delta.items():
            self.counters[name] = self.counters.get(name, 0) + value
        if cpu_s is not None:
            self.cpu_by_worker[worker] = cpu_s
        return self.stopping

    def totals(self) -> dict[str, Any]:
        """Summed counters; worker_cpu_s and coordinator_cpu_s are CPU seconds spent since start-up."""
        return {
            **self.counters,
            "worker_cpu_s": sum(self.cpu_by_worker.values()),
            "coordinator_cpu_s": _cpu_s() - self.cpu_at_start,
            "stopping": self.stopping,
        }

    def request_stop(self) -> None:
        self.stopping = True

    def heartbeat(self) -> None:
        """The driver is alive (see `curation.engines.liveness.Heartbeat`)."""
        self.last_heartbeat = time.monotonic()

    def heartbeat_age(self) -> float | None:
        """Seconds since the driver's last heartbeat; None before the first."""
        return None if self.last_heartbeat is None else time.monotonic() - self.last_heartbeat

    def is_stopping(self) -> bool:
        return self.stopping


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def coordinator_actor(name: str, *, rpm: float | None, tpm: float | None, burst_s: float = 1.0) -> Any:
    """The run's named coordinator actor (created on first use, found by name afterwards).

    The name is per run (the caller puts a run id in it), so two runs never share buckets by accident;
    runs that must share one API quota can pass the same name.
    """
    import ray

    remote_cls = ray.remote(num_cpus=0, max_restarts=0)(RunCoordinator)
    return remote_cls.options(name=name, get_if_exists=True, lifetime=None).remote(rpm, tpm, burst_s)


class LimiterClient:
    """Per-actor side of the limiter: spends leased allowance locally, asks the coordinator when it runs out.

    ``coordinator`` is a `RunCoordinator` (in-process) or a Ray actor handle of one.
    """

    def __init__(
        self,
        coordinator: Any,
        *,
        rpm: float | None,
        tpm: float | None,
        n_actors: int = 1,
        remote: bool = True,
    ) -> None:
        self.coordinator = coordinator
        self.remote = remote
        self.rpm, self.tpm = rpm, tpm
        self.enabled = bool(rpm or tpm)
        share = LEASE_WINDOW_S / max(1, n_actors)
        self.request_block = float(min(MAX_REQUEST_BLOCK, max(1, int(rpm / 60.0 * share)))) if rpm else 0.0
        self.token_block = tpm / 60.0 * share if tpm else 0.0
        self.requests = 0.0
        self.tokens = 0.0
        self._lock: asyncio.Lock | None = None
        self.waited_s = 0.0
        self.leases = 0

    async def _lease(self, requests: float, tokens: float) -> dict:
        self.leases += 1
        if self.remote:
            return await self.coordinator.lease.remote(requests, tokens)
        return self.coordinator.lease(requests, tokens)

    def _has(self, tokens: float) -> bool:
        return (not self.rpm or self.requests >= 1) and (not self.tpm or self.tokens >= tokens)

    async def acquire(self, tokens: float = 0.0) -> None:
        """Wait until one request carrying ``tokens`` estimated tokens may be sent, and charge it."""
        if not self.enabled:
            return
        if self._has(tokens):
            self._spend(tokens)
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        # One lease in flight per actor; waiters re-check the local allowance after the holder refilled it.
        async with self._lock:
            while not self._has(tokens):
                want_r = self.request_block if self.rpm and self.requests < 1 else 0.0
                want_t = (
                    max(tokens - self.tokens, self.token_block) if self.tpm and self.tokens < tokens else 0.0
                )
                grant = await self._lease(want_r, want_t)
                self.requests += grant["requests"]
                self.tokens += grant["tokens"]
                if grant["wait_s"] > 0 and not self._has(tokens):
                    wait = min(grant["wait_s"], 1.0)
                    self.waited_s += wait
                    await asyncio.sleep(wait)
            self._spend(tokens)

    def _spend(self, tokens: float) -> None:
        if self.rpm:
            self.requests -= 1
        if self.tpm:
            self.tokens -= tokens

    def reconcile(self, reserved_tokens: float, used_tokens: float | None) -> None:
        """Settle a request's token charge with the usage the API reported (refund or debt)."""
        if self.tpm and used_tokens is not None:
            self.tokens += reserved_tokens - used_tokens

    async def close(self) -> None:
        """Hand unspent allowance back to the shared buckets."""
        if not self.enabled:
            return
        give_r, give_t = max(0.0, self.requests), max(0.0, self.tokens)
        self.requests -= give_r
        self.tokens -= give_t
        if give_r or give_t:
            if self.remote:
                await self.coordinator.release.remote(give_r, give_t)
            else:
                self.coordinator.release(give_r, give_t)


def estimate_prompt_tokens(request: Mapping[str, Any]) -> int:
    """A local, download-free estimate of a request's prompt tokens: chars/4 plus a few per message."""
    messages = request.get("messages")
    if messages:
        return sum(len(m["content"]) // 4 + 4 for m in messages) + 2
    return len(request.get("prompt") or "") // 4 + 1
