"""Which pool rows overlap an evaluation set, by three measures on two texts each.

Texts: ``question`` (the question alone) and ``question_options`` (the question, then the option texts sorted: a
copy with its options reordered has the same text). Question-only checks skip questions of fewer than
``min_question_words`` words on either side: short generic stems ("Which of the following is true?") recur across
unrelated questions. The prompt check (ratio) compares m1's rendered prompts.

- ``ngram``: the pool text shares word n-grams (s1: 13) with an eval text of the same kind: at least
  ``ngram_overlap`` of the pool text's n-grams (0: any one, GPT-3/s1 style, which also flags texts that only share
  a boilerplate sentence); a text of fewer than n words is one n-gram of all its words. Hashes are 64-bit. The
  similarity recorded is the shared fraction.
- ``minhash``: word-shingle MinHash LSH candidates, verified by exact Jaccard >= the threshold.
- ``ratio`` (m1): char-shingle MinHash LSH candidates, verified by rapidfuzz ``fuzz.ratio`` >= the threshold on
  prompts and on questions; candidates whose length or character-histogram distance already rules the threshold
  out are dropped while they are joined (exact bounds, never a guess).

One match per (pool row, eval set) is kept: the first method in that order, then the highest similarity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numba
import numpy as np
import pyarrow as pa

from curation.rules import minhash as mh
from curation.rules.similarity import comparison_texts, verify_pairs

if TYPE_CHECKING:  # the options are read, never built, here: no import of the config layer at run time
    from curation.config import DecontaminateOptions

METHOD_ORDER = ("ngram", "minhash", "ratio")


def _hasher(o) -> mh.MinHasher:  # noqa: ANN001
    return mh.MinHasher(o.shingle, o.k, o.num_perm, o.seed)


@dataclass
class _Side:
    """One text kind of one eval set, prepared for lookups."""

    texts: pa.Array
    valid: np.ndarray
    ngram_values: np.ndarray | None = None  # sorted unique-per-row 64-bit n-gram hashes
    ngram_rows: np.ndarray | None = None
    mh_bands: np.ndarray | None = None
    mh_sets: mh.ShingleSets | None = None
    ratio_bands: np.ndarray | None = None
    ratio_profiles: mh.CharProfiles | None = None


@dataclass
class EvalIndex:
    """An evaluation set prepared for :func:`find_matches`."""

    name: str
    refs: list[str]
    sides: dict[str, _Side] = field(default_factory=dict)


def texts_of(table: pa.Table) -> dict[str, pa.Array]:
    """question, question_options and prompt texts of a questions-shaped table."""
    return {k: comparison_texts(table, k) for k in ("question", "question_options", "prompt")}


def build_index(name: str, questions: pa.Table, opts: DecontaminateOptions) -> EvalIndex:
    """Prepare an ingested evaluation set (a questions table) for matching."""
    texts = texts_of(questions)
    index = EvalIndex(name=name, refs=questions.column("source_id").to_pylist())
    n = questions.num_rows
    for kind in ("question", "question_options", "prompt"):
        valid = np.ones(n, dtype=bool)
        if kind == "question":
            valid = mh.word_counts(texts[kind]) >= opts.min_question_words
        side = _Side(texts=texts[kind], valid=valid)
        if kind != "prompt":
            if opts.ngram:
                sets = mh.MinHasher("word", opts.ngram).shingle_sets(texts[kind])
                rows = np.repeat(np.arange(n), sets.sizes)
                idx = np.repeat(sets.offsets[:-1], sets.sizes) + (
                    np.arange(int(sets.sizes.sum()))
                    - np.repeat(np.cumsum(sets.sizes) - sets.sizes, sets.sizes)
                )
                values = sets.values[idx]
                keep = valid[rows]
                order = np.argsort(values[keep], kind="stable")
                side.ngram_values = values[keep][order]
                side.ngram_rows = rows[keep][order]
            if opts.minhash_threshold is not None:
                h = _hasher(opts.minhash)
                sig, counts = h.signatures(texts[kind])
                side.mh_bands = mh.band_hashes(sig, *opts.minhash.banding())
                side.mh_sets = h.shingle_sets(texts[kind])
                side.valid = valid & (counts > 0)
        if opts.ratio_threshold is not None and kind in ("question", "prompt"):
            sig, counts = _hasher(opts.ratio_minhash).signatures(texts[kind])
            side.ratio_bands = mh.band_hashes(sig, *opts.ratio_minhash.banding())
            side.ratio_profiles = mh.char_profiles(texts[kind])
            side.valid = side.valid & (counts > 0)
        index.sides[kind] = side
    return index


@numba.njit(parallel=True, nogil=True, cache=True)
def _best_overlap(values, offsets, sizes, rows_ok, hay, owners, n_eval, overlap, best_row, best_shared):  # noqa: ANN001, ANN202
    """Per pool text: the eval text sharing the most n-grams with it (ties: the lowest eval row), if the shared
    share of the pool text's n-grams reaches ``overlap``; -1 otherwise. Counts per eval row in a scratch array
    per block of pool texts, so no (pool row, eval row) pair list is ever built."""
    n = len(sizes)
    blocks = min(n, 256)
    for blk in numba.prange(blocks):
        d0, d1 = mh._block(n, blocks, blk)
        counts = np.zeros(n_eval, np.int64)
        touched = np.empty(n_eval, np.int64)
        for d in range(d0, d1):
            best_row[d] = -1
            best_shared[d] = 0
            if not rows_ok[d] or sizes[d] == 0:
                continue
            nt = 0
            for t in range(offsets[d], offsets[d] + sizes[d]):
                v = values[t]
                j = np.searchsorted(hay, v)
                while j < len(hay) and hay[j] == v:
                    e = owners[j]
                    if counts[e] == 0:
                        touched[nt] = e
                        nt += 1
                    counts[e] += 1
                    j += 1
            top, top_row = 0, -1
            for i in range(nt):
                e = touched[i]
                c = counts[e]
                if c > top or (c == top and e < top_row):
                    top, top_row = c, e
                counts[e] = 0
            if top > 0 and top / sizes[d] >= overlap:
                best_row[d] = top_row
                best_shared[d] = top


def best_ngram_overlap(
    sets: mh.ShingleSets,
    eval_values: np.ndarray,
    eval_rows: np.ndarray,
    *,
    n_eval: int,
    rows_ok: np.ndarray | None,
    overlap: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pool rows, eval rows, shared share) of the n-gram matches: for every pool text (where ``rows_ok``) the
    eval text holding the largest share of its n-grams, kept when that share is at least ``overlap`` (and
    above 0). ``eval_values`` are the eval side's n-gram hashes sorted, ``eval_rows`` their owners."""
    n = len(sets.sizes)
    ok = np.ones(n, dtype=np.bool_) if rows_ok is None else np.ascontiguousarray(rows_ok, dtype=np.bool_)
    best_row = np.empty(n, np.int64)
    best_shared = np.empty(n, np.int64)
    if n:
        _best_overlap(
            sets.values,
            sets.offsets,
            sets.sizes,
            ok,
            np.ascontiguousarray(eval_values),
            np.ascontiguousarray(eval_rows, dtype=np.int64),
            n_eval,
            float(overlap),
            best_row,
            best_shared,
        )
    hit = np.flatnonzero(best_row >= 0)
    return hit, best_row[hit], best_shared[hit] / np.maximum(sets.sizes[hit], 1)


