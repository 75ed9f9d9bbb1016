"""Difficulty scoring: candidates -> scores (one row per question x scorer x sample) -> difficulty -> hard questions.

1. Every scorer (an engine from the config: vLLM actors or any OpenAI-compatible endpoint) answers every
   question ``samples`` times with m1's prompt (``Return your final response within \\boxed{}. `` + the
   rendered question, user-only) and its own sampling parameters. Requests go through the engine layer, so
   answered requests come from the ledger and nothing is paid twice.
2. Each answer is judged with :mod:`curation.answers` (never guesses: an unreadable answer is ``invalid``).
3. :func:`curation.rules.difficulty.decide` turns each question's tallies into hard / easy / undecided.

Outputs: ``scores``, ``difficulty`` (every question), ``rejects/score`` (easy and undecided, by reason).
Rows stream: Ray workers build the requests from the question table, serve answered ones from the ledger, send
the rest and write the responses to scratch Parquet; DuckDB joins them back to the questions batch by batch.
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
from curation.rules.difficulty import Tally, decide, judge_score, pass_rates_json
from curation.stages.llm import (
    attach,
    bounded_duckdb,
    chat_messages,
    engine_for,
    iter_question_batches,
    options_of,
    question_dataset,
    question_source_table,
)

STAGE = "score"
KEY_SEP = "|"


def scorer_requests(batch: pa.Table, scorer: Any, model: str, options: Any) -> pa.Table:
    """The requests of one scorer for a batch of questions: ``samples`` per question, keyed source|qid|scorer|k."""

    params: dict[str, Any] = {"temperature": scorer.temperature, "max_tokens": scorer.max_tokens}
    if scorer.top_p is not None:
        params["top_p"] = scorer.top_p
    if scorer.seed is not None:
        params["seed"] = scorer.seed
    rows = []
    for source, qid, prompt in zip(
        batch.column("source").to_pylist(),
        batch.column("qid").to_pylist(),
        batch.column("prompt").to_pylist(),
        strict=True,
    ):
        messages = chat_messages(
            prompt, prefix=options.prompt_prefix, suffix=options.prompt_suffix, system=options.system_prompt
        )
        for sample in range(scorer.samples):
            # Samples of one question must be distinct requests; the salt is part of the id, never sent.
            salt = {"_sample": sample} if scorer.samples > 1 else {}
            key = KEY_SEP.join((source, qid, scorer.name, str(sample)))
            rows.append(make_request(key, model, messages=messages, **params, **salt))
    return requests_table(rows)


def engine_requests(batch: pa.Table, scorers: list[tuple[Any, str]], options: Any) -> pa.Table:
    """Every request of the scorers sharing one engine for a batch of questions (a Ray Data batch function)."""
    return pa.concat_tables([scorer_requests(batch, scorer, model, options) for scorer, model in scorers])


def judge_rows(batch: pa.Table) -> pa.Table:
    """Responses joined to their question -> `scores` rows (outcome, extracted label, how it was decided)."""
    out: dict[str, list[Any]] = {k: [] for k in ("outcome", "extracted_label", "extraction")}
    for text, error, options, answer in zip(
        batch.column("text").to_pylist(),
        batch.column("error").to_pylist(),
        batch.column("options").to_pylist(),
        batch.column("answer_label").to_pylist(),
        strict=True,
    ):
        outcome, label, how = judge_score(text, error, options_of(options), answer)
        out["outcome"].append(outcome)
        out["extracted_label"].append(label)
        out["extraction"].append(how)
    table = batch.drop_columns(["options", "answer_label"]).rename_columns(
        {"text": "response"} if "text" in batch.column_names else {}
    )
    for name, values in out.items():
        table = table.append_column(name, pa.array(values, pa.string()))
    return table


_SCORES_SQL = """
SELECT q.source, q.qid, r.scorer, r.model, r.sample, r.request_id, r.text, r.finish_reason, r.prompt_tokens,
       r.completion_tokens, r.error, r.cached, q.options, q.answer_label
