"""Teacher reasoning: hard questions -> traces (one row per attempt) -> validated questions.

1. Every hard question (``difficulty.decision = 'hard'``) is sent to the teacher (DeepSeek-R1 in the m1 preset,
   any OpenAI-compatible endpoint, or vLLM actors for open reasoning models) with m1's prompt.
2. The reasoning is R1's ``reasoning_content``, or the text inside ``<think>...</think>`` for models that write
   it inline; the answer is the rest. :func:`curation.rules.traces.judge_attempt` judges it: only a complete
   answer naming the key is accepted (a ``length``-truncated trace never is).
3. Resampling: a question without an accepted trace is asked again, up to ``max_attempts`` tries. Attempt
   ``a > 1`` carries ``_attempt=a`` in its request id (never sent to the API), so it is a new request and not
   the ledger's copy of the first try, and a rerun never pays again for an attempt already made.

Outputs: ``traces`` (every attempt, with its finish_reason and cost) and ``rejects/teacher`` (hard questions
with no accepted trace, by the last attempt's outcome). Validated questions go on to ``curate``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import pyarrow as pa

import schemas
from curation.config import CurationConfig
from curation.engines import run_requests, running, stream_requests
from curation.engines.request import make_request, requests_table
from curation.pipeline import Stage, StageContext, StageResult
from curation.rules.traces import judge_attempt, split_reasoning
from curation.stages.llm import (
    attach,
    bounded_duckdb,
    chat_messages,
    engine_for,
    options_of,
    question_dataset,
    question_source_table,
    write_rows,
)

STAGE = "teacher"
KEY_SEP = "|"

# Neither join sorts: a sort would hold every prompt or response of the pool on the driver (DuckDB buffers it,
# up to its cap, before the first row comes out). The build side of each hash join is the narrow one (the hard
# questions' keys; the questions' options and key), so the driver's memory stays flat as the pool grows.
# `traces` rows are therefore in no particular order; `curated` and `m23k` are sorted by pool_index.
_HARD_SQL = """
SELECT q.source, q.qid, q.prompt
FROM q JOIN (SELECT source, qid FROM difficulty WHERE decision = 'hard') d USING (source, qid)
"""

_JOIN_SQL = """
SELECT q.source, q.qid, r.attempt, r.request_id, r.model, r.engine, r.text, r.reasoning, r.finish_reason,
       r.prompt_tokens, r.completion_tokens, r.cost_usd, r.error, r.cached, q.options, q.answer_label
FROM (
    SELECT *, split_part(key, '|', 1) AS source, split_part(key, '|', 2) AS qid,
           CAST(split_part(key, '|', 3) AS INTEGER) AS attempt
    FROM responses
) r JOIN (SELECT source, qid, options, answer_label FROM q) q USING (source, qid)
"""


def attempt_requests(batch: pa.Table, attempt: int, model: str, options: Any) -> pa.Table:
    """Teacher requests for one attempt over a batch of questions, keyed source|qid|attempt."""

    params: dict[str, Any] = {"max_tokens": options.max_tokens}
    if options.temperature is not None:
        params["temperature"] = options.temperature
    if attempt > 1:
        params["_attempt"] = attempt  # part of the request id, stripped before sending
    rows = [
        make_request(
            KEY_SEP.join((source, qid, str(attempt))),
            model,
            messages=chat_messages(
                prompt,
                prefix=options.prompt_prefix,
                suffix=options.prompt_suffix,
                system=options.system_prompt,
            ),
            **params,
        )
        for source, qid, prompt in zip(
            batch.column("source").to_pylist(),
            batch.column("qid").to_pylist(),
            batch.column("prompt").to_pylist(),
            strict=True,
        )
    ]
    return requests_table(rows)


def trace_rows(batch: pa.Table) -> pa.Table:
    """Responses joined to their question -> `traces` rows, each attempt judged."""
    cols: dict[str, list[Any]] = {
        k: [] for k in ("reasoning", "answer", "extracted_label", "extraction", "outcome", "accepted")
    }
    for text, reasoning_content, finish, error, options, key in zip(
        batch.column("text").to_pylist(),
        batch.column("reasoning").to_pylist(),
        batch.column("finish_reason").to_pylist(),
        batch.column("error").to_pylist(),
        batch.column("options").to_pylist(),
        batch.column("answer_label").to_pylist(),
        strict=True,
    ):
        reasoning, answer = split_reasoning(text, reasoning_content)
        verdict = judge_attempt(
            answer,
            reasoning=reasoning,
            finish_reason=finish,
            error=error,
            options=options_of(options),
            answer_label=key,
        )
        cols["reasoning"].append(reasoning)
        cols["answer"].append(answer)
        cols["extracted_label"].append(verdict.label)
        cols["extraction"].append(verdict.how)
        cols["outcome"].append(verdict.outcome)
        cols["accepted"].append(verdict.accepted)
    table = batch.drop_columns(["text", "reasoning", "options", "answer_label"])
    for name, values in cols.items():
        table = table.append_column(name, pa.array(values))
    return table


# A question without an accepted trace was asked on every attempt (the loop re-asks every open question), so
# its reject is its last attempt's row: a filter that streams, no aggregate over every trace of the pool.
_REJECTS_SQL = f"""
SELECT '{STAGE}' AS stage, source, qid AS source_ref,
       CASE outcome WHEN 'wrong' THEN 'teacher_wrong' WHEN 'invalid' THEN 'teacher_invalid'
                    WHEN 'truncated' THEN 'truncated' WHEN 'filtered' THEN 'content_filter'
                    WHEN 'no_reasoning' THEN 'no_reasoning'
                    ELSE 'api_error' END AS reason,
       'after ' || attempt || ' attempt(s); last: ' || extraction AS detail,
       coalesce(answer, '') AS raw
