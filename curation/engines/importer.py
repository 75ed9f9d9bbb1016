"""Import recorded responses (e.g. the published m23K traces) into a ledger, so a rebuild replays them free.

Each record becomes the request the stage would send (same `make_request`: model, rendered messages, params)
and a successful response holding the recorded text and reasoning, with engine ``import:<name>``. A later
`run_requests` with the same requests finds their ids answered and sends nothing.

    m1 ledger-import m23k.jsonl --ledger runs/x/ledger --model deepseek-reasoner \\
        --params '{"max_tokens": 8000}' --template 'Return your final response within \\boxed{}. {prompt}'

The ids match only when model, messages and params are exactly what the stage sends; check with
``run_requests(..., dry_run=True)``, which counts the requests the ledger already answers.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from curation.engines.ledger import Ledger
from curation.engines.request import make_request, response_row, responses_table
from curation.errors import UserError
from curation.jobenv import nonempty_path
from curation.strict_json import DuplicateKeyError, loads_strict

CHUNK_ROWS = 50_000
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def render(template: str, row: Mapping[str, Any]) -> str:
    """``template`` with each ``{column}`` replaced by the row's value; other braces (``\\boxed{}``) stay."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in row:
            return match.group(0)
        value = row[name]
        return "" if value is None else str(value)

    return _PLACEHOLDER.sub(substitute, template)


class ImportFileError(UserError, ValueError):
    """A file to import cannot be read as records; the message names the file and the record."""


Records = tuple[list[str], list[dict[str, Any]]]


def read_records(path: str) -> Records:
    """(column names, records) of a JSONL/JSON-lines file, a JSON array file, or a Parquet file or folder.

    Anything unreadable (missing, not JSON, truncated, a repeated key, nested too deeply, not Parquet) is an
    ImportFileError that names the file and, for JSON, the record (1-based) and its line.
    """
    source = Path(path)
    if not source.exists():
        raise ImportFileError(f"{path}: no such file or folder")
    try:
        if source.is_dir() or source.suffix == ".parquet":
            import pyarrow.dataset as pads

            table = pads.dataset(str(source), format="parquet").to_table()
            return table.column_names, table.to_pylist()
        if source.suffix in (".jsonl", ".json", ".ndjson"):
            return _read_json_records(source)
    except OSError as exc:
        raise ImportFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except pa.ArrowException as exc:
        raise ImportFileError(f"{path}: not a readable Parquet file or folder ({exc})") from None
    raise ImportFileError(f"{path}: expected .jsonl/.json/.ndjson or .parquet (file or folder)")


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(k for r in rows for k in r))


def _read_json_records(source: Path) -> Records:
    # Python's decoder, line by line, not pyarrow's: pyarrow recurses in C on nested values (a line nested
    # 100,000 levels deep killed the process with SIGSEGV) and reports type changes at the record after the odd
    # one out. Here a too-deep value is a RecursionError, and records are numbered as the user counts them.
    with open(source, "rb") as f:
        head = f.read(4096).lstrip()
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:].lstrip()
    if head.startswith(b"["):  # a JSON array of records
        try:
            rows = loads_strict(source.read_text(encoding="utf-8-sig"))
        except DuplicateKeyError as exc:
            raise ImportFileError(f"{source}: a record repeats the key {exc.key!r}") from None
        except RecursionError:
            raise ImportFileError(
                f"{source}: the JSON is nested too deeply to read (over ~{sys.getrecursionlimit()} levels)"
            ) from None
        except ValueError as exc:
            line = f":{exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
            raise ImportFileError(f"{source}{line}: not valid JSON ({exc}); is the file truncated?") from None
        bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
        if bad is not None:
            raise ImportFileError(f"{source}: element {bad} of the array is not an object with columns")
        return _columns(rows), rows
    rows: list[dict[str, Any]] = []
    with open(source, encoding="utf-8-sig", errors="surrogateescape") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{source}: record {len(rows) + 1} (line {line_no})"
            try:
                row = loads_strict(line)
            except DuplicateKeyError as exc:
                raise ImportFileError(f"{where}: the key {exc.key!r} is specified twice") from None
            except RecursionError:
                raise ImportFileError(
                    f"{where}: the JSON is nested too deeply to read (over ~{sys.getrecursionlimit()} levels); "
                    "no trace record needs that"
                ) from None
            except ValueError as exc:
                what = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
                raise ImportFileError(
                    f"{where} (JSON lines: one object per line): not valid JSON ({what}); "
                    "is the file truncated or not JSON lines?"
                ) from None
            if not isinstance(row, dict):
                raise ImportFileError(f"{where}: a {type(row).__name__}, not an object with columns")
            rows.append(row)
    if not rows:
        raise ImportFileError(f"{source}: not JSON lines (no records)")
    return _columns(rows), rows


def _check_types(path: str, rows: list[dict[str, Any]], text_columns: list[str], other: set[str]) -> None:
    """The first record whose text column holds a non-string, or whose other used column holds an object or a
    list, is an error naming that record (1-based) and column."""
    for index, row in enumerate(rows, 1):
        for column in text_columns:
            value = row.get(column)
            if value is not None and not isinstance(value, str):
                raise ImportFileError(
                    f"{path}: record {index}: column {column!r} is {_json_type(value)}, expected text"
                )
        for column in other:
            value = row.get(column)
            if isinstance(value, dict | list):
                raise ImportFileError(
                    f"{path}: record {index}: column {column!r} is {_json_type(value)}, expected text or a number"
                )


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


