"""Sample: m23k + labels -> ``samples`` (the draws, in order) and ``m1k`` (m1's released m1K records).

The sampler (:mod:`curation.rules.sampler`, ``sample.method``) runs in the driver over m23k in pool order, each
row with its domain from the classify stage's ``labels`` table, so the selection depends only on the table and
the seed. The driver reads only what the samplers need (pool_index, source, qid, and the reasoning's word count,
counted batch by batch: :func:`narrow_m23k`), then reads the chosen rows alone (:func:`take_m1k`): a 10M-row
m23k costs a few narrow columns, not its reasoning texts.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import polars as pl
import pyarrow as pa

import schemas
from curation.config import CurationConfig
from curation.errors import UserError
from curation.pipeline import Stage, StageContext, StageResult
from curation.rules.sampler import m1_sample, quota_sample, reasoning_words, s1_sample

STAGE = "sample"


class SampleError(UserError):
    """The sample stage's inputs are missing or inconsistent."""


NARROW = ["pool_index", "source", "qid"]  # what the samplers need of m23k, with the reasoning's word count


def narrow_m23k(dataset: Any, batch_rows: int = 65_536) -> pa.Table:
    """pool_index, source, qid and ``reasoning_words`` of every m23k row, with ``_pos`` (the row's position in
    ``dataset``); the reasoning column is read batch by batch and only its word count kept."""
    parts = []
    pos = 0
    for batch in dataset.to_batches(
        columns=[*NARROW, "reasoning"], batch_size=batch_rows, batch_readahead=1, fragment_readahead=1
    ):
        n = batch.num_rows
        parts.append(
            pa.table(
                {
                    **{c: batch.column(c) for c in NARROW},
                    "reasoning_words": pa.array(
                        reasoning_words(batch.column("reasoning").to_pylist()), pa.int64()
                    ),
                    "_pos": pa.array(np.arange(pos, pos + n, dtype=np.int64)),
                }
            )
        )
        pos += n
    if not parts:
        schema = dataset.schema
        return pa.table(
            {
                **{c: pa.array([], schema.field(c).type) for c in NARROW},
                "reasoning_words": pa.array([], pa.int64()),
                "_pos": pa.array([], pa.int64()),
            }
        )
    return pa.concat_tables(parts)


def draw(narrow: pa.Table, labels: pa.Table, opts: Any) -> tuple[np.ndarray, pa.Table, dict[str, Any]]:
    """(positions of the chosen rows in m23k's dataset, in selection order; samples; details) from
    :func:`narrow_m23k`'s table (any order: sorted by pool_index here, stably) and labels."""
    table = narrow.sort_by("pool_index") if narrow.num_rows else narrow
    lab = pl.from_arrow(labels.select(["source", "qid", "domain_code", "domain_name"]))
    base = pl.from_arrow(table.select(["source", "qid"]))
    assert isinstance(lab, pl.DataFrame) and isinstance(base, pl.DataFrame)
    dup = lab.group_by(["source", "qid"]).len().filter(pl.col("len") > 1)
    if dup.height:
        raise SampleError(
            f"{STAGE}: labels has {dup.height} questions labelled more than once, e.g. "
            f"{dup['source'][0]}:{dup['qid'][0]}; expected one row per (source, qid)"
        )
    joined = base.with_row_index("_row").join(lab, on=["source", "qid"], how="left").sort("_row")
    missing = joined.filter(pl.col("domain_code").is_null())
    if missing.height:
        raise SampleError(
            f"{STAGE}: {missing.height} m23k rows have no label, e.g. {missing['source'][0]}:{missing['qid'][0]}; "
            "the labels table must cover every m23k question (rerun classify)"
        )
    domains = joined["domain_code"].to_list()
    sources = joined["source"].to_list()
    words = table.column("reasoning_words")
    details: dict[str, Any] = {"method": opts.method, "seed": opts.seed, "available": table.num_rows}
    if opts.method == "m1":
        picked = m1_sample(domains, sources, opts.size, opts.seed)
    elif opts.method == "s1":
        picked = s1_sample(domains, words.to_numpy(), opts.size, opts.seed)
    else:
        picked, short = quota_sample(domains, opts.quotas, opts.seed)
        details["quota_shortfall"] = short
    if len(picked) < opts.size and opts.method != "quota":
        details["ran_out"] = f"only {len(picked)} rows available for size {opts.size}"
    idx = pa.array(np.asarray(picked, dtype=np.int64))
    chosen = table.take(idx)
    samples = schemas.conform(
        pa.table(
            {
                "sample_rank": pa.array(np.arange(len(picked), dtype=np.int64)),
                "pool_index": chosen.column("pool_index"),
                "source": chosen.column("source"),
                "qid": chosen.column("qid"),
                "domain_code": pa.array(domains, pa.string()).take(idx)
                if picked
                else pa.array([], pa.string()),
                "domain_name": joined["domain_name"].to_arrow().cast(pa.string()).take(idx),
                "method": pa.array([opts.method] * len(picked), pa.string()),
                "seed": pa.array([opts.seed] * len(picked), pa.int64()),
                "reasoning_words": chosen.column("reasoning_words"),
            }
        ),
        "samples",
    )
    return chosen.column("_pos").to_numpy(), samples, details


