"""Dedup as Ray work: the same decisions as :func:`curation.stages.dedup.dedup_decisions`, with no per-row state
on the driver, across every node of the cluster.

The pool is cut into blocks (row ranges of the questions table's row groups, in pool order). Rounds of Ray
tasks pass object references along; the driver holds references, then the sparse results (exact copies and
verified pairs, a few bytes per duplicate) and never a per-row array:

1. **signatures** (one task per block): the compared texts' exact keys and MinHash band hashes (the numba kernels
   of :mod:`curation.rules.minhash`). Keys go to ``exact`` partitions by key; each (band, band hash, row) record
   goes to a ``buckets`` partition by band hash, so a bucket lies whole in one partition.
2. **exact** (one task per key partition): each key's first row is its representative; the copies come back.
3. **buckets** (one task per hash partition): copies and rows without shingles are left out (they never pair,
   as in the single-process path); inside each (band, hash) bucket, in pool order, each row pairs with the rows
   before it, or the bucket's first ``max_bucket`` (:func:`curation.rules.minhash.bucket_pairs`), with the
   length bound of ``fuzz.ratio``. Pairs go to ``verify`` partitions by their earlier row.
4. **pairs** (one task per verify partition): each pair once, and the rows they involve.
5. **texts** (one task per block): the block's texts of the rows each verify partition involves, only those.
6. **verify** (one task per verify partition): the character-histogram bound, then exact Jaccard or
   ``fuzz.ratio``, exactly :func:`curation.rules.similarity.verify_pairs`.
7. The rule (:func:`curation.rules.dedup.decide`) runs on the driver over the rows that are copies or in a
   verified pair only, renumbered in order (the rules only compare positions, so the decisions are the same).
8. **write** (one task per block): the block's rows of ``dedup`` and ``rejects/dedup``, as Parquet parts of the
   new table versions, after one round that looks up the (source, qid) of the rows duplicates point to.

A task lost with its worker is rerun by Ray (``max_retries``), its inputs rebuilt from lineage.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import schemas
from curation.config import DedupOptions
from curation.distributed.blocks import Block, pool_blocks, read_block
from curation.rules import minhash as mh
from curation.rules.dedup import EXACT, NEAR, Decisions, decide
from curation.rules.similarity import comparison_texts, verify_pairs
from curation.store.runstore import row_group_rows

STAGE = "dedup"
RETRIES = 3
# Test hook: a path; the first ``buckets`` task to find no file there creates it and kills its own worker
# process, so a test can check that the stage survives a worker lost in the middle of the shuffle.
KILL_ONCE_ENV = "M1_DEDUP_KILL_WORKER_ONCE"


def text_columns(opts: DedupOptions) -> list[str]:
    return ["question", "options"] if opts.text == "question_options" else [opts.text]


def _threads(cpus: float) -> None:
    mh.set_threads(max(1, math.ceil(cpus)))


def _split(parts: np.ndarray, n_parts: int, *columns: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    """``columns`` split by partition number ``parts`` (each output keeps the input order)."""
    order = np.argsort(parts, kind="stable")
    bounds = np.searchsorted(parts[order], np.arange(n_parts + 1))
    out = []
    for p in range(n_parts):
        idx = order[bounds[p] : bounds[p + 1]]
        out.append(tuple(np.ascontiguousarray(c[idx]) for c in columns))
    return out


# ---------------------------------------------------------------------------------------------- tasks


def signatures_task(
    fs: Any, block: Block, opts: DedupOptions, n_exact: int, n_buckets: int, cpus: float
) -> Any:
    """Round 1: per exact partition (keys, rows), per bucket partition (band hashes, keys, lengths)."""
    _threads(cpus)
    texts = comparison_texts(read_block(fs, block, text_columns(opts)), opts.text)
    rows = np.arange(block.start, block.start + block.rows, dtype=np.int64)
    out: list[Any] = []
    if opts.exact:
        keys = mh.text_keys(texts, normalize=opts.exact_normalize)
        out += _split((keys[:, 0] % np.uint64(n_exact)).astype(np.int64), n_exact, keys, rows)
    if opts.near:
        n_bands, n_rows = opts.minhash.banding()
        sig, counts = mh.MinHasher(
            opts.minhash.shingle, opts.minhash.k, opts.minhash.num_perm, opts.minhash.seed
        ).signatures(texts)
        bands = mh.band_hashes(sig, n_bands, n_rows)
        del sig
        has = counts > 0  # rows without shingles share the empty signature: they never pair
        r = rows[has]
        hashes = bands[has].T.ravel()  # band-major: band 0's records, then band 1's ...
        keys_b = (
            np.repeat(np.arange(n_bands, dtype=np.uint64), len(r)) << np.uint64(mh.BAND_SHIFT)
        ) | np.tile(r.astype(np.uint64), n_bands)
        if opts.measure == "ratio":
            lengths = pc.fill_null(pc.utf8_length(texts), 0).to_numpy(zero_copy_only=False).astype(np.int32)
            lens = np.tile(lengths[has], n_bands)
            out += _split((hashes % np.uint64(n_buckets)).astype(np.int64), n_buckets, hashes, keys_b, lens)
        else:  # only fuzz.ratio's length bound needs the lengths: 16 bytes a record instead of 20
            out += _split((hashes % np.uint64(n_buckets)).astype(np.int64), n_buckets, hashes, keys_b)
    return tuple(out) if len(out) > 1 else out[0]


def exact_task(*parts: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Round 2: int64 [c, 2] (copy, representative) for the keys of one partition, sorted by copy."""
    keys = np.concatenate([p[0] for p in parts]) if parts else np.empty((0, 2), np.uint64)
    rows = np.concatenate([p[1] for p in parts]) if parts else np.empty(0, np.int64)
    if not len(rows):
        return np.empty((0, 2), np.int64)
    order = np.lexsort((rows, keys[:, 1], keys[:, 0]))
    sk, sr = keys[order], rows[order]
    starts = np.ones(len(sr), dtype=bool)
    starts[1:] = np.any(sk[1:] != sk[:-1], axis=1)
    rep = sr[np.flatnonzero(starts)][np.cumsum(starts) - 1]
    copies = ~starts
    out = np.stack([sr[copies], rep[copies]], axis=1)
    return out[np.argsort(out[:, 0], kind="stable")]


