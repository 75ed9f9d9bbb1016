"""The pay-once ledger: successful responses as append-only Parquet shards, keyed by request_id.

Each append writes one shard under a temporary name and renames it into place, so a crash (even kill -9)
leaves whole shards only. A rerun reads the request ids already answered and never sends them again.
Works on any pyarrow filesystem (local path, s3://, gs://, ...).

Engine workers also keep write-ahead segments (see `curation.engines.wal`): every answer is on a local disk
within milliseconds of arriving, long before it is folded into a Parquet shard. For a ledger on a local
filesystem they live under ``<ledger>/wal/``; for one on an object store (which cannot append) under a local
folder of the node the worker runs on, ``$M1_WAL_DIR/<hash of the ledger>/`` (default ``$M1_WAL_DIR``: the
system temp folder's ``m1-wal-<uid>``), so a rerun on the same node finds them. Readers here count the segments
they can reach as part of the ledger, and `compact` folds the segments of dead writers into Parquet. Segments
on a node that is lost before they are folded are lost with it: at most ``flush_every_rows`` answers per engine
worker on that node (what had not reached a Parquet shard yet) are paid again, see `loss_bound`.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import os
import tempfile
import threading
import time
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

import schemas
from curation.engines import wal
from curation.store.runstore import resolve

SHARD_GLOB_SUFFIX = ".parquet"
WAL_DIR = "wal"
# Row groups small enough that a lookup of a few ids reads a few MB, not a whole shard.
ROW_GROUP_ROWS = 2048
MAX_OPEN_SHARDS = 64


def node_wal_root() -> str:
    """This node's folder for the write-ahead segments of object-store ledgers (``$M1_WAL_DIR``, else
    ``<system temp>/m1-wal-<uid>``)."""
    return os.environ.get("M1_WAL_DIR") or os.path.join(tempfile.gettempdir(), f"m1-wal-{os.getuid()}")


def node_wal_dir(fs: pafs.FileSystem, root: str) -> str:
    """The local folder holding this node's segments of the ledger at ``root`` on ``fs`` (an object store):
    keyed by a hash of the filesystem type and path, so every run of the same ledger on this node finds it."""
    key = hashlib.sha256(f"{fs.type_name}:{root.rstrip('/')}".encode()).hexdigest()[:20]
    return os.path.join(node_wal_root(), key)


def loss_bound(actors: int, flush_every_rows: int) -> int:
    """Answers of an object-store ledger that a lost node can take with it: those in its workers' write-ahead
    segments not yet folded into a Parquet shard. Each worker folds every ``flush_every_rows`` answers (and every
    ``flush_every_s``), so this is the bound unless the store is slow to take a shard while answers keep coming."""
    return actors * flush_every_rows


class Ledger:
    """Append-only store of successful responses under one directory."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.fs, self.root = resolve(uri)
        self.fs.create_dir(self.root, recursive=True)
        # Appending needs a POSIX file: on an object store, segments go to this node's local disk instead.
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.wal_dir: str = (
            os.path.join(self.root, WAL_DIR) if self.local else node_wal_dir(self.fs, self.root)
        )

    def _shards(self) -> list[str]:
        infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=False, allow_not_found=True))
        return sorted(
            i.path for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(SHARD_GLOB_SUFFIX)
        )

    def append(self, responses: pa.Table) -> int:
        """Write the successful rows of ``responses`` as one new shard; returns how many were written."""
        ok = responses.filter(pc.is_null(responses.column("error")))
        if ok.num_rows == 0:
            return 0
        self._write_shard(schemas.conform(ok, "responses"))
        return ok.num_rows

    def _write_shard(self, table: pa.Table) -> None:
        """One new shard, written under a temporary name and renamed into place (whole or absent)."""
        name = f"shard-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        tmp = f"{self.root}/.{name}.tmp"
        with self.fs.open_output_stream(tmp) as out:
            pq.write_table(table, out, compression="zstd", row_group_size=ROW_GROUP_ROWS)
        if self.local:  # the shard may replace a write-ahead segment: it must be on disk first
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self.fs.move(tmp, f"{self.root}/{name}{SHARD_GLOB_SUFFIX}")

    # ---- write-ahead segments ------------------------------------------------------------------------------
    def open_segment(self, *, fsync: bool = True) -> wal.SegmentWriter:
        """A new write-ahead segment for one writer (on this node's disk for an object-store ledger)."""
        return wal.SegmentWriter(self.wal_dir, f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}", fsync=fsync)

    def _segment_table(self, columns: list[str] | None = None) -> pa.Table | None:
        """Rows of every write-ahead segment this node reaches (live or orphaned), in segment order; None when
        there are none."""
        tables = [t for path in wal.segments(self.wal_dir) for t in wal.read_segment(path)[0]]
        if not tables:
            return None
        table = pa.concat_tables(tables)
        return table.select(columns) if columns else table

    def absorb_segments(self) -> int:
        """Fold the segments of dead writers into one Parquet shard and delete them; returns the rows folded.

        Segments still locked by a live writer are left alone (their writer folds them itself). For an
        object-store ledger: the segments on this node only.
        """
        paths = wal.segments(self.wal_dir)
        if not paths:
            return 0
        rows = 0
        with contextlib.ExitStack() as held:
            owned = [p for p in paths if held.enter_context(wal.orphaned(p))]
            tables = [t for p in owned for t in wal.read_segment(p)[0]]
            table = pa.concat_tables(tables) if tables else None
            if table is not None and table.num_rows:
                self._write_shard(schemas.conform(self._first_per_request(table), "responses"))
                rows = table.num_rows
            for path in owned:  # still locked by us: no writer can be appending
                with contextlib.suppress(FileNotFoundError):  # another compactor got there first
                    os.unlink(path)
        return rows

    def _dataset_of(self, shards: list[str]) -> pads.Dataset:
        return pads.dataset(
            shards, filesystem=self.fs, format="parquet", schema=schemas.get("responses").schema
        )

    @staticmethod
    def _first_per_request(table: pa.Table) -> pa.Table:
        """One row per request id: the first in table order (shards sort by time, so the earliest wins)."""
        first = pc.unique(table.column("request_id"))
        return table.take(pc.index_in(first, table.column("request_id")))

    def dataset(self) -> pads.Dataset | None:
        shards = self._shards()
        return self._dataset_of(shards) if shards else None

    def answered_ids(self) -> pa.Array:
        """Distinct request ids that already have a successful response (Parquet shards and segments)."""
        ds = self.dataset()
        parts = [] if ds is None else [ds.to_table(columns=["request_id"]).column("request_id")]
        pending = self._segment_table(["request_id"])
        if pending is not None:
            parts.append(pending.column("request_id"))
        if not parts:
            return pa.array([], pa.string())
        return pc.unique(pa.chunked_array([c for p in parts for c in p.chunks], pa.string()).combine_chunks())

    def lookup(self, ids: pa.Array) -> pa.Table:
        """Ledger rows for ``ids`` (the first recorded response per id), marked ``cached``."""
        empty = schemas.get("responses").schema.empty_table()
        if len(ids) == 0:
            return empty
        ds = self.dataset()
        parts = [] if ds is None else [ds.to_table(filter=pc.field("request_id").isin(ids))]
        pending = self._segment_table()
        if pending is not None:
            parts.append(
                schemas.conform(pending.filter(pc.is_in(pending.column("request_id"), ids)), "responses")
            )
        table = pa.concat_tables(parts) if parts else empty
        if table.num_rows == 0:
            return empty
        table = self._first_per_request(table)
        return table.set_column(
            table.schema.get_field_index("cached"), "cached", pa.array([True] * table.num_rows, pa.bool_())
        )

    def read(self) -> pa.Table:
        """The whole ledger (Parquet shards, then write-ahead segments not yet folded)."""
        ds = self.dataset()
        parts = [ds.to_table()] if ds is not None else []
        pending = self._segment_table()
        if pending is not None:
            parts.append(schemas.conform(pending, "responses"))
        return pa.concat_tables(parts) if parts else schemas.get("responses").schema.empty_table()

    def shard_count(self) -> int:
        return len(self._shards())

    def compact(self, *, min_shards: int = 64) -> int:
        """Merge all shards into one (first response per request id wins); returns the shards removed.

        Safe against crashes and concurrent appends: the merged shard is written (atomically) before any old
        shard is deleted, only the shards read are deleted, and readers already keep the first row per id.
        """
        self.absorb_segments()
        shards = self._shards()
        if len(shards) < min_shards:
            return 0
        self._merge_shards(shards)
        for path in shards:
            self.fs.delete_file(path)
        return len(shards)

    def _merge_shards(self, shards: list[str]) -> None:
        """One shard holding the first row per request id of ``shards``, streamed row group by row group:
        memory holds one row group and the set of ids seen, never the whole ledger."""
        name = f"shard-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        tmp = f"{self.root}/.{name}.tmp"
        schema = schemas.get("responses").schema
        seen: set[str] = set()
        with (
            self.fs.open_output_stream(tmp) as out,
            pq.ParquetWriter(out, schema, compression="zstd") as writer,
        ):
            for path in shards:
                with self.fs.open_input_file(path) as f:
                    for batch in pq.ParquetFile(f).iter_batches(batch_size=ROW_GROUP_ROWS):
                        table = schemas.conform(pa.Table.from_batches([batch]), "responses")
                        table = self._first_per_request(table)
                        ids = table.column("request_id").to_pylist()
                        keep = [i for i, rid in enumerate(ids) if rid not in seen]
                        seen.update(ids)
                        if keep:
                            writer.write_table(table.take(keep), row_group_size=ROW_GROUP_ROWS)
        if self.local:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self.fs.move(tmp, f"{self.root}/{name}{SHARD_GLOB_SUFFIX}")


