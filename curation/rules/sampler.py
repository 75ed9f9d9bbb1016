"""Diversity samplers for m1K: row positions in selection order, from each row's domain (and source / length).

The input order matters and is pool order (``m23k`` sorted by ``pool_index``); every sampler is a plain loop over
one ``numpy.random.default_rng(seed)``, so the same table and seed give the same selection on any machine and
whatever the partitioning upstream.

- :func:`m1_sample`, m1's loop exactly (../shared/REFERENCE.md): groups domain -> source -> rows, both levels in
  order of first appearance; each draw picks a domain, then a source, then a row, each with
  ``rng.integers(0, len(...))`` (what m1's ``rng.choice(list)`` draws), removes the row, and drops emptied
  groups. Where m1 crashed when the table ran out, this stops.
- :func:`s1_sample`, s1's variant: a domain uniformly, then within it a row with weight ``2**-rank``, rank 0
  being the longest reasoning (ties: pool order); the length is the number of whitespace-separated words.
- :func:`quota_sample`: fixed per-domain counts, domains in code order, rows drawn uniformly without
  replacement (``rng.choice(n, size, replace=False)``); a domain with fewer rows than its quota gives all it has.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def m1_sample(domains: Sequence[str], sources: Sequence[str], size: int, seed: int = 42) -> list[int]:
    """m1's diversity sampler: positions of the selected rows, in selection order."""
    groups: dict[str, dict[str, list[int]]] = {}
    for i, (d, s) in enumerate(zip(domains, sources, strict=True)):
        groups.setdefault(d, {}).setdefault(s, []).append(i)
    rng = np.random.default_rng(seed)
    selected: list[int] = []
    while len(selected) < size and groups:
        names = list(groups)
        d = names[rng.integers(0, len(names))]
        srcs = list(groups[d])
        s = srcs[rng.integers(0, len(srcs))]
        rows = groups[d][s]
        i = rng.integers(0, len(rows))
        selected.append(rows.pop(i))
        if not rows:
            del groups[d][s]
        if not groups[d]:
            del groups[d]
    return selected


def s1_sample(domains: Sequence[str], lengths: Sequence[int], size: int, seed: int = 42) -> list[int]:
    """s1's variant: uniform domain, then weight 2^-rank by descending reasoning length."""
    groups: dict[str, list[int]] = {}
    for i, d in enumerate(domains):
        groups.setdefault(d, []).append(i)
    lens = np.asarray(lengths, dtype=np.int64)
    for d, rows in groups.items():
        groups[d] = sorted(rows, key=lambda i: (-lens[i], i))  # longest first, ties in pool order
    rng = np.random.default_rng(seed)
    selected: list[int] = []
    while len(selected) < size and groups:
        names = list(groups)
        d = names[rng.integers(0, len(names))]
        rows = groups[d]
        w = np.exp2(-np.arange(len(rows), dtype=np.float64))
        i = int(rng.choice(len(rows), p=w / w.sum()))
        selected.append(rows.pop(i))
        if not rows:
            del groups[d]
    return selected


def quota_sample(
    domains: Sequence[str], quotas: Mapping[str, int], seed: int = 42
) -> tuple[list[int], dict[str, int]]:
    """Fixed per-domain quotas: (positions in selection order, shortfall per domain that ran out)."""
    rows_of: dict[str, list[int]] = {}
    for i, d in enumerate(domains):
        rows_of.setdefault(d, []).append(i)
    rng = np.random.default_rng(seed)
    selected: list[int] = []
    short: dict[str, int] = {}
    for d in sorted(quotas):
        rows = rows_of.get(d, [])
        take = min(quotas[d], len(rows))
        if take < quotas[d]:
            short[d] = quotas[d] - take
        if take:
            selected.extend(rows[j] for j in rng.choice(len(rows), size=take, replace=False))
    return selected, short


def reasoning_words(texts: Sequence[str | None]) -> list[int]:
    """s1's length measure here: whitespace-separated words (no tokenizer download needed)."""
    return [len(t.split()) if t else 0 for t in texts]