def buckets_task(
    opts: DedupOptions,
    verify_bounds: np.ndarray,
    n_copy_parts: int,
    kill_marker: str | None,
    cpus: float,
    *refs: Any,
) -> Any:
    """Round 3: candidate pairs of one hash partition, split by verify partition of their earlier row; the
    last output is the number of buckets larger than ``max_bucket``."""
    if kill_marker and not os.path.exists(kill_marker):
        with open(kill_marker, "w") as f:
            f.write(str(os.getpid()))
        os._exit(137)
    _threads(cpus)
    copy_parts, records = refs[:n_copy_parts], refs[n_copy_parts:]
    copies = np.sort(np.concatenate([c[:, 0] for c in copy_parts])) if copy_parts else np.empty(0, np.int64)
    hashes = np.concatenate([r[0] for r in records])
    keys = np.concatenate([r[1] for r in records])
    ratio = opts.measure == "ratio"
    lengths = np.concatenate([r[2] for r in records]) if ratio else None
    if len(copies):
        rows = (keys & np.uint64((1 << mh.BAND_SHIFT) - 1)).astype(np.int64)
        pos = np.searchsorted(copies, rows)
        is_copy = (pos < len(copies)) & (copies[np.minimum(pos, len(copies) - 1)] == rows)
        keep = ~is_copy
        hashes, keys = hashes[keep], keys[keep]
        lengths = lengths[keep] if lengths is not None else None
    pairs, capped = mh.bucket_pairs(
        hashes,
        keys,
        lengths=lengths,
        max_bucket=opts.minhash.max_bucket,
        ratio_cutoff=opts.threshold if ratio else None,
    )
    n_verify = len(verify_bounds) - 1
    part = np.searchsorted(verify_bounds, pairs[:, 0], side="right") - 1
    out = [p[0] for p in _split(part, n_verify, pairs)]
    return (*out, capped)


