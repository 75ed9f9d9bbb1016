"""The texts two questions are compared by, and how similar two texts are: the pure parts of dedup and
decontamination, shared by both (rules layer: imports nothing of the project above ``rules/``)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

from curation.rules import minhash as mh

VERIFY_CHUNK = 262_144  # candidate pairs per rapidfuzz call


def comparison_texts(batch: pa.Table | pa.RecordBatch, which: str) -> pa.Array:
    """The text compared for each row: ``prompt``, ``question``, or ``question_options`` (the question, then its
    option texts sorted, one per line: independent of option order)."""
    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    if which in ("prompt", "question"):
        col = table.column(which)
        return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if which != "question_options":
        raise ValueError(f"unknown comparison text {which!r}")
    df = pl.from_arrow(table.select(["question", "options"]))
    assert isinstance(df, pl.DataFrame)
    out = df.select(
        pl.concat_str(
            [
                pl.col("question"),
                pl.col("options").list.eval(pl.element().struct.field("text")).list.sort().list.join("\n"),
            ],
            separator="\n",
        )
    ).to_series()
    return out.to_arrow().cast(pa.string())


def verify_pairs(
    texts: pa.Array,
    left: np.ndarray,
    right: np.ndarray,
    *,
    measure: str,
    hasher: mh.MinHasher | None,
    other: pa.Array | None = None,
    score_cutoff: float | None = None,
) -> np.ndarray:
    """Similarity of ``texts[left[t]]`` and ``(other or texts)[right[t]]``: Jaccard of shingle sets, or
    rapidfuzz ratio (0-100)."""
    if not len(left):
        return np.empty(0, dtype=np.float64)
    other_texts = texts if other is None else other
    if measure == "jaccard":
        if hasher is None:
            raise ValueError("the jaccard measure needs the hasher that defines the shingles")
        sets = hasher.shingle_sets(texts)
        other_sets = sets if other is None else hasher.shingle_sets(other_texts)
        return sets.jaccard(left, right, other_sets)
    from rapidfuzz import fuzz, process

    # One Python string per text (pairs share them by reference), compared in chunks so that millions of
    # candidate pairs never hold millions of string copies at once.
    a_all = texts.to_pylist()
    b_all = a_all if other is None else other_texts.to_pylist()
    out = np.empty(len(left), dtype=np.float64)
    for lo in range(0, len(left), VERIFY_CHUNK):
        hi = min(lo + VERIFY_CHUNK, len(left))
        a = [a_all[i] for i in left[lo:hi]]
        b = [b_all[j] for j in right[lo:hi]]
        # score_cutoff lets rapidfuzz skip pairs whose lengths already rule the threshold out (they score 0).
        out[lo:hi] = process.cpdist(
            a, b, scorer=fuzz.ratio, workers=-1, dtype=np.float64, score_cutoff=score_cutoff
        )
    return out
