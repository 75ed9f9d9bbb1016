"""Token buckets and leases: the rpm/tpm limits hold over measured windows, in-process and across Ray actors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from curation.engines.ratelimit import (
    LimiterClient,
    RateLimiter,
    RunCoordinator,
    TokenBucket,
    estimate_prompt_tokens,
)


def test_bucket_starts_full_refills_and_says_how_long_to_wait() -> None:
    bucket = TokenBucket(rate_per_s=10.0, capacity=5.0)
    now = bucket.updated
    assert bucket.take(5, now) == 0.0  # the initial burst
    assert bucket.level == pytest.approx(0.0)
    assert bucket.take(2, now) == pytest.approx(0.2)  # 2 tokens at 10/s
    assert bucket.level == pytest.approx(0.0)  # nothing taken: all or nothing
    assert bucket.take(2, now + 0.2) == 0.0
    assert bucket.take(1, now + 10.0) == 0.0  # refill stops at capacity
    assert bucket.level == pytest.approx(4.0)


def test_oversized_take_waits_for_a_full_bucket_then_goes_into_debt() -> None:
    bucket = TokenBucket(rate_per_s=100.0, capacity=50.0)
    now = bucket.updated
    bucket.take(30, now)
    assert bucket.take(500, now) == pytest.approx(0.3)  # waits until full (50), not for 500
    assert bucket.take(500, now + 0.3) == 0.0
    assert bucket.level == pytest.approx(-450.0)  # the debt delays everyone: long-run rate holds
    assert bucket.take(1, now + 0.3) == pytest.approx(4.51)


def test_limiter_grants_requests_and_tokens_independently() -> None:
    limiter = RateLimiter(rpm=60, tpm=None, burst_s=2.0)  # 1 request/s, depth 2
    assert limiter.lease(2, 1000) == {"requests": 2, "tokens": 1000, "wait_s": 0.0}  # no tpm: tokens free
    grant = limiter.lease(1, 0)
    assert grant["requests"] == 0 and grant["wait_s"] == pytest.approx(1.0, abs=0.05)
    limiter.release(1, 0)
    assert limiter.lease(1, 0)["requests"] == 1


async def _drive(client: LimiterClient, seconds: float, tokens: float, workers: int = 40) -> list[float]:
    """Many coroutines acquiring as fast as the limiter lets them; returns the grant times."""
    stamps: list[float] = []
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < deadline:
            await client.acquire(tokens)
            stamps.append(time.monotonic())

    await asyncio.gather(*(worker() for _ in range(workers)))
    # Waiters still queued at the deadline are granted later, at the limited rate: not in the window.
    return [t for t in stamps if t <= deadline]


def _max_in_window(stamps: list[float], window: float) -> int:
    stamps = sorted(stamps)
    best, lo = 0, 0
    for hi, t in enumerate(stamps):
        while t - stamps[lo] > window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def test_rpm_holds_over_a_window_in_process() -> None:
    coordinator = RunCoordinator(rpm=600, burst_s=1.0)  # 10/s, burst 10
    client = LimiterClient(coordinator, rpm=600, tpm=None, remote=False)
    stamps = asyncio.run(_drive(client, seconds=3.0, tokens=0, workers=12))
    # 3 s at 10/s plus the burst (10) plus one lease block (2): the limit, measured.
    assert len(stamps) <= 30 + 10 + 2
    assert len(stamps) >= 30  # and the limiter does not starve the sender
    assert _max_in_window(stamps, 1.0) <= 10 + 10 + 2


def test_tpm_reserves_then_reconciles_with_reported_usage() -> None:
    coordinator = RunCoordinator(tpm=6000, burst_s=1.0)  # 100 tokens/s, depth 100
    client = LimiterClient(coordinator, rpm=None, tpm=6000, remote=False)

    async def run() -> tuple[int, float]:
        sent = 0
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            await client.acquire(40)  # estimate: 40 tokens
            client.reconcile(40, 20)  # the API says 20 were used: 20 refunded
            sent += 1
        return sent, client.tokens

    sent, _ = asyncio.run(run())
    # Charged at the real 20 tokens each: 2 s * 100/s + 100 burst + one block, over 20 -> at most ~16.
    assert 8 <= sent <= (200 + 100 + 40) // 20 + 1

    debtor = LimiterClient(RunCoordinator(tpm=6000), rpm=None, tpm=6000, remote=False)
    asyncio.run(debtor.acquire(40))
    before = debtor.tokens
    debtor.reconcile(40, 90)  # used more than estimated: the difference becomes debt
    assert debtor.tokens == pytest.approx(before - 50)


def test_close_returns_unspent_allowance() -> None:
    coordinator = RunCoordinator(rpm=6000, burst_s=1.0)  # depth 100
    client = LimiterClient(coordinator, rpm=6000, tpm=None, remote=False)  # block of 25
    asyncio.run(client.acquire())
    assert coordinator.requests.level == pytest.approx(75, abs=1)
    asyncio.run(client.close())
    assert coordinator.requests.level == pytest.approx(99, abs=1)


def test_prompt_token_estimate_is_local_chars_over_four() -> None:
    chat = {"messages": [{"role": "user", "content": "x" * 400}], "prompt": None}
    assert estimate_prompt_tokens(chat) == 100 + 4 + 2
    assert estimate_prompt_tokens({"messages": None, "prompt": "y" * 80}) == 21


def _created_seconds(table: pa.Table) -> list[float]:
    return [t.timestamp() for t in table.column("created_at").to_pylist()]


def _window_sum(stamps: list[float], weights: list[float], window: float) -> float:
    pairs = sorted(zip(stamps, weights, strict=True))
    best = total = 0.0
    lo = 0
    for hi in range(len(pairs)):
        total += pairs[hi][1]
        while pairs[hi][0] - pairs[lo][0] > window:
            total -= pairs[lo][1]
            lo += 1
        best = max(best, total)
    return best


@pytest.fixture(scope="module")
def fast_server() -> Iterator[str]:
    from curation.devtools.rehearse import RehearsalConfig, RehearsalServer

    server = RehearsalServer(RehearsalConfig(latency_ms=10, latency_jitter_ms=0, reasoning_tokens_mean=20))
    yield server.start()
    server.stop()


def _requests(n: int, tag: str) -> pa.Table:
    from curation.engines import make_request, requests_table

    return requests_table(
        [
            make_request(
                f"{tag}{i}", "deepseek-reasoner", messages=[{"role": "user", "content": f"{tag} q{i}"}]
            )
            for i in range(n)
        ]
    )


def test_rpm_is_shared_by_two_ray_actors(ray_local: None, fast_server: str, tmp_path: Path) -> None:
    """Two engine actors, one named coordinator: together they stay within the one rpm limit."""
    from curation.engines import OpenAIEngineConfig, run_requests

    cfg = OpenAIEngineConfig(
        base_url=fast_server, rpm=2400, actors=2, max_concurrency=16, actor_num_cpus=0.25
    )
    out = _collect(run_requests(_requests(160, "rpm"), cfg, ledger_uri=str(tmp_path), progress=False))
    assert out.num_rows == 160 and out.column("error").null_count == 160
    stamps = _created_seconds(out)
    # 40/s: any 1 s window holds at most 40, plus the initial burst (40) and one block per actor (2 x 5).
    assert _window_sum(stamps, [1.0] * len(stamps), 1.0) <= 40 + 40 + 10
    # and the limit is what binds, not something slower: 160 requests need about (160 - 40) / 40 = 3 s.
    assert max(stamps) - min(stamps) == pytest.approx(3.0, abs=1.0)


def test_tpm_holds_with_reported_usage(ray_local: None, fast_server: str, tmp_path: Path) -> None:
    from curation.engines import OpenAIEngineConfig, run_requests

    # 3,000 tokens/s (burst 3,000); each request reserves ~10 prompt + 60 expected completion tokens and is
    # reconciled with the usage the server reports (~20-40 tokens).
    cfg = OpenAIEngineConfig(
        base_url=fast_server, tpm=180_000, expected_completion_tokens=60, max_concurrency=32
    )
    out = _collect(run_requests(_requests(400, "tpm"), cfg, ledger_uri=str(tmp_path), progress=False))
    assert out.column("error").null_count == 400
    prompt, completion = out.column("prompt_tokens").to_pylist(), out.column("completion_tokens").to_pylist()
    used = [p + c for p, c in zip(prompt, completion, strict=True)]
    stamps = _created_seconds(out)
    block = 3000 * 0.25
    # Any 1 s window: 1 s of tokens + the burst + one lease block + the largest single request.
    assert _window_sum(stamps, used, 1.0) <= 3000 + 3000 + block + max(used)
    # Past the burst, the mean rate is the limit (reconciled with real usage, not the 70-token estimates).
    duration = max(stamps) - min(stamps)
    assert (sum(used) - 3000 - block) / duration <= 3000 * 1.2
    assert sum(used) / duration >= 3000 * 0.5  # and it is the limit that binds


def _collect(ds: object) -> pa.Table:
    import ray

    return pa.concat_tables(ray.get(ds.to_arrow_refs()))  # type: ignore[attr-defined]