def _chunks(rows: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def import_responses(
    path: str,
    *,
    ledger_uri: str,
    model: str,
    params: Mapping[str, Any],
    prompt_column: str = "prompt",
    template: str | None = None,
    system: str | None = None,
    kind: str = "chat",
    text_column: str = "distilled_answer_string",
    reasoning_column: str | None = "reasoning",
    key_column: str | None = None,
    finish_reason: str | None = "stop",
    name: str = "import",
) -> int:
    """Append one ledger row per record of ``path``; returns how many were written.

    The user message is ``template`` rendered with the record's columns (default: the ``prompt_column``
    value as is), after an optional ``system`` message; ``kind="completion"`` makes a raw prompt instead.
    Records without text, and ids the ledger already holds (or that repeat within the file), are skipped.
    """
    if kind not in ("chat", "completion"):
        raise ImportFileError(f"kind must be chat or completion, got {kind!r}")
    names, rows = read_records(path)
    template = template if template is not None else "{" + prompt_column + "}"
    columns = set(names)
    template_columns = {m.group(1) for m in _PLACEHOLDER.finditer(template)} & columns
    required = (
        [text_column]
        + ([reasoning_column] if reasoning_column else [])
        + ([key_column] if key_column else [])
    )
    missing = [c for c in required if c not in columns]
    if not template_columns:
        missing.append(f"any column named in the template {template!r}")
    if missing:
        raise ImportFileError(
            f"{path}: missing column(s) {missing}; the file has {names} "
            "(choose others with --text-column, --reasoning-column, --key-column, --template)"
        )
    needed = template_columns | set(required)
    # The texts that make the request and the response must be text; only a key may also be a number.
    text_columns = sorted(template_columns) + [text_column] + ([reasoning_column] if reasoning_column else [])
    _check_types(path, rows, text_columns, needed - set(text_columns))

    engine = f"import:{name}"
    try:
        ledger = Ledger(ledger_uri)
        answered = set(ledger.answered_ids().to_pylist())
    except (OSError, pa.ArrowException) as exc:
        raise ImportFileError(
            f"--ledger {ledger_uri}: cannot open or create the ledger there ({exc})"
        ) from None
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    skipped_empty = 0
    for index, record in enumerate(rows):
        record = {c: record.get(c) for c in needed}
        text = record[text_column]
        if text is None:
            skipped_empty += 1
            continue
        content = render(template, record)
        key = str(record[key_column]) if key_column else f"{name}:{index}"
        if kind == "chat":
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": content}
            ]
            request = make_request(key, model, messages=messages, **params)
        else:
            request = make_request(key, model, prompt=(system or "") + content, **params)
        rid = request["request_id"]
        if rid in answered or rid in seen:
            continue
        seen.add(rid)
        reasoning = record[reasoning_column] if reasoning_column else None
        out.append(
            response_row(
                request,
                engine=engine,
                text=str(text),
                reasoning=None if reasoning is None else str(reasoning),
                finish_reason=finish_reason,
                attempts=0,  # never sent: it came from a recorded trace
            )
        )
    written = sum(ledger.append(responses_table(chunk)) for chunk in _chunks(out, CHUNK_ROWS))
    if skipped_empty:
        print(f"ledger-import: {path}: skipped {skipped_empty} records with no {text_column!r}")
    return written


def imported_count(ledger_uri: str, name: str) -> int:
    """How many ledger rows came from import ``name``."""
    table = Ledger(ledger_uri).read()
    return pc.sum(pc.equal(table.column("engine"), f"import:{name}")).as_py() or 0


# ---- CLI -------------------------------------------------------------------------------------------------
def _cmd(args: argparse.Namespace) -> int:
    try:
        params = loads_strict(args.params)
    except (ValueError, RecursionError) as exc:
        raise UserError(f"--params is not JSON: {exc}") from None
    if not isinstance(params, dict):
        raise UserError("--params must be a JSON object, e.g. '{\"max_tokens\": 8000}'")
    written = import_responses(
        args.path,
        ledger_uri=args.ledger,
        model=args.model,
        params=params,
        prompt_column=args.prompt_column,
        template=args.template,
        system=args.system,
        kind=args.kind,
        text_column=args.text_column,
        reasoning_column=args.reasoning_column or None,
        key_column=args.key_column,
        name=args.name,
    )
    print(
        f"m1 ledger-import: {written} responses from {args.path} -> ledger {args.ledger} (engine import:{args.name})"
    )
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `m1 ledger-import`."""
    p = subparsers.add_parser(
        "ledger-import",
        help="import recorded responses (JSONL/Parquet traces such as m23K) into a ledger",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("path", type=nonempty_path, help="JSONL file, or Parquet file or folder")
    p.add_argument("--ledger", required=True, type=nonempty_path, help="ledger directory or URI")
    p.add_argument("--model", required=True, help="model name exactly as the stage's requests carry it")
    p.add_argument("--params", default="{}", help="sampling params as JSON, exactly as the stage sends them")
    p.add_argument("--prompt-column", default="prompt")
    p.add_argument(
        "--template", default=None, help="user message with {column} placeholders (default {prompt})"
    )
    p.add_argument("--system", default=None, help="system message, if the stage sends one")
    p.add_argument("--kind", choices=["chat", "completion"], default="chat")
    p.add_argument("--text-column", default="distilled_answer_string")
    p.add_argument("--reasoning-column", default="reasoning", help="'' for none")
    p.add_argument("--key-column", default=None)
    p.add_argument("--name", default="import", help="engine becomes import:<name>")
    p.set_defaults(func=_cmd)
    return p
