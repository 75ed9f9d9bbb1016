"""Which rows a dedup drops, given exact keys and verified near-duplicate pairs (rows in pool order).

Two rules:

- ``earlier`` (m1, without its bugs): row ``i`` is dropped iff some earlier row ``j < i`` matches it; it records
  the lowest such ``j``. Not transitive: if A~B and B~C but not A~C, both B and C go (B matches A, C matches B).
- ``cluster``: verified pairs are edges; each connected component keeps its lowest row (the representative);
  every other member records the lowest row it was verified against.

Exact copies are collapsed first (:func:`exact_representatives`): a copy records the first row with its key.
Near-duplicate pairs are computed between representatives only; that loses nothing under either rule, since a
copy's text is its representative's and the representative comes first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Decisions:
    """Per row: ``duplicate_of`` (-1: kept), ``similarity`` (nan when kept), ``rule`` code, ``cluster``."""

    duplicate_of: np.ndarray
    similarity: np.ndarray
    rule: np.ndarray  # 0 kept, 1 exact, 2 near
    cluster: np.ndarray

    @property
    def kept(self) -> np.ndarray:
        return self.duplicate_of < 0


KEPT, EXACT, NEAR = 0, 1, 2


def exact_representatives(keys: np.ndarray) -> np.ndarray:
    """For each row, the lowest row with the same key (``keys``: [n, 2] uint64, or [n])."""
    n = keys.shape[0]
    if n == 0:
        return np.empty(0, dtype=np.int64)
    k = keys.reshape(n, -1)
    order = np.lexsort((np.arange(n), *[k[:, c] for c in reversed(range(k.shape[1]))]))
    sk = k[order]
    starts = np.ones(n, dtype=bool)
    starts[1:] = np.any(sk[1:] != sk[:-1], axis=1)
    group_first = order[np.flatnonzero(starts)]
    group_id = np.cumsum(starts) - 1
    rep = np.empty(n, dtype=np.int64)
    rep[order] = group_first[group_id]
    return rep


def decide(
    n: int,
    exact_rep: np.ndarray,
    pairs: np.ndarray,
    similarity: np.ndarray,
    *,
    rule: str,
    exact_similarity: float = 1.0,
) -> Decisions:
    """Decisions for ``n`` rows from exact representatives and verified pairs (``pairs[t] = (j, i)``, j < i,
    both representatives, ``similarity[t]`` at or above the threshold); exact copies record
    ``exact_similarity`` (1.0 on the Jaccard scale, 100 on rapidfuzz's)."""
    dup = np.full(n, -1, dtype=np.int64)
    sim = np.full(n, np.nan, dtype=np.float64)
    code = np.zeros(n, dtype=np.int8)
    copies = exact_rep != np.arange(n)
    dup[copies] = exact_rep[copies]
    sim[copies] = exact_similarity
    code[copies] = EXACT
    cluster = np.arange(n, dtype=np.int64)
    if len(pairs):
        left, right = pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)
        if np.any(left >= right):
            raise ValueError("pairs must be (earlier, later)")
        if rule == "earlier":
            # Lowest earlier match of each later row: sort by (right, left), take the first per right.
            order = np.lexsort((left, right))
            r, first = np.unique(right[order], return_index=True)
            dup[r] = left[order][first]
            sim[r] = similarity[order][first]
            code[r] = NEAR
            cluster[r] = dup[r]
        elif rule == "cluster":
            from scipy.sparse import coo_matrix
            from scipy.sparse.csgraph import connected_components

            graph = coo_matrix((np.ones(len(left), dtype=np.int8), (left, right)), shape=(n, n))
            _, labels = connected_components(graph, directed=False)
            rep_of_label = np.full(labels.max() + 1, n, dtype=np.int64)
            np.minimum.at(rep_of_label, labels, np.arange(n))
            rep = rep_of_label[labels]
            # For each dropped row, the lowest row it was verified against (either direction).
            a = np.concatenate([right, left])
            b = np.concatenate([left, right])
            s = np.concatenate([similarity, similarity])
            order = np.lexsort((b, a))
            rows, first = np.unique(a[order], return_index=True)
            drop = rows[rep[rows] != rows]
            pick = first[rep[rows] != rows]
            dup[drop] = b[order][pick]
            sim[drop] = s[order][pick]
            code[drop] = NEAR
            cluster = rep
        else:
            raise ValueError(f"unknown dedup rule {rule!r}")
    # Exact copies belong to their representative's cluster.
    cluster[copies] = cluster[exact_rep[copies]]
    return Decisions(dup, sim, code, cluster)