FROM (
    SELECT *, split_part(key, '|', 1) AS source, split_part(key, '|', 2) AS qid,
           split_part(key, '|', 3) AS scorer, CAST(split_part(key, '|', 4) AS INTEGER) AS sample
    FROM responses
) r JOIN q USING (source, qid)
ORDER BY q.source, q.qid, r.scorer, r.sample
"""

_TALLY_SQL = """
WITH per AS (
    SELECT source, qid, scorer,
           count(*) FILTER (outcome = 'correct') AS c, count(*) FILTER (outcome = 'wrong') AS w,
           count(*) FILTER (outcome = 'invalid') AS i, count(*) FILTER (outcome = 'error') AS e
    FROM scores GROUP BY ALL
)
SELECT q.source, q.qid,
       list(struct_pack(scorer := per.scorer, correct := c, wrong := w, invalid := i, error := e)
            ORDER BY per.scorer) FILTER (WHERE per.scorer IS NOT NULL) AS t
FROM q LEFT JOIN per USING (source, qid)
GROUP BY q.source, q.qid ORDER BY q.source, q.qid
"""


def difficulty_rows(batch: pa.Table, rule: str, max_pass_rate: float) -> pa.Table:
    """Per-question tallies -> `difficulty` rows with the decision and the rule that made it."""
    cols: dict[str, list[Any]] = {
        k: [] for k in ("pass_rates", "samples", "correct", "errors", "pass_rate", "decision", "rule")
    }
    for tallies in batch.column("t").to_pylist():
        by_scorer = {
            t["scorer"]: Tally(correct=t["correct"], wrong=t["wrong"], invalid=t["invalid"], error=t["error"])
            for t in tallies or ()  # no scores at all (no request was made): decide() says undecided
        }
        verdict = decide(by_scorer, rule, max_pass_rate)  # type: ignore[arg-type]
        cols["pass_rates"].append(pass_rates_json(verdict.pass_rates))
        cols["samples"].append(sum(t.samples for t in by_scorer.values()))
        cols["correct"].append(sum(t.correct for t in by_scorer.values()))
        cols["errors"].append(sum(t.error for t in by_scorer.values()))
        cols["pass_rate"].append(verdict.pass_rate)
        cols["decision"].append(verdict.decision)
        cols["rule"].append(verdict.rule)
    table = batch.select(["source", "qid"])
    for name, values in cols.items():
        table = table.append_column(name, pa.array(values))
    return table


_REJECTS_SQL = f"""
SELECT '{STAGE}' AS stage, source, qid AS source_ref, decision AS reason, rule AS detail, pass_rates AS raw
FROM difficulty WHERE decision <> 'hard' ORDER BY source, qid
"""


class ScoreStage(Stage):
    """candidates -> scores, difficulty, rejects/score (easy and undecided questions)."""

    name: ClassVar[str] = STAGE
    inputs: ClassVar[tuple[str, ...]] = ("questions", "candidates")
    outputs: ClassVar[tuple[str, ...]] = ("scores", "difficulty", "rejects/score")
    batch_rows: ClassVar[int] = 8192

    sends_requests: ClassVar[bool] = True

    def enabled(self, cfg: CurationConfig) -> bool:
        return bool(cfg.score.scorers)

    def scorers_per_engine(self, cfg: CurationConfig) -> Iterator[tuple[str, Any, list[tuple[Any, str]]]]:
        """(label, engine, [(scorer, model)]) per engine: scorers sharing an engine share its replicas and one run."""
        by_engine: dict[str, list[Any]] = {}
        for scorer in cfg.score.scorers:
            by_engine.setdefault(scorer.engine, []).append(scorer)
        for engine_name, scorers in by_engine.items():
            resolved = [
                (scorer, *engine_for(cfg, engine_name, scorer.model, where=f"score.scorers[{scorer.name}]"))
                for scorer in scorers
            ]
            label = f"{', '.join(s.name for s in scorers)} on engine {engine_name}"
            yield label, resolved[0][1], [(scorer, model) for scorer, _, model in resolved]

    def requests_per_engine(self, cfg: CurationConfig, store: Any) -> Iterator[tuple[str, Any, pa.Table]]:
        """(label, engine, every request) per engine, as one table: for dry runs (the plan and its cost)."""
        for label, engine, scorers in self.scorers_per_engine(cfg):
            batches = [
                engine_requests(b, scorers, cfg.score)
                for b in iter_question_batches(store, ["source", "qid", "prompt"], self.batch_rows)
            ]
            if batches:
                yield label, engine, pa.concat_tables(batches)

    def plan(self, ctx: StageContext) -> str:

        lines = []
        for label, engine, requests in self.requests_per_engine(ctx.config, ctx.store):
            est = run_requests(requests, engine, ledger_uri=ctx.store.ledger_uri, dry_run=True)
            lines.append(f"{label}: {est.n_requests:,} requests, {est.n_to_send:,} to send")
        return "; ".join(lines) or "no questions to score"

    def hash_inputs(self, cfg: CurationConfig) -> dict[str, Any]:
        return {
            "score": cfg.score.model_dump(mode="json"),
            "engines": {s.engine: cfg.engines.get(s.engine) for s in cfg.score.scorers},
        }

    def run(self, ctx: StageContext) -> StageResult:

        cfg, store = ctx.config, ctx.store
        options = cfg.score
        scratch = store.scratch_dir("score-responses")
        for i, (label, engine, scorers) in enumerate(self.scorers_per_engine(cfg)):
            # Streams: requests are built, looked up, sent and written by Ray workers, never held here.
            per_question = sum(scorer.samples for scorer, _ in scorers)
            questions, n = question_dataset(
                store, ["source", "qid", "prompt"], engine=engine, requests_per_row=per_question
            )
            print(f"[{STAGE}] {label}: {n * per_question:,} requests")
            requests = questions.map_batches(
                engine_requests,
                fn_kwargs={"scorers": scorers, "options": options},
                batch_format="pyarrow",
                batch_size=None,
            )
            with running(engine, questions=store.table_location(question_source_table(store))) as live:
                stream_requests(
                    requests,
                    live,
                    ledger_uri=store.ledger_uri,
                    out_uri=store.path(f"{scratch}/engine-{i}"),
                    filesystem=store.fs,
                )

        con = bounded_duckdb(store, "score")
        attach(con, "q", store.dataset(question_source_table(store)))
        response_files = store.dataset_at(scratch)
        if response_files.files:
            attach(con, "responses", response_files)
        else:
            attach(con, "responses", schemas.get("responses").schema.empty_table())

        def judged() -> Iterator[pa.Table]:
            for batch in con.sql(_SCORES_SQL).to_arrow_reader(self.batch_rows):
                yield judge_rows(pa.Table.from_batches([batch]))

        scores_version = store.write_table("scores", judged())
        attach(con, "scores", store.dataset_at(scores_version.path))

        def decided() -> Iterator[pa.Table]:
            for batch in con.sql(_TALLY_SQL).to_arrow_reader(self.batch_rows):
                yield difficulty_rows(pa.Table.from_batches([batch]), options.rule, options.max_pass_rate)

        difficulty_version = store.write_table("difficulty", decided())
        attach(con, "difficulty", store.dataset_at(difficulty_version.path))
        rejects_version = store.write_table(
            "rejects/score", con.sql(_REJECTS_SQL).to_arrow_reader(self.batch_rows)
        )
        by_decision = dict(con.sql("SELECT decision, count(*) FROM difficulty GROUP BY ALL").fetchall())
        per_scorer = {
            scorer: {"samples": n, "correct": c, "invalid": i, "errors": e}
            for scorer, n, c, i, e in con.sql(
                "SELECT scorer, count(*), count(*) FILTER (outcome = 'correct'), "
                "count(*) FILTER (outcome = 'invalid'), count(*) FILTER (outcome = 'error') "
                "FROM scores GROUP BY scorer ORDER BY scorer"
            ).fetchall()
        }
        con.close()
        for scorer, c in per_scorer.items():
            accuracy = c["correct"] / c["samples"] if c["samples"] else 0.0
            print(
                f"[{STAGE}] {scorer}: {c['samples']} samples, accuracy {accuracy:.3f}, "
                f"{c['invalid']} invalid, {c['errors']} errors"
            )
        return StageResult(
            outputs=[scores_version, difficulty_version, rejects_version],
            rows_in=difficulty_version.rows,
            rows_out=by_decision.get("hard", 0),
            rows_rejected=rejects_version.rows,
            rejected_by_reason={d: n for d, n in sorted(by_decision.items()) if d != "hard"},
            details={"score_scorers": per_scorer},
        )
