"""Ingest: input files -> the canonical ``questions`` pool and ``rejects/ingest`` (every bad row, with why).

Two passes, so the heavy work runs in parallel and the order-dependent rules see the whole source:

1. Staging, in parallel (Ray Data): the sources are cut into chunks (:mod:`curation.readers`), each chunk is
   read and every row parsed and checked by its format (:mod:`curation.formats`) in a ``map_batches`` task,
   and the staged rows (accepted candidates and rejects alike, with their file and line) are written as
   Parquet into the run's scratch space.
2. One ordered pass: per source, in source order, the small key columns decide (:func:`decide_source`)
   PubMedQA's m1 split (``not_in_split``), m1's option shuffle (one ``default_rng(42)`` per source, advanced
   once per candidate: see :mod:`curation.prompt`), ``question_too_long`` and ``duplicate_qid`` (the first
   in source order is kept). DuckDB then joins the decisions back to the staged rows, sorts them into source
   order out of core, and streams them to :func:`render_questions` and the run store.

:func:`ingest_in_process` does the same work in one process with polars (no Ray, everything in memory): the
reference the Ray stage is tested and benchmarked against.

A file that cannot be parsed at all stops the stage with :class:`IngestError` naming the file and line,
and nothing is written (the scratch space is removed).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

import schemas
from curation.config import CurationConfig, IngestOptions, SourceConfig
from curation.formats import (
    BAD_UTF8,
    DUPLICATE_QID,
    NOT_IN_SPLIT,
    QUESTION_TOO_LONG,
    Candidate,
    RowParser,
    get_parser,
    pubmedqa_split_indices,
)
from curation.pipeline import Resources, Stage, StageContext, StageResult
from curation.prompt import LABELS, new_shuffle_rng, qid
from curation.readers import ChunkSpec, IngestError, fingerprint, plan_source, read_chunk
from curation.store.runstore import TableVersion, store_unreachable

__all__ = [
    "IngestError",
    "IngestStage",
    "IngestTables",
    "decide_source",
    "ingest_in_process",
    "plan_chunks",
    "render_questions",
    "stage_chunk",
]

STAGE = "ingest"
OK = "ok"
ERROR = "error"
PUBMEDQA_HALVES = ("train", "test")

# One staged row per input record: a candidate (status ok) or a reject (status = reason); "error" rows
# carry an IngestError out of a Ray task so the driver can raise it in source order.
STAGED = pa.schema(
    [
        pa.field("source", pa.string()),
        pa.field("file_index", pa.int32()),
        pa.field("pos", pa.int64()),
        pa.field("source_ref", pa.string()),
        pa.field("status", pa.string()),
        pa.field("detail", pa.string()),
        pa.field("raw", pa.string()),
        pa.field("qid", pa.string()),
        pa.field("source_id", pa.string()),
        pa.field("question", pa.string()),
        pa.field("question_chars", pa.int32()),
        pa.field("option_texts", pa.list_(pa.string())),
        pa.field("n_options", pa.int8()),
        pa.field("answer_index", pa.int8()),
        pa.field("context", pa.string()),
    ]
)
KEY_COLUMNS = [
    "file_index",
    "pos",
    "source_ref",
    "status",
    "qid",
    "question_chars",
    "n_options",
    "answer_index",
]

# What the ordered pass decides for each candidate (status ok after staging).
DECISIONS = pa.schema(
    [
        pa.field("source", pa.string()),
        pa.field("file_index", pa.int32()),
        pa.field("pos", pa.int64()),
        pa.field("final_status", pa.string()),
        pa.field("final_detail", pa.string()),
        pa.field("out_rank", pa.int64()),
        pa.field("perm", pa.list_(pa.int8())),
        pa.field("final_answer", pa.int8()),
    ]
)


# ------------------------------------------------------------------------------------------ staging


def plan_chunks(sources: Sequence[SourceConfig], options: IngestOptions) -> list[ChunkSpec]:
    """Every chunk of every source, sources in config order."""
    specs: list[ChunkSpec] = []
    for source in sources:
        specs.extend(plan_source(source.name, source.path, options.rows_per_chunk))
    return specs


def stage_chunk(spec: ChunkSpec, parser: RowParser) -> pa.Table:
    """Read one chunk and parse every row: a table with the STAGED schema. Raises IngestError."""
    cols: dict[str, list[Any]] = {f.name: [] for f in STAGED}

    def add(
        ref: str, pos: int, status: str, detail: str | None, raw: str | None, cand: Candidate | None
    ) -> None:
        cols["source"].append(spec.source)
        cols["file_index"].append(spec.file_index)
        cols["pos"].append(pos)
        cols["source_ref"].append(ref)
        cols["status"].append(status)
        cols["detail"].append(detail)
        cols["raw"].append(raw)
        if cand is None:
            for name in (
                "qid",
                "source_id",
                "question",
                "question_chars",
                "option_texts",
                "n_options",
                "answer_index",
                "context",
            ):
                cols[name].append(None)
            return
        texts = [text for _, text in cand.options]
        cols["qid"].append(qid(cand.question, texts, cand.context))
        cols["source_id"].append(cand.source_id)
        cols["question"].append(cand.question)
        cols["question_chars"].append(len(cand.question))
        cols["option_texts"].append(texts)
        cols["n_options"].append(len(texts))
        cols["answer_index"].append(cand.answer_index)
        cols["context"].append(cand.context)

    for record in read_chunk(spec):
        if record.bad_utf8:
            add(record.ref, record.pos, BAD_UTF8, record.bad_utf8, record.raw, None)
            continue
        result = parser(record.row)
        if isinstance(result, Candidate):
            add(record.ref, record.pos, OK, None, record.raw, result)
        else:
            add(record.ref, record.pos, result.reason, result.detail, record.raw, None)
    return pa.table(cols, schema=STAGED)


def _error_table(spec: ChunkSpec, message: str) -> pa.Table:
    row = {f.name: [None] for f in STAGED}
    row.update(
        source=[spec.source], file_index=[spec.file_index], pos=[spec.first_pos], source_ref=[spec.display]
    )
    row.update(status=[ERROR], detail=[message])
    return pa.table(row, schema=STAGED)


def _parsers(sources: Sequence[SourceConfig]) -> dict[str, tuple[str, dict[str, Any]]]:
    return {s.name: (s.format, dict(s.mapping)) for s in sources}


def stage_specs_batch(batch: pa.Table, parsers: Mapping[str, tuple[str, dict[str, Any]]]) -> pa.Table:
    """Ray ``map_batches`` body: a batch of chunk specs (JSON) -> their staged rows.

    An IngestError becomes one "error" row instead of an exception: the driver raises the first one in
    source order, and Ray does not retry a file that will never parse.
    """
    tables = []
    for text in batch.column("spec").to_pylist():
        spec = ChunkSpec.from_json(text)
        fmt, mapping = parsers[spec.source]
        try:
            tables.append(stage_chunk(spec, get_parser(fmt, mapping or None)))
        except IngestError as exc:
            tables.append(_error_table(spec, str(exc)))
    return pa.concat_tables(tables) if tables else STAGED.empty_table()


# ------------------------------------------------------------------------------------------ decisions


def decide_source(keys: pa.Table, source: SourceConfig, options: IngestOptions) -> pa.Table:
    """The ordered rules for one source, from its staged key columns sorted by (file_index, pos).

    ``keys`` holds every staged record of the source (rejects too: they count as positions for PubMedQA's
    split). Returns one DECISIONS row per candidate: ``final_status`` ok, not_in_split, question_too_long
    or duplicate_qid; for the rows in the output order, ``out_rank``, the option permutation ``perm``
    (identity without m1_shuffle) and the answer index after it.
    """
    n_total = keys.num_rows
    status = keys.column("status").to_numpy(zero_copy_only=False)
    candidate = status == OK
    candidates = np.flatnonzero(candidate)
    ordered, not_in_split = candidates, np.empty(0, dtype=np.int64)
    if source.format == "pubmedqa" and source.split in PUBMEDQA_HALVES:
        train, test = pubmedqa_split_indices(n_total)
        kept = np.asarray(train if source.split == "train" else test, dtype=np.int64)
        in_kept = np.zeros(n_total, dtype=bool)
        in_kept[kept] = True
        ordered = kept[candidate[kept]]  # m1 iterates its half in permutation order
        not_in_split = candidates[~in_kept[candidates]]

    n_options = keys.column("n_options").to_numpy(zero_copy_only=False)
    counts = n_options[ordered].astype(np.int64)
    answers = keys.column("answer_index").to_numpy(zero_copy_only=False)[ordered].astype(np.int64)
    offsets = np.zeros(len(ordered) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    parents = np.repeat(np.arange(len(ordered)), counts)
    within = np.arange(offsets[-1]) - offsets[parents]
    if options.m1_shuffle:
        rng = new_shuffle_rng()
        # Filled in place: a list of one small array per row costs ~100 bytes a row of driver memory.
        flat = np.empty(int(offsets[-1]), dtype=np.int8)
        for i, k in enumerate(counts.tolist()):
            flat[offsets[i] : offsets[i] + k] = rng.permutation(k)
    else:
        flat = within.astype(np.int8)
    new_answer = within[flat == answers[parents]]  # where each row's answer landed

    chars = keys.column("question_chars").to_numpy(zero_copy_only=False)[ordered]
    too_long = chars > options.max_question_chars
    final_status = np.where(too_long, QUESTION_TOO_LONG, OK).astype(object)
    final_detail = np.full(len(ordered), None, dtype=object)
    for i in np.flatnonzero(too_long):
        final_detail[i] = (
            f"question has {int(chars[i]):,} characters; ingest.max_question_chars is {options.max_question_chars:,}"
        )
    # Among rows not rejected yet, the first of each qid (in output order) is kept; later ones name it.
    rows = pl.DataFrame(
        {
            "i": np.arange(len(ordered), dtype=np.int64),
            "qid": pl.from_arrow(keys.column("qid").take(ordered)),
            "ref": pl.from_arrow(keys.column("source_ref").take(ordered)),
        }
    ).filter(pl.Series(~too_long))
    duplicates = (
        rows.with_columns(
            pl.col("i").first().over("qid").alias("first_i"),
            pl.col("ref").first().over("qid").alias("first_ref"),
        )
        .filter(pl.col("i") != pl.col("first_i"))
        .select(
            "i",
            pl.format("same qid {} as {} (kept: first in source order)", "qid", "first_ref").alias("detail"),
        )
    )
    duplicate_rows = duplicates["i"].to_numpy()
    final_status[duplicate_rows] = DUPLICATE_QID
    final_detail[duplicate_rows] = np.array(duplicates["detail"].to_list(), dtype=object)

    perm_array = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(flat, pa.int8()))
    decided = pa.table(
        {
            "source": pa.array([source.name] * len(ordered), pa.string()),
            "file_index": keys.column("file_index").take(ordered),
            "pos": keys.column("pos").take(ordered),
            "final_status": pa.array(final_status, pa.string()),
            "final_detail": pa.array(final_detail, pa.string()),
            "out_rank": pa.array(np.arange(len(ordered), dtype=np.int64)),
            "perm": perm_array,
            "final_answer": pa.array(new_answer.astype(np.int8)),
        },
        schema=DECISIONS,
    )
    half = "test" if source.split == "train" else "train"
    outside = pa.table(
        {
            "source": pa.array([source.name] * len(not_in_split), pa.string()),
            "file_index": keys.column("file_index").take(not_in_split),
            "pos": keys.column("pos").take(not_in_split),
            "final_status": pa.array([NOT_IN_SPLIT] * len(not_in_split), pa.string()),
            "final_detail": pa.array(
                [
                    f"row {i} is in the {half} half of m1's 50/50 PubMedQA split (seed 0); "
                    f"source {source.name!r} keeps split {source.split!r}"
                    for i in not_in_split.tolist()
                ],
                pa.string(),
            ),
            "out_rank": pa.nulls(len(not_in_split), pa.int64()),
            "perm": pa.nulls(len(not_in_split), pa.list_(pa.int8())),
            "final_answer": pa.nulls(len(not_in_split), pa.int8()),
        },
        schema=DECISIONS,
    )
    return pa.concat_tables([decided, outside])


# ------------------------------------------------------------------------------------------ rendering


_LABEL_ARRAY = pa.array(list(LABELS), pa.string())
_NEWLINE = pa.scalar("\n")


def render_questions(batch: pa.Table | pa.RecordBatch, ingested_at: datetime) -> pa.Table:
    """Final question rows (QUESTIONS schema) from joined staged + decision rows, vectorised.

    ``batch`` has qid, source, source_id, source_ref, split, question, option_texts, perm, final_answer,
    context and raw. Options are reordered by ``perm`` and relabelled A, B, ...; the prompt is rendered as
    :func:`curation.prompt.render_m1_prompt` renders it (tests check they agree byte for byte).
    """
    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    table = table.combine_chunks()
    n = table.num_rows
    texts = (
        table.column("option_texts").chunk(0).cast(pa.list_(pa.string()))
        if n
        else pa.array([], pa.list_(pa.string()))
    )
    perm = table.column("perm").chunk(0) if n else pa.array([], pa.list_(pa.int8()))
    lengths = pc.list_value_length(texts).to_numpy(zero_copy_only=False).astype(np.int64)
    starts = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    parents = np.repeat(np.arange(n), lengths)
    flat_texts = pc.list_flatten(texts)
    flat_perm = pc.list_flatten(perm).to_numpy(zero_copy_only=False).astype(np.int64)
    new_texts = flat_texts.take(pa.array(flat_perm + starts[parents]))
    within = np.arange(starts[-1]) - starts[parents]
    labels = _LABEL_ARRAY.take(pa.array(within))
    offsets = pa.array(starts.astype(np.int32))
    options = pa.ListArray.from_arrays(
        offsets,
        pa.StructArray.from_arrays(
            [labels, new_texts], fields=list(schemas.get("questions").schema.field("options").type.value_type)
        ),
    )
    lines = pc.binary_join_element_wise(labels, new_texts, ". ")
    body = pc.binary_join_element_wise(
        table.column("question"), pc.binary_join(pa.ListArray.from_arrays(offsets, lines), "\n"), "\n"
    )
    context = table.column("context")
    prompt = pc.if_else(pc.is_null(context), body, pc.binary_join_element_wise(context, body, "\n"))
    answer = table.column("final_answer").to_numpy(zero_copy_only=False).astype(np.int64)
    columns = {
        "qid": table.column("qid"),
        "source": table.column("source"),
        "source_id": pc.coalesce(table.column("source_id"), table.column("source_ref")),
        "split": table.column("split"),
        "question": table.column("question"),
        "options": options,
        "answer_label": _LABEL_ARRAY.take(pa.array(answer)),
        "answer_text": new_texts.take(pa.array(starts[:-1] + answer)),
        "context": context,
        "prompt": prompt,
        "metadata": table.column("raw"),
        "ingested_at": pa.array([ingested_at] * n, pa.timestamp("us", tz="UTC")),
    }
    return schemas.conform(pa.table(columns), "questions")


def reject_rows(table: pa.Table | pa.RecordBatch) -> pa.Table:
    """REJECTS rows from rows holding source, source_ref, reason, detail, raw."""
    t = pa.Table.from_batches([table]) if isinstance(table, pa.RecordBatch) else table
    t = t.append_column("stage", pa.array([STAGE] * t.num_rows, pa.string()))
    return schemas.conform(t.select(["stage", "source", "source_ref", "reason", "detail", "raw"]), "rejects")


# ------------------------------------------------------------------------------------------ counting


@dataclass
class Counts:
    """Rows in/out/rejected overall and per source; rejects by reason."""

    rows_in: int = 0
    rows_out: int = 0
    by_reason: Counter = field(default_factory=Counter)
    per_source: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def rows_rejected(self) -> int:
        return sum(self.by_reason.values())

    def count_questions(self, table: pa.Table) -> pa.Table:
        self.rows_out += table.num_rows
        for source, n in Counter(table.column("source").to_pylist()).items():
            self.per_source.setdefault(source, {"in": 0, "out": 0, "rejected": 0})["out"] += n
        return table

    def count_rejects(self, table: pa.Table) -> pa.Table:
        self.by_reason.update(table.column("reason").to_pylist())
        for source, n in Counter(table.column("source").to_pylist()).items():
            self.per_source.setdefault(source, {"in": 0, "out": 0, "rejected": 0})["rejected"] += n
        return table

    def add_input(self, source: str, n: int) -> None:
        self.rows_in += n
        self.per_source.setdefault(source, {"in": 0, "out": 0, "rejected": 0})["in"] += n

    def check(self) -> None:
        if self.rows_in != self.rows_out + self.rows_rejected:
            raise RuntimeError(
                f"ingest: {self.rows_in} rows in != {self.rows_out} out + {self.rows_rejected} rejected"
            )


# ------------------------------------------------------------------------------------------ in-process


@dataclass
class IngestTables:
    """The ingest outputs held in memory."""

    questions: pa.Table
    rejects: pa.Table
    counts: Counts


def ingest_in_process(
    sources: Sequence[SourceConfig], options: IngestOptions, *, ingested_at: datetime | None = None
) -> IngestTables:
    """The whole stage in one process with polars, everything in memory (reference and benchmark baseline)."""
    ingested_at = ingested_at or datetime.now(UTC)
    specs = plan_chunks(sources, options)
    parsers = {s.name: get_parser(s.format, s.mapping or None) for s in sources}
    staged_parts = [stage_chunk(spec, parsers[spec.source]) for spec in specs]
    staged = pl.from_arrow(pa.concat_tables(staged_parts) if staged_parts else STAGED.empty_table())
    assert isinstance(staged, pl.DataFrame)
    source_order = pl.DataFrame(
        {
            "source": [s.name for s in sources],
            "source_index": list(range(len(sources))),
            "split": [s.split for s in sources],
        }
    )
    staged = staged.join(source_order, on="source", how="left").sort("source_index", "file_index", "pos")
    counts = Counts()
    decisions = []
    for source in sources:
        part = staged.filter(pl.col("source") == source.name)
        counts.add_input(source.name, part.height)
        decisions.append(decide_source(part.select(KEY_COLUMNS).to_arrow(), source, options))
    decided = pl.from_arrow(pa.concat_tables(decisions))
    assert isinstance(decided, pl.DataFrame)
    joined = staged.join(decided, on=["source", "file_index", "pos"], how="left")
    accepted = joined.filter(pl.col("final_status") == OK).sort("source_index", "out_rank")
    questions = (
        render_questions(_plain_strings(accepted.to_arrow()), ingested_at)
        if accepted.height
        else schemas.get("questions").schema.empty_table()
    )
    rejected = (
        joined.filter((pl.col("status") != OK) | (pl.col("final_status") != OK))
        .sort("source_index", "file_index", "pos")
        .select(
            "source",
            "source_ref",
            pl.coalesce("final_status", "status").alias("reason"),
            pl.coalesce("final_detail", "detail").alias("detail"),
            "raw",
        )
    )
    rejects = reject_rows(rejected.to_arrow())
    counts.count_questions(questions)
    counts.count_rejects(rejects)
    counts.check()
    return IngestTables(questions, rejects, counts)


# ------------------------------------------------------------------------------------------ the stage


_QUESTIONS_SQL = """
SELECT s.qid, s.source, s.source_id, s.source_ref, o.split, s.question, s.option_texts, d.perm, d.final_answer,
       s.context, s.raw