class LedgerIndex:
    """Worker-side batch lookups in a ledger that may hold millions of answers.

    Keeps, per process, the ids of every shard (a dict id -> (shard, row)), refreshed incrementally as new
    shards appear and rebuilt when compaction replaces them; a lookup reads only the row groups holding hits,
    with a small cache of decoded row groups (a rerun asks for ids in roughly the order they were answered,
    so consecutive batches hit the same row groups). Write-ahead segments are read on every lookup: they are
    small, and they carry the answers of workers that are running right now.
    """

    def __init__(self, ledger: Ledger, *, cached_row_groups: int = 8) -> None:
        self.ledger = ledger
        self.where: dict[str, tuple[int, int]] = {}  # request_id -> (shard number, row in shard)
        self.shards: list[str] = []
        self.known: set[str] = set()
        self.row_group_starts: list[list[int]] = []
        self.cache: dict[tuple[int, int], pa.Table] = {}
        self.cached_row_groups = cached_row_groups
        self.readers: dict[int, pq.ParquetFile] = {}  # open shards (an unlinked file stays readable)
        self._lock = threading.Lock()

    def _rebuild(self) -> None:
        for reader in self.readers.values():
            reader.close()
        self.where, self.shards, self.known, self.row_group_starts, self.cache = {}, [], set(), [], {}
        self.readers = {}

    def refresh(self) -> None:
        current = self.ledger._shards()
        if not self.known.issubset(current):  # compaction replaced shards: positions are stale
            self._rebuild()
        for path in current:
            if path in self.known:
                continue
            with self.ledger.fs.open_input_file(path) as f:
                pf = pq.ParquetFile(f)
                starts, total = [], 0
                for i in range(pf.metadata.num_row_groups):
                    starts.append(total)
                    total += pf.metadata.row_group(i).num_rows
                ids = pf.read(columns=["request_id"]).column("request_id").to_pylist()
            number = len(self.shards)
            self.shards.append(path)
            self.known.add(path)
            self.row_group_starts.append(starts)
            for row, rid in enumerate(ids):
                self.where.setdefault(rid, (number, row))  # the earliest shard's answer wins

    def _row_group(self, shard: int, group: int) -> pa.Table:
        key = (shard, group)
        table = self.cache.pop(key, None)
        if table is None:
            reader = self.readers.get(shard)
            if reader is None:  # parsing a footer costs more than reading a row group: once per shard
                if len(self.readers) >= MAX_OPEN_SHARDS:  # bounded: file handles are a per-process limit
                    self.readers.pop(next(iter(self.readers))).close()
                reader = self.readers[shard] = pq.ParquetFile(
                    self.ledger.fs.open_input_file(self.shards[shard])
                )
            table = schemas.conform(reader.read_row_group(group), "responses")
        self.cache[key] = table  # most recent last
        while len(self.cache) > self.cached_row_groups:
            self.cache.pop(next(iter(self.cache)))
        return table

    def lookup(self, ids: pa.Array | list[str]) -> pa.Table:
        """Ledger rows (one per answered id among ``ids``), marked ``cached``."""
        wanted = ids.to_pylist() if isinstance(ids, pa.Array | pa.ChunkedArray) else list(ids)
        empty = schemas.get("responses").schema.empty_table()
        if not wanted:
            return empty
        # One lookup at a time: engine workers call this from several threads (one per batch in flight), and
        # neither the index nor a Parquet reader may be used by two threads at once.
        with self._lock:
            for attempt in range(2):
                try:
                    self.refresh()
                    parts = self._read_hits(set(wanted))
                    break
                except FileNotFoundError:  # a shard was compacted away under us: index again
                    if attempt:
                        raise
                    self._rebuild()
        pending = self.ledger._segment_table()
        if pending is not None:
            found = {rid for p in parts for rid in p.column("request_id").to_pylist()}
            missing = pa.array(sorted(set(wanted) - found), pa.string())
            parts.append(
                schemas.conform(pending.filter(pc.is_in(pending.column("request_id"), missing)), "responses")
            )
        table = pa.concat_tables(parts) if parts else empty
        if table.num_rows == 0:
            return empty
        table = Ledger._first_per_request(table)
        return table.set_column(
            table.schema.get_field_index("cached"), "cached", pa.array([True] * table.num_rows, pa.bool_())
        )

    def _read_hits(self, wanted: set[str]) -> list[pa.Table]:
        by_group: dict[tuple[int, int], list[int]] = {}
        for rid in wanted:
            hit = self.where.get(rid)
            if hit is None:
                continue
            shard, row = hit
            starts = self.row_group_starts[shard]
            group = bisect.bisect_right(starts, row) - 1
            by_group.setdefault((shard, group), []).append(row - starts[group])
        return [self._row_group(shard, group).take(sorted(rows)) for (shard, group), rows in by_group.items()]
