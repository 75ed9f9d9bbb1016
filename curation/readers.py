"""Readers: turn a source path into chunk specs, and a chunk spec into raw records.

A source path is a file (``.jsonl``/``.ndjson``, ``.json``, ``.parquet``/``.pq``, ``.csv``), a folder of
them (walked recursively, sorted by relative path, so the order is deterministic), or
``hf:<dataset id>[:<config>]/<split>`` read with the ``datasets`` library (a local folder written by
``save_to_disk`` is opened with ``load_from_disk``).

Chunks are what one Ray task reads: byte ranges cut on line boundaries for JSONL and CSV (a CSV cut is
never placed inside a quoted field), groups of row groups for Parquet, row ranges for ``hf:`` datasets, a
whole file for JSON. :func:`plan_source` counts newlines while planning, so line numbers stay exact across
chunks. Positions: JSONL and CSV records are numbered by their 1-based (first) line, JSON, Parquet and
``hf:`` rows by their 0-based row index; ``source_ref`` is ``"<file>:<position>"`` (the dict key for a JSON
dict-of-rows file).

A file that cannot be parsed at all raises :class:`IngestError` naming the file and line: a JSONL line that
is not JSON, a truncated JSON file, a JSON object that repeats a key (a parser would silently keep only the
last: an option or, in a ``{id: row}`` file, a whole row would vanish), a value nested too deeply to decode,
a CSV row whose field count differs from the header, a CSV quote that is never closed, a Parquet file with a
repeated column name, an unreadable Parquet file, a missing or unreadable path. Invalid UTF-8 inside an otherwise readable record is NOT an error: the record
comes back with ``bad_utf8`` set and the undecodable bytes escaped (``\\xff``) in ``raw``. Values of Arrow
binary columns (Parquet, ``hf:``) that are not UTF-8 (an image, say) are data, not defects: they read as a
short note such as ``<1234 bytes of binary data>``.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curation.errors import UserError
from curation.strict_json import DuplicateKeyError, loads_strict, locate_repeated_key

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
_SURROGATE = re.compile("[\udc80-\udcff]")


class IngestError(UserError):
    """An input cannot be read at all; the message names the file (and line) and what to do."""


def _repeated_key_message(where: str, key: str, first_line: int | None = None) -> str:
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


@dataclass(frozen=True)
class RawRecord:
    """One input row: where it is, what it is, and its raw text."""

    pos: int  # ordering key within the file (line or row number)
    ref: str  # "<file>:<position>"
    row: Any  # the decoded row (normally a dict); None when bad_utf8 is set
    raw: str  # the raw row as JSON (a JSONL line as written); escaped bytes when bad_utf8 is set
    bad_utf8: str | None = None  # what was undecodable, when something was


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
    meta = _parquet_file(file).metadata
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


def _parquet_file(file: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(file)
    except (OSError, pa.ArrowException) as exc:
        raise IngestError(f"{file}: not a readable Parquet file ({exc})") from exc


# ------------------------------------------------------------------------------------------ reading


def read_chunk(spec: ChunkSpec) -> Iterator[RawRecord]:
    """The records of one chunk, in order. Raises IngestError on anything that is not parseable at all."""
    try:
        yield from _read_chunk(spec)
    except OSError as exc:
        raise IngestError(f"{spec.file}: cannot read ({exc.strerror or exc})") from None
    except RecursionError:
        raise IngestError(
            f"{spec.file}: a value is nested too deeply to read (over ~{sys.getrecursionlimit()} levels); "
            "no question row needs that: check the file"
        ) from None


def _read_chunk(spec: ChunkSpec) -> Iterator[RawRecord]:
    if spec.kind == "jsonl":
        yield from _read_jsonl(spec)
    elif spec.kind == "csv":
        yield from _read_csv(spec)
    elif spec.kind == "json":
        yield from _read_json(spec)
    elif spec.kind == "parquet":
        yield from _read_parquet(spec)
    elif spec.kind == "hf":
        yield from _read_hf(spec)
    else:
        raise IngestError(f"{spec.file}: unknown chunk kind {spec.kind!r}")


def _read_bytes(spec: ChunkSpec) -> bytes:
    with open(spec.file, "rb") as f:
        f.seek(spec.start)
        data = f.read(spec.stop - spec.start)
    return data[len(BOM) :] if spec.start == 0 and data.startswith(BOM) else data


def _escaped(text_with_surrogates: str) -> str:
    """Undecodable bytes (held as surrogates) written as \\xNN, the rest as text."""
    return text_with_surrogates.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _first_bad_byte(data: bytes) -> str:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"invalid UTF-8 byte {data[exc.start : exc.start + 1]!r} at byte {exc.start} of the row"
    return "invalid UTF-8"


def _read_jsonl(spec: ChunkSpec) -> Iterator[RawRecord]:
    line_no = spec.first_pos
    for line in _read_bytes(spec).split(b"\n"):
        stripped = line.strip()
        if stripped:
            bad: str | None = None
            try:
                text = stripped.decode("utf-8")
            except UnicodeDecodeError:
                text, bad = stripped.decode("utf-8", "surrogateescape"), _first_bad_byte(stripped)
            try:
                row = loads_strict(text)
            except json.JSONDecodeError as exc:
                raise IngestError(
                    f"{spec.file}:{line_no}: not valid JSON ({exc.msg} at column {exc.colno}); "
                    "every line of a JSONL file must be one JSON object"
                ) from None
            except DuplicateKeyError as exc:
                raise IngestError(_repeated_key_message(f"{spec.file}:{line_no}", exc.key)) from None
            except RecursionError:
                raise IngestError(
                    f"{spec.file}:{line_no}: the JSON is nested too deeply to read "
                    f"(over ~{sys.getrecursionlimit()} levels); no question row needs that"
                ) from None
            ref = f"{spec.display}:{line_no}"
            if bad:
                yield RawRecord(line_no, ref, None, _escaped(text), bad)
            else:
                yield RawRecord(line_no, ref, row, text)
        line_no += 1


def _unbalanced_quote_line(text: str, first_line: int) -> int:
    """The first line of the first CSV record holding an odd number of double quotes."""
    reader = csv.reader(io.StringIO(text, newline=""))
    lines = text.splitlines(keepends=True)
    start = 0
    try:
        for _ in reader:
            end = reader.line_num
            if "".join(lines[start:end]).count('"') % 2:
                return first_line + start
            start = end
    except csv.Error:
        pass
    return first_line + start


def _read_csv(spec: ChunkSpec) -> Iterator[RawRecord]:
    header = spec.header or ()
    data = _read_bytes(spec)
    try:
        text, maybe_bad = data.decode("utf-8"), False
    except UnicodeDecodeError:
        text, maybe_bad = data.decode("utf-8", "surrogateescape"), True
    if data.count(b'"') % 2:
        # A quote never closed swallows every later line into one field: rows would vanish, or surface as a
        # confusing field count. Name the record where the imbalance starts instead.
        line = _unbalanced_quote_line(text, spec.first_pos)
        raise IngestError(
            f"{spec.file}:{line}: unbalanced double quote: a quoted field opened in the record at this line is "
            'never closed (or a stray " sits in an unquoted field); close the quote, and write a quote inside '
            'a quoted field as ""'
        )
    reader = csv.reader(io.StringIO(text, newline=""))
    consumed = 0
    while True:
        record_line = spec.first_pos + consumed
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise IngestError(f"{spec.file}:{record_line}: unreadable CSV record ({exc})") from None
        consumed = reader.line_num
        if not fields or (len(fields) == 1 and not fields[0].strip() and len(header) > 1):
            continue  # a blank line
        if len(fields) != len(header):
            raise IngestError(
                f"{spec.file}:{record_line}: {len(fields)} fields where the header has {len(header)}; "
                "quote fields that contain commas or newlines"
            )
        row = dict(zip(header, fields, strict=True))
        raw = json.dumps(row, ensure_ascii=False)
        ref = f"{spec.display}:{record_line}"
        if maybe_bad and _SURROGATE.search(raw):
            column = next(name for name, value in row.items() if _SURROGATE.search(value))
            yield RawRecord(record_line, ref, None, _escaped(raw), f"invalid UTF-8 in column {column!r}")
        else:
            yield RawRecord(record_line, ref, row, raw)


def _read_json(spec: ChunkSpec) -> Iterator[RawRecord]:
    data = _read_bytes(spec)
    try:
        text, maybe_bad = data.decode("utf-8"), False
    except UnicodeDecodeError:
        text, maybe_bad = data.decode("utf-8", "surrogateescape"), True
    try:
        top = loads_strict(text)
    except json.JSONDecodeError as exc:
        raise IngestError(
            f"{spec.file}:{exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno}); is the file truncated?"
        ) from None
    except DuplicateKeyError as exc:
        found = locate_repeated_key(text)
        if found is None:
            raise IngestError(_repeated_key_message(spec.file, exc.key)) from None
        key, line, first = found
        raise IngestError(_repeated_key_message(f"{spec.file}:{line}", key, first)) from None
    except RecursionError:
        raise IngestError(
            f"{spec.file}: the JSON is nested too deeply to read (over ~{sys.getrecursionlimit()} levels); "
            "no question row needs that"
        ) from None
    if isinstance(top, dict) and isinstance(top.get("data"), list):
        top = top["data"]
    if isinstance(top, list):
        items: list[tuple[str, Any]] = [(str(i), row) for i, row in enumerate(top)]
    elif isinstance(top, dict) and all(isinstance(v, dict) for v in top.values()):
        items = list(top.items())  # the dict-of-rows form {id: row}
    else:
        raise IngestError(
            f"{spec.file}:1: JSON top level is a {type(top).__name__}; expected an array of rows, "
            '{"data": [rows]} or {id: row}'
        )
    for index, (key, row) in enumerate(items):
        raw = json.dumps(row, ensure_ascii=False)
        ref = f"{spec.display}:{key}"
        if maybe_bad and _SURROGATE.search(raw):
            yield RawRecord(index, ref, None, _escaped(raw), "invalid UTF-8 in the row")
        else:
            yield RawRecord(index, ref, row, raw)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)  # dates, decimals, ... as text


def _map_bytes(value: Any, leaf: Callable[[bytes], Any]) -> Any:
    """``value`` with every bytes object inside it (nested dicts and lists included) replaced by ``leaf(b)``."""
    if isinstance(value, bytes):
        return leaf(value)
    if isinstance(value, dict):
        return {k: _map_bytes(v, leaf) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_bytes(v, leaf) for v in value]
    return value


def _binary_note(value: bytes) -> str:
    """UTF-8 text stays text; other bytes (an image, say) become a short note.

    Binary data is not a row defect, so it is not a ``bad_utf8`` reject, and it is not copied into the
    metadata JSON either.
    """
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return f"<{len(value)} bytes of binary data>"


def _decode_strict(value: bytes) -> str:
    """A text column read as bytes, decoded as UTF-8 (raises UnicodeDecodeError)."""
    return value.decode("utf-8")


def _decode_escaped(value: bytes) -> str:
    """Like :func:`_decode_strict`, but undecodable bytes are written as \\xNN (for the reject's raw)."""
    return value.decode("utf-8", "backslashreplace")


def _as_binary(t: pa.DataType) -> pa.DataType:
    """``t`` with every string type replaced by binary (so invalid UTF-8 can be read row by row)."""
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.binary()
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return pa.list_(_as_binary(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _as_binary(f.type)) for f in t])
    return t