def pairs_task(n_rows: int, *parts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Round 4: the unique pairs of one verify partition, and the rows they involve (sorted)."""
    pairs = np.concatenate(parts) if parts else np.empty((0, 2), np.int64)
    packed = np.unique(pairs[:, 0] * np.int64(max(n_rows, 1)) + pairs[:, 1])
    pairs = np.stack([packed // max(n_rows, 1), packed % max(n_rows, 1)], axis=1)
    return pairs, np.unique(pairs.ravel())


def texts_task(fs: Any, block: Block, opts: DedupOptions, *involved: np.ndarray) -> Any:
    """Round 5: per verify partition, the compared texts of the rows it involves that lie in this block."""
    lo, hi = block.start, block.start + block.rows
    wanted = [inv[np.searchsorted(inv, lo) : np.searchsorted(inv, hi)] for inv in involved]
    out: list[pa.Array] = [pa.array([], pa.string()) for _ in wanted]
    need = np.unique(np.concatenate(wanted)) if any(len(w) for w in wanted) else np.empty(0, np.int64)
    if len(need):
        table = read_block(fs, block, text_columns(opts)).take(pa.array(need - lo))
        texts = comparison_texts(table, opts.text)
        for v, w in enumerate(wanted):
            if len(w):
                out[v] = texts.take(pa.array(np.searchsorted(need, w)))
    return tuple(out) if len(out) > 1 else out[0]


def verify_task(
    opts: DedupOptions, cpus: float, pairs: np.ndarray, involved: np.ndarray, *texts: pa.Array
) -> Any:
    """Round 6: (verified pairs, their similarities, candidate pairs) of one verify partition."""
    _threads(cpus)
    chunks = [t for t in texts if len(t)]
    all_texts = pa.concat_arrays(chunks) if chunks else pa.array([], pa.string())
    left = np.searchsorted(involved, pairs[:, 0])
    right = np.searchsorted(involved, pairs[:, 1])
    if opts.measure == "ratio" and len(pairs):
        keep = mh.histogram_bound(mh.char_profiles(all_texts), left, right, opts.threshold)
        pairs, left, right = pairs[keep], left[keep], right[keep]
    hasher = mh.MinHasher(opts.minhash.shingle, opts.minhash.k, opts.minhash.num_perm, opts.minhash.seed)
    s = verify_pairs(
        all_texts,
        left,
        right,
        measure=opts.measure,
        hasher=hasher,
        score_cutoff=opts.threshold if opts.measure == "ratio" else None,
    )
    ok = s >= opts.threshold
    return pairs[ok], s[ok], len(pairs)


def targets_task(fs: Any, block: Block, targets: np.ndarray) -> pa.Table:
    """Round 8a: (source, qid) of the rows of this block that duplicates point to (``targets``, sorted)."""
    if not len(targets):
        return pa.table({"source": pa.array([], pa.string()), "qid": pa.array([], pa.string())})
    return read_block(fs, block, ["source", "qid"]).take(pa.array(targets - block.start))


def dedup_rows(
    start: int,
    ids: pa.Table,
    decided: Any,
    dup_source: pa.Array,
    dup_qid: pa.Array,
    measure: str,
) -> pa.Table:
    """Rows ``start ..`` of the ``dedup`` table: ``ids`` (source, qid) of the rows, ``decided`` their
    duplicate_of/similarity/rule/cluster arrays, ``dup_*`` the (source, qid) of each row's duplicate_of (null
    when kept)."""
    n = ids.num_rows
    has = decided.duplicate_of >= 0
    rule = np.array([None, "exact", f"near_{measure}"], dtype=object)[decided.rule]
    return schemas.conform(
        pa.table(
            {
                "pool_index": pa.array(np.arange(start, start + n, dtype=np.int64)),
                "source": ids.column("source"),
                "qid": ids.column("qid"),
                "kept": pa.array(~has),
                "rule": pa.array(rule, pa.string()),
                "duplicate_of": pa.array(decided.duplicate_of, mask=~has),
                "duplicate_of_source": dup_source,
                "duplicate_of_qid": dup_qid,
                "similarity": pa.array(decided.similarity, mask=~has),
                "cluster": pa.array(decided.cluster),
            }
        ),
        "dedup",
    )


def rejects_rows(rows: pa.Table, src: pa.Table) -> pa.Table:
    """``rejects/dedup`` rows for dropped ``dedup`` ``rows``, with ``src`` (source, source_id, metadata) of the
    same rows: by qid, as every stage after ingest, naming the row each duplicates."""
    reason = pc.if_else(pc.equal(rows.column("rule"), "exact"), "exact_duplicate", "near_duplicate")
    detail = [
        f"pool_index {i} ({ref}) duplicates pool_index {d} ({s}:{q}), {r} similarity {x:g}"
        for i, ref, d, s, q, r, x in zip(
            rows.column("pool_index").to_pylist(),
            src.column("source_id").to_pylist(),
            rows.column("duplicate_of").to_pylist(),
            rows.column("duplicate_of_source").to_pylist(),
            rows.column("duplicate_of_qid").to_pylist(),
            rows.column("rule").to_pylist(),
            rows.column("similarity").to_pylist(),
            strict=True,
        )
    ]
    return schemas.conform(
        pa.table(
            {
                "stage": pa.array([STAGE] * rows.num_rows, pa.string()),
                "source": src.column("source"),
                "source_ref": rows.column("qid"),
                "reason": reason,
                "detail": pa.array(detail, pa.string()),
                "raw": src.column("metadata"),
            }
        ),
        "rejects",
    )


def write_task(
    fs: Any,
    block: Block,
    part: int,
    dedup_dir: str,
    rejects_dir: str,
    measure: str,
    decided: dict[str, np.ndarray],
    target_ids: pa.Table,
) -> tuple[int, int, dict[str, int]]:
    """Round 8b: this block's rows of ``dedup`` (every row) and ``rejects/dedup`` (the dropped ones) as Parquet
    parts; returns (rows, kept, rejects by reason)."""
    ids = read_block(fs, block, ["source", "qid", "source_id", "metadata"])
    n = block.rows
    local = decided["rows"] - block.start
    rows = Decisions(
        np.full(n, -1, np.int64),
        np.full(n, np.nan),
        np.zeros(n, np.int8),
        np.arange(block.start, block.start + n, dtype=np.int64),
    )
    rows.duplicate_of[local] = decided["duplicate_of"]
    rows.similarity[local] = decided["similarity"]
    rows.rule[local] = decided["rule"]
    rows.cluster[local] = decided["cluster"]
    has = ~rows.kept
    dropped = np.flatnonzero(has)
    dup_source = np.full(n, None, dtype=object)
    dup_qid = np.full(n, None, dtype=object)
    dup_source[dropped] = target_ids.column("source").to_numpy(zero_copy_only=False)
    dup_qid[dropped] = target_ids.column("qid").to_numpy(zero_copy_only=False)
    table = dedup_rows(
        block.start, ids, rows, pa.array(dup_source, pa.string()), pa.array(dup_qid, pa.string()), measure
    )
    _write_part(
        fs, f"{dedup_dir}/part-{part:05d}.parquet", table, schemas.get("dedup").schema, row_group_rows
    )
    reasons: Counter[str] = Counter()
    if len(dropped):
        rejects = rejects_rows(table.take(pa.array(dropped)), ids.take(pa.array(dropped)))
        reasons.update(rejects.column("reason").to_pylist())
        _write_part(
            fs,
            f"{rejects_dir}/part-{part:05d}.parquet",
            rejects,
            schemas.get("rejects").schema,
            row_group_rows,
        )
    return n, int((~has).sum()), dict(reasons)


def _write_part(
    fs: Any, path: str, table: pa.Table, schema: pa.Schema, group_rows: Any = row_group_rows
) -> None:
    stream = fs.open_output_stream(path)
    try:
        with pq.ParquetWriter(stream, schema, compression="zstd") as writer:
            writer.write_table(table, row_group_size=group_rows(table))
    finally:
        stream.close()  # the writer does not own the stream: a failed upload must raise here


# ---------------------------------------------------------------------------------------------- driver


@dataclass
class SparseDecisions:
    """The decisions of the rows that are not simply kept alone: sorted ``rows`` and their fields."""

    rows: np.ndarray
    duplicate_of: np.ndarray
    similarity: np.ndarray
    rule: np.ndarray
    cluster: np.ndarray

    def slice(self, lo: int, hi: int) -> dict[str, np.ndarray]:
        a, b = np.searchsorted(self.rows, [lo, hi])
        return {k: getattr(self, k)[a:b] for k in ("rows", "duplicate_of", "similarity", "rule", "cluster")}


def sparse_decide(
    copies: np.ndarray, pairs: np.ndarray, sims: np.ndarray, opts: DedupOptions
) -> SparseDecisions:
    """:func:`curation.rules.dedup.decide` over the rows that are copies, representatives or in a verified
    pair, renumbered in pool order; every other row is kept, alone in its cluster."""
    universe = np.unique(np.concatenate([copies.ravel(), pairs.ravel()]))
    m = len(universe)
    rep = np.arange(m, dtype=np.int64)
    if len(copies):
        rep[np.searchsorted(universe, copies[:, 0])] = np.searchsorted(universe, copies[:, 1])
    local_pairs = np.searchsorted(universe, pairs) if len(pairs) else np.empty((0, 2), np.int64)
    d = decide(
        m, rep, local_pairs, sims, rule=opts.rule, exact_similarity=100.0 if opts.measure == "ratio" else 1.0
    )
    dup = np.where(d.duplicate_of >= 0, universe[np.maximum(d.duplicate_of, 0)], -1)
    cluster = universe[d.cluster] if m else np.empty(0, np.int64)
    return SparseDecisions(universe, dup, d.similarity, d.rule, cluster)


@dataclass
class Partitions:
    exact: int
    buckets: int
    verify: int


def partitions(n_rows: int, n_blocks: int, opts: DedupOptions) -> Partitions:
    """How many partitions each shuffle gets: ~``opts.partition_records`` records each."""
    per = opts.partition_records
    n_bands = opts.minhash.banding()[0] if opts.near else 0
    return Partitions(
        exact=max(1, math.ceil(n_rows / per)),
        buckets=max(1, math.ceil(n_rows * n_bands / per)),
        verify=max(1, min(n_blocks, math.ceil(n_rows * 8 / per))),
    )


def run_dedup(
    store: Any, opts: DedupOptions, resources: Any, *, log: Any = None
) -> tuple[Any, Any, dict[str, Any], int, int, dict[str, int]]:
    """Dedup of the run's questions table as Ray work; writes the new versions of ``dedup`` and
    ``rejects/dedup``. Returns (dedup version, rejects version, details, rows, kept, rejects by reason)."""
    import ray  # deferred: Ray's start-up cost, for the modules that import this one without running it

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    fs = store.fs
    files = sorted(store.dataset("questions").files)
    blocks = pool_blocks(fs, files, opts.batch_rows)
    n = sum(b.rows for b in blocks)
    parts = partitions(n, len(blocks), opts)
    n_bands, n_rows_band = opts.minhash.banding()
    curve = mh.detection_curve(n_bands, n_rows_band)
    options = {**resources.ray_options(), "max_retries": RETRIES}
    cpus = resources.cpus
    if log:
        log(
            f"[{STAGE}] as Ray work: {n:,} rows in {len(blocks)} blocks; partitions: {parts.exact} exact, "
            f"{parts.buckets} buckets, {parts.verify} verify; {resources}"
        )
        if opts.near:
            log(
                f"[{STAGE}] MinHash {opts.minhash.shingle} {opts.minhash.k}-shingles, {opts.minhash.num_perm} "
                f"permutations, {n_bands} bands x {n_rows_band} rows, seed {opts.minhash.seed}; P(candidate): {curve}"
            )
    remote = ray.remote(**options)
    sig_outputs = (parts.exact if opts.exact else 0) + (parts.buckets if opts.near else 0)
    block_refs: list[list[Any]] = []
    if sig_outputs:
        sig = remote(signatures_task).options(num_returns=sig_outputs, name="dedup.signatures")
        for b in blocks:
            out = sig.remote(fs, b, opts, parts.exact, parts.buckets, cpus)
            block_refs.append(out if sig_outputs > 1 else [out])
    copy_refs: list[Any] = []
    if opts.exact and n:
        ex = remote(exact_task).options(name="dedup.exact")
        copy_refs = [ex.remote(*[refs[e] for refs in block_refs]) for e in range(parts.exact)]
    verified = np.empty((0, 2), np.int64)
    sims = np.empty(0, np.float64)
    n_candidates = capped = 0
    if opts.near and n:
        base = parts.exact if opts.exact else 0
        bounds = np.array(
            [blocks[i * len(blocks) // parts.verify].start for i in range(parts.verify)] + [n], np.int64
        )
        kill = os.environ.get(KILL_ONCE_ENV) or None
        bk = remote(buckets_task).options(num_returns=parts.verify + 1, name="dedup.buckets")
        bucket_outs = [
            bk.remote(
                opts, bounds, len(copy_refs), kill, cpus, *copy_refs, *[refs[base + p] for refs in block_refs]
            )
            for p in range(parts.buckets)
        ]
        del block_refs
        capped_refs = [out[-1] for out in bucket_outs]
        pr = remote(pairs_task).options(num_returns=2, name="dedup.pairs")
        pair_refs = [pr.remote(n, *[out[v] for out in bucket_outs]) for v in range(parts.verify)]
        del bucket_outs
        tx = remote(texts_task).options(num_returns=parts.verify, name="dedup.texts")
        text_refs = []
        for b in blocks:
            out = tx.remote(fs, b, opts, *[p[1] for p in pair_refs])
            text_refs.append(out if parts.verify > 1 else [out])
        vf = remote(verify_task).options(num_returns=3, name="dedup.verify")
        verify_refs = [
            vf.remote(opts, cpus, pair_refs[v][0], pair_refs[v][1], *[t[v] for t in text_refs])
            for v in range(parts.verify)
        ]
        capped = sum(ray.get(capped_refs))  # after the later rounds are queued: they start as inputs arrive
        got = ray.get([r for refs in verify_refs for r in refs])
        verified = np.concatenate([got[3 * v] for v in range(parts.verify)])
        sims = np.concatenate([got[3 * v + 1] for v in range(parts.verify)])
        n_candidates = sum(got[3 * v + 2] for v in range(parts.verify))
        del pair_refs, text_refs, verify_refs, got, capped_refs
    else:
        del block_refs
    copies = np.concatenate(ray.get(copy_refs)) if copy_refs else np.empty((0, 2), np.int64)
    del copy_refs
    timings["shuffle_s"] = round(time.perf_counter() - t0, 3)
    decided = sparse_decide(copies, verified, sims, opts)

    # (source, qid) of every row a duplicate points to, looked up where it lies; then each block's rows.
    t1 = time.perf_counter()
    dropped = decided.duplicate_of >= 0
    targets = np.unique(decided.duplicate_of[dropped])
    tg = remote(targets_task).options(name="dedup.targets")
    starts = np.array([b.start for b in blocks] + [n], np.int64)
    cut = np.searchsorted(targets, starts)
    target_refs = [
        tg.remote(fs, b, targets[cut[i] : cut[i + 1]]) for i, b in enumerate(blocks) if cut[i + 1] > cut[i]
    ]
    target_ids = pa.concat_tables(ray.get(target_refs)) if target_refs else None
    del target_refs
    dedup_rel = store.new_table_dir("dedup")
    rejects_rel = store.new_table_dir("rejects/dedup")
    wr = remote(write_task).options(name="dedup.write")
    write_refs = []
    for i, b in enumerate(blocks):
        local = decided.slice(b.start, b.start + b.rows)
        drop_rows = local["duplicate_of"][local["duplicate_of"] >= 0]
        ids = (
            target_ids.take(pa.array(np.searchsorted(targets, drop_rows)))
            if len(drop_rows) and target_ids is not None
            else targets_task(fs, b, drop_rows)  # no rows: an empty table, read nothing
        )
        write_refs.append(
            wr.remote(fs, b, i, store.path(dedup_rel), store.path(rejects_rel), opts.measure, local, ids)
        )
    results = ray.get(write_refs)
    reasons: Counter[str] = Counter()
    for _, _, r in results:
        reasons.update(r)
    kept = sum(k for _, k, _ in results)
    if not reasons:  # an empty table is still a table: one file with the schema
        _write_part(
            fs,
            store.path(f"{rejects_rel}/part-00000.parquet"),
            schemas.get("rejects").schema.empty_table(),
            schemas.get("rejects").schema,
            lambda _t: 1024,
        )
    if not blocks:
        _write_part(
            fs,
            store.path(f"{dedup_rel}/part-00000.parquet"),
            schemas.get("dedup").schema.empty_table(),
            schemas.get("dedup").schema,
            lambda _t: 1024,
        )
    dedup_version = store.adopt_table_dir("dedup", dedup_rel)
    rejects_version = store.adopt_table_dir("rejects/dedup", rejects_rel)
    timings["write_s"] = round(time.perf_counter() - t1, 3)
    exact_n = int((decided.rule == EXACT).sum())
    near_n = int((decided.rule == NEAR).sum())
    details = {
        "rows": n,
        "exact_duplicates": exact_n,
        "near_duplicates": near_n,
        "candidate_pairs": int(n_candidates),
        "verified_pairs": len(verified),
        "oversized_buckets": int(capped),
        "bands": n_bands,
        "rows_per_band": n_rows_band,
        "detection_curve": curve,
        "executor": "ray",
        "blocks": len(blocks),
        "partitions": {"exact": parts.exact, "buckets": parts.buckets, "verify": parts.verify},
        "seconds": {**timings, "total_s": round(time.perf_counter() - t0, 3)},
    }
    if log:
        log(
            f"[{STAGE}] {n:,} rows: {exact_n:,} exact copies, {n_candidates:,} candidate pairs, "
            f"{len(verified):,} verified, {near_n:,} near duplicates dropped"
        )
        if capped:
            log(
                f"[{STAGE}] WARNING: {capped:,} LSH bucket(s) held more than dedup.minhash.max_bucket="
                f"{opts.minhash.max_bucket:,} rows; their members were paired only with each bucket's first "
                f"{opts.minhash.max_bucket:,} rows, so some near duplicates may be missed: raise max_bucket, or "
                "use more rows per band"
            )
    return dedup_version, rejects_version, details, n, kept, dict(sorted(reasons.items()))
