"""MinHash rules: shingles against a plain-Python reference, unbiased Jaccard estimates, LSH banding."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest
from datasketch import MinHash

from curation.config import MinHashOptions
from curation.rules import minhash as mh


def py_word_shingles(text: str, k: int) -> set[str]:
    words = re.findall(r"[0-9A-Za-z\x80-\U0010ffff]+", text.lower())
    if not words:
        return set()
    if len(words) < k:
        return {" ".join(words)}
    return {" ".join(words[i : i + k]) for i in range(len(words) - k + 1)}


def py_char_shingles(text: str, k: int) -> set[str]:
    t = " ".join(text.lower().split())
    if not t:
        return set()
    if len(t) < k:
        return {t}
    return {t[i : i + k] for i in range(len(t) - k + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


TEXTS = [
    "A 45-year-old man presents with chest pain, radiating to the left arm.",
    "A 45-year-old man   presents with CHEST pain radiating to the left arm!",
    "Which of the following is true?",
    "short",
    "",
    "The patient's serum sodium is 128 mEq/L; potassium is 5.9 mEq/L.",
]


@pytest.mark.parametrize("kind,k,ref", [("word", 3, py_word_shingles), ("char", 4, py_char_shingles)])
def test_exact_jaccard_matches_python_reference(kind: str, k: int, ref) -> None:
    h = mh.MinHasher(kind, k, 64, 1)
    sets = h.shingle_sets(TEXTS)
    assert list(sets.sizes) == [len(ref(t, k)) for t in TEXTS]
    left, right = np.triu_indices(len(TEXTS), 1)
    got = sets.jaccard(left, right)
    want = [jaccard(ref(TEXTS[i], k), ref(TEXTS[j], k)) for i, j in zip(left, right, strict=True)]
    np.testing.assert_allclose(got, want)


def test_case_and_whitespace_do_not_change_word_shingles() -> None:
    sig, counts = mh.MinHasher("word", 5, 128, 7).signatures(TEXTS[:2])
    assert (sig[0] == sig[1]).all() and counts[0] == counts[1] == 10
    _, counts = mh.MinHasher("word", 5, 128, 7).signatures(["", "   "])
    assert list(counts) == [0, 0]


def _edited_pairs(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(3000)]
    a, b = [], []
    for _ in range(n):
        words = [rng.choice(vocab) for _ in range(60)]
        a.append(" ".join(words))
        for i in rng.sample(range(60), rng.randint(1, 10)):
            words[i] = f"x{rng.random()}"
        b.append(" ".join(words))
    return a, b


def test_estimates_are_unbiased_and_agree_with_datasketch() -> None:
    a, b = _edited_pairs(300, 0)
    h = mh.MinHasher("word", 5, 128, 3)
    sig, _ = h.signatures(a + b)
    est = (sig[:300] == sig[300:]).mean(axis=1)
    exact = h.shingle_sets(a + b).jaccard(np.arange(300), np.arange(300, 600))
    assert abs((est - exact).mean()) < 0.01  # unbiased
    assert (est - exact).std() < 1.3 * np.sqrt(exact * (1 - exact) / 128).mean()  # MinHash variance
    # datasketch on the same shingles: the same estimator, so its error has the same size.
    ds_a = MinHash.bulk([[s.encode() for s in py_word_shingles(t, 5)] for t in a[:100]], num_perm=128)
    ds_b = MinHash.bulk([[s.encode() for s in py_word_shingles(t, 5)] for t in b[:100]], num_perm=128)
    ds_est = np.array([x.jaccard(y) for x, y in zip(ds_a, ds_b, strict=True)])
    assert abs(np.abs(ds_est - exact[:100]).mean() - np.abs(est[:100] - exact[:100]).mean()) < 0.02


def test_signatures_do_not_depend_on_threads_or_batching() -> None:
    a, b = _edited_pairs(50, 1)
    h = mh.MinHasher("char", 5, 64, 9)
    whole, _ = h.signatures(a + b)
    mh.set_threads(1)
    try:
        parts = np.concatenate([h.signatures(a)[0], h.signatures(b)[0]])
    finally:
        mh.set_threads(None)
    assert (whole == parts).all()
    assert not (whole == mh.MinHasher("char", 5, 64, 10).signatures(a + b)[0]).all()  # the seed matters


def test_detection_curve_and_optimal_bands() -> None:
    assert mh.detection_probability(0.8, 21, 6) == pytest.approx(1 - (1 - 0.8**6) ** 21)
    assert mh.optimal_bands(0.8, 128) == (9, 13)  # datasketch's choice for MinHashLSH(threshold=0.8)
    assert "J=0.80: 0.998" in mh.detection_curve(21, 6)
    assert MinHashOptions(bands=32, rows=4).banding() == (32, 4)
    with pytest.raises(ValueError, match="exceeds num_perm"):
        MinHashOptions(bands=33, rows=4)


def test_candidate_pairs_find_every_shared_band() -> None:
    bands = np.array([[1, 9], [2, 9], [1, 5], [3, 6], [4, 6]], dtype=np.uint64)
    pairs, capped = mh.candidate_pairs(bands)
    assert pairs.tolist() == [[0, 1], [0, 2], [3, 4]] and capped == 0
    valid = np.array([True, True, False, True, True])
    assert mh.candidate_pairs(bands, valid=valid)[0].tolist() == [[0, 1], [3, 4]]
    cross = mh.cross_pairs(bands[:2], bands[2:], left_valid=np.ones(2, bool), right_valid=np.ones(3, bool))
    assert cross.tolist() == [[0, 0]]


def test_exact_keys_normalise_only_when_asked() -> None:
    keys = mh.text_keys(["Chest  pain", "chest pain", "chest pain "], normalize=True)
    assert (keys[0] == keys[1]).all() and (keys[1] == keys[2]).all()
    raw = mh.text_keys(["Chest  pain", "chest pain"], normalize=False)
    assert not (raw[0] == raw[1]).all()


def test_cross_pairs_equal_brute_force() -> None:
    rng = np.random.default_rng(4)
    left = rng.integers(0, 40, size=(300, 3)).astype(np.uint64)  # few values: many repeats on both sides
    right = rng.integers(0, 40, size=(70, 3)).astype(np.uint64)
    lv, rv = rng.random(300) < 0.9, rng.random(70) < 0.9
    got = mh.cross_pairs(left, right, left_valid=lv, right_valid=rv)
    want = sorted(
        (i, j) for i in range(300) for j in range(70) if lv[i] and rv[j] and (left[i] == right[j]).any()
    )
    assert [tuple(p) for p in got.tolist()] == want


@pytest.mark.parametrize("max_bucket", [1000, 3])
def test_candidate_pairs_equal_brute_force_banding_each_pair_once(max_bucket: int) -> None:
    rng = np.random.default_rng(0)
    bands = rng.integers(0, 6, size=(200, 4)).astype(
        np.uint64
    )  # few values: big buckets, pairs in many bands
    valid = rng.random(200) > 0.1
    pairs, capped = mh.candidate_pairs(bands, valid=valid, max_bucket=max_bucket)
    want: set[tuple[int, int]] = set()
    n_capped = 0
    for band in range(4):
        for h in np.unique(bands[:, band]):
            members = [i for i in range(200) if valid[i] and bands[i, band] == h]
            n_capped += len(members) > max_bucket
            for x in range(len(members)):
                for y in range(min(x, max_bucket)):  # a capped bucket pairs only with its first rows
                    want.add((members[y], members[x]))
    got = [tuple(p) for p in pairs.tolist()]
    assert got == sorted(want) and capped == n_capped


def _edited(text: str, edits: int, rng: random.Random) -> str:
    chars = list(text)
    for _ in range(edits):
        i = rng.randrange(len(chars))
        op = rng.random()
        if op < 0.4:
            chars[i] = rng.choice("abcdeé中")
        elif op < 0.7:
            del chars[i]
        else:
            chars.insert(i, rng.choice("xyzü😀"))
    return "".join(chars)


def _ratio_texts() -> list[str]:
    rng = random.Random(3)
    stems = [
        "A {a}-year-old {s} presents with {f}. Which is the most likely diagnosis?\nA. {o1}\nB. {o2}",
        "Drug of choice for {f} in a {a}-year-old {s} is:\nA. {o1}\nB. {o2}\nC. {o3}",
    ]
    words = ["fever", "cough", "rash", "amoxicillin", "vancomycin", "isoniazid", "café-au-lait spots", "胸痛"]
    texts = []
    for _ in range(150):
        t = rng.choice(stems).format(
            a=rng.randint(20, 80),
            s=rng.choice(["man", "woman"]),
            f=rng.choice(words),
            **{f"o{k}": rng.choice(words) for k in (1, 2, 3)},
        )
        texts.append(t)
    for _ in range(150):  # near copies at every distance around the cutoff
        texts.append(_edited(rng.choice(texts), rng.randint(0, 12), rng))
    return texts


def test_char_profiles_count_code_points_as_rapidfuzz_does() -> None:
    texts = ["abc", "café 中文 😀", "", "a" * 70_000]
    p = mh.char_profiles(texts)
    assert p.lengths.tolist() == [len(t) for t in texts]
    assert p.hist[0, ord("a")] == 1 and p.hist[1, 128 + ord("é") % 64] >= 1 and p.hist[3, ord("a")] == 65535
    assert p.hist[:3].sum(axis=1).tolist() == [3, 9, 0]


@pytest.mark.parametrize("cutoff", [95.0, 90.0])
def test_ratio_bounds_drop_only_pairs_rapidfuzz_rejects(cutoff: float) -> None:
    from rapidfuzz import fuzz

    texts = _ratio_texts()
    profiles = mh.char_profiles(texts)
    sig, _ = mh.MinHasher("char", 4, 128, 1).signatures(texts)
    bands = mh.band_hashes(sig, 32, 4)
    every, _ = mh.candidate_pairs(bands)
    kept, _ = mh.candidate_pairs(bands, ratio_cutoff=cutoff, profiles=profiles)
    every_set = {tuple(p) for p in every.tolist()}
    kept_set = {tuple(p) for p in kept.tolist()}
    passing = {(i, j) for i, j in every_set if fuzz.ratio(texts[i], texts[j]) >= cutoff}
    assert passing <= kept_set <= every_set  # never drops a pair that passes; only drops candidates
    assert len(passing) > 20 and len(kept_set) < len(every_set) / 3  # real matches, and real pruning
    # The same bound in the cross join (pool rows against an eval set).
    left, right = np.arange(200), np.arange(200, 300)
    cross_all = mh.cross_pairs(
        bands[left], bands[right], left_valid=np.ones(200, bool), right_valid=np.ones(100, bool)
    )
    cross = mh.cross_pairs(
        bands[left],
        bands[right],
        left_valid=np.ones(200, bool),
        right_valid=np.ones(100, bool),
        ratio_cutoff=cutoff,
        left_profiles=mh.char_profiles(texts[:200]),
        right_profiles=mh.char_profiles(texts[200:]),
    )
    all_set = {tuple(p) for p in cross_all.tolist()}
    cross_set = {tuple(p) for p in cross.tolist()}
    cross_passing = {(i, j) for i, j in all_set if fuzz.ratio(texts[i], texts[200 + j]) >= cutoff}
    assert cross_passing <= cross_set <= all_set and len(cross_passing) > 5
    with pytest.raises(ValueError, match="profiles"):
        mh.candidate_pairs(bands, ratio_cutoff=cutoff)
