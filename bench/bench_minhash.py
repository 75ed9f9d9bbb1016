"""Benchmark: MinHash signatures per second per core, this project's kernels against datasketch ``MinHash.bulk``.

    flock /tmp/m1-heavy.lock .venv/bin/python bench/bench_minhash.py [--docs 20000] [--repeat 3]

The same synthetic questions (the first ~60 words of generated MedQA-style vignettes, curation.devtools.synth),
5-word shingles, 128 permutations, in one run:

- datasketch: the texts are split into 5-word shingles in Python (what a datasketch user writes) and hashed by
  ``MinHash.bulk`` (SHA-1 per shingle, numpy per document). One core.
- ours: :class:`curation.rules.minhash.MinHasher` over the Arrow string array (tokenising, shingle hashing and
  the permutations in one compiled pass), with numba limited to 1 thread for the per-core figure, then with
  every core. The kernel is compiled (or loaded from numba's cache) before timing.

Also checks the estimates agree: the mean absolute difference between the two Jaccard estimates of the same
near-duplicate pairs must be within MinHash noise. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasketch import MinHash  # noqa: E402

from curation.devtools.synth import medqa_row  # noqa: E402
from curation.rules import minhash as mh  # noqa: E402


def questions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = medqa_row(rng, 4)["question"].split()
        while len(words) < 60:
            words += medqa_row(rng, 4)["question"].split()
        out.append(" ".join(words[:60]))
    return out


def shingles(text: str, k: int = 5) -> list[bytes]:
    w = text.lower().split()
    return [" ".join(w[i : i + k]).encode() for i in range(max(1, len(w) - k + 1))]


def best_of(repeat: int, fn) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    texts = questions(args.docs)
    hasher = mh.MinHasher("word", 5, 128, 1)
    hasher.signatures(texts[:10])  # compile / load the cache

    ds_s = best_of(args.repeat, lambda: MinHash.bulk([shingles(t) for t in texts], num_perm=128))
    mh.set_threads(1)
    one_s = best_of(args.repeat, lambda: hasher.signatures(texts))
    mh.set_threads(None)
    all_s = best_of(args.repeat, lambda: hasher.signatures(texts))
    cores = mh.numba.config.NUMBA_NUM_THREADS

    # Agreement: near-duplicate pairs (one word in ten replaced), Jaccard estimated by both.
    rng = random.Random(1)
    edited = []
    for t in texts[:500]:
        w = t.split()
        for i in rng.sample(range(len(w)), 3):
            w[i] = f"edit{rng.random():.6f}"
        edited.append(" ".join(w))
    sig, _ = hasher.signatures(texts[:500] + edited)
    ours = (sig[:500] == sig[500:]).mean(axis=1)
    a = MinHash.bulk([shingles(t) for t in texts[:500]], num_perm=128)
    b = MinHash.bulk([shingles(t) for t in edited], num_perm=128)
    theirs = np.array([x.jaccard(y) for x, y in zip(a, b, strict=True)])
    exact = hasher.shingle_sets(texts[:500] + edited).jaccard(np.arange(500), np.arange(500, 1000))

    res = {
        "docs": args.docs,
        "words": 60,
        "shingle": "word 5",
        "num_perm": 128,
        "datasketch_bulk_docs_per_s": round(args.docs / ds_s),
        "ours_docs_per_s_1_core": round(args.docs / one_s),
        "ours_docs_per_s_all_cores": round(args.docs / all_s),
        "cores": cores,
        "speedup_per_core": round(ds_s / one_s, 1),
        "mean_abs_err_ours": round(float(np.abs(ours - exact).mean()), 4),
        "mean_abs_err_datasketch": round(float(np.abs(theirs - exact).mean()), 4),
        "cpu": os.cpu_count(),
    }
    print(f"{'':<28}{'docs/s':>12}")
    print(f"{'datasketch MinHash.bulk':<28}{res['datasketch_bulk_docs_per_s']:>12,}  (1 core)")
    print(f"{'ours, 1 thread':<28}{res['ours_docs_per_s_1_core']:>12,}  x{res['speedup_per_core']} per core")
    print(f"{f'ours, {cores} threads':<28}{res['ours_docs_per_s_all_cores']:>12,}")
    print(
        f"Jaccard estimate error vs exact, 500 near-duplicate pairs: ours {res['mean_abs_err_ours']}, "
        f"datasketch {res['mean_abs_err_datasketch']}"
    )
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