def take_m1k(dataset: Any, positions: np.ndarray, samples: pa.Table) -> pa.Table:
    """The chosen m23k rows (``positions`` in ``dataset``, in selection order), read alone, as m1k records."""
    if not len(positions):
        chosen = dataset.schema.empty_table()
    else:
        order = np.unique(positions)  # sorted, for one pass over the files
        rows = dataset.take(pa.array(order))
        chosen = rows.take(pa.array(np.searchsorted(order, positions)))
    m1k = chosen.append_column("domain_code", samples.column("domain_code"))
    m1k = m1k.append_column("domain_name", samples.column("domain_name"))
    m1k = m1k.append_column("sample_rank", samples.column("sample_rank"))
    return schemas.conform(m1k.select(schemas.get("m1k").schema.names), "m1k")


def mix(m1k: pa.Table) -> str:
    """The domain and source mix of a sample, as printed after the stage."""
    df = pl.from_arrow(m1k.select(["source", "domain_code", "domain_name"]))
    assert isinstance(df, pl.DataFrame)
    lines = [
        f"sample of {df.height}: by source "
        + ", ".join(
            f"{r['source']} {r['len']}"
            for r in df.group_by("source")
            .len()
            .sort(["len", "source"], descending=[True, False])
            .iter_rows(named=True)
        )
    ]
    top = (
        df.group_by(["domain_code", "domain_name"])
        .len()
        .sort(["len", "domain_code"], descending=[True, False])
    )
    lines.append(
        f"  {top.height} domains: "
        + ", ".join(
            f"{r['domain_code']} {r['domain_name']} {r['len']}" for r in top.head(12).iter_rows(named=True)
        )
        + (" ..." if top.height > 12 else "")
    )
    return "\n".join(lines)


class SampleStage(Stage):
    """m23k + labels -> samples, m1k."""

    name: ClassVar[str] = STAGE
    inputs: ClassVar[tuple[str, ...]] = ("m23k", "labels")
    outputs: ClassVar[tuple[str, ...]] = ("samples", "m1k")

    def enabled(self, cfg: CurationConfig) -> bool:
        return "sample" in cfg.model_fields_set

    def hash_inputs(self, cfg: CurationConfig) -> dict[str, Any]:
        return {"sample": cfg.sample.model_dump(mode="json")}

    def run(self, ctx: StageContext) -> StageResult:
        store = ctx.store
        for table, writer in (
            ("m23k", "the m23k stage (needs teacher/curate)"),
            ("labels", "the classify stage"),
        ):
            if not store.has_table(table):
                raise SampleError(
                    f"{STAGE}: the run has no `{table}` table, written by {writer}; configure that stage "
                    f"(tables in this run: {sorted(store.tables())})"
                )
        dataset = store.dataset("m23k")
        narrow = narrow_m23k(dataset)
        positions, samples, details = draw(narrow, store.read_table("labels"), ctx.config.sample)
        m1k = take_m1k(dataset, positions, samples)
        n_in = narrow.num_rows
        del narrow
        print(f"[{STAGE}] " + mix(m1k))
        s = store.write_table("samples", samples)
        m = store.write_table("m1k", m1k)
        # The sample is a selection, not a filter: every m23k row stays in m23k; rows_out counts the selected.
        return StageResult(
            outputs=[s, m],
            rows_in=n_in,
            rows_out=m.rows,
            rows_rejected=n_in - m.rows,
            rejected_by_reason={"not_sampled": n_in - m.rows} if n_in > m.rows else {},
            details={"sample": details},
        )
