"""Tables of the LLM stages: difficulty scores, the difficulty decision, teacher traces and the curated set."""

from __future__ import annotations

import pyarrow as pa

from schemas.base import TableSchema

SCORES = TableSchema(
    name="scores",
    version=1,
    doc="Difficulty scoring: one row per (question, scorer, sample) with the extracted answer and its outcome.",
    schema=pa.schema(
        [
            pa.field("source", pa.string(), nullable=False),
            pa.field("qid", pa.string(), nullable=False),
            pa.field("scorer", pa.string(), nullable=False),
            pa.field("model", pa.string(), nullable=False),
            pa.field("sample", pa.int32(), nullable=False),
            pa.field("request_id", pa.string(), nullable=False),
            pa.field("response", pa.string(), nullable=True),
            pa.field("extracted_label", pa.string(), nullable=True),
            pa.field("extraction", pa.string(), nullable=False),
            pa.field("outcome", pa.string(), nullable=False),
            pa.field("finish_reason", pa.string(), nullable=True),
            pa.field("prompt_tokens", pa.int64(), nullable=True),
            pa.field("completion_tokens", pa.int64(), nullable=True),
            pa.field("error", pa.string(), nullable=True),
            pa.field("cached", pa.bool_(), nullable=False),
        ]
    ),
    column_docs={
        "source": "the question's source",
        "qid": "the question's id",
        "scorer": "the scorer's name in the config (score.scorers[].name)",
        "model": "the model that answered",
        "sample": "sample number, 0 .. k-1",
        "request_id": "the LLM request's id (ledger key)",
        "response": "the scorer's answer text (null on error)",
        "extracted_label": "the option label extracted by curation.answers (null when invalid or error)",
        "extraction": "how the label was extracted, or why the answer is invalid, or the error",
        "outcome": "correct | wrong | invalid | error",
        "finish_reason": "stop, length, ... as the engine reported it",
        "prompt_tokens": "input tokens",
        "completion_tokens": "output tokens",
        "error": "the engine's error after retries (outcome error), else null",
        "cached": "true when the response came from the ledger",
    },
)

DIFFICULTY = TableSchema(
    name="difficulty",
    version=1,
    doc="Difficulty per question: pass rates per scorer and overall, and the hard / easy / undecided decision.",
    schema=pa.schema(
        [
            pa.field("source", pa.string(), nullable=False),
            pa.field("qid", pa.string(), nullable=False),
            pa.field("pass_rates", pa.string(), nullable=False),
            pa.field("samples", pa.int32(), nullable=False),
            pa.field("correct", pa.int32(), nullable=False),
            pa.field("errors", pa.int32(), nullable=False),
            pa.field("pass_rate", pa.float64(), nullable=True),
            pa.field("decision", pa.string(), nullable=False),
            pa.field("rule", pa.string(), nullable=False),
        ]
    ),
    column_docs={
        "source": "the question's source",
        "qid": "the question's id",
        "pass_rates": "JSON {scorer: correct / answered samples} (null for a scorer with only errors)",
        "samples": "samples over all scorers",
        "correct": "correct samples over all scorers",
        "errors": "samples whose request failed after retries",
        "pass_rate": "correct / answered samples over all scorers (null when none answered)",
        "decision": "hard | easy | undecided",
        "rule": "the rule and the facts that made the decision, e.g. 'all_wrong: every scorer wrong'",
    },
)

TRACES = TableSchema(
    name="traces",
    version=1,
    doc="Teacher reasoning: one row per (question, attempt), judged against the answer key.",
    schema=pa.schema(
        [
            pa.field("source", pa.string(), nullable=False),
            pa.field("qid", pa.string(), nullable=False),
            pa.field("attempt", pa.int32(), nullable=False),
            pa.field("request_id", pa.string(), nullable=False),
            pa.field("model", pa.string(), nullable=False),
            pa.field("engine", pa.string(), nullable=False),
            pa.field("reasoning", pa.string(), nullable=True),
            pa.field("answer", pa.string(), nullable=True),
            pa.field("extracted_label", pa.string(), nullable=True),
            pa.field("extraction", pa.string(), nullable=False),
            pa.field("outcome", pa.string(), nullable=False),
            pa.field("accepted", pa.bool_(), nullable=False),
            pa.field("finish_reason", pa.string(), nullable=True),
            pa.field("prompt_tokens", pa.int64(), nullable=True),
            pa.field("completion_tokens", pa.int64(), nullable=True),
            pa.field("cost_usd", pa.float64(), nullable=True),
            pa.field("error", pa.string(), nullable=True),
            pa.field("cached", pa.bool_(), nullable=False),
        ]
    ),
    column_docs={
        "source": "the question's source",
        "qid": "the question's id",
        "attempt": "1 .. max_attempts; every attempt is a distinct request (its number is part of the id)",
        "request_id": "the LLM request's id (ledger key)",
        "model": "the teacher model",
        "engine": "which engine answered ('openai:<host>', 'vllm', 'import:<name>')",
        "reasoning": "the reasoning: reasoning_content, or the text inside <think>...</think>",
        "answer": "the answer part: message content, or the text after </think>",
        "extracted_label": "the option label extracted from the answer (null when invalid)",
        "extraction": "how the label was extracted, or why the attempt is not usable",
        "outcome": "correct | wrong | invalid | no_reasoning | truncated | filtered | error",
        "accepted": "true iff outcome is correct (a truncated trace is never accepted)",
        "finish_reason": "stop, length, content_filter, ... as the engine reported it",
        "prompt_tokens": "input tokens",
        "completion_tokens": "output tokens (reasoning included)",
        "cost_usd": "price-table cost of this attempt",
        "error": "the engine's error after retries (outcome error), else null",
        "cached": "true when the response came from the ledger (not paid again)",
    },
)

CURATED = TableSchema(
    name="curated",
    version=1,
    doc="Validated questions with teacher reasoning: m1's released m23K fields plus lineage columns.",
    schema=pa.schema(
        [
            pa.field("answer_idx", pa.string(), nullable=False),
            pa.field("source", pa.string(), nullable=False),
            pa.field("metadata", pa.string(), nullable=False),
            pa.field("prompt", pa.string(), nullable=False),
            pa.field("answer_letter", pa.string(), nullable=False),
            pa.field("answer_string", pa.string(), nullable=False),
            pa.field("reasoning", pa.string(), nullable=False),
            pa.field("distilled_answer_string", pa.string(), nullable=False),
            pa.field("text", pa.string(), nullable=False),
            pa.field("qid", pa.string(), nullable=False),
            pa.field("pool_index", pa.int64(), nullable=True),
            pa.field("attempt", pa.int32(), nullable=False),
            pa.field("model", pa.string(), nullable=False),
            pa.field("request_id", pa.string(), nullable=False),
        ]
    ),
    column_docs={
        "answer_idx": "label of the correct option (as MedQA's answer_idx)",
        "source": "the question's source",
        "metadata": "the raw source row as JSON",
        "prompt": "the question as m1 renders it (question, then 'X. text' option lines)",
        "answer_letter": "label of the correct option",
        "answer_string": "text of the correct option",
        "reasoning": "the teacher's reasoning",
        "distilled_answer_string": "the teacher's final answer text (validated correct)",
        "text": "the SFT example in m1's format: chat template, think marker, reasoning, answer marker, answer",
        "qid": "the question's id",
        "pool_index": "position in pool order (sources in config order, rows in file order), when known",
        "attempt": "which teacher attempt produced the accepted trace",
        "model": "the teacher model",
        "request_id": "the accepted attempt's request id (ledger key)",
    },
)