FROM traces WHERE attempt = $last AND NOT accepted
"""


class TeacherStage(Stage):
    """hard questions -> traces (every attempt) and rejects/teacher (no accepted trace after max_attempts)."""

    name: ClassVar[str] = STAGE
    inputs: ClassVar[tuple[str, ...]] = ("questions", "candidates", "difficulty")
    outputs: ClassVar[tuple[str, ...]] = ("traces", "rejects/teacher")
    batch_rows: ClassVar[int] = 8192

    sends_requests: ClassVar[bool] = True
    # m1's funnel: 37,816 of 192,023 deduplicated questions were hard; a dry run before scoring assumes as much.
    m1_hard_fraction: ClassVar[float] = 37_816 / 192_023

    def enabled(self, cfg: CurationConfig) -> bool:
        return cfg.teacher.engine is not None

    def plan(self, ctx: StageContext) -> str:

        cfg, store = ctx.config, ctx.store
        assert cfg.teacher.engine is not None
        engine, model = engine_for(cfg, cfg.teacher.engine, cfg.teacher.model, where="teacher")
        con = bounded_duckdb(store, "teacher")
        attach(con, "q", store.dataset(question_source_table(store)))
        if store.has_table("difficulty"):
            attach(con, "difficulty", store.dataset("difficulty"))
            sql, scale, basis = _HARD_SQL, 1.0, "the hard questions of the difficulty table"
        else:
            sql = "SELECT source, qid, prompt FROM q ORDER BY source, qid"
            scale = self.m1_hard_fraction
            basis = f"not scored yet: assuming m1's hard share of {scale:.1%}"
        batches = [
            attempt_requests(pa.Table.from_batches([b]), 1, model, cfg.teacher)
            for b in con.sql(sql).to_arrow_reader(self.batch_rows)
        ]
        con.close()
        if not batches:
            return "no questions for the teacher"
        est = run_requests(pa.concat_tables(batches), engine, ledger_uri=store.ledger_uri, dry_run=True)
        if est.cost_expected is None or est.cost_high is None:
            cost = "no price configured"
        else:
            cost = (
                f"expected ${est.cost_expected * scale:,.2f} for first attempts "
                f"(at most ${est.cost_high * scale * cfg.teacher.max_attempts:,.2f} with every attempt)"
            )
        return (
            f"~{round(est.n_to_send * scale):,} questions ({basis}), up to {cfg.teacher.max_attempts} "
            f"attempt(s) each; {cost}"
        )

    def hash_inputs(self, cfg: CurationConfig) -> dict[str, Any]:
        return {
            "teacher": cfg.teacher.model_dump(mode="json"),
            "engine": cfg.engines.get(cfg.teacher.engine or ""),
        }

    def run(self, ctx: StageContext) -> StageResult:
        cfg, store = ctx.config, ctx.store
        options = cfg.teacher
        assert options.engine is not None
        engine, model = engine_for(cfg, options.engine, options.model, where="teacher")
        source_table = question_source_table(store)
        if not store.has_table("difficulty"):
            raise RuntimeError("teacher: the run has no `difficulty` table; configure `score:` scorers first")
        con = bounded_duckdb(store, "teacher")
        attach(con, "q", store.dataset(source_table))
        attach(con, "difficulty", store.dataset("difficulty"))
        hard = con.execute("SELECT count(*) FROM difficulty WHERE decision = 'hard'").fetchall()[0][0]
        accepted: set[tuple[str, str]] = set()
        scratch = store.scratch_dir("teacher-responses")

        with running(engine, questions=store.table_location(source_table)) as live_engine:

            def attempts() -> Iterator[pa.Table]:
                for attempt in range(1, options.max_attempts + 1):
                    yield from self._attempt(
                        con, store, scratch, attempt, accepted, live_engine, model, options
                    )

            traces = store.write_table("traces", attempts())
        attach(con, "traces", store.dataset_at(traces.path))
        last = con.execute("SELECT max(attempt) FROM traces").fetchall()[0][0] or 0
        rejects = store.write_table(
            "rejects/teacher",
            con.sql(_REJECTS_SQL, params={"last": last}).to_arrow_reader(self.batch_rows),
        )
        attach(con, "rejects", store.dataset_at(rejects.path))
        by_reason = dict(con.sql("SELECT reason, count(*) FROM rejects GROUP BY ALL ORDER BY 1").fetchall())
        totals = con.execute(
            "SELECT count(*), count(*) FILTER (NOT cached), coalesce(sum(cost_usd), 0), "
            "count(*) FILTER (outcome = 'truncated') FROM traces"
        ).fetchall()[0]
        con.close()
        print(
            f"[{STAGE}] {hard} hard questions, {len(accepted)} validated; {totals[0]} attempts "
            f"({totals[1]} sent, {totals[0] - totals[1]} from the ledger), {totals[3]} truncated, "
            f"${totals[2]:.4f}"
        )
        return StageResult(
            outputs=[traces, rejects],
            rows_in=hard,
            rows_out=len(accepted),
            rows_rejected=rejects.rows,
            rejected_by_reason=by_reason,
            details={"teacher_attempts": totals[0], "teacher_cost_usd": round(totals[2], 6)},
        )

    def _attempt(
        self,
        con: Any,
        store: Any,
        scratch: str,
        attempt: int,
        accepted: set[tuple[str, str]],
        engine: Any,
        model: str,
        options: Any,
    ) -> Iterator[pa.Table]:
        """Send one attempt for every hard question still without an accepted trace; yield the judged rows."""

        def still_open() -> Iterator[pa.Table]:
            for batch in con.sql(_HARD_SQL).to_arrow_reader(self.batch_rows):
                table = pa.Table.from_batches([batch])
                keep = [
                    (s, q) not in accepted
                    for s, q in zip(table["source"].to_pylist(), table["qid"].to_pylist(), strict=True)
                ]
                table = table.filter(pa.array(keep, pa.bool_()))
                if table.num_rows:
                    yield table

        # The questions of this attempt go to scratch Parquet (streamed); Ray workers build the requests from
        # them, serve answered ones from the ledger, send the rest and write the responses: nothing is held here.
        questions_rel = f"{scratch}/questions-{attempt}"
        if not write_rows(store, questions_rel, still_open()):
            return
        questions, n = question_dataset(
            store, ["source", "qid", "prompt"], engine=engine, requests_per_row=1, rel=questions_rel
        )
        print(f"[{STAGE}] attempt {attempt}: {n:,} requests to {model}")
        requests = questions.map_batches(
            attempt_requests,
            fn_kwargs={"attempt": attempt, "model": model, "options": options},
            batch_format="pyarrow",
            batch_size=None,
        )
        rel = f"{scratch}/attempt-{attempt}"
        stream_requests(
            requests, engine, ledger_uri=store.ledger_uri, out_uri=store.path(rel), filesystem=store.fs
        )
        files = store.dataset_at(rel)
        attach(con, "responses", files if files.files else schemas.get("responses").schema.empty_table())
        for batch in con.sql(_JOIN_SQL).to_arrow_reader(self.batch_rows):
            judged = trace_rows(pa.Table.from_batches([batch]))
            ok = judged.filter(judged.column("accepted"))
            accepted.update(zip(ok["source"].to_pylist(), ok["qid"].to_pylist(), strict=True))
            yield judged
