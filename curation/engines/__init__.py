"""The entry points stages use to call models: `map_requests` (streaming) and `run_requests` (eager).

    responses = map_requests(requests_ds, engine_cfg, ledger_uri="runs/x/ledger")  # lazy ray.data.Dataset
    responses = run_requests(requests, engine_cfg, ledger_uri="runs/x/ledger")      # executes at once
    stream_requests(requests_ds, engine_cfg, ledger_uri=..., out_uri="runs/x/scratch/r")  # map_requests -> Parquet

`map_requests` streams: each engine worker serves the ids its ledger lookups answer and sends the rest,
batch by batch, so the driver never holds the requests or the responses (memory stays flat at any size).
`run_requests` plans on the driver (whole table in memory), shows live progress, handles Ctrl-C gracefully
and compacts the ledger afterwards; it suits small and medium jobs.

What both guarantee:

1. Requests already answered in the ledger are not sent: their stored responses come back with
   ``cached=True`` (re-keyed to this call's keys).
2. Every request row gets exactly one response row with its own key. Identical request ids are sent once
   and fanned back (run_requests: over the whole input; map_requests: within a batch and, on the OpenAI
   engine, while one is on the wire).
3. The rest goes to the engine named by ``engine.kind`` (``openai``: any OpenAI-compatible API;
   ``vllm``: local replicas; ``rehearsal``: the rehearsal server, see `running`), which appends successes to
   the ledger as they arrive.

``run_requests(..., dry_run=True)`` prints and returns a `CostEstimate` and sends nothing. Ctrl-C stops issuing, lets what is
on the wire finish for a few seconds, flushes, says how many responses were kept, and re-raises: a rerun
resumes where it stopped.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Literal, overload

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

import schemas
from curation.engines.config import (
    EngineConfig,
    OpenAIEngineConfig,
    Price,
    RehearsalEngineConfig,
    VLLMEngineConfig,
)
from curation.engines.cost import CostEstimate, LiveProgress, estimate
from curation.engines.ledger import Ledger, loss_bound, node_wal_root
from curation.engines.lifecycle import require_started, running
from curation.engines.openai_engine import OpenAIRun, batch_size_for, generate
from curation.engines.request import make_request, requests_table, response_row, responses_table
from curation.engines.request_plan import RequestPlan, plan_requests, rekey
from curation.engines.vllm_engine import generate as vllm_generate
from curation.store.runstore import resolve

if TYPE_CHECKING:
    import ray.data

# Interrupted runs wait this long (beyond the engine's stop grace) for actors to flush and return.
STOP_WAIT_S = 20.0

_last_run_totals: dict[str, Any] = {}


def _fan_out(batch: pa.Table, extra_pairs: pa.Table) -> pa.Table:
    """Ray Data batch fn: the batch plus a copy of each response for its duplicate rows' keys."""
    extra = rekey(extra_pairs, batch)
    return pa.concat_tables([schemas.conform(batch, "responses"), extra]) if extra.num_rows else batch


def _as_requests_table(requests: Any) -> pa.Table:
    if isinstance(requests, pa.Table):
        table = requests
    else:
        import ray

        tables = ray.get(requests.to_arrow_refs())
        table = pa.concat_tables(tables) if tables else schemas.get("requests").schema.empty_table()
    return schemas.conform(table, "requests")


