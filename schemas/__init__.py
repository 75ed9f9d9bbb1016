"""Canonical table schemas: one versioned Arrow schema per table, every column documented.

Every writer in the project goes through :func:`conform`, so a table on disk always has exactly the
columns, types and nullability declared here. Later issues fill in the reserved tables.
"""

from __future__ import annotations

import pyarrow as pa

from schemas.base import SchemaError, TableSchema
from schemas.curation_tables import CANDIDATES, CONTAMINATION, DEDUP, M1K, M23K, SAMPLES
from schemas.evaluation import EVAL_RESPONSES, EVAL_SCORES
from schemas.llm import REQUESTS, RESPONSES
from schemas.llm_stages import CURATED, DIFFICULTY, SCORES, TRACES
from schemas.mesh import LABELS, MESH_DESCRIPTORS, MESH_ENTRY_TERMS, MESH_QUALIFIERS
from schemas.questions import QUESTIONS, REJECTS
from schemas.sft import SFT_METRICS

REGISTRY: dict[str, TableSchema] = {
    t.name: t
    for t in (
        QUESTIONS,
        REJECTS,
        REQUESTS,
        RESPONSES,
        SCORES,
        DIFFICULTY,
        TRACES,
        CURATED,
        MESH_DESCRIPTORS,
        MESH_ENTRY_TERMS,
        MESH_QUALIFIERS,
        LABELS,
        DEDUP,
        CONTAMINATION,
        CANDIDATES,
        M23K,
        SAMPLES,
        M1K,
        EVAL_RESPONSES,
        EVAL_SCORES,
        SFT_METRICS,
    )
}

# Names reserved for the tables of later stages; documented here so nobody reuses them for something else.
RESERVED: dict[str, str] = {}


def get(name: str) -> TableSchema:
    """The schema of table ``name`` (a reject table of any stage, ``rejects/<stage>``, uses ``rejects``)."""
    base = name.split("/", 1)[0]
    if base in REGISTRY:
        return REGISTRY[base]
    if base in RESERVED:
        raise KeyError(f"table {name!r} is reserved for a later stage and has no schema yet")
    raise KeyError(f"unknown table {name!r}; known: {sorted(REGISTRY)}")


def conform(table: pa.Table, name: str) -> pa.Table:
    """Return ``table`` with exactly the columns of schema ``name``, in order, cast to the declared types.

    Raises :class:`SchemaError` naming the table and column when a column is missing, cannot be cast,
    or holds nulls where the schema forbids them. Extra columns are an error too: they would be lost silently.
    """
    ts = get(name)
    target = ts.schema
    missing = [f.name for f in target if f.name not in table.column_names]
    extra = [c for c in table.column_names if target.get_field_index(c) < 0]
    if missing or extra:
        raise SchemaError(f"table {name!r} ({ts.tag}): missing columns {missing}, unexpected columns {extra}")
    columns = []
    for f in target:
        col = table.column(f.name)
        if not col.type.equals(f.type):
            try:
                col = col.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise SchemaError(
                    f"table {name!r} ({ts.tag}): column {f.name!r} has type {col.type}, "
                    f"cannot cast to {f.type}: {exc}"
                ) from exc
        if not f.nullable and col.null_count:
            raise SchemaError(
                f"table {name!r} ({ts.tag}): column {f.name!r} is NOT NULL but has {col.null_count} nulls"
            )
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=target)


__all__ = ["REGISTRY", "RESERVED", "SchemaError", "TableSchema", "conform", "get"]
