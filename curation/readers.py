"""Readers: a chunk spec (see :mod:`curation.source_plan`) into raw records, one reader per file format.

Positions: JSONL and CSV records are numbered by their 1-based (first) line, JSON, Parquet and
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
import io
import json
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from curation.source_plan import (
    BOM,
    HF_PREFIX,
    ChunkSpec,
    IngestError,
    fingerprint,
    load_hf,
    parquet_file,
    parse_hf_path,
    plan_source,
    repeated_key_message,
)
from curation.strict_json import DuplicateKeyError, loads_strict, locate_repeated_key

_SURROGATE = re.compile("[\udc80-\udcff]")


@dataclass(frozen=True)
class RawRecord:
    """One input row: where it is, what it is, and its raw text."""

    pos: int  # ordering key within the file (line or row number)
    ref: str  # "<file>:<position>"
    row: Any  # the decoded row (normally a dict); None when bad_utf8 is set
    raw: str  # the raw row as JSON (a JSONL line as written); escaped bytes when bad_utf8 is set
    bad_utf8: str | None = None  # what was undecodable, when something was


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
                raise IngestError(repeated_key_message(f"{spec.file}:{line_no}", exc.key)) from None
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
            raise IngestError(repeated_key_message(spec.file, exc.key)) from None
        key, line, first = found
        raise IngestError(repeated_key_message(f"{spec.file}:{line}", key, first)) from None
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
    pf = parquet_file(spec.file)
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


# Callers that plan and read together (ingest, the runner) take the planning names from here as well.
__all__ = [
    "HF_PREFIX",
    "ChunkSpec",
    "IngestError",
    "RawRecord",
    "fingerprint",
    "parse_hf_path",
    "plan_source",
    "read_chunk",
]
