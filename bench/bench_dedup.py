"""Benchmark: dedup recall/precision at known Jaccard, and dedup + decontamination of a large pool.

    flock /tmp/m1-heavy.lock .venv/bin/python bench/bench_dedup.py quality [--base 20000]
    flock /tmp/m1-heavy.lock .venv/bin/python bench/bench_dedup.py scale [--rows 2000000] [--workdir /tmp/m1-bench]
    flock /tmp/m1-heavy.lock .venv/bin/python bench/bench_dedup.py m1-exact [--base 20000] [--workdir /tmp/m1-bench]

quality: a pool of synthetic ~60-word questions (words drawn from a Zipf vocabulary so that unrelated rows are
dissimilar) with injected exact copies and near copies whose word 5-shingle Jaccard to their original is spread
over 0.5-0.97 (words replaced at evenly spread positions; the true Jaccard is computed exactly). The dedup
(`cluster` rule, text=question, Jaccard >= 0.8, 21 bands x 6 rows) is scored against the injected truth: recall
per Jaccard bin (a copy counts as found when it is dropped), and precision (dropped rows that are injected
copies). Baseline in the same run: datasketch ``MinHashLSH(threshold=0.8)`` (its own 9 x 13 banding) over the
same texts, a copy found when it shares a bucket with its original.

m1-exact: the m1 preset's dedup (fuzz.ratio >= 95 on rendered prompts, earlier-row rule; char 5-gram MinHash
candidates, 32 bands x 4 rows, pruned by exact length / character-histogram bounds) against m1's rule computed
exactly and quadratically (rapidfuzz ``process.cdist`` over every earlier row, m1's method without its 5-match
limit): the baseline in the same run. The pool: BASE rows of curation.devtools.synth's mixed pool (templated
stems: many similar, dissimilar-by-ratio pairs), ingested with m1's option shuffle, plus injected copies of
random rows edited down to a target ratio (90-100) three ways: ``subst`` (characters replaced at evenly spread
positions), ``words`` (words replaced by other pool words at spread positions) and ``indel`` (characters deleted
at spread positions and others inserted elsewhere: the adversarial case, whose char 5-gram Jaccard is lowest for
its ratio). Reports agreement of the dropped rows and the recorded ``duplicate_of`` with the exact rule, recall per
(edit kind, ratio bin), and both wall times.

scale: ROWS synthetic rows in MedMCQA layout, 2% exact and 3% near copies, ingested into a run store (not timed),
then the dedup (question + sorted options, Jaccard >= 0.8, cluster rule) and decontaminate (13-gram and MinHash)
stages against a 5,000-question eval set holding 500 pool copies with rotated options, in a fresh process limited
to 2 threads; wall time and peak RSS of that process. ``--pool zipf`` (default): questions of 40-60 words from a
Zipf vocabulary; ``--pool synth``: curation.devtools.synth's MedMCQA rows, whose few hundred template stems make
every stem recur thousands of times at this size (near-duplicate candidates then grow with the square of the pool).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


# ------------------------------------------------------------------------------------------ quality


def zipf_texts(n: int, rng: np.random.Generator, words: int = 60) -> list[list[str]]:
    ranks = rng.zipf(1.3, size=(n, words))
    return [[f"w{r}" for r in row] for row in np.minimum(ranks, 200_000)]


def shingle_set(words: list[str], k: int = 5) -> set[str]:
    return {" ".join(words[i : i + k]) for i in range(len(words) - k + 1)}


def quality(base: int, seed: int) -> dict:
    import pyarrow as pa
    import pyarrow.dataset as pads
    from datasketch import MinHash, MinHashLSH

    from curation.config import DedupOptions
    from curation.rules import minhash as mh
    from curation.stages.dedup import dedup_decisions

    rng = np.random.default_rng(seed)
    prng = random.Random(seed)
    docs = zipf_texts(base, rng)
    rows: list[list[str]] = [list(d) for d in docs]
    truth: dict[int, int] = {}  # injected row -> original row
    kind: dict[int, str] = {}
    for _ in range(base // 20):  # exact copies
        o = prng.randrange(base)
        truth[len(rows)] = o
        kind[len(rows)] = "exact"
        rows.append(list(docs[o]))
    for _ in range(base // 5):  # near copies at a target Jaccard, uniform in [0.5, 0.97]
        o = prng.randrange(base)
        target = prng.uniform(0.5, 0.97)
        orig = set(shingle_set(docs[o]))
        w = list(docs[o])
        while True:
            trial = list(w)
            trial[prng.randrange(len(trial))] = f"edit{prng.random():.8f}"
            t_set = shingle_set(trial)
            if len(orig & t_set) / len(orig | t_set) < target:
                break
            w = trial
        truth[len(rows)] = o
        kind[len(rows)] = "near"
        rows.append(w)
    order = list(range(len(rows)))
    prng.shuffle(order)  # copies land before or after their originals
    texts = [" ".join(rows[i]) for i in order]
    pos = {old: new for new, old in enumerate(order)}
    pairs = [(pos[c], pos[o]) for c, o in truth.items()]
    hasher = mh.MinHasher("word", 5, 128, 1)
    sets = hasher.shingle_sets(texts)
    jac = sets.jaccard(np.array([a for a, _ in pairs]), np.array([b for _, b in pairs]))

    opts = DedupOptions(text="question", rule="cluster", threshold=0.8)
    t = time.perf_counter()
    d, details = dedup_decisions(pads.dataset(pa.table({"question": texts})), opts)
    ours_s = time.perf_counter() - t
    dropped = ~d.kept
    # A pair is found when dedup puts copy and original in one cluster (one of them kept, the other dropped).
    found = np.array([d.cluster[a] == d.cluster[b] for a, b in pairs])
    # Precision: a dropped row is right when the row it records is of its family (same original) and their true
    # word 5-shingle Jaccard is >= 0.8 (families: an original and its injected copies).
    family = np.arange(len(texts))
    for c, o in truth.items():
        family[pos[c]] = pos[o]
    drop_rows = np.flatnonzero(dropped)
    match = d.duplicate_of[drop_rows]
    true_j = sets.jaccard(drop_rows, match)
    right = (family[drop_rows] == family[match]) & (true_j >= 0.8 - 1e-12)
    n_drop, true_drop = len(drop_rows), int(right.sum())

    t = time.perf_counter()
    lsh = MinHashLSH(threshold=0.8, num_perm=128)
    mhs = MinHash.bulk(
        [[" ".join(t.split()[i : i + 5]).encode() for i in range(56)] for t in texts], num_perm=128
    )
    for i, m in enumerate(mhs):
        lsh.insert(i, m)
    ds_found = np.array([max(a, b) in lsh.query(mhs[min(a, b)]) for a, b in pairs])
    ds_s = time.perf_counter() - t

    bins = [(0.5, 0.6), (0.6, 0.7), (0.7, 0.8), (0.8, 0.9), (0.9, 1.0), (1.0, 1.01)]
    table = []
    for lo, hi in bins:
        sel = (jac >= lo) & (jac < hi)
        if sel.any():
            table.append(
                {
                    "jaccard": f"[{lo:.1f}, {min(hi, 1.0):.1f}{']' if hi > 1 else ')'}",
                    "pairs": int(sel.sum()),
                    "recall": round(float(found[sel].mean()), 4),
                    "datasketch_recall": round(float(ds_found[sel].mean()), 4),
                }
            )
    hi_sel = jac >= 0.8
    res = {
        "rows": len(texts),
        "injected_pairs": len(pairs),
        "recall_at_jaccard_ge_0.8": round(float(found[hi_sel].mean()), 4),
        "datasketch_lsh_0.8_recall_at_ge_0.8": round(float(ds_found[hi_sel].mean()), 4),
        "precision": round(true_drop / max(n_drop, 1), 4),
        "dropped": n_drop,
        "below_0.8_dropped_share": round(float(found[jac < 0.8].mean()), 4),
        "ours_s": round(ours_s, 2),
        "datasketch_lsh_s": round(ds_s, 2),
        "bins": table,
        "candidate_pairs": details["candidate_pairs"],
    }
    print(f"{'true Jaccard':<16}{'pairs':>8}{'recall':>10}{'datasketch LSH 0.8':>20}")
    for r in table:
        print(f"{r['jaccard']:<16}{r['pairs']:>8}{r['recall']:>10}{r['datasketch_recall']:>20}")
    print(
        f"recall at J>=0.8: {res['recall_at_jaccard_ge_0.8']} (datasketch {res['datasketch_lsh_0.8_recall_at_ge_0.8']}); "
        f"precision {res['precision']} ({n_drop} dropped); ours {res['ours_s']} s, datasketch {res['datasketch_lsh_s']} s"
    )
    return res


# ------------------------------------------------------------------------------------------ m1 exact


def _spread(n: int, count: int, rng: random.Random) -> list[int]:
    """``count`` positions spread evenly over [0, n), with a random phase."""
    if count <= 0 or n <= 0:
        return []
    step = n / count
    phase = rng.random() * step
    return sorted({min(n - 1, int(phase + i * step)) for i in range(count)})


def edit_to_ratio(text: str, target: float, how: str, rng: random.Random, vocab: list[str]) -> str:
    """A copy of ``text`` edited at evenly spread positions until fuzz.ratio drops to about ``target``."""
    from rapidfuzz import fuzz

    letters = "abcdefghijklmnopqrstuvwxyz"
    n = len(text)
    budget = (1 - target / 100) * 2 * n  # Indel operations that bring the ratio to the target (same lengths)
    if how == "subst":  # a substitution is one deletion + one insertion
        chars = list(text)
        for i in _spread(n, round(budget / 2), rng):
            chars[i] = rng.choice([c for c in letters if c != chars[i].lower()])
        out = "".join(chars)
    elif how == "indel":  # deletions at one set of positions, insertions at another: no substitution pairs up
        half = round(budget / 2)
        dels = set(_spread(n, half, rng))
        ins = {(i + max(1, n // max(half, 1) // 2)) % n for i in _spread(n, half, rng)}
        out_chars = []
        for i, c in enumerate(text):
            if i in ins:
                out_chars.append(rng.choice(letters))
            if i not in dels:
                out_chars.append(c)
        out = "".join(out_chars)
    else:  # words: replace whole words until the ratio reaches the target
        words = text.split(" ")
        order = _spread(len(words), len(words), rng)
        rng.shuffle(order)
        out = text
        for i in order:
            if fuzz.ratio(out, text) <= target:
                break
            words[i] = rng.choice(vocab)
            out = " ".join(words)
    return out


def m1_exact(base: int, workdir: Path, seed: int, minhash: dict | None = None) -> dict:
    """The m1 preset's dedup (curation/configs/m1.yaml; ``minhash`` overrides its candidate settings) against
    m1's rule computed exactly."""
    import pyarrow as pa
    import pyarrow.dataset as pads
    from rapidfuzz import fuzz, process

    from curation.config import DedupOptions, IngestOptions, SourceConfig, preset_section
    from curation.devtools.synth import generate_pool
    from curation.rules import minhash as mh
    from curation.stages.dedup import dedup_decisions
    from curation.stages.ingest import ingest_in_process

    pool = workdir / f"mixed-{base}"
    if not (pool / "medmcqa.jsonl").exists():
        generate_pool(pool, base, format="mixed", seed=0, workers=2)
    sources = [
        SourceConfig(
            name=n, format=n, path=str(pool / f"{n}.jsonl"), **({"split": "train"} if n == "pubmedqa" else {})
        )
        for n in ("medqa", "headqa", "medmcqa", "pubmedqa")
    ]
    prompts = (
        ingest_in_process(sources, IngestOptions(m1_shuffle=True)).questions.column("prompt").to_pylist()
    )
    rng = random.Random(seed)
    vocab = sorted({w for p in prompts[:2000] for w in p.split(" ") if w.isalpha()})
    injected: list[tuple[int, str, float]] = []  # (original row, edit kind, target ratio)
    texts = list(prompts)
    for how in ("subst", "words", "indel"):
        for _ in range(max(base // 60, 30)):
            o = rng.randrange(len(prompts))
            target = rng.uniform(90, 100)
            texts.append(edit_to_ratio(prompts[o], target, how, rng, vocab))
            injected.append((o, how, target))
    n = len(texts)

    m1 = preset_section("m1", "dedup")
    opts = DedupOptions(**{**m1, "minhash": {**m1["minhash"], **(minhash or {})}})
    mh.set_threads(2)
    t = time.perf_counter()
    d, details = dedup_decisions(pads.dataset(pa.table({"prompt": texts})), opts)
    ours_s = time.perf_counter() - t

    # m1's rule, exactly: row i goes iff some earlier row j has ratio >= 95; it records the lowest such j.
    t = time.perf_counter()
    first_match = np.full(n, -1, np.int64)
    block = 1024
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        m = process.cdist(
            texts[lo:hi], texts[:hi], scorer=fuzz.ratio, score_cutoff=95, workers=-1, dtype=np.uint8
        )
        m[np.triu_indices(hi - lo, k=lo, m=hi)] = 0  # only earlier rows count
        hit = m.any(axis=1)
        first_match[lo:hi] = np.where(hit, (m > 0).argmax(axis=1), -1)
    exact_s = time.perf_counter() - t
    exact_drop = first_match >= 0
    ours_drop = ~d.kept
    agree_rows = int((exact_drop == ours_drop).sum())
    both = exact_drop & ours_drop
    same_ref = int((d.duplicate_of[both] == first_match[both]).sum())

    table = []
    ratio_of = np.array(
        [
            fuzz.ratio(texts[base_n], prompts[o])
            for base_n, (o, _, _) in zip(range(len(prompts), n), injected, strict=True)
        ]
    )
    kinds = np.array([h for _, h, _ in injected])
    rows_inj = np.arange(len(prompts), n)
    for how in ("subst", "words", "indel"):
        for lo, hi in ((90, 95), (95, 96), (96, 97), (97, 99), (99, 100.01)):
            sel = (kinds == how) & (ratio_of >= lo) & (ratio_of < hi)
            if sel.any():
                r = rows_inj[sel]
                table.append(
                    {
                        "edit": how,
                        "ratio": f"[{lo}, {min(hi, 100):g}{']' if hi > 100 else ')'}",
                        "copies": int(sel.sum()),
                        "exact_dropped": int(exact_drop[r].sum()),
                        "ours_dropped": int(ours_drop[r].sum()),
                    }
                )
    missed = int((exact_drop & ~ours_drop).sum())
    extra = int((~exact_drop & ours_drop).sum())
    res = {
        "rows": n,
        "injected": len(injected),
        "exact_dropped": int(exact_drop.sum()),
        "ours_dropped": int(ours_drop.sum()),
        "recall": round(float(both.sum() / max(exact_drop.sum(), 1)), 4),
        "missed": missed,
        "wrongly_dropped": extra,
        "rows_agreeing": agree_rows,
        "duplicate_of_agreeing": f"{same_ref}/{int(both.sum())}",
        "candidate_pairs": details["candidate_pairs"],
        "verified_pairs": details["verified_pairs"],
        "ours_s": round(ours_s, 2),
        "exact_quadratic_s": round(exact_s, 2),
        "speedup": round(exact_s / max(ours_s, 1e-9), 1),
        "bins": table,
    }
    print(f"{'edit':<8}{'ratio':<12}{'copies':>8}{'exact drops':>13}{'ours':>8}")
    for r in table:
        print(f"{r['edit']:<8}{r['ratio']:<12}{r['copies']:>8}{r['exact_dropped']:>13}{r['ours_dropped']:>8}")
    print(
        f"{n:,} rows: exact rule drops {res['exact_dropped']:,}, ours {res['ours_dropped']:,} (recall {res['recall']}, "
        f"{missed} missed, {extra} wrongly dropped; duplicate_of agrees {res['duplicate_of_agreeing']}); "
        f"{res['candidate_pairs']:,} candidate pairs; ours {res['ours_s']} s vs exact quadratic "
        f"{res['exact_quadratic_s']} s ({res['speedup']}x)"
    )
    return res


# ------------------------------------------------------------------------------------------ scale


def zipf_medmcqa(path: Path, rows: int, seed: int = 0) -> dict:
    """A MedMCQA-layout pool of Zipf-vocabulary questions (40-60 words, options of 1-3 words) with 2% exact and 3%
    near copies (question words replaced until the word 5-shingle Jaccard falls below a target in 0.5-0.97)."""
    rng = np.random.default_rng(seed)
    prng = random.Random(seed)
    vocab = np.array([f"w{i}" for i in range(200_001)], dtype=object)
    n_base = int(rows * 0.95)
    lengths = rng.integers(40, 61, size=n_base)
    words = np.minimum(rng.zipf(1.3, size=(n_base, 60)), 200_000)
    opt_words = np.minimum(rng.zipf(1.3, size=(n_base, 4, 3)), 200_000)
    opt_len = rng.integers(1, 4, size=(n_base, 4))
    cop = rng.integers(0, 4, size=n_base)
    copies = {"exact": 0, "near": 0}
    with path.open("w") as f:
        written = 0
        base: list[dict] = []
        for i in range(rows):
            r = prng.random()
            if base and r < 0.02:
                row = dict(base[prng.randrange(len(base))], id=f"x{i}")
                copies["exact"] += 1
            elif base and r < 0.05:
                src = base[prng.randrange(len(base))]
                w = src["question"].split()
                orig = shingle_set(w)
                target = prng.uniform(0.5, 0.97)
                while True:
                    trial = list(w)
                    trial[prng.randrange(len(trial))] = f"edit{prng.random():.8f}"
                    t_set = shingle_set(trial)
                    if len(orig & t_set) / len(orig | t_set) < target:
                        break
                    w = trial
                row = dict(src, id=f"n{i}", question=" ".join(w))
                copies["near"] += 1
            else:
                j = len(base) % n_base
                q = " ".join(vocab[words[j, : lengths[j]]])
                opts = [" ".join(vocab[opt_words[j, o, : opt_len[j, o]]]) + f" o{j}x{o}" for o in range(4)]
                row = {
                    "id": f"b{i}",
                    "question": q,
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
            written += 1
    return {"rows": written, **copies}


def prepare(rows: int, workdir: Path, pool_kind: str = "zipf") -> Path:
    """Synthetic pool -> a run store with `questions` (cached in workdir), plus the eval set file."""
    run = workdir / f"run-{pool_kind}-{rows}"
    marker = run / "ready"
    if marker.exists():
        return run
    import json as _json

    from curation.config import IngestOptions, SourceConfig
    from curation.devtools.synth import generate_pool
    from curation.stages.ingest import ingest_in_process
    from curation.store.runstore import RunStore

    pool = workdir / f"pool-{pool_kind}-{rows}"
    pool.mkdir(parents=True, exist_ok=True)
    if not (pool / "medmcqa.jsonl").exists():
        if pool_kind == "zipf":
            zipf_medmcqa(pool / "medmcqa.jsonl", rows)
        else:
            generate_pool(pool, rows, format="medmcqa", seed=0, workers=2)
    tables = ingest_in_process(
        [SourceConfig(name="medmcqa", format="medmcqa", path=str(pool / "medmcqa.jsonl"))], IngestOptions()
    )
    store = RunStore(str(run))
    store.commit([store.write_table("questions", tables.questions)])
    # Eval set: 4,500 fresh questions and 500 pool questions with their options rotated, in MedQA layout.
    rng = random.Random(9)
    q = tables.questions
    picks = rng.sample(range(q.num_rows), 500)
    with (run / "eval.jsonl").open("w") as f:
        from curation.devtools.synth import medqa_row

        for _ in range(4500):
            f.write(_json.dumps(medqa_row(rng, 4)) + "\n")
        for i in picks:
            opts = [o["text"] for o in q.column("options")[i].as_py()]
            opts = opts[1:] + opts[:1]
            ans = q.column("answer_text")[i].as_py()
            labels = "ABCDE"[: len(opts)]
            f.write(
                _json.dumps(
                    {
                        "question": q.column("question")[i].as_py(),
                        "options": dict(zip(labels, opts, strict=True)),
                        "answer": ans,
                        "answer_idx": labels[opts.index(ans)],
                        "meta_info": "x",
                    }
                )
                + "\n"
            )
    marker.write_text("ok")
    return run


def scale_child(run: str, workdir: str) -> None:
    from curation.config import CurationConfig
    from curation.pipeline import StageContext
    from curation.stages.decontaminate import DecontaminateStage
    from curation.stages.dedup import DedupStage
    from curation.store.runstore import RunStore

    store = RunStore(run)
    cfg = CurationConfig(
        sources=[{"name": "medmcqa", "format": "medmcqa", "path": "x"}],
        ray={"num_cpus": 2},
        dedup={"text": "question_options"},
        decontaminate={
            "eval_sets": [{"name": "eval", "format": "medqa", "path": f"{run}/eval.jsonl", "split": "test"}]
        },
    )
    out = {}
    t0 = time.perf_counter()
    for stage in (DedupStage(), DecontaminateStage()):
        t = time.perf_counter()
        r = stage.run(StageContext(store=store, config=cfg, input_hash="bench"))
        store.commit(r.outputs)
        out[stage.name] = {
            "s": round(time.perf_counter() - t, 1),
            "in": r.rows_in,
            "out": r.rows_out,
            "rejected": r.rejected_by_reason,
        }
    out["total_s"] = round(time.perf_counter() - t0, 1)
    out["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    print("RESULT " + json.dumps(out))


def scale(rows: int, workdir: Path, pool_kind: str) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    run = prepare(rows, workdir, pool_kind)
    print(f"prepared {rows:,} rows in {time.perf_counter() - t:.0f} s (not timed)")
    env = dict(os.environ, NUMBA_NUM_THREADS="2", OMP_NUM_THREADS="2", POLARS_MAX_THREADS="2")
    proc = subprocess.run(
        [sys.executable, __file__, "scale-child", str(run), str(workdir)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        raise SystemExit(f"child failed: {proc.returncode}")
    res = {"rows": rows, "pool": pool_kind, **json.loads(lines[0][7:])}
    print(
        f"{rows:,} rows: dedup {res['dedup']['s']} s, decontaminate {res['decontaminate']['s']} s, "
        f"total {res['total_s']} s, peak RSS {res['peak_rss_gib']} GiB (2 threads)"
    )
    return res


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--base", type=int, default=20_000)
    q.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("scale")
    s.add_argument("--rows", type=int, default=2_000_000)
    s.add_argument("--workdir", default="/tmp/m1-bench")
    s.add_argument(
        "--pool",
        choices=["zipf", "synth"],
        default="zipf",
        help="zipf: varied vocabulary; synth: curation.devtools.synth MedMCQA (a few hundred template stems, so "
        "near-duplicate candidates grow quadratically with the pool)",
    )
    e = sub.add_parser("m1-exact")
    e.add_argument("--base", type=int, default=20_000)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--workdir", default="/tmp/m1-bench")
    e.add_argument(
        "--minhash",
        default=None,
        help='overrides of the m1 preset\'s candidate MinHash, as JSON (e.g. {"k": 5})',
    )
    c = sub.add_parser("scale-child")
    c.add_argument("run")
    c.add_argument("workdir")
    args = ap.parse_args()
    if args.cmd == "quality":
        print(json.dumps(quality(args.base, args.seed)))
    elif args.cmd == "m1-exact":
        print(
            json.dumps(m1_exact(args.base, Path(args.workdir), args.seed, json.loads(args.minhash or "{}")))
        )
    elif args.cmd == "scale":
        print(json.dumps(scale(args.rows, Path(args.workdir), args.pool)))
    else:
        scale_child(args.run, args.workdir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
