"""Write-ahead log: each answer is on disk within milliseconds, so a kill -9 loses no paid answer.

An engine worker appends every successful response row (in small groups: whatever arrived while the previous
group was being written) to a segment file of its own under ``<ledger>/wal/``, then folds the rows into a
Parquet ledger shard every few seconds and deletes the segment. A segment left behind by a killed worker is
read by the ledger like a shard (`Ledger.answered_ids`, `Ledger.lookup`) and compacted into Parquet later.

File format: an 8-byte magic, then records of ``<u32 length><u32 crc32><payload>``, the payload being one
Arrow IPC stream of `responses` rows. A record cut short by a kill (torn tail) or damaged on disk fails its
length or checksum and is ignored together with everything after it; whole records before it are kept.

Ownership: the writer holds an exclusive ``flock`` on its segment for as long as it lives; the kernel drops the
lock when the process dies, however it dies. A compactor that gets the lock therefore knows no one will ever
append to that segment again and may fold and delete it. A segment is created under a temporary name, locked,
then renamed into place, so a compactor never sees an unlocked live segment.
Local (POSIX) filesystems only: object stores cannot append, so the segments of an object-store ledger are kept
on the local disk of the node the writer runs on (`curation.engines.ledger.node_wal_dir`).
"""

from __future__ import annotations

import fcntl
import os
import struct
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow as pa

MAGIC = b"M1WAL\x00\x01\n"
HEADER = struct.Struct("<II")  # payload length, crc32 of the payload
SUFFIX = ".wal"
# A record longer than this is treated as damage, not as an allocation request.
MAX_RECORD_BYTES = 1 << 30


def _encode(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


class SegmentWriter:
    """One worker's append-only segment. Not thread-safe: one writer (the sink's writer task) at a time."""

    def __init__(self, directory: str, name: str | None = None, *, fsync: bool = True) -> None:
        os.makedirs(directory, exist_ok=True)
        base = name or uuid.uuid4().hex
        tmp = os.path.join(directory, f".{base}.tmp")
        self.path = os.path.join(directory, f"{base}{SUFFIX}")
        self.fsync = fsync
        self.fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours alone until this process ends
        os.write(self.fd, MAGIC)
        os.rename(tmp, self.path)
        if fsync:
            os.fsync(self.fd)
            _fsync_dir(directory)  # the new name itself must survive a crash
        self.records = 0
        self.rows = 0

    def append(self, table: pa.Table) -> None:
        """One record holding ``table``: written with a single write(2), then fsync'd when asked."""
        if table.num_rows == 0:
            return
        payload = _encode(table)
        os.write(self.fd, HEADER.pack(len(payload), zlib.crc32(payload)) + payload)
        if self.fsync:
            os.fdatasync(self.fd)
        self.records += 1
        self.rows += table.num_rows

    def close(self, *, delete: bool = False) -> None:
        """Close (releasing the lock); with ``delete``, remove the file first, while still holding it."""
        if self.fd < 0:
            return
        if delete:
            os.unlink(self.path)
        os.close(self.fd)
        self.fd = -1


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_segment(path: str) -> tuple[list[pa.Table], bool]:
    """The whole records of a segment, and whether a torn or damaged tail was dropped."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:  # compacted away between listing and reading
        return [], False
    if not data.startswith(MAGIC):
        return [], len(data) > 0  # a crash between create and the magic write leaves a short file
    tables: list[pa.Table] = []
    pos = len(MAGIC)
    while pos < len(data):
        if pos + HEADER.size > len(data):
            return tables, True
        length, crc = HEADER.unpack_from(data, pos)
        start, end = pos + HEADER.size, pos + HEADER.size + length
        if length > MAX_RECORD_BYTES or end > len(data):
            return tables, True
        payload = data[start:end]
        if zlib.crc32(payload) != crc:
            return tables, True
        try:
            tables.append(pa.ipc.open_stream(payload).read_all())
        except pa.ArrowInvalid:
            return tables, True
        pos = end
    return tables, False


def segments(directory: str) -> list[str]:
    """Segment paths under ``directory`` (oldest name first); none when it does not exist."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    # Names start with the writer's creation time in ns, so name order is creation order (no stat calls,
    # which would race with compaction deleting a segment).
    return sorted(os.path.join(directory, n) for n in names if n.endswith(SUFFIX) and not n.startswith("."))


@contextmanager
def orphaned(path: str) -> Iterator[bool]:
    """Yields True while holding the segment's lock when its writer is gone (the segment is closed for
    good), False when a live writer still holds it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
