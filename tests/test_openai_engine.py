"""The OpenAI-compatible engine against the rehearsal server on loopback: faults of every kind, retries,
Retry-After, fail-fast errors, reasoning, cost, Ray actors, kill -9 and Ctrl-C resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from curation.devtools.rehearse import FaultRates, RehearsalConfig, RehearsalServer
from curation.engines import Ledger, OpenAIEngineConfig, make_request, requests_table, run_requests
from curation.engines.config import Price
from curation.engines.openai_engine import send_local
from curation.engines.retry import backoff_s, parse_body, retry_after_s, scrub

TRANSPORTS = ["openai-sdk", "aiohttp"]
MODEL = "deepseek-reasoner"
KEY_ENV = "M1_TEST_ENGINE_KEY"
CLIENT_KEY = "sk-client-key-SENTINEL-7731"


def _requests(n: int, tag: str, **params: Any) -> list[dict[str, Any]]:
    return [
        make_request(
            f"{tag}-{i}",
            MODEL,
            messages=[
                {"role": "user", "content": f"Case {tag} {i}: which option?\nA. first\nB. second\nC. third"}
            ],
            **({"max_tokens": 400} | params),
        )
        for i in range(n)
    ]


def _collect(ds: Any) -> pa.Table:
    import ray

    return pa.concat_tables(ray.get(ds.to_arrow_refs()))


@pytest.fixture
def server() -> Iterator[RehearsalServer]:
    """A clean, fault-free server per test; tests that need faults build their own."""
    srv = RehearsalServer(RehearsalConfig(latency_ms=5, latency_jitter_ms=2, reasoning_tokens_mean=30))
    srv.start()
    yield srv
    srv.stop()


def _cfg(url: str, **overrides: Any) -> OpenAIEngineConfig:
    base = {"base_url": url, "max_concurrency": 32, "backoff_base_s": 0.02, "backoff_max_s": 0.1}
    return OpenAIEngineConfig(**(base | overrides))


# ---- pure pieces -----------------------------------------------------------------------------------------
def test_retry_after_header_forms() -> None:
    assert retry_after_s({"retry-after": "2"}) == 2.0
    assert retry_after_s({"retry-after": "0.5", "retry-after-ms": "250"}) == 0.25  # ms is more precise
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert retry_after_s({"retry-after": later}) == pytest.approx(30, abs=1.5)
    assert retry_after_s({"retry-after": "soon"}) is None
    assert retry_after_s({}) is None


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    import random

    rng = random.Random(0)
    for attempt, cap in [(1, 0.5), (2, 1.0), (3, 2.0), (8, 5.0)]:
        draws = [backoff_s(attempt, 0.5, 5.0, rng) for _ in range(2000)]
        assert 0.0 <= min(draws) and max(draws) <= cap
        assert sum(draws) / len(draws) == pytest.approx(cap / 2, rel=0.1)  # uniform over [0, cap]


def test_parse_body_reads_reasoning_and_rejects_unusable_bodies() -> None:
    from curation.engines.retry import MalformedResponse

    body = {
        "choices": [{"message": {"content": "B", "reasoning_content": "why"}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 9},
    }
    assert parse_body(json.dumps(body).encode(), "chat") == {
        "text": "B",
        "reasoning": "why",
        "finish_reason": "length",
        "prompt_tokens": 3,
        "completion_tokens": 9,
    }
    for bad in (b'{"choices": [', b'{"choices": []}', b"[1, 2]", b'{"choices": [{"text": 1}]}'):
        with pytest.raises(MalformedResponse):
            parse_body(bad, "chat")


def test_scrub_removes_the_key_from_messages() -> None:
    assert scrub(f"echo: Bearer {CLIENT_KEY} rejected", CLIENT_KEY) == "echo: Bearer *** rejected"


def test_config_errors_name_the_key_and_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="max_concurency"):
        OpenAIEngineConfig(base_url="http://127.0.0.1:1/v1", max_concurency=3)
    with pytest.raises(ValidationError, match="NAME of an environment variable"):
        OpenAIEngineConfig(base_url="http://127.0.0.1:1/v1", api_key_env="sk-abc-123 pasted")
    monkeypatch.delenv("M1_TEST_UNSET_KEY", raising=False)
    cfg = OpenAIEngineConfig(base_url="http://127.0.0.1:1/v1", api_key_env="M1_TEST_UNSET_KEY")
    with pytest.raises(ValueError, match="M1_TEST_UNSET_KEY is not set"):
        send_local(_requests(1, "nokey"), cfg, "/tmp/unused-ledger")


# ---- faults, retries, accounting ---------------------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_every_request_ends_in_exactly_one_row_under_every_fault(
    transport: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, CLIENT_KEY)
    faults = FaultRates(
        rate_limit=0.08,
        server_error=0.08,
        unavailable=0.08,
        connection_reset=0.08,
        slow=0.04,
        malformed_json=0.08,
        empty_choices=0.08,
        length=0.08,
    )
    srv = RehearsalServer(
        RehearsalConfig(
            latency_ms=5,
            latency_jitter_ms=2,
            reasoning_tokens_mean=30,
            faults=faults,
            retry_after_s=0.05,
            slow_s=1.2,
        )
    )
    url = srv.start()
    try:
        requests = _requests(300, f"faults-{transport}")
        # A 0.8 s timeout abandons the 1.2 s slow answers and leaves a loaded machine time to read the others.
        cfg = _cfg(url, transport=transport, timeout_s=0.8, max_attempts=4, api_key_env=KEY_ENV)
        out = send_local(requests, cfg, str(tmp_path))
        time.sleep(1.0)  # let the server finish answering abandoned slow requests before reading its counts
        stats = srv.stats()
    finally:
        srv.stop()

    assert out.num_rows == 300
    assert sorted(out.column("request_id").to_pylist()) == sorted(r["request_id"] for r in requests)
    assert Counter(out.column("key").to_pylist()) == Counter(r["key"] for r in requests)
    # Every kind of fault really happened...
    for kind in (
        "rate_limit",
        "server_error",
        "unavailable",
        "connection_reset",
        "malformed_json",
        "empty_choices",
        "length",
    ):
        assert stats["by_outcome"].get(kind, 0) > 0, kind
    assert stats["by_outcome"].get("slow_abandoned", 0) > 0
    # ...and the attempts recorded per row are the attempts the server saw. An attempt whose timeout fires before
    # the server's handler reads it (the server is a thread of this process: under load it can fall behind) is one
    # the client counts and the server does not: at most one per row, and far fewer than one per row in all (a
    # client that counted one attempt too many would show it on all 300 rows; CI once saw 32 with a 0.4 s timeout
    # while the other xdist worker ran a Ray cluster beside it).
    unseen = 0
    for row in out.to_pylist():
        seen = stats["attempts_by_request"][row["request_id"]]
        assert seen <= row["attempts"] <= seen + 1, row
        unseen += row["attempts"] - seen
        if row["error"] is None:
            assert row["finish_reason"] in ("stop", "length")
            assert row["prompt_tokens"] > 0 and row["engine"] == f"openai:{url.split('/')[2]}"
        else:
            assert row["attempts"] == 4 and "gave up after 4 attempts" in row["error"]
            assert f"request {row['request_id']} (key {row['key']!r})" in row["error"]
            assert row["text"] is None
        assert CLIENT_KEY not in (row["error"] or "")
    assert unseen <= 30, unseen
    errors = out.column("error").null_count
    assert 200 < errors < 300  # most succeed, some exhaust their attempts: both paths are exercised
    assert pc.sum(pc.equal(out.column("finish_reason"), "length")).as_py() > 0
    # The ledger holds exactly the successes.
    ledgered = set(Ledger(str(tmp_path)).answered_ids().to_pylist())
    assert ledgered == {r["request_id"] for r in out.to_pylist() if r["error"] is None}


def test_retry_after_replaces_backoff(tmp_path: Path) -> None:
    srv = RehearsalServer(RehearsalConfig(latency_ms=0, faults=FaultRates(rate_limit=1.0), retry_after_s=0.4))
    url = srv.start()
    try:
        # A backoff of 30 s would show; Retry-After (0.4 s) must be what the client waits.
        cfg = _cfg(url, max_attempts=3, backoff_base_s=30.0, backoff_max_s=30.0)
        started = time.perf_counter()
        out = send_local(_requests(1, "retry-after"), cfg, str(tmp_path))
        elapsed = time.perf_counter() - started
        stats = srv.stats()
    finally:
        srv.stop()
    row = out.to_pylist()[0]
    assert row["attempts"] == 3 and stats["requests_total"] == 3
    assert row["error"].startswith("RateLimitError: ") and "HTTP 429" in row["error"]
    assert 0.8 <= elapsed < 2.0  # two waits of 0.4 s between three attempts


def test_backoff_without_retry_after_is_bounded(tmp_path: Path) -> None:
    srv = RehearsalServer(RehearsalConfig(latency_ms=0, faults=FaultRates(server_error=1.0)))
    url = srv.start()
    try:
        cfg = _cfg(url, max_attempts=5, backoff_base_s=0.05, backoff_max_s=0.1)
        started = time.perf_counter()
        out = send_local(_requests(4, "backoff"), cfg, str(tmp_path))
        elapsed = time.perf_counter() - started
    finally:
        srv.stop()
    assert out.column("attempts").to_pylist() == [5] * 4
    assert all(e.startswith("InternalServerError: ") for e in out.column("error").to_pylist())
    assert elapsed < 4 * 0.1 + 1.0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bad_request_fails_fast_with_one_attempt(transport: str, tmp_path: Path) -> None:
    srv = RehearsalServer(
        RehearsalConfig(latency_ms=0, reasoning_tokens_mean=30, bad_request_keys=["POISON"])
    )
    url = srv.start()
    try:
        requests = _requests(5, "ok") + [
            make_request(
                "poison", MODEL, messages=[{"role": "user", "content": "POISON pill"}], max_tokens=10
            )
        ]
        out = send_local(requests, _cfg(url, transport=transport), str(tmp_path))
        stats = srv.stats()
    finally:
        srv.stop()
    rows = {r["key"]: r for r in out.to_pylist()}
    bad = rows.pop("poison")
    assert bad["attempts"] == 1 and stats["attempts_by_request"][bad["request_id"]] == 1
    assert bad["error"].startswith(f"BadRequestError: request {bad['request_id']} (key 'poison'): HTTP 400")
    assert all(r["error"] is None and r["text"] for r in rows.values())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_wrong_key_fails_fast_and_never_shows_a_key(
    transport: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server_token = "server-secret-token-4242"
    srv = RehearsalServer(RehearsalConfig(latency_ms=0, auth_token=server_token))
    url = srv.start()
    try:
        monkeypatch.setenv(KEY_ENV, CLIENT_KEY)
        cfg = _cfg(url, transport=transport, api_key_env=KEY_ENV)
        out = send_local(_requests(3, "auth"), cfg, str(tmp_path / "wrong"))
        assert out.column("attempts").to_pylist() == [1, 1, 1]
        for error in out.column("error").to_pylist():
            assert error.startswith("AuthenticationError: request ") and "HTTP 401" in error
            assert CLIENT_KEY not in error and server_token not in error
        monkeypatch.setenv(KEY_ENV, server_token)
        good = send_local(_requests(3, "auth"), cfg, str(tmp_path / "right"))
        assert good.column("error").null_count == 3
    finally:
        srv.stop()


def test_length_is_a_success_with_finish_reason_and_reasoning_is_kept(tmp_path: Path) -> None:
    srv = RehearsalServer(
        RehearsalConfig(latency_ms=0, reasoning_tokens_mean=40, faults=FaultRates(length=1.0))
    )
    url = srv.start()
    try:
        out = send_local(_requests(5, "length"), _cfg(url), str(tmp_path))
    finally:
        srv.stop()
    assert out.column("finish_reason").to_pylist() == ["length"] * 5
    assert out.column("error").null_count == 5
    assert all(r for r in out.column("reasoning").to_pylist())
    assert len(Ledger(str(tmp_path)).answered_ids()) == 5  # a truncated answer is still an answer: paid once


def test_reasoning_content_chat_and_completion_kinds(server: RehearsalServer, tmp_path: Path) -> None:
    url = server.url
    chat = _requests(3, "reason")
    scorer = [
        make_request(
            "scorer", "Qwen/Qwen2.5-7B-Instruct", messages=[{"role": "user", "content": "Q?\nA. x\nB. y"}]
        )
    ]
    completion = [make_request("raw", MODEL, prompt="Question?\nA. x\nB. y\nAnswer:", max_tokens=400)]
    out = {r["key"]: r for r in send_local(chat + scorer + completion, _cfg(url), str(tmp_path)).to_pylist()}
    for i in range(3):
        row = out[f"reason-{i}"]
        assert row["reasoning"] and row["text"] and "\\boxed{" in row["text"]
        assert row["completion_tokens"] > 0 and row["prompt_tokens"] > 0
    assert out["scorer"]["reasoning"] is None and out["scorer"]["text"]  # a plain model: no reasoning field
    assert out["raw"]["error"] is None and out["raw"]["text"]
    assert server.stats()["requests_total"] == 5


def test_cost_comes_from_the_price_table(server: RehearsalServer, tmp_path: Path) -> None:
    price = Price(input_per_mtok=0.55, output_per_mtok=2.19)
    out = send_local(_requests(4, "cost"), _cfg(server.url, price=price), str(tmp_path)).to_pylist()
    for row in out:
        expected = (row["prompt_tokens"] * 0.55 + row["completion_tokens"] * 2.19) / 1e6
        assert row["cost_usd"] == pytest.approx(expected)
    unpriced = send_local(_requests(1, "cost-none"), _cfg(server.url), str(tmp_path))
    assert unpriced.column("cost_usd").to_pylist() == [None]


def test_both_transports_send_the_same_requests(server: RehearsalServer, tmp_path: Path) -> None:
    requests = _requests(6, "same")
    texts = {}
    for transport in TRANSPORTS:
        out = send_local(requests, _cfg(server.url, transport=transport), str(tmp_path / transport))
        texts[transport] = sorted(
            zip(out.column("request_id").to_pylist(), out.column("text").to_pylist(), strict=True)
        )
    assert texts["openai-sdk"] == texts["aiohttp"]
    assert all(n == 2 for n in server.stats()["attempts_by_request"].values())


# ---- on Ray ----------------------------------------------------------------------------------------------
def test_ray_actors_keep_one_row_per_request_and_a_rerun_sends_only_failures(
    ray_local: None, tmp_path: Path
) -> None:
    faults = FaultRates(
        rate_limit=0.1, server_error=0.1, connection_reset=0.05, malformed_json=0.1, empty_choices=0.05
    )
    srv = RehearsalServer(
        RehearsalConfig(latency_ms=5, reasoning_tokens_mean=20, faults=faults, retry_after_s=0.02)
    )
    url = srv.start()
    try:
        requests = requests_table(_requests(400, "ray"))
        cfg = _cfg(
            url,
            actors=2,
            max_attempts=2,
            actor_num_cpus=0.25,
            price=Price(input_per_mtok=1, output_per_mtok=2),
        )
        first = _collect(run_requests(requests, cfg, ledger_uri=str(tmp_path), progress=False))
        attempts_after_first = dict(srv.stats()["attempts_by_request"])
        second = _collect(run_requests(requests, cfg, ledger_uri=str(tmp_path), progress=False))
        attempts_after_second = srv.stats()["attempts_by_request"]
    finally:
        srv.stop()
    for out in (first, second):
        assert out.num_rows == 400
        assert Counter(out.column("key").to_pylist()) == Counter(requests.column("key").to_pylist())
    failed = {r["request_id"] for r in first.to_pylist() if r["error"] is not None}
    assert 0 < len(failed) < 150
    assert all(r["cached"] == (r["request_id"] not in failed) for r in second.to_pylist())
    for rid, n in attempts_after_second.items():
        # Ledgered ids: not sent again. Failed ids: sent again, up to max_attempts (2) more times.
        assert n - attempts_after_first[rid] in ((1, 2) if rid in failed else (0,)), rid
    assert set(Ledger(str(tmp_path)).answered_ids().to_pylist()) == {
        r["request_id"] for r in second.to_pylist() if r["error"] is None
    }


def test_the_key_reaches_ray_actors_that_lack_the_variable(
    ray_local: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Set after Ray started, the variable exists in the driver only; the actors still authenticate."""
    token = "server-token-for-actors-5150"
    srv = RehearsalServer(RehearsalConfig(latency_ms=1, reasoning_tokens_mean=20, auth_token=token))
    url = srv.start()
    try:
        monkeypatch.setenv(KEY_ENV, token)
        cfg = _cfg(url, api_key_env=KEY_ENV)
        out = _collect(
            run_requests(
                requests_table(_requests(10, "actor-key")), cfg, ledger_uri=str(tmp_path), progress=False
            )
        )
        assert out.column("error").null_count == 10
        assert srv.stats()["by_outcome"] == {"ok": 10}
    finally:
        srv.stop()
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ValueError, match=f"{KEY_ENV} is not set"):
        run_requests(
            requests_table(_requests(1, "no-key")), cfg, ledger_uri=str(tmp_path / "x"), progress=False
        )


