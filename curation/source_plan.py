"""A source path, planned: what files it names, what they hash to, and the chunks Ray tasks read.

A source path is a file (``.jsonl``/``.ndjson``, ``.json``, ``.parquet``/``.pq``, ``.csv``), a folder of
them (walked recursively, sorted by relative path, so the order is deterministic), or
``hf:<dataset id>[:<config>]/<split>`` read with the ``datasets`` library (a local folder written by
``save_to_disk`` is opened with ``load_from_disk``). :func:`fingerprint` hashes its content (the resume key).

Chunks are what one Ray task reads: byte ranges cut on line boundaries for JSONL and CSV (a CSV cut is
never placed inside a quoted field), groups of row groups for Parquet, row ranges for ``hf:`` datasets, a
whole file for JSON. :func:`plan_source` counts newlines while planning, so line numbers stay exact across
chunks. Reading a chunk is :mod:`curation.readers`.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curation.errors import UserError

SUFFIX_KINDS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
}
HF_PREFIX = "hf:"
BOM = b"\xef\xbb\xbf"
_SCAN_BLOCK = 16 * 1024 * 1024
MIN_CHUNK_BYTES = 1 << 20  # smaller line chunks cost more in task overhead than they gain


class IngestError(UserError):
    """An input cannot be read at all; the message names the file (and line) and what to do."""


def repeated_key_message(where: str, key: str, first_line: int | None = None) -> str:
    first = f" (first at line {first_line})" if first_line is not None else ""
    return (
        f"{where}: key {key!r} appears twice in one JSON object{first}; a JSON reader keeps only the last one, "
        "so an option or a row would silently vanish: remove or rename one of them"
    )


@dataclass(frozen=True)
class ChunkSpec:
    """One unit of reading work (JSON-serialisable, so it can travel as a Ray Data row)."""

    source: str
    file: str  # absolute path, or the hf: spec
    display: str  # the file as rejects name it (relative to the source path)
    file_index: int  # position of the file within the source
    kind: str  # jsonl | csv | json | parquet | hf
    start: int  # byte offset (jsonl/csv), first row group (parquet), first row (hf); 0 for json
    stop: int  # exclusive end, same unit
    first_pos: int  # line number at `start` (jsonl/csv) or row number of the first row (parquet/hf)
    header: tuple[str, ...] | None = None  # csv column names

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ChunkSpec:
        data = json.loads(text)
        if data.get("header") is not None:
            data["header"] = tuple(data["header"])
        return cls(**data)


# ------------------------------------------------------------------------------------------ file lists


def parse_hf_path(path: str) -> tuple[str, str | None, str | None]:
    """``hf:<id>[:<config>]/<split>`` -> (id, config, split); ids may contain '/', the split is the last part.

    Local folders work too: ``hf:<folder>/<split>`` (a ``save_to_disk`` DatasetDict, or data files that
    ``load_dataset`` reads), or ``hf:<folder>`` for a single saved Dataset (split None).
    """
    body = path[len(HF_PREFIX) :]
    head, _, split = body.rpartition("/")
    if head and split and os.path.isdir(head):
        return head, None, split
    if os.path.isdir(body):
        return body, None, None
    if not head or not split:
        raise IngestError(
            f"{path!r}: expected hf:<dataset id>[:<config>]/<split>, e.g. hf:qiaojin/PubMedQA:pqa_labeled/train"
        )
    dataset_id, _, config = head.partition(":")
    return dataset_id, config or None, split


@functools.lru_cache(maxsize=8)
def load_hf(path: str) -> Any:
    """The ``datasets.Dataset`` behind an ``hf:`` path (memory-mapped; cached per process)."""
    import datasets

    dataset_id, config, split = parse_hf_path(path)
    try:
        if os.path.isdir(dataset_id) and (
            os.path.exists(os.path.join(dataset_id, "state.json"))
            or os.path.exists(os.path.join(dataset_id, "dataset_dict.json"))
        ):
            ds = datasets.load_from_disk(dataset_id)
        else:
            ds = datasets.load_dataset(dataset_id, config, split=split)
    except Exception as exc:  # the datasets library raises many types; all mean "cannot read this"
        raise IngestError(
            f"{path}: cannot load with the datasets library ({type(exc).__name__}: {exc}); "
            "without hub access, point at a local save_to_disk folder or data files instead"
        ) from exc
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise IngestError(f"{path}: split {split!r} not found; the dataset has {sorted(ds)}")
        ds = ds[split]
    return ds


def list_files(path: str) -> list[tuple[str, str, str]]:
    """(absolute path, display name, kind) of every readable file under ``path``, in deterministic order."""
    try:
        return _list_files(path)
    except PermissionError as exc:
        raise IngestError(
            f"{exc.filename or path}: permission denied: the folder cannot be listed or read by this user "
            f"(uid {os.geteuid()}); check its permissions (ls -ld)"
        ) from None
    except OSError as exc:
        raise IngestError(f"{exc.filename or path}: cannot read ({exc.strerror or exc})") from None


def _list_files(path: str) -> list[tuple[str, str, str]]:
    p = Path(path)
    if not p.exists():
        raise IngestError(f"{path}: no such file or folder")
    if p.is_file():
        kind = SUFFIX_KINDS.get(p.suffix.lower())
        if kind is None:
            raise IngestError(
                f"{path}: unknown file type {p.suffix!r}; expected one of {sorted(SUFFIX_KINDS)}"
            )
        return [(str(p.resolve()), p.name, kind)]
    found = []

    # os.walk with onerror, not Path.rglob: rglob skips a folder it may not list (permission denied) in silence,
    # and an unreadable input folder would then read as an empty one.
    def refuse(exc: OSError) -> None:
        raise exc

    files = []
    for dirpath, dirnames, filenames in os.walk(p, onerror=refuse):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        files.extend(Path(dirpath) / name for name in filenames if not name.startswith("."))
    for f in sorted(files, key=lambda q: q.relative_to(p).as_posix()):
        kind = SUFFIX_KINDS.get(f.suffix.lower())
        if kind is not None and f.is_file():
            found.append((str(f.resolve()), f"{p.name}/{f.relative_to(p).as_posix()}", kind))
    if not found:
        raise IngestError(f"{path}: folder holds no {', '.join(sorted(SUFFIX_KINDS))} files")
    return found


def fingerprint(path: str) -> dict[str, str]:
    """What makes a source's bytes what they are: sha256 of each file, or the ``datasets`` fingerprint.

    Keys are display names (relative to the source path), never absolute paths, so the same files in another
    place fingerprint the same.
    """
    if path.startswith(HF_PREFIX):
        dataset_id, _, split = parse_hf_path(path)
        key = path
        if os.path.isdir(dataset_id):
            key = f"hf:{os.path.basename(os.path.normpath(dataset_id))}" + (f"/{split}" if split else "")
        return {key: f"datasets-fingerprint:{load_hf(path)._fingerprint}"}
    return {display: _file_sha256(file) for file, display, _ in list_files(path)}


def _file_sha256(file: str) -> str:
    try:
        st = os.stat(file)
        return _sha256_cached(file, st.st_size, st.st_mtime_ns)
    except OSError as exc:
        raise IngestError(f"{file}: cannot read ({exc.strerror or exc})") from None


@functools.lru_cache(maxsize=4096)
def _sha256_cached(file: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, remembered per (path, size, mtime): hashing a big pool twice per run costs nothing."""
    with open(file, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


# ------------------------------------------------------------------------------------------ planning


def plan_source(source: str, path: str, rows_per_chunk: int) -> list[ChunkSpec]:
    """Chunk specs covering every row of ``path`` exactly once, in source order."""
    try:
        return _plan_source(source, path, rows_per_chunk)
    except OSError as exc:
        raise IngestError(f"{exc.filename or path}: cannot read ({exc.strerror or exc})") from None


def _plan_source(source: str, path: str, rows_per_chunk: int) -> list[ChunkSpec]:
    if path.startswith(HF_PREFIX):
        n = len(load_hf(path))
        dataset_id, config, split = parse_hf_path(path)
        if os.path.isdir(dataset_id):  # a local folder: name it, not the whole path, in every reject
            display = f"hf:{os.path.basename(os.path.normpath(dataset_id))}" + (f"/{split}" if split else "")
        else:
            display = path
        return [
            ChunkSpec(source, path, display, 0, "hf", start, min(start + rows_per_chunk, n), start)
            for start in range(0, max(n, 1), rows_per_chunk)
        ]
    specs: list[ChunkSpec] = []
    for file_index, (file, display, kind) in enumerate(list_files(path)):
        if kind in ("jsonl", "csv"):
            specs.extend(_plan_lines(source, file, display, file_index, kind, rows_per_chunk))
        elif kind == "parquet":
            specs.extend(_plan_parquet(source, file, display, file_index, rows_per_chunk))
        else:
            specs.append(ChunkSpec(source, file, display, file_index, "json", 0, os.path.getsize(file), 0))
    return specs


def _plan_lines(
    source: str, file: str, display: str, file_index: int, kind: str, rows_per_chunk: int
) -> list[ChunkSpec]:
    size = os.path.getsize(file)
    header: tuple[str, ...] | None = None
    start, first_line = 0, 1
    with open(file, "rb") as f:
        head = f.read(1 << 20)
        if head.startswith(BOM):
            start = len(BOM)
        if kind == "csv":
            header, header_bytes, header_lines = _csv_header(file, head[start:])
            start += header_bytes
            first_line += header_lines
        lines_in_head = head.count(b"\n")
        avg_line = len(head) / lines_in_head if lines_in_head else max(size, 1)
        chunk_bytes = max(MIN_CHUNK_BYTES, int(avg_line * rows_per_chunk))
        # Candidate cuts: the line start after every chunk_bytes.
        cuts = [start]
        target = start + chunk_bytes
        while target < size:
            f.seek(target)
            f.readline()
            cut = f.tell()
            if cut >= size:
                break
            if cut > cuts[-1]:
                cuts.append(cut)
            target = cut + chunk_bytes
        cuts.append(size)
        # Count newlines (and, for CSV, quotes) per range; drop a CSV cut that falls inside a quoted field.
        specs: list[ChunkSpec] = []
        chunk_start, chunk_line, line, quotes = cuts[0], first_line, first_line, 0
        for lo, hi in zip(cuts, cuts[1:], strict=False):
            f.seek(lo)
            remaining = hi - lo
            while remaining > 0:
                block = f.read(min(_SCAN_BLOCK, remaining))
                remaining -= len(block)
                line += block.count(b"\n")
                if kind == "csv":
                    quotes += block.count(b'"')
            if hi == size or quotes % 2 == 0:
                specs.append(
                    ChunkSpec(source, file, display, file_index, kind, chunk_start, hi, chunk_line, header)
                )
                chunk_start, chunk_line = hi, line
    return specs


def _csv_header(file: str, head: bytes) -> tuple[tuple[str, ...], int, int]:
    """The header record of a CSV file: (names, its length in bytes, its number of lines)."""
    end = 0
    while True:
        nl = head.find(b"\n", end)
        if nl < 0:
            raise IngestError(f"{file}:1: CSV header not found (no complete first line)")
        end = nl + 1
        if head[:end].count(b'"') % 2 == 0:
            break
    try:
        names = next(csv.reader(io.StringIO(head[:end].decode("utf-8"), newline="")))
    except (UnicodeDecodeError, StopIteration, csv.Error) as exc:
        raise IngestError(f"{file}:1: unreadable CSV header ({exc})") from exc
    names = [n.strip() for n in names]
    if not any(names) or len(set(names)) != len(names):
        raise IngestError(f"{file}:1: CSV header {names!r} must name every column once")
    return tuple(names), end, head[:end].count(b"\n")


def _plan_parquet(
    source: str, file: str, display: str, file_index: int, rows_per_chunk: int
) -> list[ChunkSpec]:
    meta = parquet_file(file).metadata
    specs: list[ChunkSpec] = []
    group_start, first_row, rows, row = 0, 0, 0, 0
    for rg in range(meta.num_row_groups):
        rows += meta.row_group(rg).num_rows
        row += meta.row_group(rg).num_rows
        if rows >= rows_per_chunk or rg == meta.num_row_groups - 1:
            specs.append(
                ChunkSpec(source, file, display, file_index, "parquet", group_start, rg + 1, first_row)
            )
            group_start, first_row, rows = rg + 1, row, 0
    return specs


def parquet_file(file: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(file)
    except (OSError, pa.ArrowException) as exc:
        raise IngestError(f"{file}: not a readable Parquet file ({exc})") from exc