FROM staged s
JOIN decisions d ON d.source = s.source AND d.file_index = s.file_index AND d.pos = s.pos
JOIN source_order o ON o.source = s.source
WHERE d.final_status = 'ok'
ORDER BY o.source_index, d.out_rank
"""

_REJECTS_SQL = """
SELECT s.source, s.source_ref, coalesce(d.final_status, s.status) AS reason,
       coalesce(d.final_detail, s.detail) AS detail, s.raw
FROM staged s
LEFT JOIN decisions d ON d.source = s.source AND d.file_index = s.file_index AND d.pos = s.pos
JOIN source_order o ON o.source = s.source
WHERE s.status <> 'ok' OR d.final_status <> 'ok'
ORDER BY o.source_index, s.file_index, s.pos
"""


class IngestStage(Stage):
    """Input files -> ``questions`` + ``rejects/ingest``, as a Ray Data pipeline plus one ordered DuckDB pass."""

    name: ClassVar[str] = STAGE
    inputs: ClassVar[tuple[str, ...]] = ()
    outputs: ClassVar[tuple[str, ...]] = ("questions", "rejects/ingest")
    # One parsing task per CPU; the ordered pass runs in the driver with DuckDB under a memory limit.
    resources: ClassVar[Resources] = Resources(cpus=1.0, memory_gib=1.0)
    duckdb_memory_limit: ClassVar[str] = "2GB"
    batch_rows: ClassVar[int] = 32_768

    def __init__(self, *, ingested_at: datetime | None = None) -> None:
        self._ingested_at = ingested_at

    def hash_inputs(self, cfg: CurationConfig) -> dict[str, Any]:
        # Paths are left out: the files' content (below) is what matters, so the same files elsewhere resume.
        return {
            "sources": [s.model_dump(mode="json", exclude={"path"}) for s in cfg.sources],
            "ingest": cfg.ingest.model_dump(mode="json", exclude={"rows_per_chunk"}),
            "files": {s.name: fingerprint(s.path) for s in cfg.sources},
        }

    def run(self, ctx: StageContext) -> StageResult:
        import ray

        cfg, store = ctx.config, ctx.store
        ingested_at = self._ingested_at or datetime.now(UTC)
        clock = _Clock()
        specs = plan_chunks(cfg.sources, cfg.ingest)
        clock.lap("plan")
        scratch = store.scratch_dir("ingest-staged")
        written: list[TableVersion] = []
        try:
            items = [{"spec": spec.to_json()} for spec in specs]
            task_options = (ctx.resources or self.resources).ray_options()
            ds = ray.data.from_items(items, override_num_blocks=max(1, len(items))).map_batches(
                stage_specs_batch,
                fn_kwargs={"parsers": _parsers(cfg.sources)},
                batch_size=1,
                batch_format="pyarrow",
                **task_options,
            )
            # The write gets the same request: Ray Data fuses parse and write into one task only when their
            # resource requests match; otherwise every staged block crosses the object store.
            ds.write_parquet(store.path(scratch), filesystem=store.fs, ray_remote_args=task_options)
            clock.lap("parse")

            # The ordered pass holds per-row keys and decisions: it runs as one Ray task, not in the driver,
            # so the driver stays flat however large the pool (the task's own memory is the stage's bound).
            ordered = ray.remote(**{**task_options, "max_retries": 0})(ordered_pass)
            try:
                questions, rejects, counts, laps = ray.get(
                    ordered.remote(
                        store, scratch, cfg, ingested_at, self.duckdb_memory_limit, self.batch_rows
                    )
                )
            except ray.exceptions.RayTaskError as exc:
                raise (exc.cause if isinstance(exc.cause, Exception) else exc) from None
            written += [questions, rejects]
            clock.laps.update(laps)
        except BaseException as exc:
            # Nothing of a failed run stays behind: not the staged rows, not a half-written table version. Unless
            # the store itself stopped answering: then the stage's own error is the one to show at once, and the
            # next run's gc removes these (they are in no manifest).
            if not store_unreachable(exc):
                for rel in [scratch, *(version.path for version in written)]:
                    try:
                        _remove(store, rel)
                    except OSError:
                        break  # the store failed now: keep the stage's error; the next run's gc cleans up
            raise
        _remove(store, scratch)
        return StageResult(
            outputs=[questions, rejects],
            rows_in=counts.rows_in,
            rows_out=counts.rows_out,
            rows_rejected=counts.rows_rejected,
            rejected_by_reason=dict(sorted(counts.by_reason.items())),
            details={
                "ingest_sources": counts.per_source,
                "ingest_chunks": len(specs),
                "ingest_seconds": clock.laps,
            },
        )

    @staticmethod
    def _register_staged(con: Any, store: Any, scratch: str) -> None:
        dataset = store.dataset_at(scratch)
        if not dataset.files:
            con.register("staged", STAGED.empty_table())
        elif store.is_local:
            glob = f"{store.path(scratch)}/**/*.parquet".replace("'", "''")  # a quote in the run dir's path
            con.execute(f"CREATE VIEW staged AS SELECT * FROM read_parquet('{glob}')")
        else:
            con.register("staged", dataset)


def ordered_pass(
    store: Any,
    scratch: str,
    cfg: CurationConfig,
    ingested_at: datetime,
    duckdb_memory_limit: str,
    batch_rows: int,
) -> tuple[TableVersion, TableVersion, Counts, dict[str, float]]:
    """Pass 2 of ingest, over the staged rows: per source the ordered rules (:func:`decide_source`), then the
    ``questions`` and ``rejects/ingest`` versions written in source order. A failure removes what it wrote."""
    import duckdb

    clock = _Clock()
    written: list[TableVersion] = []
    local_tmp = tempfile.mkdtemp(prefix="m1-ingest-duckdb-")
    try:
        con = duckdb.connect()
        con.execute(f"SET memory_limit='{duckdb_memory_limit}'")
        con.execute(f"SET temp_directory='{local_tmp}'")
        con.execute(f"SET threads={max(1, os.cpu_count() or 1)}")
        IngestStage._register_staged(con, store, scratch)
        source_order = pa.table(
            {
                "source": [s.name for s in cfg.sources],
                "source_index": list(range(len(cfg.sources))),
                "split": [s.split for s in cfg.sources],
            }
        )
        con.register("source_order", source_order)
        errors = con.sql(
            "SELECT s.detail FROM staged s JOIN source_order o USING (source) WHERE s.status = 'error' "
            "ORDER BY o.source_index, s.file_index, s.pos LIMIT 1"
        ).fetchall()
        if errors:
            raise IngestError(errors[0][0])

        counts = Counts()
        decisions = []
        for source in cfg.sources:
            keys = con.sql(
                f"SELECT {', '.join(KEY_COLUMNS)} FROM staged WHERE source = ? ORDER BY file_index, pos",
                params=[source.name],
            ).to_arrow_table()
            counts.add_input(source.name, keys.num_rows)
            decisions.append(decide_source(_plain_strings(keys), source, cfg.ingest))
        con.register("decisions", pa.concat_tables(decisions))
        check_sources_yield(con, cfg.sources)
        clock.lap("decide")

        questions = store.write_table(
            "questions",
            (
                counts.count_questions(render_questions(_plain_strings(b), ingested_at))
                for b in _batches(con.sql(_QUESTIONS_SQL).to_arrow_reader(batch_rows))
            ),
        )
        written.append(questions)
        rejects = store.write_table(
            "rejects/ingest",
            (
                counts.count_rejects(reject_rows(b))
                for b in _batches(con.sql(_REJECTS_SQL).to_arrow_reader(batch_rows))
            ),
        )
        written.append(rejects)
        con.close()
        counts.check()
        clock.lap("write")
        return questions, rejects, counts, clock.laps
    except BaseException:
        for version in written:
            _remove(store, version.path)
        raise
    finally:
        shutil.rmtree(local_tmp, ignore_errors=True)


def check_sources_yield(con: Any, sources: Sequence[SourceConfig]) -> None:
    """A source that yields no question, or an mcq mapping path found in none of its rows, is an error.

    Such a source is almost always a mistake (a wrong format, a column renamed, a mapping typo, an empty file),
    and a funnel full of rejects at exit 0 hides it. The message names the source, its path, the top reject
    reasons with an example row, and the mapping key that finds nothing.
    """
    problems = []
    for source in sources:
        n_in, n_ok = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE d.final_status = 'ok') FROM staged s "
            "LEFT JOIN decisions d USING (source, file_index, pos) WHERE s.source = ?",
            [source.name],
        ).fetchall()[0]
        where = f"source {source.name!r} ({source.path})"
        if n_in == 0:
            problems.append(f"{where} holds no rows at all: an empty file?")
            continue
        if n_ok == 0:
            reasons = con.execute(
                "SELECT coalesce(d.final_status, s.status) AS reason, count(*) AS n, "
                "arg_min(s.source_ref || ': ' || coalesce(d.final_detail, s.detail, ''), s.file_index * 1e12 + s.pos) "
                "FROM staged s LEFT JOIN decisions d USING (source, file_index, pos) WHERE s.source = ? "
                "GROUP BY 1 ORDER BY n DESC, reason LIMIT 3",
                [source.name],
            ).fetchall()
            top = "; ".join(f"{reason} x{n} (e.g. {example})" for reason, n, example in reasons)
            problems.append(
                f"{where}: none of its {n_in:,} rows is a usable question: {top}. "
                f"Check that format {source.format!r}"
                + (" and the mapping" if source.format == "mcq" else "")
                + " match the file's fields"
            )
            continue
        if source.format == "mcq":
            for key, column in (("context", "context"), ("id", "source_id")):
                path = source.mapping.get(key)
                if not path:
                    continue
                (found,) = con.execute(
                    f"SELECT count(s.{column}) FROM staged s JOIN decisions d USING (source, file_index, pos) "
                    "WHERE s.source = ? AND d.final_status = 'ok'",
                    [source.name],
                ).fetchall()[0]
                if found == 0:
                    problems.append(
                        f"{where}: mapping.{key} {path!r} is missing (or empty) in every one of its {n_ok:,} "
                        f"accepted rows; fix the path, or remove {key} from the mapping"
                    )
    if problems:
        raise IngestError("\n  ".join(["sources that yield nothing usable:", *problems]))


class _Clock:
    """Seconds per phase, for the stage record."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._last, 3)
        self._last = now


def _batches(reader: pa.RecordBatchReader) -> Iterator[pa.Table]:
    for batch in reader:
        if batch.num_rows:
            yield pa.Table.from_batches([batch])


def _plain_strings(table: pa.Table) -> pa.Table:
    """string_view / large_string -> string, so every compute kernel takes the columns."""

    def plain(t: pa.DataType) -> pa.DataType:
        if pa.types.is_string_view(t) or pa.types.is_large_string(t):
            return pa.string()
        if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_list_view(t):
            return pa.list_(plain(t.value_type))
        return t

    target = pa.schema([pa.field(f.name, plain(f.type)) for f in table.schema])
    return table if target.equals(table.schema) else table.cast(target)


def _remove(store: Any, rel: str) -> None:
    info = store.fs.get_file_info(store.path(rel))
    if info.type.name == "Directory":
        store.fs.delete_dir(store.path(rel))
