"""Large synthetic pools with known duplicates, written in parallel shards (bench/bench_scale.py and the peer
comparison use them).

The pool is bench_dedup.py's ``scale`` pool, made shard by shard: MedMCQA-layout rows whose questions are 40-60
words drawn from a Zipf vocabulary (so unrelated rows are dissimilar), 2% exact copies and 3% near copies of
earlier rows of the same shard (question words replaced at random until the word 5-shingle Jaccard to the
original would fall below a target drawn from 0.5-0.97; at least one word, so a near copy is never identical).
Edits are single alphanumeric words, so the dedup's tokenizer (runs of letters and digits) sees the same shingles
as the truth's whitespace split. Each shard depends only on (seed, shard), so shards are
made by separate processes and the pool is the same whatever the process count. The pool's files are under
``rows/`` (the folder a source names); ``truth.parquet`` and ``eval.jsonl`` sit beside it. ``truth.parquet`` records every
copy: its id, kind, the id it copies, and the true Jaccard of the question's word 5-shingles.

    .venv/bin/python bench/zipf_pool.py --rows 10000000 --out /tmp/m1-scale/pool-10000000 [--procs 2]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SHARD_ROWS = 250_000
VOCAB = 200_000


def shingles(words: list[str], k: int = 5) -> set[str]:
    return {" ".join(words[i : i + k]) for i in range(max(1, len(words) - k + 1))}


def make_shard(args: tuple[Path, int, int, int, int]) -> dict:
    out_dir, seed, shard, start, rows = args
    rng = np.random.default_rng([seed, shard])
    prng = random.Random(seed * 1_000_003 + shard)
    vocab = np.array([f"w{i}" for i in range(VOCAB + 1)], dtype=object)
    lengths = rng.integers(40, 61, size=rows)
    words = np.minimum(rng.zipf(1.3, size=(rows, 60)), VOCAB)
    opt_words = np.minimum(rng.zipf(1.3, size=(rows, 4, 3)), VOCAB)
    opt_len = rng.integers(1, 4, size=(rows, 4))
    cop = rng.integers(0, 4, size=rows)
    base: list[dict] = []
    truth: dict[str, list] = {"id": [], "kind": [], "of": [], "jaccard": []}
    path = out_dir / "rows" / f"medmcqa-{shard:05d}.jsonl"
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        for i in range(start, start + rows):
            r = prng.random()
            if base and r < 0.02:
                src = base[prng.randrange(len(base))]
                row = dict(src, id=f"x{i}")
                truth["id"].append(row["id"])
                truth["kind"].append("exact")
                truth["of"].append(src["id"])
                truth["jaccard"].append(1.0)
            elif base and r < 0.05:
                src = base[prng.randrange(len(base))]
                orig_words = src["question"].split()
                orig = shingles(orig_words)
                target = prng.uniform(0.5, 0.97)

                def edit(words: list[str]) -> list[str]:
                    # One alphanumeric word: the dedup's tokenizer sees exactly one word replaced.
                    out = list(words)
                    out[prng.randrange(len(out))] = f"edit{prng.randrange(10**12)}"
                    return out

                w = edit(orig_words)  # at least one edit: a near copy is never the original
                jac = len(orig & shingles(w)) / len(orig | shingles(w))
                while True:
                    trial = edit(w)
                    t_set = shingles(trial)
                    j = len(orig & t_set) / len(orig | t_set)
                    if j < target:
                        break
                    w, jac = trial, j
                row = dict(src, id=f"n{i}", question=" ".join(w))
                truth["id"].append(row["id"])
                truth["kind"].append("near")
                truth["of"].append(src["id"])
                truth["jaccard"].append(jac)
            else:
                j = i - start
                opts = [" ".join(vocab[opt_words[j, o, : opt_len[j, o]]]) + f" o{i}x{o}" for o in range(4)]
                row = {
                    "id": f"b{i}",
                    "question": " ".join(vocab[words[j, : lengths[j]]]),
                    "opa": opts[0],
                    "opb": opts[1],
                    "opc": opts[2],
                    "opd": opts[3],
                    "cop": int(cop[j]),
                    "choice_type": "single",
                    "exp": None,
                    "subject_name": "Medicine",
                    "topic_name": None,
                }
                base.append(row)
            f.write(json.dumps(row) + "\n")
    tmp.rename(path)
    pq.write_table(pa.table(truth), out_dir / f"truth-{shard:05d}.parquet")
    # A few base rows for the eval set's contaminated questions.
    return {"shard": shard, "sample": [base[k] for k in prng.sample(range(len(base)), min(50, len(base)))]}


def make_pool(rows: int, out_dir: Path, *, seed: int = 0, procs: int = 2) -> Path:
    """The pool's jsonl shards, truth and an eval set (``eval.jsonl``: 4,500 fresh MedQA questions and 500 pool
    questions with their options rotated) under ``out_dir``; cached (a ``ready`` marker)."""
    if (out_dir / "ready").exists():
        return out_dir
    (out_dir / "rows").mkdir(parents=True, exist_ok=True)  # the pool's files alone: a source reads the folder
    shards = [
        (out_dir, seed, s, start, min(SHARD_ROWS, rows - start))
        for s, start in enumerate(range(0, rows, SHARD_ROWS))
    ]
    with Pool(procs) as pool:
        done = pool.map(make_shard, shards)
    truth = pa.concat_tables(pq.read_table(p) for p in sorted(out_dir.glob("truth-*.parquet")))
    pq.write_table(truth, out_dir / "truth.parquet")
    for p in out_dir.glob("truth-*.parquet"):
        p.unlink()
    rng = random.Random(9)
    samples = [row for d in done for row in d["sample"]]
    picks = rng.sample(samples, min(500, len(samples)))
    with (out_dir / "eval.jsonl").open("w") as f:
        for k in range(4500):
            words = [f"e{rng.randrange(50_000)}" for _ in range(rng.randrange(30, 60))]
            opts = {lab: f"eval option {k} {lab}" for lab in "ABCD"}
            f.write(
                json.dumps(
                    {
                        "question": " ".join(words),
                        "options": opts,
                        "answer": opts["A"],
                        "answer_idx": "A",
                        "meta_info": "x",
                    }
                )
                + "\n"
            )
        for row in picks:
            opts = [row["opa"], row["opb"], row["opc"], row["opd"]]
            answer = opts[row["cop"]]
            opts = opts[1:] + opts[:1]
            labels = "ABCD"
            f.write(
                json.dumps(
                    {
                        "question": row["question"],
                        "options": dict(zip(labels, opts, strict=True)),
                        "answer": answer,
                        "answer_idx": labels[opts.index(answer)],
                        "meta_info": "x",
                    }
                )
                + "\n"
            )
    (out_dir / "ready").write_text("ok")
    return out_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--procs", type=int, default=2)
    args = ap.parse_args()
    t = time.perf_counter()
    make_pool(args.rows, args.out, procs=args.procs)
    print(f"{args.rows:,} rows in {time.perf_counter() - t:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
