"""Sample: m23k + labels -> ``samples`` (the draws, in order) and ``m1k`` (m1's released m1K records).

The sampler (:mod:`curation.rules.sampler`, ``sample.method``) runs in the driver over m23k in pool order, each
row with its domain from the classify stage's ``labels`` table, so the selection depends only on the table and
the seed.
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


def draw(m23k: pa.Table, labels: pa.Table, opts: Any) -> tuple[pa.Table, pa.Table, dict[str, Any]]:
    """(samples, m1k, details) from m23k (any order: sorted by pool_index here) and labels."""
    table = m23k.sort_by("pool_index") if m23k.num_rows else m23k
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
    words = reasoning_words(table.column("reasoning").to_pylist())
    details: dict[str, Any] = {"method": opts.method, "seed": opts.seed, "available": table.num_rows}
    if opts.method == "m1":
        picked = m1_sample(domains, sources, opts.size, opts.seed)
    elif opts.method == "s1":
        picked = s1_sample(domains, words, opts.size, opts.seed)
    else:
        picked, short = quota_sample(domains, opts.quotas, opts.seed)
        details["quota_shortfall"] = short
    if len(picked) < opts.size and opts.method != "quota":
        details["ran_out"] = f"only {len(picked)} rows available for size {opts.size}"
    idx = pa.array(np.asarray(picked, dtype=np.int64))
    rank = pa.array(np.arange(len(picked), dtype=np.int64))
    chosen = table.take(idx)
    dom = pa.array(domains, pa.string()).take(idx) if picked else pa.array([], pa.string())
    names = joined["domain_name"].to_arrow().cast(pa.string()).take(idx)
    samples = schemas.conform(
        pa.table(
            {
                "sample_rank": rank,
                "pool_index": chosen.column("pool_index"),
                "source": chosen.column("source"),
                "qid": chosen.column("qid"),
                "domain_code": dom,
                "domain_name": names,
                "method": pa.array([opts.method] * len(picked), pa.string()),
                "seed": pa.array([opts.seed] * len(picked), pa.int64()),
                "reasoning_words": pa.array(words, pa.int64()).take(idx),
            }
        ),
        "samples",
    )
    m1k = chosen.append_column("domain_code", dom).append_column("domain_name", names)
    m1k = m1k.append_column("sample_rank", rank)
    m1k = schemas.conform(m1k.select(schemas.get("m1k").schema.names), "m1k")
    return samples, m1k, details


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
        m23k = store.read_table("m23k")
        samples, m1k, details = draw(m23k, store.read_table("labels"), ctx.config.sample)
        print(f"[{STAGE}] " + mix(m1k))
        s = store.write_table("samples", samples)
        m = store.write_table("m1k", m1k)
        # The sample is a selection, not a filter: every m23k row stays in m23k; rows_out counts the selected.
        return StageResult(
            outputs=[s, m],
            rows_in=m23k.num_rows,
            rows_out=m.rows,
            rows_rejected=m23k.num_rows - m.rows,
            rejected_by_reason={"not_sampled": m23k.num_rows - m.rows} if m23k.num_rows > m.rows else {},
            details={"sample": details},
        )