@dataclass
class Matches:
    """Matches of a batch of pool rows (``row`` indexes the batch), one per (row, eval set)."""

    row: np.ndarray
    eval_set: list[str]
    eval_ref: list[str]
    method: list[str]
    similarity: np.ndarray


def find_matches(pool: pa.Table, indexes: list[EvalIndex], opts: DecontaminateOptions) -> Matches:
    """Matches of the rows of ``pool`` (a questions-shaped table) against every eval set."""
    texts = texts_of(pool)
    words = mh.word_counts(texts["question"])
    q_valid = words >= opts.min_question_words
    found: list[
        tuple[np.ndarray, int, np.ndarray, int, str, np.ndarray]
    ] = []  # rows, set, eval rows, prio...
    ngram_sets = {}
    if opts.ngram:
        h = mh.MinHasher("word", opts.ngram)
        ngram_sets = {k: h.shingle_sets(texts[k]) for k in ("question", "question_options")}
    mh_state = {}
    if opts.minhash_threshold is not None:
        h = _hasher(opts.minhash)
        for k in ("question", "question_options"):
            sig, counts = h.signatures(texts[k])
            valid = counts > 0 if k == "question_options" else (counts > 0) & q_valid
            mh_state[k] = (mh.band_hashes(sig, *opts.minhash.banding()), texts[k], valid)
    ratio_state = {}
    if opts.ratio_threshold is not None:
        h = _hasher(opts.ratio_minhash)
        for k in ("question", "prompt"):
            sig, counts = h.signatures(texts[k])
            valid = counts > 0 if k == "prompt" else (counts > 0) & q_valid
            ratio_state[k] = (
                mh.band_hashes(sig, *opts.ratio_minhash.banding()),
                valid,
                mh.char_profiles(texts[k]),
            )

    for s, index in enumerate(indexes):
        for kind, sets in ngram_sets.items():
            side = index.sides[kind]
            if side.ngram_values is None or not len(side.ngram_values):
                continue
            pr, er, share = best_ngram_overlap(
                sets,
                side.ngram_values,
                side.ngram_rows,
                n_eval=len(index.refs),
                rows_ok=q_valid if kind == "question" else None,
                overlap=opts.ngram_overlap,
            )
            if len(pr):
                found.append((pr, s, er, 0, f"ngram{opts.ngram}_{kind}", share))
        for kind, (bands, kind_texts, valid) in mh_state.items():
            side = index.sides[kind]
            pairs = mh.cross_pairs(bands, side.mh_bands, left_valid=valid, right_valid=side.valid)
            if not len(pairs):
                continue
            # Shingle sets of the pool rows in candidate pairs only.
            involved, local = np.unique(pairs[:, 0], return_inverse=True)
            sets = _hasher(opts.minhash).shingle_sets(kind_texts.take(pa.array(involved)))
            sim = sets.jaccard(local, pairs[:, 1], side.mh_sets)
            ok = sim >= opts.minhash_threshold
            if ok.any():
                found.append((pairs[ok, 0], s, pairs[ok, 1], 1, f"minhash_{kind}", sim[ok]))
        for kind, (bands, valid, profiles) in ratio_state.items():
            side = index.sides[kind]
            pairs = mh.cross_pairs(
                bands,
                side.ratio_bands,
                left_valid=valid,
                right_valid=side.valid,
                ratio_cutoff=opts.ratio_threshold,
                left_profiles=profiles,
                right_profiles=side.ratio_profiles,
            )
            if not len(pairs):
                continue
            sim = verify_pairs(
                texts[kind],
                pairs[:, 0],
                pairs[:, 1],
                measure="ratio",
                hasher=None,
                other=side.texts,
                score_cutoff=opts.ratio_threshold,
            )
            ok = sim >= opts.ratio_threshold
            if ok.any():
                found.append((pairs[ok, 0], s, pairs[ok, 1], 2, f"ratio_{kind}", sim[ok]))

    if not found:
        return Matches(np.empty(0, np.int64), [], [], [], np.empty(0))
    rows = np.concatenate([f[0] for f in found]).astype(np.int64)
    sets_ = np.concatenate([np.full(len(f[0]), f[1]) for f in found])
    erows = np.concatenate([f[2] for f in found]).astype(np.int64)
    prio = np.concatenate([np.full(len(f[0]), f[3]) for f in found])
    methods = np.concatenate([np.full(len(f[0]), i) for i, f in enumerate(found)])
    sims = np.concatenate([f[5] for f in found]).astype(np.float64)
    order = np.lexsort((erows, -sims, prio, sets_, rows))
    key = rows[order] * (len(indexes) + 1) + sets_[order]
    first = order[np.flatnonzero(np.r_[True, key[1:] != key[:-1]])]
    names = [f[4] for f in found]
    return Matches(
        row=rows[first],
        eval_set=[indexes[i].name for i in sets_[first]],
        eval_ref=[indexes[sets_[t]].refs[erows[t]] for t in first],
        method=[names[m] for m in methods[first]],
        similarity=sims[first],
    )