CLIENT_SCRIPT = """
import json, os, sys
import pyarrow as pa, pyarrow.parquet as pq, ray
from curation.engines import OpenAIEngineConfig, run_requests
ray.init(address=sys.argv[1], log_to_driver=False)
requests = pq.read_table(sys.argv[2])
cfg = OpenAIEngineConfig(**json.loads(sys.argv[3]))
out = run_requests(requests, cfg, ledger_uri=sys.argv[4], progress=False)
pq.write_table(pa.concat_tables(ray.get(out.to_arrow_refs())), sys.argv[5])
"""


def _spawn_client(tmp_path: Path, requests: pa.Table, cfg: dict, ledger: Path, out: Path) -> subprocess.Popen:
    import ray

    script = tmp_path / "client.py"
    script.write_text(textwrap.dedent(CLIENT_SCRIPT))
    requests_path = tmp_path / "requests.parquet"
    pq.write_table(requests, requests_path)
    address = ray.get_runtime_context().gcs_address
    return subprocess.Popen(
        [sys.executable, str(script), address, str(requests_path), json.dumps(cfg), str(ledger), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )


def _wait_for_ledger(ledger: Path, at_least: int, proc: subprocess.Popen, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"client exited early ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        if ledger.exists() and (n := len(Ledger(str(ledger)).answered_ids())) >= at_least:
            return n
        time.sleep(0.1)
    raise AssertionError(f"the ledger did not reach {at_least} rows in {timeout} s")


def _wait_until_quiet(srv: RehearsalServer, quiet_s: float = 1.5, timeout: float = 60) -> dict:
    """Server counts once nothing has arrived for ``quiet_s`` (the dead client's actors are gone)."""
    deadline = time.monotonic() + timeout
    last = srv.stats()
    since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = srv.stats()
        if now["requests_total"] != last["requests_total"] or now["in_flight"]:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return now
    raise AssertionError("the server kept receiving requests after the client was stopped")


@pytest.mark.slow
def test_ctrl_c_stops_issuing_keeps_finished_rows_and_says_so(ray_local: None, tmp_path: Path) -> None:
    srv = RehearsalServer(RehearsalConfig(latency_ms=100, latency_jitter_ms=20, reasoning_tokens_mean=30))
    url = srv.start()
    try:
        # Far more than fit between the first flush and the signal on an idle machine (80 answers/s): an 800-row
        # run could finish before SIGINT arrived there.
        n = 4000
        requests = requests_table(_requests(n, "sigint"))
        ledger = tmp_path / "ledger"
        cfg = {
            "base_url": url,
            "max_concurrency": 8,
            "flush_every_s": 5.0,
            "stop_grace_s": 1.0,
            "actor_num_cpus": 0.25,
        }
        proc = _spawn_client(tmp_path, requests, cfg, ledger, tmp_path / "never.parquet")
        try:
            # flush_every_s is long: rows on disk at exit come from the graceful stop's flush.
            _wait_for_ledger(ledger, 1, proc)
            time.sleep(1.0)
            sent_at_signal = srv.stats()["requests_total"]
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        quiet = _wait_until_quiet(srv)
    finally:
        srv.stop()
    assert proc.returncode != 0 and "KeyboardInterrupt" in stderr
    assert "kept in the ledger" in stderr and "rerun" in stderr
    kept = len(Ledger(str(ledger)).answered_ids())
    assert f"m1: {kept} new responses" in stderr, stderr[-2500:]
    # It stopped issuing: at most what was in flight (8) plus the grace period's worth went out after SIGINT.
    assert quiet["requests_total"] - sent_at_signal <= 8 + 8 * 1.0 / 0.08 + 8
    assert quiet["requests_total"] < n
    # Everything the server answered before the stop is in the ledger (nothing lost in memory).
    assert kept >= sum(1 for n in quiet["successes_by_request"].values() if n) - 8


# ---- salts -----------------------------------------------------------------------------------------------
class _CaptureServer:
    """A real HTTP server on loopback that answers every chat call with a fixed completion and keeps the
    JSON bodies it received, to see exactly what went on the wire."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.url = ""

    def __enter__(self) -> _CaptureServer:
        import asyncio
        import threading

        from aiohttp import web

        async def chat(request: web.Request) -> web.Response:
            self.bodies.append(await request.json())
            return web.json_response(
                {
                    "choices": [{"message": {"content": "\\boxed{A}"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 2},
                }
            )

        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def serve() -> None:
            app = web.Application()
            app.router.add_post("/v1/chat/completions", chat)
            self.runner = web.AppRunner(app)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"
            ready.set()

        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(serve(), self.loop)
        assert ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_underscore_salts_make_distinct_requests_but_never_reach_the_api(
    transport: str, tmp_path: Path
) -> None:
    messages = [{"role": "user", "content": "Which? A. x B. y"}]
    attempts = [
        make_request(f"q1|{a}", MODEL, messages=messages, temperature=0.6, _attempt=a) for a in range(3)
    ]
    plain = make_request("q1", MODEL, messages=messages, temperature=0.6)
    ids = {r["request_id"] for r in [*attempts, plain]}
    assert len(ids) == 4  # each salt is its own request, and none is the unsalted one
    assert json.loads(attempts[2]["params"]) == {"_attempt": 2, "temperature": 0.6}  # stored with the salt
    with _CaptureServer() as srv:
        cfg = _cfg(srv.url, transport=transport)
        out = send_local(attempts, cfg, str(tmp_path))
        assert out.column("error").null_count == 3
        assert len(srv.bodies) == 3
        for body in srv.bodies:
            assert body["temperature"] == 0.6 and not any(k.startswith("_") for k in body), body
        # The ledger knows each attempt: a rerun sends nothing.
        assert set(Ledger(str(tmp_path)).answered_ids().to_pylist()) == {r["request_id"] for r in attempts}


def test_truncated_and_filtered_answers_are_paid_once_and_returned_as_successes(
    ray_local: None, tmp_path: Path
) -> None:
    """length and content_filter finishes are billed answers: success rows with their finish_reason and
    whatever came back, stored in the ledger, so a rerun serves them from there instead of paying again."""
    srv = RehearsalServer(
        RehearsalConfig(
            latency_ms=1, reasoning_tokens_mean=30, faults=FaultRates(length=0.3, content_filter=0.3)
        )
    )
    url = srv.start()
    try:
        requests = requests_table(_requests(60, "finish"))
        cfg = _cfg(url, actor_num_cpus=0.25)
        first = _collect(run_requests(requests, cfg, ledger_uri=str(tmp_path), progress=False))
        sent = srv.stats()["requests_total"]
        second = _collect(run_requests(requests, cfg, ledger_uri=str(tmp_path), progress=False))
        outcomes = srv.stats()["by_outcome"]
    finally:
        srv.stop()
    assert first.num_rows == 60 and first.column("error").null_count == 60
    reasons = Counter(first.column("finish_reason").to_pylist())
    assert reasons["content_filter"] > 5 and reasons["length"] > 5 and reasons["stop"] > 5, reasons
    assert sent == 60  # one attempt each: nothing was retried
    assert outcomes["content_filter"] == reasons["content_filter"]
    for row in first.to_pylist():
        if row["finish_reason"] == "content_filter":
            assert row["text"] == "" and row["reasoning"] and row["completion_tokens"] > 0
    assert all(second.column("cached").to_pylist())  # the rerun paid for nothing

    def finishes(t: pa.Table) -> list[tuple]:
        return sorted(
            zip(t.column("request_id").to_pylist(), t.column("finish_reason").to_pylist(), strict=True)
        )

    assert finishes(second) == finishes(first)


# ---- streaming ---------------------------------------------------------------------------------------------
def test_map_requests_streams_one_row_per_input_row_and_reuses_the_ledger(
    ray_local: None, tmp_path: Path
) -> None:
    import ray.data

    from curation.engines import map_requests

    srv = RehearsalServer(
        RehearsalConfig(latency_ms=2, reasoning_tokens_mean=20, faults=FaultRates(server_error=0.15))
    )
    url = srv.start()
    try:
        rows = _requests(240, "stream")
        # Duplicate ids under other keys: next to their twin (same batch) and far from it (another block).
        rows[3:3] = [{**rows[i], "key": f"near-{i}"} for i in (0, 1, 2)]
        rows += [{**rows[i], "key": f"far-{i}"} for i in (150, 151)]
        rows += [
            make_request(f"salted|{a}", MODEL, messages=[{"role": "user", "content": "Salted?"}], _attempt=a)
            for a in range(5)
        ]
        table = requests_table(rows)
        blocks = [table.slice(i, 50) for i in range(0, table.num_rows, 50)]
        cfg = _cfg(url, actors=2, actor_num_cpus=0.25, max_attempts=1)
        ledger = str(tmp_path / "ledger")

        first = _collect(map_requests(ray.data.from_arrow(blocks), cfg, ledger_uri=ledger, progress=False))
        attempts_first = dict(srv.stats()["attempts_by_request"])
        second = _collect(map_requests(ray.data.from_arrow(blocks), cfg, ledger_uri=ledger, progress=False))
        attempts_second = srv.stats()["attempts_by_request"]
    finally:
        srv.stop()
    for out in (first, second):
        assert out.num_rows == table.num_rows  # errors included, nothing dropped
        assert Counter(
            zip(out.column("key").to_pylist(), out.column("request_id").to_pylist(), strict=True)
        ) == Counter(
            zip(table.column("key").to_pylist(), table.column("request_id").to_pylist(), strict=True)
        )
    # A request whose row failed but whose far twin (another block, another batch) was answered is in the ledger.
    answered = {r["request_id"] for r in first.to_pylist() if r["error"] is None}
    failed = {r["request_id"] for r in first.to_pylist() if r["error"] is not None} - answered
    assert 10 < len(failed) < 80
    # One of a far pair may already find its twin's answer in the ledger (whichever block two actors finish
    # second: seen both ways); nothing else is cached on a first run.
    cached_keys = {r["key"] for r in first.to_pylist() if r["cached"]}
    pairs = [{f"far-{i}", rows[i]["key"]} for i in (150, 151)]
    assert cached_keys <= set().union(*pairs)
    assert all(len(cached_keys & pair) <= 1 for pair in pairs)
    # The rerun takes every success from the ledger and sends exactly the failures again, once each.
    for row in second.to_pylist():
        assert row["cached"] == (row["request_id"] not in failed), row
    sent_again = {rid for rid, n in attempts_second.items() if n != attempts_first.get(rid, 0)}
    assert sent_again == failed
    assert all(attempts_second[rid] - attempts_first[rid] == 1 for rid in failed)
    # Twins in one batch share one send; the salted attempts are five requests.
    assert all(attempts_first[rows[i]["request_id"]] == 1 for i in (0, 1, 2))
    assert len({r["request_id"] for r in rows[-5:]}) == 5
    assert set(Ledger(ledger).answered_ids().to_pylist()) == {
        r["request_id"] for r in second.to_pylist() if r["error"] is None
    }