def _rows_from_batch(
    batch: pa.RecordBatch | pa.Table, first_row: int, file_label: str
) -> Iterator[RawRecord]:
    """Rows of an Arrow batch; a text column holding invalid UTF-8 makes its rows ``bad_utf8`` records."""
    bad: dict[int, str] = {}
    columns = []
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        try:
            columns.append(column.to_pylist())
            continue
        except UnicodeDecodeError:
            pass
        values = column.cast(_as_binary(column.type)).to_pylist()
        for i, value in enumerate(values):
            try:
                values[i] = _map_bytes(value, _decode_strict)
            except UnicodeDecodeError as exc:
                bad.setdefault(i, f"invalid UTF-8 in column {name!r} ({exc.reason})")
                values[i] = _map_bytes(value, _decode_escaped)
        columns.append(values)
    names = batch.schema.names
    for offset, values in enumerate(zip(*columns, strict=True)):
        pos = first_row + offset
        ref = f"{file_label}:{pos}"
        row = _map_bytes(dict(zip(names, values, strict=True)), _binary_note)
        if offset in bad:
            yield RawRecord(
                pos, ref, None, json.dumps(row, default=_json_default, ensure_ascii=False), bad[offset]
            )
        else:
            yield RawRecord(pos, ref, row, json.dumps(row, default=_json_default, ensure_ascii=False))


def _read_parquet(spec: ChunkSpec) -> Iterator[RawRecord]:
    pf = _parquet_file(spec.file)
    names = pf.schema_arrow.names
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise IngestError(
            f"{spec.file}: column(s) {repeated} appear more than once in the Parquet schema; a row could keep "
            "only one of each: rename the columns"
        )
    row = spec.first_pos
    for rg in range(spec.start, spec.stop):
        try:
            table = pf.read_row_group(rg)
        except (OSError, pa.ArrowException) as exc:
            raise IngestError(f"{spec.file}: row group {rg} (rows from {row}) is unreadable ({exc})") from exc
        for batch in table.to_batches(max_chunksize=8192):
            yield from _rows_from_batch(batch, row, spec.display)
            row += batch.num_rows


def _read_hf(spec: ChunkSpec) -> Iterator[RawRecord]:
    table = load_hf(spec.file).with_format("arrow")[spec.start : spec.stop]
    row = spec.start
    for batch in table.to_batches(max_chunksize=8192):
        yield from _rows_from_batch(batch, row, spec.display)
        row += batch.num_rows
