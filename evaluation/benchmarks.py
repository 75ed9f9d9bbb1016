"""Benchmark loaders: m1's evaluation sets in the shapes they are published in, and any curation source.

- ``huatuo_json``: HuatuoGPT-o1's ``eval_data.json`` (MedMCQA validation, MedQA test, PubMedQA test, MMLU-Pro
  medical, GPQA medical): a JSON object ``{source: [rows]}`` or a JSON array of rows with a ``source`` field; each
  row has ``question``, ``options`` {A: text, ...}, ``answer_idx`` (letter) and ``answer`` (text).
- ``jsonl``: one row per line with ``question``, an ``options`` dict, and ``answer_idx`` or ``label`` (letter) plus
  ``answer`` (Lancet, NEJM, MedBullets op4/op5, MedXpertQA with 10 options, HLE).
- ``medqa`` / ``medmcqa`` / ``headqa`` / ``pubmedqa`` / ``mcq``: the curation's own source parsers (PubMedQA rows
  are rendered with their contexts, as m1 does; ``split`` picks a half of m1's 50/50 split).

Every question becomes a :class:`evaluation.runner.Sample` whose ``question`` is what precedes the option lines.
A bad row is a clear error naming the file, the row and the key: a benchmark is never silently shortened.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from curation.errors import UserError
from curation.formats import Reject, get_parser, pubmedqa_split_indices
from curation.prompt import render_m1_prompt
from evaluation.config import BenchmarkConfig
from evaluation.runner import Sample


class BenchmarkError(UserError):
    """A benchmark file is missing or has a row we cannot read."""


def _read_rows(path: Path) -> list[Any]:
    name = path.name
    try:
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        raw = path.read_bytes()
        if name.endswith(".gz"):
            raw = gzip.decompress(raw)
        text = raw.decode("utf-8")
    except (gzip.BadGzipFile, EOFError) as exc:
        raise BenchmarkError(f"{path}: not a complete gzip file ({exc})") from None
    except FileNotFoundError:
        raise BenchmarkError(f"benchmark file {str(path)!r} not found") from None
    except UnicodeDecodeError as exc:
        raise BenchmarkError(f"{path}: not UTF-8 ({exc})") from None
    if name.endswith((".jsonl", ".jsonl.gz")):
        rows = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise BenchmarkError(f"{path}: line {n} is not valid JSON: {exc.msg}") from None
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BenchmarkError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno}") from None
    if isinstance(data, dict):  # HuatuoGPT-o1's {source: [rows]}
        rows = []
        for source, items in data.items():
            if not isinstance(items, list):
                raise BenchmarkError(
                    f"{path}: key {source!r} holds a {type(items).__name__}, expected a list of rows"
                )
            rows.extend({**item, "source": item.get("source", source)} for item in items)
        return rows
    if not isinstance(data, list):
        raise BenchmarkError(f"{path}: expected a JSON array or an object of arrays")
    return data


def _mcq_row(row: Any, where: str) -> tuple[str, dict[str, str], str]:
    if not isinstance(row, dict):
        raise BenchmarkError(f"{where}: expected an object, got {type(row).__name__}")
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise BenchmarkError(f"{where}: 'question' is missing or empty")
    options = row.get("options")
    if isinstance(options, list):  # ["text", ...] -> A, B, ...
        options = {chr(65 + i): text for i, text in enumerate(options)}
    if not isinstance(options, dict) or not 2 <= len(options) <= 26:
        raise BenchmarkError(f"{where}: 'options' must be an object of 2 to 26 label -> text entries")
    options = {str(k).strip().upper(): "" if v is None else str(v) for k, v in options.items()}
    label = row.get("answer_idx", row.get("label"))
    answer_text = row.get("answer")
    if isinstance(label, int) and not isinstance(label, bool):
        label = chr(65 + label)
    if isinstance(label, str):
        label = label.strip().upper()
    if not label and isinstance(answer_text, str):  # only the text: find its option
        hits = [k for k, v in options.items() if v.strip().lower() == answer_text.strip().lower()]
        label = hits[0] if len(hits) == 1 else None
    if label not in options:
        raise BenchmarkError(
            f"{where}: the answer ({'answer_idx/label'}={row.get('answer_idx', row.get('label'))!r}) is not one of the "
            f"options {sorted(options)}"
        )
    if isinstance(answer_text, str) and answer_text.strip() and ("answer_idx" in row or "label" in row):
        if answer_text.strip().lower() != options[label].strip().lower():
            raise BenchmarkError(
                f"{where}: 'answer' {answer_text[:60]!r} disagrees with options[{label}] {options[label][:60]!r}"
            )
    return question, options, label


def _detect(path: Path) -> str:
    name = path.name
    if name.endswith((".jsonl", ".jsonl.gz", ".parquet")):
        return "jsonl"
    if name.endswith(".json"):
        return "huatuo_json"
    raise BenchmarkError(f"{path}: cannot tell the benchmark format from the name; set `format:`")


def load_benchmark(cfg: BenchmarkConfig) -> list[Sample]:
    """The benchmark's questions as samples (ids ``<benchmark>:<n>`` in file order, or the row's own id)."""
    path = Path(cfg.path)
    fmt = _detect(path) if cfg.format == "auto" else cfg.format
    samples: list[Sample] = []
    if fmt in ("huatuo_json", "jsonl"):
        rows = _read_rows(path)
        for n, row in enumerate(rows):
            if cfg.source is not None and isinstance(row, dict) and row.get("source") != cfg.source:
                continue
            where = f"{path}: row {n}" + (
                f" (source {row.get('source')})" if isinstance(row, dict) and "source" in row else ""
            )
            question, options, label = _mcq_row(row, where)
            sid = row.get("id") or row.get("qid") or f"{cfg.name}:{n}"
            samples.append(Sample(str(sid), question, options, label))
        if cfg.source is not None and not samples:
            sources = sorted({str(r.get("source")) for r in rows if isinstance(r, dict)})
            raise BenchmarkError(f"{path}: no rows with source {cfg.source!r}; sources present: {sources}")
    else:
        samples = _load_with_curation_parser(path, fmt, cfg)
    if not samples:
        raise BenchmarkError(f"{path}: benchmark {cfg.name!r} has no questions")
    ids = [s.sample_id for s in samples]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise BenchmarkError(f"{path}: duplicate question ids {dupes}")
    return samples[: cfg.limit] if cfg.limit else samples


def _load_with_curation_parser(path: Path, fmt: str, cfg: BenchmarkConfig) -> list[Sample]:

    rows = _read_rows(path)
    parser = get_parser(fmt, cfg.mapping or None)
    order = list(range(len(rows)))
    if fmt == "pubmedqa" and cfg.split in ("train", "test"):
        train, test = pubmedqa_split_indices(len(rows))
        order = train if cfg.split == "train" else test
    samples = []
    for n in order:
        parsed = parser(rows[n])
        if isinstance(parsed, Reject):
            raise BenchmarkError(f"{path}: row {n}: {parsed.reason}: {parsed.detail}")
        # m1's rendering minus the option lines, which question_text() adds back with the instruction.
        question = render_m1_prompt(parsed.question, [], parsed.context).rstrip("\n")
        sid = parsed.source_id or f"{cfg.name}:{n}"
        samples.append(Sample(str(sid), question, dict(parsed.options), parsed.answer_label))
    return samples
