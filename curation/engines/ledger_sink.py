"""Where an engine worker's answers go: a write-ahead segment within milliseconds, Parquet ledger shards later.

`LedgerSink` buffers successful response rows, appends each to the worker's write-ahead segment
(`curation.engines.wal`) at once, and folds them into a ledger shard every ``flush_every_rows`` rows or
``flush_every_s`` seconds and at the end of each batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from curation.engines.ledger import Ledger
from curation.engines.request import responses_table

logger = logging.getLogger(__name__)


class LedgerSink:
    """Makes successful rows durable at once (write-ahead segment) and folds them into Parquet shards.

    Each success goes to the worker's write-ahead segment as soon as the writer task is free: whatever
    arrived while the previous group was being written (and fsync'd) forms the next group, so durability
    lags an answer by one write, milliseconds, whatever the load. Every ``flush_every_rows`` rows or
    ``flush_every_s`` seconds, and at the end of each batch, the rows become one Parquet shard; the segment
    they were in is then rotated out and deleted. For an object-store ledger the segment is on this node's
    local disk (`curation.engines.ledger.node_wal_dir`), and the sink first folds the segments that killed
    workers left on this node. Without write-ahead (``write_ahead: false``) only the Parquet flushes remain and
    a kill loses up to ``flush_every_s`` of answers.
    """

    def __init__(
        self,
        ledger: Ledger,
        flush_every_rows: int,
        flush_every_s: float,
        *,
        write_ahead: bool = True,
        fsync: bool = True,
    ) -> None:
        self.ledger = ledger
        self.flush_every_rows = flush_every_rows
        self.flush_every_s = flush_every_s
        self.write_ahead = write_ahead
        if write_ahead and not ledger.local:
            # Segments of this ledger that a killed worker left on this node: into the object store now, while
            # the node is here (a rerun on another node could not reach them).
            try:
                folded = ledger.absorb_segments()
            except OSError as exc:  # the lookups still read them; the next worker here tries again
                logger.warning("m1 openai engine: folding this node's write-ahead segments failed: %s", exc)
            else:
                if folded:
                    logger.warning(
                        "m1 openai engine: folded %d answers left in write-ahead segments on this node (%s) "
                        "into the ledger %s",
                        folded,
                        ledger.wal_dir,
                        ledger.uri,
                    )
        self.fsync = fsync
        self.rows: list[dict] = []
        self.oldest = 0.0
        self.written = 0
        self.logged = 0  # rows made durable in a segment
        self._lock = asyncio.Lock()
        self._pending: set[asyncio.Task] = set()
        self._wal_rows: list[dict] = []
        self._wal_lock = asyncio.Lock()
        self._wal_wake = asyncio.Event()
        self._segment: Any = None
        self._wal_task = asyncio.ensure_future(self._wal_loop()) if self.write_ahead else None

    def add(self, row: dict) -> None:
        if row["error"] is not None:
            return
        if not self.rows:
            self.oldest = time.monotonic()
        self.rows.append(row)
        if self.write_ahead:
            self._wal_rows.append(row)
            self._wal_wake.set()
        if len(self.rows) >= self.flush_every_rows:
            task = asyncio.ensure_future(self.flush())
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    def due(self) -> bool:
        return bool(self.rows) and time.monotonic() - self.oldest >= self.flush_every_s

    async def _wal_loop(self) -> None:
        while True:
            await self._wal_wake.wait()
            self._wal_wake.clear()
            try:
                await self._log_pending()
            except OSError as exc:  # e.g. a full disk: the rows still reach Parquet with the next flush
                logger.warning(
                    "m1 openai engine: write-ahead append failed (%s); relying on ledger flushes", exc
                )

    async def _log_pending(self) -> None:
        async with self._wal_lock:
            await self._log_locked()

    async def _log_locked(self) -> None:
        if not self._wal_rows:
            return
        rows, self._wal_rows = self._wal_rows, []
        if self._segment is None:
            self._segment = await asyncio.to_thread(self.ledger.open_segment, fsync=self.fsync)
        try:
            await asyncio.to_thread(self._segment.append, responses_table(rows))
        except OSError:
            # A failed write may leave a torn record, which would hide every later one: start a new segment.
            self._segment.close()
            self._segment = None
            raise
        self.logged += len(rows)

    async def flush(self) -> int:
        async with self._lock:
            retired = None
            if self.write_ahead:
                async with self._wal_lock:
                    await self._log_locked()  # the segment now holds every row the shard will
                    # No await from here to the swap: the rows taken are exactly those logged or just added.
                    # Rows added during that last write are in `rows` too: the shard makes them durable.
                    rows, self.rows, self._wal_rows = self.rows, [], []
                    retired, self._segment = self._segment, None
            else:
                rows, self.rows = self.rows, []
            written = 0
            if rows:
                # Parquet encoding off the loop: requests keep flowing while the shard is written.
                written = await asyncio.to_thread(self.ledger.append, responses_table(rows))
            if retired is not None:  # everything in it is in a shard now
                await asyncio.to_thread(retired.close, delete=True)
            self.written += written
            return written

    async def close(self) -> None:
        """Flush what is buffered and stop the writer task (the worker is done for good)."""
        await self.flush()
        if self._wal_task is not None:
            self._wal_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._wal_task
