"""Dedup: questions -> ``dedup`` (a decision per pool row) and ``rejects/dedup`` (the dropped rows, with why).

1. One streamed pass over the pool (pool order: the questions table is written sources in config order, rows in
   file order; a row's position is its ``pool_index``): per batch, the compared text (``dedup.text``), a 128-bit
   key of it for exact copies, and its MinHash signature cut into LSH band hashes (:mod:`curation.rules.minhash`).
   Only keys and band hashes stay in memory (16 + 8 x bands bytes a row), never the texts or signatures.
2. Exact copies collapse onto the first row with their key; rows sharing a band hash among the remaining
   representatives are candidate pairs, each produced once. With m1's ``fuzz.ratio`` measure, a pair whose
   length difference or character-histogram distance already rules the cutoff out is dropped as it is paired
   (an exact bound, :func:`curation.rules.minhash.candidate_pairs`): on templated pools that is >99% of them.
3. A second pass fetches the texts of rows in candidate pairs only, and verifies every pair: exact Jaccard of
   the shingle sets, or rapidfuzz ``fuzz.ratio`` (m1's measure, 0-100) on the text.
4. The rule (:mod:`curation.rules.dedup`: m1's ``earlier`` or ``cluster``) decides; a third pass writes the
   decisions and the rejects.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.config import CurationConfig, DedupOptions, MinHashOptions
from curation.distributed.dedup import dedup_rows, rejects_rows, run_dedup
from curation.pipeline import Resources, Stage, StageContext, StageResult
from curation.rules import minhash as mh
from curation.rules.dedup import EXACT, NEAR, decide, exact_representatives
from curation.rules.similarity import comparison_texts, verify_pairs

STAGE = "dedup"
# How the work is spread, never what it decides: left out of the stage's input hash.
EXECUTION_ONLY = {"threads", "batch_rows", "executor", "ray_min_rows", "partition_records"}
RULE_NAMES = {EXACT: "exact"}


def scan(dataset: Any, columns: list[str] | None, batch_rows: int) -> Any:
    """Batches of ``dataset`` in order, reading ahead one batch only: Arrow's default read-ahead (16 batches,
    4 files) keeps many batches of a large pool in memory at once, for no gain in a pass that waits on compute."""
    return dataset.to_batches(columns=columns, batch_size=batch_rows, batch_readahead=1, fragment_readahead=1)


def hasher_for(opts: MinHashOptions) -> mh.MinHasher:
    return mh.MinHasher(opts.shingle, opts.k, opts.num_perm, opts.seed)


class DedupStage(Stage):
    """questions -> dedup (every row's decision) + rejects/dedup (exact_duplicate, near_duplicate)."""

    name: ClassVar[str] = STAGE
    inputs: ClassVar[tuple[str, ...]] = ("questions",)
    outputs: ClassVar[tuple[str, ...]] = ("dedup", "rejects/dedup")
    # Per Ray task of the Ray path (curation/distributed/dedup.py): one block's signatures (~1 KB a row), or
    # one shuffle partition (partition_records x ~24 bytes, sorted). The driver path runs in the driver.
    resources: ClassVar[Resources] = Resources(cpus=1.0, memory_gib=1.0)

    def enabled(self, cfg: CurationConfig) -> bool:
        return "dedup" in cfg.model_fields_set

    def hash_inputs(self, cfg: CurationConfig) -> dict[str, Any]:
        return {"dedup": cfg.dedup.model_dump(mode="json", exclude=EXECUTION_ONLY)}

    def run(self, ctx: StageContext) -> StageResult:
        cfg, store = ctx.config, ctx.store
        opts = cfg.dedup
        if use_ray(opts, store.tables()["questions"]["rows"]):
            version, rej, details, n, kept_n, by_reason = run_dedup(
                store, opts, ctx.resources or self.resources, log=print
            )
            return StageResult(
                outputs=[version, rej],
                rows_in=n,
                rows_out=kept_n,
                rows_rejected=n - kept_n,
                rejected_by_reason=by_reason,
                details={"dedup": details},
            )
        mh.set_threads(opts.threads or cfg.ray.num_cpus)
        ids = store.read_table("questions", columns=["source", "qid"])
        decisions, details = dedup_decisions(store.dataset("questions"), opts, log=print)
        n = ids.num_rows
        kept = decisions.kept
        dedup_table = decisions_table(ids, decisions, opts.measure)
        version = store.write_table("dedup", dedup_table)

        dropped = np.flatnonzero(~kept)
        reasons = Counter()

        def rejects() -> Any:
            offset = 0
            for batch in scan(
                store.dataset("questions"), ["source", "source_id", "metadata"], opts.batch_rows
            ):
                lo, hi = offset, offset + batch.num_rows
                offset = hi
                local = dropped[(dropped >= lo) & (dropped < hi)]
                if not len(local):
                    continue
                part = pa.Table.from_batches([batch]).take(pa.array(local - lo))
                table = rejects_rows(dedup_table.take(pa.array(local)), part)
                reasons.update(table.column("reason").to_pylist())
                yield table

        rej = store.write_table("rejects/dedup", rejects())
        return StageResult(
            outputs=[version, rej],
            rows_in=n,
            rows_out=int(kept.sum()),
            rows_rejected=len(dropped),
            rejected_by_reason=dict(sorted(reasons.items())),
            details={"dedup": details},
        )


def use_ray(opts: DedupOptions, rows: int) -> bool:
    """Whether the pool dedups as Ray work (``executor``; auto: from ``ray_min_rows`` rows on)."""
    return opts.executor == "ray" or (opts.executor == "auto" and rows >= opts.ray_min_rows)


def dedup_decisions(dataset: Any, opts: DedupOptions, *, log: Any = None) -> tuple[Any, dict[str, Any]]:
    """Decisions for every row of ``dataset`` (questions columns, in pool order), streamed in batches."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    hasher = hasher_for(opts.minhash)
    n_bands, n_rows = opts.minhash.banding()
    curve = mh.detection_curve(n_bands, n_rows)
    if log and opts.near:
        log(
            f"[{STAGE}] MinHash {opts.minhash.shingle} {opts.minhash.k}-shingles, {opts.minhash.num_perm} "
            f"permutations, {n_bands} bands x {n_rows} rows, seed {opts.minhash.seed}; P(candidate): {curve}"
        )
    columns = ["question", "options"] if opts.text == "question_options" else [opts.text]
    # fuzz.ratio verifies: keep each text's length and character histogram, which rule out most candidate
    # pairs exactly while they are paired (templated pools share bands across millions of dissimilar pairs).
    by_ratio = opts.near and opts.measure == "ratio"
    keys, band_parts, counts, profiles = [], [], [], []
    for batch in scan(dataset, columns, opts.batch_rows):
        texts = comparison_texts(batch, opts.text)
        if opts.exact:
            keys.append(mh.text_keys(texts, normalize=opts.exact_normalize))
        if opts.near:
            sig, c = hasher.signatures(texts)
            band_parts.append(mh.band_hashes(sig, n_bands, n_rows))
            counts.append(c)
            del sig
        if by_ratio:
            profiles.append(mh.char_profiles(texts))
    n = sum(len(c) for c in counts) if opts.near else sum(len(k) for k in keys)
    if not opts.near and not opts.exact:
        n = dataset.count_rows()
    timings["signatures_s"] = round(time.perf_counter() - t0, 3)
    rep = exact_representatives(np.concatenate(keys)) if opts.exact and n else np.arange(n, dtype=np.int64)
    pairs = np.empty((0, 2), dtype=np.int64)
    sims = np.empty(0, dtype=np.float64)
    capped = n_candidates = 0
    if opts.near and n:
        t1 = time.perf_counter()
        bands = np.concatenate(band_parts)
        del band_parts
        valid = (rep == np.arange(n)) & (np.concatenate(counts) > 0)
        cand, capped = mh.candidate_pairs(
            bands,
            valid=valid,
            max_bucket=opts.minhash.max_bucket,
            ratio_cutoff=opts.threshold if by_ratio else None,
            profiles=mh.CharProfiles.concat(profiles) if by_ratio else None,
        )
        del bands, profiles
        n_candidates = len(cand)
        timings["candidates_s"] = round(time.perf_counter() - t1, 3)
        t2 = time.perf_counter()
        involved = np.unique(cand.ravel())
        texts = _take_texts(dataset, columns, opts.text, involved, opts.batch_rows)
        left = np.searchsorted(involved, cand[:, 0])
        right = np.searchsorted(involved, cand[:, 1])
        s = verify_pairs(
            texts,
            left,
            right,
            measure=opts.measure,
            hasher=hasher,
            score_cutoff=opts.threshold if opts.measure == "ratio" else None,
        )
        ok = s >= opts.threshold
        pairs, sims = cand[ok], s[ok]
        timings["verify_s"] = round(time.perf_counter() - t2, 3)
    decisions = decide(
        n, rep, pairs, sims, rule=opts.rule, exact_similarity=100.0 if opts.measure == "ratio" else 1.0
    )
    details = {
        "rows": n,
        "exact_duplicates": int((decisions.rule == EXACT).sum()),
        "near_duplicates": int((decisions.rule == NEAR).sum()),
        "candidate_pairs": int(n_candidates),
        "verified_pairs": len(pairs),
        "oversized_buckets": int(capped),
        "bands": n_bands,
        "rows_per_band": n_rows,
        "detection_curve": curve,
        "executor": "driver",
        "seconds": {**timings, "total_s": round(time.perf_counter() - t0, 3)},
    }
    if log:
        log(
            f"[{STAGE}] {n:,} rows: {details['exact_duplicates']:,} exact copies, {n_candidates:,} candidate "
            f"pairs, {len(pairs):,} verified, {details['near_duplicates']:,} near duplicates dropped"
        )
        if capped:  # a bound on matches is what m1's dedup got wrong: never apply one silently
            log(
                f"[{STAGE}] WARNING: {capped:,} LSH bucket(s) held more than dedup.minhash.max_bucket="
                f"{opts.minhash.max_bucket:,} rows; their members were paired only with each bucket's first "
                f"{opts.minhash.max_bucket:,} rows, so some near duplicates may be missed: raise max_bucket, or "
                "use more rows per band"
            )
    return decisions, details


def _take_texts(dataset: Any, columns: list[str], which: str, rows: np.ndarray, batch_rows: int) -> pa.Array:
    """The comparison texts of ``rows`` (sorted positions), streamed."""
    parts: list[pa.Array] = []
    offset = 0
    for batch in scan(dataset, columns, batch_rows):
        lo, hi = offset, offset + batch.num_rows
        offset = hi
        a, b = np.searchsorted(rows, [lo, hi])
        if a == b:
            continue
        part = pa.Table.from_batches([batch]).take(pa.array(rows[a:b] - lo))
        parts.append(comparison_texts(part, which))
    return pa.concat_arrays(parts) if parts else pa.array([], pa.string())


def decisions_table(ids: pa.Table, d: Any, measure: str) -> pa.Table:
    """The dedup table from the pool's (source, qid) columns and the decisions."""
    n = ids.num_rows
    has = d.duplicate_of >= 0
    mask = pa.array(~has)
    source = ids.column("source").combine_chunks() if n else pa.array([], pa.string())
    qid = ids.column("qid").combine_chunks() if n else pa.array([], pa.string())
    safe = pa.array(np.where(has, d.duplicate_of, 0))
    none = pa.scalar(None, pa.string())
    dup_source = pc.if_else(mask, none, source.take(safe)) if n else pa.array([], pa.string())
    dup_qid = pc.if_else(mask, none, qid.take(safe)) if n else pa.array([], pa.string())
    return dedup_rows(0, pa.table({"source": source, "qid": qid}), d, dup_source, dup_qid, measure)
