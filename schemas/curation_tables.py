"""Tables of dedup, decontamination and sampling: dedup, contamination, candidates, m23k, samples, m1k."""

from __future__ import annotations

import pyarrow as pa

from schemas.base import TableSchema
from schemas.questions import QUESTIONS

POOL_INDEX_DOC = "the row's position in pool order (sources in config order, rows in file order), from 0"

DEDUP = TableSchema(
    name="dedup",
    version=1,
    doc="One row per pool question: kept or dropped by dedup, and for a dropped row the row it duplicates.",
    schema=pa.schema(
        [
            pa.field("pool_index", pa.int64(), nullable=False),
            pa.field("source", pa.string(), nullable=False),
            pa.field("qid", pa.string(), nullable=False),
            pa.field("kept", pa.bool_(), nullable=False),
            pa.field("rule", pa.string(), nullable=True),
            pa.field("duplicate_of", pa.int64(), nullable=True),
            pa.field("duplicate_of_source", pa.string(), nullable=True),
            pa.field("duplicate_of_qid", pa.string(), nullable=True),
            pa.field("similarity", pa.float64(), nullable=True),
            pa.field("cluster", pa.int64(), nullable=False),
        ]
    ),
    column_docs={
        "pool_index": POOL_INDEX_DOC,
        "source": "the question's source",
        "qid": "the question's id",
        "kept": "true: the row goes on to decontamination",
        "rule": "why it was dropped: exact (same normalised text), near_jaccard or near_ratio; null when kept",
        "duplicate_of": "pool_index of the earlier row it duplicates (the lowest such row); null when kept",
        "duplicate_of_source": "source of that row",
        "duplicate_of_qid": "qid of that row",
        "similarity": "similarity to that row on the measure's scale: Jaccard (0-1; exact copies 1.0) or rapidfuzz ratio "
        "(0-100; exact copies 100)",
        "cluster": "pool_index of the cluster's kept representative (cluster rule) or of the row itself / the "
        "row it duplicates (m1's earlier-row rule, which does not cluster)",
    },
)

CONTAMINATION = TableSchema(
    name="contamination",
    version=1,
    doc="Pool rows that overlap an evaluation set: one row per (pool row, eval set), the strongest match. "
    "Stored as contamination (the pool pass) and contamination/m23k (the second pass, on curated rows).",
    schema=pa.schema(
        [
            pa.field("pool_index", pa.int64(), nullable=True),
            pa.field("source", pa.string(), nullable=False),
            pa.field("qid", pa.string(), nullable=False),
            pa.field("eval_set", pa.string(), nullable=False),
            pa.field("eval_ref", pa.string(), nullable=False),
            pa.field("method", pa.string(), nullable=False),
            pa.field("similarity", pa.float64(), nullable=False),
        ]
    ),
    column_docs={
        "pool_index": POOL_INDEX_DOC,
        "source": "the pool row's source",
        "qid": "the pool row's id",
        "eval_set": "the evaluation set's name from the config",
        "eval_ref": "the matched evaluation row's source_id",
        "method": "ngram<n>_question, ngram<n>_question_options, minhash_question, minhash_question_options, "
        "ratio_question or ratio_prompt (question_options: question plus its sorted option texts)",
        "similarity": "1.0 for an n-gram hit, Jaccard (0-1) for minhash, rapidfuzz ratio (0-100) for ratio",
    },
)

CANDIDATES = TableSchema(
    name="candidates",
    version=1,
    doc="The questions that survive dedup and decontamination (all questions columns, plus pool_index).",
    schema=QUESTIONS.schema.append(pa.field("pool_index", pa.int64(), nullable=False)),
    column_docs={**QUESTIONS.column_docs, "pool_index": POOL_INDEX_DOC},
)

# m1's released m23K/m1K record fields, in its order.
RELEASED = [
    pa.field("answer_idx", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("metadata", pa.string(), nullable=False),
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("answer_letter", pa.string(), nullable=False),
    pa.field("answer_string", pa.string(), nullable=False),
    pa.field("reasoning", pa.string(), nullable=False),
    pa.field("distilled_answer_string", pa.string(), nullable=False),
    pa.field("text", pa.string(), nullable=False),
]
RELEASED_DOCS = {
    "answer_idx": "label of the correct option",
    "source": "the question's source",
    "metadata": "the raw source row as JSON",
    "prompt": "the question as m1 renders it (question, then 'X. text' option lines)",
    "answer_letter": "label of the correct option",
    "answer_string": "text of the correct option",
    "reasoning": "the teacher's reasoning",
    "distilled_answer_string": "the teacher's final answer text (validated correct)",
    "text": "the SFT example in m1's format",
}

M23K = TableSchema(
    name="m23k",
    version=1,
    doc="Every validated, decontaminated question in m1's released m23K schema, in pool order.",
    schema=pa.schema(
        [
            *RELEASED,
            pa.field("qid", pa.string(), nullable=False),
            pa.field("pool_index", pa.int64(), nullable=False),
        ]
    ),
    column_docs={**RELEASED_DOCS, "qid": "the question's id", "pool_index": POOL_INDEX_DOC},
)

SAMPLES = TableSchema(
    name="samples",
    version=1,
    doc="The sampler's draws, in selection order: enough to re-run and check the sampler by hand.",
    schema=pa.schema(
        [
            pa.field("sample_rank", pa.int64(), nullable=False),
            pa.field("pool_index", pa.int64(), nullable=False),
            pa.field("source", pa.string(), nullable=False),
            pa.field("qid", pa.string(), nullable=False),
            pa.field("domain_code", pa.string(), nullable=False),
            pa.field("domain_name", pa.string(), nullable=False),
            pa.field("method", pa.string(), nullable=False),
            pa.field("seed", pa.int64(), nullable=False),
            pa.field("reasoning_words", pa.int64(), nullable=False),
        ]
    ),
    column_docs={
        "sample_rank": "the order of selection, from 0",
        "pool_index": POOL_INDEX_DOC,
        "source": "the question's source",
        "qid": "the question's id",
        "domain_code": "MeSH qualifier code '00'..'75' (from the labels table)",
        "domain_name": "MeSH qualifier name",
        "method": "m1 (domain, then source, uniform), s1 (domain uniform, then 2^-rank by reasoning length) "
        "or quota (fixed per-domain counts)",
        "seed": "the generator seed (numpy default_rng)",
        "reasoning_words": "whitespace-separated words in the reasoning (s1's length measure here)",
    },
)

M1K = TableSchema(
    name="m1k",
    version=1,
    doc="The diversity sample in m1's released m1K schema (m23K fields plus domain), in selection order.",
    schema=pa.schema(
        [
            *RELEASED,
            pa.field("domain_code", pa.string(), nullable=False),
            pa.field("domain_name", pa.string(), nullable=False),
            pa.field("qid", pa.string(), nullable=False),
            pa.field("pool_index", pa.int64(), nullable=False),
            pa.field("sample_rank", pa.int64(), nullable=False),
        ]
    ),
    column_docs={
        **RELEASED_DOCS,
        "domain_code": "MeSH qualifier code '00'..'75'",
        "domain_name": "MeSH qualifier name",
        "qid": "the question's id",
        "pool_index": POOL_INDEX_DOC,
        "sample_rank": "the order of selection, from 0",
    },
)
