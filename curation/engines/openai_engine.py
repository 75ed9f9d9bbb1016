"""Fan requests out to any OpenAI-compatible HTTP API, on Ray actors, paying once per request: the Ray worker.

This module is the worker and the run: `OpenAIBatchWorker` (one per Ray Data actor), `OpenAIRun` (the run's
coordinator actor), `generate` and `send_local`. What each worker is built from lives beside it: the retry
policy (`curation.engines.retry`), the HTTP transports (`curation.engines.transports`), the send loop
(`curation.engines.sender`) and the ledger sink (`curation.engines.ledger_sink`).

Each actor runs one asyncio loop with up to ``max_concurrency / actors`` requests on the wire. By default
requests go through the official openai SDK client (aiohttp backend, SDK retries off) via its low-level
``post``, which skips the SDK's per-call parameter transformation (half the client CPU) and returns the raw
body, so a malformed 200 is seen and retried here instead of escaping as a decode error. ``transport:
aiohttp`` sends the same requests with a bare aiohttp session: about 0.35 ms of actor CPU per request
instead of 0.85 ms (bench/bench_fanout.py), with the same headers, error names and retry behaviour.

Retries are a small loop rather than tenacity: attempts are counted into the response row, Retry-After
from the server replaces the backoff when present, and the retry decision depends on the parsed body
(empty choices), all of which tenacity would need custom hooks for.

Every request ends as exactly one response row. Failures carry ``error`` ('<Type>: <message>', naming the
request, never the key) and are not written to the ledger, so a rerun tries them again. Every answer the API
billed is a success, including truncated (``finish_reason`` length) and withheld (content_filter) ones: they
are stored with their finish_reason and whatever text came back, and never paid for twice. Successes are
on disk within milliseconds (a write-ahead segment, see `curation.engines.wal`) and folded into Parquet
ledger shards every ``flush_every_rows`` rows or ``flush_every_s`` seconds and at the end of each batch.
Workers stop sending the moment their driver is gone (`curation.engines.liveness`), so a kill -9 of the
driver pays again at most for the requests that were on the wire.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import threading
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from curation.engines.config import OpenAIEngineConfig
from curation.engines.ledger import Ledger
from curation.engines.ledger_sink import LedgerSink
from curation.engines.liveness import DriverRef, DriverWatch, Heartbeat
from curation.engines.ratelimit import (
    LimiterClient,
    RunCoordinator,
    coordinator_actor,
)
from curation.engines.request import responses_table
from curation.engines.sender import RequestSender
from curation.engines.streaming import LedgerFront

logger = logging.getLogger(__name__)

REPORT_EVERY_S = 0.5


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _ActorState:
    """Everything one actor keeps across batches: sender, sink, and the reporter loop."""

    def __init__(
        self,
        cfg: OpenAIEngineConfig,
        ledger_uri: str,
        coordinator: Any,
        remote: bool,
        api_key: str | None = None,
        driver: DriverRef | None = None,
    ) -> None:
        self.cfg = cfg
        self.coordinator = coordinator
        self.remote = remote
        limiter = None
        if cfg.rpm or cfg.tpm:
            limiter = LimiterClient(coordinator, rpm=cfg.rpm, tpm=cfg.tpm, n_actors=cfg.actors, remote=remote)
        self.watch: DriverWatch | None = None
        self.watcher: asyncio.Future | None = None
        if driver is not None and cfg.stop_with_driver:
            self.watch = DriverWatch(driver, coordinator if remote else None, on_gone=self._driver_gone)
            self.watcher = asyncio.ensure_future(self.watch.run())
        alive = self.watch.alive if self.watch is not None else None
        self.sender = RequestSender(cfg, limiter, cfg.per_actor_concurrency, api_key, alive=alive)
        self.sink = LedgerSink(
            Ledger(ledger_uri),
            cfg.flush_every_rows,
            cfg.flush_every_s,
            write_ahead=cfg.write_ahead,
            fsync=cfg.write_ahead_fsync,
        )
        self.worker = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.inflight: dict[str, asyncio.Future] = {}  # request_id -> its send, shared by duplicate rows
        self.reported: dict[str, float] = {}
        self.cpu_at_start = _cpu_s()  # imports and actor start-up are not per-request cost
        self.reporter = asyncio.ensure_future(self._report_loop())

    def _driver_gone(self, why: str) -> None:
        # Stop issuing (retries included); requests already on the wire finish and are logged as usual.
        self.sender.stopping = True

    async def run_batch(self, rows: Sequence[Mapping[str, Any]]) -> pa.Table:
        results = await asyncio.gather(*(self._one(r) for r in rows))
        await self.sink.flush()
        try:
            await self.report()
        except Exception as exc:  # counters are for display; the batch's rows matter more
            logger.warning("m1 openai engine: progress report to the run coordinator failed: %s", exc)
        return responses_table(results)

    async def _one(self, request: Mapping[str, Any]) -> dict:
        rid = request["request_id"]
        twin = self.inflight.get(rid)
        if twin is not None:  # the same request is on the wire for another row: share its answer
            return {**await asyncio.shield(twin), "key": request["key"]}
        future = asyncio.ensure_future(self.sender.send(request))
        self.inflight[rid] = future
        try:
            row = await future
        finally:
            self.inflight.pop(rid, None)
        self.sink.add(row)
        return row

    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(min(REPORT_EVERY_S, self.cfg.flush_every_s))
            try:
                if self.sink.due():
                    await self.sink.flush()
                await self.report()
            except asyncio.CancelledError:
                raise
            except Exception:  # a coordinator hiccup must not stop the sending; the next tick retries
                continue

    async def report(self) -> None:
        counters = {**self.sender.counters, "ledgered": self.sink.written, "startup_cpu_s": self.cpu_at_start}
        limiter = self.sender.limiter
        if limiter is not None:
            counters.update(limiter_leases=limiter.leases, limiter_wait_s=limiter.waited_s)
        delta = {k: v - self.reported.get(k, 0) for k, v in counters.items() if v != self.reported.get(k, 0)}
        self.reported = counters
        if self.remote:
            stopping = await self.coordinator.report.remote(delta, self.worker, _cpu_s() - self.cpu_at_start)
        else:
            stopping = self.coordinator.report(delta, self.worker, None)
        if stopping and not self.sender.stopping:
            self.sender.stop(self.cfg.stop_grace_s)


class Secret:
    """A value that never prints: the API key travels to the actors inside the object store, not in logs,
    command lines or the runtime environment (which the Ray dashboard shows)."""

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__


class OpenAIBatchWorker:
    """Ray Data callable class: one per actor; async, so Ray runs several batches of it at once.

    The key is the actor's own environment variable when set there, else the driver's (shipped as a
    `Secret`): on a multi-node cluster the variable usually exists on the driver's machine only.
    """

    def __init__(
        self,
        cfg: dict,
        ledger_uri: str,
        coordinator_name: str,
        api_key: Secret,
        driver: DriverRef | None = None,
        ledger_lookup: bool = False,
    ) -> None:
        self.cfg = OpenAIEngineConfig.model_validate(cfg)
        self.driver = driver
        # map_requests: answered ids are served from the ledger here, on the worker, batch by batch.
        self.front = LedgerFront(ledger_uri) if ledger_lookup else None
        name = self.cfg.api_key_env
        self.api_key = (os.environ.get(name) if name else None) or api_key.reveal()
        self.ledger_uri = ledger_uri
        self.coordinator_name = coordinator_name
        self.state: _ActorState | None = None

    async def __call__(self, batch: pa.Table) -> pa.Table:
        if self.state is None:
            import ray

            coordinator = ray.get_actor(self.coordinator_name)
            self.state = _ActorState(
                self.cfg, self.ledger_uri, coordinator, remote=True, api_key=self.api_key, driver=self.driver
            )
        if self.front is None:
            return await self.state.run_batch(batch.to_pylist())
        cached, send, extra = await asyncio.to_thread(self.front.split, batch)
        if cached.num_rows:
            self.state.sender._count("cached", cached.num_rows)
        fresh = await self.state.run_batch(send.to_pylist()) if send.num_rows else responses_table([])
        return LedgerFront.join(cached, fresh, extra)


# ---- runs ------------------------------------------------------------------------------------------------
# Coordinators of the runs this process created and may still consume; generate() returns a lazy dataset.
_RUNS: dict[str, OpenAIRun] = {}


class OpenAIRun:
    """A run's coordinator actor (limits, counters, stop flag), with the calls the driver needs."""

    def __init__(self, cfg: OpenAIEngineConfig, name: str | None = None) -> None:
        self.name = name or f"m1-openai-{uuid.uuid4().hex[:12]}"
        self.handle = coordinator_actor(self.name, rpm=cfg.rpm, tpm=cfg.tpm, burst_s=cfg.burst_s)
        # Workers on other nodes judge the driver by this heartbeat (same-node workers watch its pid).
        self.heartbeat = Heartbeat(self.handle)
        self.closed = threading.Event()

    def totals(self) -> dict[str, Any]:
        import ray

        # Without this check a late caller (a progress thread after ray.shutdown) would auto-start a new Ray.
        if self.closed.is_set() or not ray.is_initialized():
            raise RuntimeError(f"run {self.name} is over")
        return ray.get(self.handle.totals.remote(), timeout=10)

    def stop(self) -> None:
        self.handle.request_stop.remote()

    def close(self) -> None:
        import ray

        self.closed.set()
        _RUNS.pop(self.name, None)
        self.heartbeat.stop()
        ray.kill(self.handle, no_restart=True)