def block_rows(engine: Any, n_rows: int) -> int:
    """Rows per block: big enough for several async batches per task, small enough to feed every actor."""
    if engine.kind in ("openai", "rehearsal"):
        batch, workers = batch_size_for(engine), engine.actors
    else:
        batch, workers = engine.batch_size, engine.replicas
    return max(batch, min(8 * batch, -(-n_rows // (2 * workers))))


def _split_blocks(table: pa.Table, engine: Any) -> list[pa.Table]:
    rows = block_rows(engine, table.num_rows)
    return [table.slice(i, rows) for i in range(0, table.num_rows, rows)]


def map_requests(
    ds: ray.data.Dataset,
    engine: OpenAIEngineConfig | RehearsalEngineConfig | VLLMEngineConfig,
    *,
    ledger_uri: str,
    progress: bool = True,
) -> ray.data.Dataset:
    """Responses for a dataset of requests, lazily: exactly one `responses` row per input row, in any order.

    Input rows have the `requests` columns. Nothing runs until the result is consumed (written, iterated,
    materialized). On the engine's workers, each batch is looked up in the ledger first: answered ids come
    back as ``cached`` rows and are not sent; the rest goes to the engine, and every success reaches the
    ledger within milliseconds. Failed rows carry ``error`` and are never dropped; a rerun sends them again.

    Duplicate ids are sent once within a batch (and, on the OpenAI engine, while one is on the wire in the
    same worker); duplicates further apart may each be sent, unless the first is already in the ledger by the
    time the second is looked up. Parallelism across workers follows the input's blocks: give a dataset of
    several blocks (read_parquet does; ``ds.repartition(n)`` otherwise).

    ``progress``: for the OpenAI engine, a line on stderr every ``PROGRESS_EVERY_S`` while requests are being
    answered (done, from the ledger, failed, cost); vLLM runs show Ray Data's own progress.
    The ledger is compacted first when it has many shards (streaming, bounded memory).
    """
    require_started(engine, "map_requests")
    return _streamed_responses(ds, engine, ledger_uri, progress=progress)[0]


def _streamed_responses(
    ds: ray.data.Dataset, engine: Any, ledger_uri: str, *, progress: bool
) -> tuple[ray.data.Dataset, Any]:
    """The lazy responses of ``ds`` with worker-side ledger lookups, and the OpenAI run's coordinator (or None)."""
    _compact_on_a_worker(ledger_uri)
    if progress:
        _object_store_notice(engine, ledger_uri)
    if engine.kind == "openai":
        engine.api_key()  # fail before starting anything, naming the variable
        run = OpenAIRun(engine)
        if progress:
            _progress_lines(run, engine)
        return generate(ds, engine, ledger_uri, run=run, ledger_lookup=True), run
    if engine.kind == "vllm":
        return vllm_generate(ds, engine, ledger_uri, ledger_lookup=True), None
    raise ValueError(f"unknown engine kind {engine.kind!r}; known: openai, vllm")


def stream_requests(
    ds: ray.data.Dataset,
    engine: OpenAIEngineConfig | RehearsalEngineConfig | VLLMEngineConfig,
    *,
    ledger_uri: str,
    out_uri: str,
    filesystem: Any = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Answer a dataset of requests into Parquet at ``out_uri``: `map_requests`, consumed by ``write_parquet``.

    What the LLM stages use at any pool size: requests are built on the workers, looked up in the ledger there,
    sent, and written by the workers, so the driver holds neither requests nor responses (its memory does not
    grow with the pool). Returns counters read back from the written files (rows, cached, failed) plus the
    OpenAI run's own (attempts, tokens, cost). A kill or Ctrl-C loses nothing paid for: every success is in
    the ledger's write-ahead segment within milliseconds, and the workers stop when this process is gone.
    """
    import pyarrow.dataset as pads

    if isinstance(engine, RehearsalEngineConfig):  # not started by the caller: for this call only
        with running(engine) as live:
            return stream_requests(
                ds, live, ledger_uri=ledger_uri, out_uri=out_uri, filesystem=filesystem, progress=progress
            )
    started = time.perf_counter()
    responses, run = _streamed_responses(ds, engine, ledger_uri, progress=progress)
    try:
        responses.write_parquet(out_uri, filesystem=filesystem)
        totals: dict[str, Any] = run.totals() if run is not None else {}
    finally:
        if run is not None:
            run.close()
    written = pads.dataset(out_uri, filesystem=filesystem, format="parquet")
    columns = written.to_table(columns=["cached", "error"]) if written.files else None
    rows = columns.num_rows if columns is not None else 0
    cached = int(pc.sum(columns.column("cached")).as_py() or 0) if rows else 0
    failed = int(pc.sum(pc.is_valid(columns.column("error"))).as_py() or 0) if rows else 0
    totals.update(
        {
            "rows": rows,
            "cached": cached,
            "failed": failed,
            "sent": rows - cached,
            "wall_s": time.perf_counter() - started,
        }
    )
    _last_run_totals.clear()
    _last_run_totals.update(totals)
    if progress:
        counts = f"{rows:,} requests: {cached:,} from the ledger, {rows - cached - failed:,} answered"
        print(_summary_line(engine, counts, totals), file=sys.stderr)
    return totals


PROGRESS_EVERY_S = 10.0


def _object_store_notice(engine: Any, ledger_uri: str) -> None:
    """On an object-store ledger, one line saying where the write-ahead segments are and how many answers a
    lost node can make a rerun pay again at most (the bound; see `curation.engines.ledger.loss_bound`)."""
    if engine.kind != "openai" or not engine.write_ahead:
        return

    fs, _ = resolve(ledger_uri)
    if isinstance(fs, pafs.LocalFileSystem):
        return
    bound = loss_bound(engine.actors, engine.flush_every_rows)
    print(
        f"m1 {_engine_label(engine)}: the ledger is on an object store; each worker writes its answers ahead "
        f"to its node's local disk ({node_wal_root()}/<ledger hash>) and folds them into the ledger every "
        f"{engine.flush_every_rows} answers or {engine.flush_every_s:g} s. If a node is lost, a rerun pays "
        f"again at most about {bound:,} answers ({engine.actors} workers x {engine.flush_every_rows}; more only "
        "while the store is slow to take a shard); a rerun on the same node pays none again",
        file=sys.stderr,
    )


def _compact(ledger_uri: str) -> int:
    return Ledger(ledger_uri).compact()


def _compact_on_a_worker(ledger_uri: str) -> None:
    """Merge a ledger of many small shards (they slow every worker's index) in a Ray task: the merge streams
    row groups, but the driver's memory is kept for the driver."""
    import ray

    try:
        ray.get(ray.remote(num_cpus=0.25, max_retries=0)(_compact).remote(ledger_uri))
    except (OSError, ray.exceptions.RayTaskError) as exc:  # every answer is durable; compaction can wait
        print(f"m1: ledger compaction skipped ({exc}); the ledger is intact", file=sys.stderr)


def _progress_lines(run: Any, engine: Any) -> None:
    """A daemon thread printing the run's counters when they change; it ends with the run's coordinator."""

    def loop() -> None:
        last: dict[str, Any] = {}
        while not run.closed.wait(PROGRESS_EVERY_S):
            try:
                totals = run.totals()
            except Exception:  # the coordinator is gone: the run is over
                return
            shown = {k: int(totals.get(k, 0)) for k in ("done", "cached", "failed")}
            if shown != last:
                last = shown
                cost = f", ${totals['cost_usd']:,.4f}" if totals.get("cost_usd") else ""
                print(
                    f"m1 {_engine_label(engine)}: {shown['done']:,} answered, {shown['cached']:,} from the "
                    f"ledger, {shown['failed']:,} failed{cost}",
                    file=sys.stderr,
                )

    threading.Thread(target=loop, name="m1-map-requests-progress", daemon=True).start()


def _engine_dataset(send: pa.Table, engine: Any, ledger_uri: str, run: Any) -> ray.data.Dataset:
    import ray.data

    ds = ray.data.from_arrow(_split_blocks(send, engine))
    if engine.kind == "openai":
        return generate(ds, engine, ledger_uri, run=run)
    if engine.kind == "vllm":
        return vllm_generate(ds, engine, ledger_uri)
    raise ValueError(f"unknown engine kind {engine.kind!r}; known: openai, vllm")


@overload
def run_requests(
    requests: ray.data.Dataset | pa.Table,
    engine: OpenAIEngineConfig | RehearsalEngineConfig | VLLMEngineConfig,
    *,
    ledger_uri: str,
    progress: bool = ...,
    dry_run: Literal[False] = ...,
) -> ray.data.Dataset: ...
@overload
def run_requests(
    requests: ray.data.Dataset | pa.Table,
    engine: OpenAIEngineConfig | RehearsalEngineConfig | VLLMEngineConfig,
    *,
    ledger_uri: str,
    progress: bool = ...,
    dry_run: Literal[True],
) -> CostEstimate: ...
def run_requests(
    requests: ray.data.Dataset | pa.Table,
    engine: OpenAIEngineConfig | RehearsalEngineConfig | VLLMEngineConfig,
    *,
    ledger_uri: str,
    progress: bool = True,
    dry_run: bool = False,
) -> ray.data.Dataset | CostEstimate:
    """Responses for ``requests`` (one row per request row, any order), paying only for unanswered ids.

    Executes eagerly: when it returns, every new success is in the ledger and the returned dataset is
    materialized. ``engine`` is an `EngineConfig`; a rehearsal engine not started by the caller (`running`) is
    started for this call only.
    """
    table = _as_requests_table(requests)
    ledger = Ledger(ledger_uri)
    answered = ledger.answered_ids()
    if dry_run:
        est = estimate(table, engine, answered)
        print(f"dry run ({_engine_label(engine)}), nothing sent:\n{est.format()}")
        return est
    if isinstance(engine, RehearsalEngineConfig):  # not started by the caller: for this call only
        with running(engine) as live:
            return run_requests(table, live, ledger_uri=ledger_uri, progress=progress)

    import ray.data

    plan = plan_requests(table, answered)
    cached = rekey(plan.cached_pairs, ledger.lookup(pc.unique(plan.cached_pairs.column("request_id"))))
    if plan.send.num_rows == 0:
        _last_run_totals.clear()
        _last_run_totals.update({"done": 0, "cached": cached.num_rows, "sent": 0})
        if progress:
            print(_summary(table.num_rows, cached.num_rows, plan, {}, engine), file=sys.stderr)
        return ray.data.from_arrow(
            cached if cached.num_rows else schemas.get("responses").schema.empty_table()
        )

    run = None
    if engine.kind == "openai":
        engine.api_key()  # fail before starting anything, naming the variable
        run = OpenAIRun(engine)
    if progress:
        _object_store_notice(engine, ledger_uri)
    fresh = _engine_dataset(plan.send, engine, ledger_uri, run)
    if plan.extra_pairs.num_rows:
        fresh = fresh.map_batches(
            _fan_out, fn_kwargs={"extra_pairs": plan.extra_pairs}, batch_format="pyarrow"
        )
    n_before = len(answered)
    started = time.perf_counter()
    try:
        with LiveProgress(
            plan.send.num_rows,
            run.totals if run is not None else dict,
            enabled=progress and run is not None,
            label="requests",
        ):
            fresh = _materialize_interruptibly(fresh, run, ledger, n_before, engine)
        if run is not None:
            totals = run.totals()
        else:  # vLLM keeps no run counters: what reached the ledger is what succeeded
            done = len(ledger.answered_ids()) - n_before
            totals = {"done": done, "failed": plan.send.num_rows - done}
    finally:
        if run is not None:
            run.close()
    totals.update(
        {"cached": cached.num_rows, "sent": plan.send.num_rows, "wall_s": time.perf_counter() - started}
    )
    _last_run_totals.clear()
    _last_run_totals.update(totals)
    if progress:
        print(_summary(table.num_rows, cached.num_rows, plan, totals, engine), file=sys.stderr)
    try:
        # Engines append a shard per batch; merging them keeps resume reads fast as a ledger grows.
        ledger.compact()
    except OSError as exc:  # every answer is already durable in its own shard; compaction can wait
        print(f"m1: ledger compaction skipped ({exc}); the ledger is intact", file=sys.stderr)
    if cached.num_rows == 0:
        return fresh
    return ray.data.from_arrow(cached).union(fresh).materialize()


def _materialize_interruptibly(ds: Any, run: Any, ledger: Ledger, n_before: int, engine: Any) -> Any:
    """Materialize on a worker thread so Ctrl-C reaches us here and can stop the run gracefully."""
    box: dict[str, Any] = {}
    # An Event, not Thread.join: a join interrupted by Ctrl-C can leave the thread looking finished.
    done = threading.Event()

    def work() -> None:
        try:
            box["ds"] = ds.materialize()
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc
        finally:
            done.set()

    worker = threading.Thread(target=work, name="m1-run-requests", daemon=True)
    worker.start()
    try:
        while not done.wait(0.2):
            pass
    except KeyboardInterrupt:
        grace = getattr(engine, "stop_grace_s", 0.0)
        print(
            f"\nm1: interrupted; stopping ({grace:g} s for requests on the wire, then flushing)...",
            file=sys.stderr,
        )
        if run is not None:
            run.stop()
            try:
                done.wait(grace + STOP_WAIT_S)
            except KeyboardInterrupt:
                pass  # a second Ctrl-C: stop waiting
        kept = len(ledger.answered_ids()) - n_before
        print(
            f"m1: {kept} new responses of this run are kept in the ledger {ledger.uri}; "
            f"rerun the same command to resume (answered requests are not sent again).",
            file=sys.stderr,
        )
        raise
    if "error" in box:
        raise box["error"]
    return box["ds"]


def _engine_label(engine: Any) -> str:
    return engine.engine_name if hasattr(engine, "engine_name") else str(engine.kind)


def _summary(n_rows: int, n_cached: int, plan: RequestPlan, totals: dict[str, Any], engine: Any) -> str:
    counts = (
        f"{n_rows:,} requests: {n_cached:,} from the ledger, {plan.send.num_rows:,} sent "
        f"({plan.extra_pairs.num_rows:,} duplicate rows fanned back)"
    )
    return _summary_line(engine, counts, totals)


def _summary_line(engine: Any, counts: str, totals: dict[str, Any]) -> str:
    """The closing line of a run: its counts, failures, wall time, cost, and what a rerun does."""
    failed = int(totals.get("failed", 0))
    line = f"m1 {_engine_label(engine)}: {counts}, {failed:,} failed, {totals.get('wall_s', 0):.1f} s"
    if totals.get("cost_usd"):
        line += f", ${totals['cost_usd']:,.4f}"
    if failed:
        line += "; failed rows carry `error` and are retried by a rerun"
    return line


def last_run_totals() -> dict[str, Any]:
    """Counters of the last `run_requests` in this process (done, failed, attempts, tokens, cost, CPU)."""
    return dict(_last_run_totals)


__all__ = [
    "CostEstimate",
    "EngineConfig",
    "Ledger",
    "OpenAIEngineConfig",
    "Price",
    "RehearsalEngineConfig",
    "VLLMEngineConfig",
    "estimate",
    "last_run_totals",
    "make_request",
    "map_requests",
    "plan_requests",
    "requests_table",
    "response_row",
    "responses_table",
    "run_requests",
    "running",
    "stream_requests",
]
