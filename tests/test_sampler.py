"""The samplers: m1's loop draw for draw (against a literal transcription using rng.choice), s1's weights, quotas."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from curation.rules.sampler import m1_sample, quota_sample, reasoning_words, s1_sample


def m1_reference(rows: list[dict], size: int) -> list[dict]:
    """m1's sampler as it was written: rng.choice over the group keys and the rows (a transcription)."""
    groups: dict = {}
    for row in rows:
        groups.setdefault(row["domain"], {}).setdefault(row["source"], []).append(row)
    rng = np.random.default_rng(42)
    selected = []
    while len(selected) < size:
        d = rng.choice(list(groups))
        s = rng.choice(list(groups[d]))
        bucket = groups[d][s]
        i = rng.choice(len(bucket))
        selected.append(bucket.pop(i))
        if not bucket:
            del groups[d][s]
        if not groups[d]:
            del groups[d]
    return selected


def table(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    doms = [f"{i:02d}" for i in rng.sample(range(76), 30)]
    return [
        {
            "i": i,
            "domain": rng.choice(doms[: rng.randint(1, 30)]),
            "source": rng.choice(["medqa", "medmcqa", "headqa"]),
        }
        for i in range(n)
    ]


@pytest.mark.parametrize("n,size", [(3000, 1000), (500, 499), (40, 40)])
def test_m1_sampler_draws_exactly_what_m1_draws(n: int, size: int) -> None:
    rows = table(n)
    want = [r["i"] for r in m1_reference(rows, size)]
    got = m1_sample([r["domain"] for r in rows], [r["source"] for r in rows], size, seed=42)
    assert got == want


def test_m1_sampler_stops_when_the_table_runs_out() -> None:
    rows = table(30)
    got = m1_sample([r["domain"] for r in rows], [r["source"] for r in rows], 1000)
    assert sorted(got) == list(range(30))  # every row once; m1's loop would crash here
    with pytest.raises(ValueError):  # m1's own loop: choice from an empty dict
        m1_reference(rows, 31)


def test_m1_sampler_balances_domains_not_rows() -> None:
    domains = ["big"] * 900 + ["small"] * 100
    got = m1_sample(domains, ["s"] * 1000, 200, seed=1)
    c = Counter(domains[i] for i in got)
    assert 80 <= c["small"] <= 100  # about half the draws, until the small domain runs dry


def test_s1_prefers_long_reasoning_within_a_domain() -> None:
    lengths = list(range(100))  # row i has i words
    got = s1_sample(["d"] * 100, lengths, 10, seed=0)
    # weight 2^-rank: the first draw is the longest with probability 1/2, within the top 4 with 15/16.
    assert np.mean([lengths[i] for i in got]) > 85
    assert s1_sample(["d"] * 100, lengths, 10, seed=0) == got  # deterministic
    assert sorted(s1_sample(["a", "b", "a", "b"], [1, 2, 3, 4], 10)) == [0, 1, 2, 3]
    assert reasoning_words(["two words", "", None, " a  b c "]) == [2, 0, 0, 3]


def test_quota_sampler_takes_fixed_counts_per_domain() -> None:
    domains = ["01"] * 10 + ["02"] * 3 + ["03"] * 5
    got, short = quota_sample(domains, {"01": 4, "02": 5, "04": 1}, seed=3)
    c = Counter(domains[i] for i in got)
    assert c == {"01": 4, "02": 3} and short == {"02": 2, "04": 1}
    assert len(set(got)) == len(got)
    assert quota_sample(domains, {"01": 4, "02": 5, "04": 1}, seed=3)[0] == got