def batch_size_for(cfg: OpenAIEngineConfig) -> int:
    """Two actor-fulls per batch: with several batches in flight per actor, the semaphore never runs dry
    while one batch waits for its slowest request."""
    return max(32, min(4096, 2 * cfg.per_actor_concurrency))


def generate(
    requests: Any,
    cfg: OpenAIEngineConfig,
    ledger_uri: str,
    *,
    run: OpenAIRun | None = None,
    ledger_lookup: bool = False,
) -> Any:
    """Responses (one per request row) for a Ray dataset of requests; successes go to the ledger.

    Lazy like any Ray dataset: nothing is sent until it is consumed. ``run`` (a coordinator) is created when
    not given; pass one to watch progress or to stop the run. With ``ledger_lookup`` the workers serve ids
    the ledger already answers from it (``cached`` rows) and send only the rest.
    """
    import ray

    api_key = cfg.api_key()  # a missing key fails here, naming the variable, before any actor starts
    run = run or OpenAIRun(cfg)
    _RUNS[run.name] = run  # keep the coordinator alive as long as this process may consume the dataset
    return requests.map_batches(
        OpenAIBatchWorker,
        fn_constructor_kwargs={
            "cfg": cfg.model_dump(),
            "ledger_uri": ledger_uri,
            "coordinator_name": run.name,
            "api_key": Secret(api_key),
            # The process consuming the dataset: workers stop sending the moment it is gone.
            "driver": DriverRef.current(),
            "ledger_lookup": ledger_lookup,
        },
        batch_size=batch_size_for(cfg),
        batch_format="pyarrow",
        zero_copy_batch=True,
        # Two tasks (blocks) at once per actor, each with up to 4 async batches: while one block drains its
        # slowest requests, the next one already fills the semaphore (measured: steady efficiency 0.95 -> 0.99).
        compute=ray.data.ActorPoolStrategy(
            size=cfg.actors, max_tasks_in_flight_per_actor=4, max_concurrent_calls_per_actor=2
        ),
        num_cpus=cfg.actor_num_cpus,
    )


def send_local(
    requests: pa.Table | Sequence[Mapping[str, Any]], cfg: OpenAIEngineConfig, ledger_uri: str
) -> pa.Table:
    """The same sending, retries, limits and ledger writes in this process, without Ray (tests, small jobs)."""
    rows = requests.to_pylist() if isinstance(requests, pa.Table) else list(requests)

    async def main() -> pa.Table:
        coordinator = RunCoordinator(cfg.rpm, cfg.tpm, cfg.burst_s)
        state = _ActorState(cfg.model_copy(update={"actors": 1}), ledger_uri, coordinator, remote=False)
        try:
            return await state.run_batch(rows)
        finally:
            state.reporter.cancel()
            await state.sink.close()
            await state.sender.close()

    return asyncio.run(main())
