"""Tables of `m1 eval`: one row per (cell, question) answer, and one row per finished cell.

A cell is one (model, benchmark, protocol, budget, forcing) point of the evaluation grid."""

from __future__ import annotations

import pyarrow as pa

from schemas.base import TableSchema

_CELL = [
    pa.field("cell", pa.string(), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("benchmark", pa.string(), nullable=False),
    pa.field("protocol", pa.string(), nullable=False),
    pa.field("budget", pa.int32(), nullable=False),
    pa.field("forcing", pa.int32(), nullable=False),
]
_CELL_DOCS = {
    "cell": "the grid cell's key: model|benchmark|protocol|budget|forcing",
    "model": "the model's name in the eval config",
    "benchmark": "the benchmark's name in the eval config",
    "protocol": "budget (m1's thinking budget) | no_thinking | cot (plain chat-template CoT)",
    "budget": "thinking budget in tokens (cot: max new tokens; no_thinking: 0)",
    "forcing": "how many times 'Wait' may be forced when thinking stops early",
}

EVAL_RESPONSES = TableSchema(
    name="eval_responses",
    version=1,
    doc="Evaluation answers: one row per (grid cell, question) with the thinking, the answer and its outcome.",
    schema=pa.schema(
        [
            *_CELL,
            pa.field("sample_id", pa.string(), nullable=False),
            pa.field("answer_label", pa.string(), nullable=False),
            pa.field("extracted_label", pa.string(), nullable=True),
            pa.field("extraction", pa.string(), nullable=False),
            pa.field("outcome", pa.string(), nullable=False),
            pa.field("m1_first", pa.string(), nullable=False),
            pa.field("m1_last", pa.string(), nullable=False),
            pa.field("thinking_tokens", pa.int32(), nullable=False),
            pa.field("forced", pa.int32(), nullable=False),
            pa.field("ran_out", pa.bool_(), nullable=False),
            pa.field("answer_tokens", pa.int32(), nullable=False),
            pa.field("answer_finish", pa.string(), nullable=True),
            pa.field("prompt_tokens", pa.int32(), nullable=False),
            pa.field("generated_tokens", pa.int64(), nullable=False),
            pa.field("derived", pa.bool_(), nullable=False),
            pa.field("thinking", pa.string(), nullable=False),
            pa.field("answer", pa.string(), nullable=False),
        ]
    ),
    column_docs={
        **_CELL_DOCS,
        "sample_id": "the question's id in the benchmark",
        "answer_label": "the key (option letter)",
        "extracted_label": "the letter curation.answers read from the answer (null: invalid)",
        "extraction": "how the letter was read, or why the answer is invalid",
        "outcome": "correct | wrong | invalid (strict matcher)",
        "m1_first": "the HuatuoGPT/m1 matcher's first answer (always an option)",
        "m1_last": "the HuatuoGPT/m1 matcher's last answer (always an option)",
        "thinking_tokens": "tokens of thinking (generated + forced words), never more than the budget",
        "forced": "how many times 'Wait' was forced",
        "ran_out": "the budget ran out (so 'Final Answer:' was appended)",
        "answer_tokens": "tokens of the answer stage",
        "answer_finish": "stop | length: how the answer stage ended",
        "prompt_tokens": "tokens of the chat prompt",
        "generated_tokens": "tokens the engine generated for this row (a derived thinking costs 0)",
        "derived": "the thinking was derived from a larger budget's (prefix reuse)",
        "thinking": "the thinking text",
        "answer": "the answer text",
    },
)

EVAL_SCORES = TableSchema(
    name="eval_scores",
    version=1,
    doc="Evaluation scores: one row per finished grid cell (a rerun skips the cells listed here).",
    schema=pa.schema(
        [
            *_CELL,
            pa.field("samples", pa.int64(), nullable=False),
            pa.field("correct", pa.int64(), nullable=False),
            pa.field("wrong", pa.int64(), nullable=False),
            pa.field("invalid", pa.int64(), nullable=False),
            pa.field("accuracy", pa.float64(), nullable=False),
            pa.field("accuracy_m1", pa.float64(), nullable=False),
            pa.field("mean_thinking_tokens", pa.float64(), nullable=False),
            pa.field("ran_out", pa.int64(), nullable=False),
            pa.field("mean_forced", pa.float64(), nullable=False),
            pa.field("generated_tokens", pa.int64(), nullable=False),
            pa.field("wall_s", pa.float64(), nullable=False),
            pa.field("prefix_reuse", pa.bool_(), nullable=False),
            pa.field("settings_hash", pa.string(), nullable=False),
            pa.field("finished_at", pa.string(), nullable=False),
        ]
    ),
    column_docs={
        **_CELL_DOCS,
        "samples": "questions scored",
        "correct": "strict matcher: correct answers",
        "wrong": "strict matcher: wrong answers",
        "invalid": "strict matcher: answers naming no option (counted, never guessed)",
        "accuracy": "correct / samples (invalid counts as not correct)",
        "accuracy_m1": "HuatuoGPT/m1 matcher: max(accuracy of first answers, accuracy of last answers)",
        "mean_thinking_tokens": "mean thinking tokens per question",
        "ran_out": "questions whose budget ran out",
        "mean_forced": "mean forced 'Wait's per question",
        "generated_tokens": "tokens generated for this cell",
        "wall_s": "wall time of the task group that produced the cell, shared equally among its cells",
        "prefix_reuse": "the cell's thinking was derived from a larger budget",
        "settings_hash": "hash of what decides the cell's answers (model, benchmark file, markers, sampling); a rerun "
        "recomputes a cell whose hash changed",
        "finished_at": "UTC time the cell was committed",
    },
)
