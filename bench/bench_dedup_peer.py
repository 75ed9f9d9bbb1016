"""Benchmark: our dedup (`m1 curate --stages ingest,dedup`, the Ray path) against datatrove's MinHash dedup, side by
side on the same pool, the same shingles and the same LSH banding.

    flock /tmp/m1-heavy.lock .venv/bin/python bench/bench_dedup_peer.py --rows 2000000 --dt-python /tmp/dt-venv/bin/python

datatrove lives in its own virtualenv (``python3 -m venv /tmp/dt-venv && /tmp/dt-venv/bin/pip install datatrove
xxhash``), never in the project's: this script runs itself under ``--dt-python`` with ``--datatrove-child`` for
datatrove's part (that mode imports only the standard library and datatrove).

The pool: bench/zipf_pool.py (MedMCQA-layout JSONL shards of 250,000 rows, 2% exact and 3% near copies with their
true word 5-shingle Jaccard in ``truth.parquet``), made once per size under --workdir. The compared text is the
``question`` field for both.

- **ours**: a fresh `m1 curate` process (its own local Ray, 2 CPUs), ``dedup: {text: question, executor: ray}``
  with the defaults: word 5-shingles, 128 permutations of which 21 bands x 6 rows = 126 are banded, candidates
  verified by exact Jaccard >= 0.8, cluster rule. Figures: the dedup stage's wall time from the manifest's stage
  record, and the whole command (Ray start, ingest of the JSONL into Parquet, dedup). Ingest already drops
  byte-identical rows (same qid) as ``duplicate_qid``, so the exact copies never reach dedup: a copy counts as
  found by us when ingest's ``duplicate_qid`` or dedup drops it.
- **datatrove**: its documented 4-step local pipeline, each step a ``LocalPipelineExecutor`` with 2 worker
  processes: ``JsonlReader(text_key=question, id_key=id)`` -> ``MinhashDedupSignature`` (one task per shard) ->
  ``MinhashDedupBuckets`` (21 tasks: one per bucket) -> ``MinhashDedupCluster`` (1 task) -> ``JsonlReader`` ->
  ``MinhashDedupFilter`` (one task per shard; the removed documents go to an ``exclusion_writer``, uncompressed
  JSONL, and the kept ones to no writer: less output than ours, which writes a decision per row). MinhashConfig:
  n_grams 5, num_buckets 21, hashes_per_bucket 6 (126 permutations), 64-bit hashes. Two settings differ from
  datatrove's defaults, both for the same shingles as ours: ``norm_numbers=False`` (its default turns every digit
  run into ``0``, and the pool's words are ``w<number>``: every question would shingle alike) and a whitespace
  word tokenizer (its English default is NLTK's; after its own punctuation removal and lower-casing a whitespace
  split gives ours runs of letters and digits, and is the cheaper tokenizer). datatrove has no verification step:
  every LSH candidate pair is a duplicate. Figure: the four steps' wall time (reading the JSONL included).

Quality against the truth: recall over the injected copies with true Jaccard >= 0.8 (exact copies included), also
split exact / near; precision = dropped rows that are injected copies (of any Jaccard) / rows dropped.
Prints a table and one JSON line; ratios datatrove / ours (dedup stage) and datatrove / ours (whole command).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BANDS, ROWS, NGRAMS = 21, 6, 5

try:  # only the datatrove child (its own venv) has datatrove
    from datatrove.utils.word_tokenizers import WordTokenizer
except ImportError:
    WordTokenizer = object


class WhitespaceTokenizer(WordTokenizer):
    """Words = whitespace-split runs, after datatrove's own normalisation (lower case, no punctuation)."""

    def __init__(self) -> None:
        self.language = "en"

    def word_tokenize(self, text: str) -> list[str]:
        return text.split()

    def sent_tokenize(self, text: str) -> list[str]:
        return [text]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [(0, len(text))]


# ----------------------------------------------------------------------------------------------- datatrove child
def datatrove_child(pool: Path, out: Path, workers: int) -> None:
    """datatrove's 4 steps on ``pool``'s shards into ``out``; prints one JSON line of step timings."""
    # Imported by module name, not __main__'s: datatrove's forkserver workers unpickle it from there.
    from bench_dedup_peer import WhitespaceTokenizer
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.text import TextNormConfig

    shards = sorted(p.name for p in pool.glob("medmcqa-*.jsonl"))
    cfg = MinhashConfig(
        n_grams=NGRAMS,
        num_buckets=BANDS,
        hashes_per_bucket=ROWS,
        norm_config=TextNormConfig(norm_numbers=False),
    )

    def reader() -> JsonlReader:
        return JsonlReader(
            str(pool), glob_pattern="medmcqa-*.jsonl", text_key="question", id_key="id", compression=None
        )

    steps = [
        (
            "signatures",
            [
                reader(),
                MinhashDedupSignature(
                    output_folder=str(out / "sigs"), config=cfg, language=WhitespaceTokenizer()
                ),
            ],
            len(shards),
        ),
        (
            "buckets",
            [
                MinhashDedupBuckets(
                    input_folder=str(out / "sigs"), output_folder=str(out / "buckets"), config=cfg
                )
            ],
            BANDS,
        ),
        (
            "cluster",
            [
                MinhashDedupCluster(
                    input_folder=str(out / "buckets"), output_folder=str(out / "remove"), config=cfg
                )
            ],
            1,
        ),
        (
            "filter",
            [
                reader(),
                MinhashDedupFilter(
                    input_folder=str(out / "remove"),
                    exclusion_writer=JsonlWriter(str(out / "removed"), compression=None),
                ),
            ],
            len(shards),
        ),
    ]
    times = {}
    t_all = time.perf_counter()
    for name, pipeline, tasks in steps:
        t = time.perf_counter()
        LocalPipelineExecutor(
            pipeline=pipeline, tasks=tasks, workers=min(workers, tasks), logging_dir=str(out / "logs" / name)
        ).run()
        times[name] = round(time.perf_counter() - t, 2)
    print(
        "DT " + json.dumps({"steps_s": times, "total_s": round(time.perf_counter() - t_all, 2)}), flush=True
    )


# --------------------------------------------------------------------------------------------------------- ours
def run_ours(pool: Path, workdir: Path, cpus: int) -> tuple[dict, Path]:
    cfg = workdir / "peer-ours.json"
    cfg.write_text(
        json.dumps(
            {
                "name": "peer",
                "sources": [{"name": "medmcqa", "format": "medmcqa", "path": str(pool), "split": "train"}],
                "ray": {"num_cpus": cpus},
                "dedup": {"text": "question", "executor": "ray"},
            }
        )
    )
    run = Path(tempfile.mkdtemp(prefix="peer-ours-", dir=workdir))
    ray_tmp = tempfile.mkdtemp(prefix="m1p-", dir="/tmp")
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_TMPDIR=ray_tmp, HF_HUB_OFFLINE="1")
    env.pop("RAY_ADDRESS", None)
    cmd = [str(REPO / ".venv/bin/m1"), "curate", str(cfg), "--run-dir", str(run), "--stages", "ingest,dedup"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    subprocess.run(["rm", "-rf", ray_tmp], check=False)
    if proc.returncode:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        raise SystemExit(f"m1 curate failed ({proc.returncode})")
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    return {
        "total_s": round(wall, 2),
        "ingest_s": round(stages["ingest"]["wall_s"], 2),
        "dedup_s": round(stages["dedup"]["wall_s"], 2),
        "dedup_rows_in": stages["dedup"]["rows_in"],
        "dedup_rejected": stages["dedup"]["rows_rejected"],
    }, run


def run_datatrove(pool: Path, workdir: Path, dt_python: str, workers: int) -> tuple[dict, Path]:
    out = Path(tempfile.mkdtemp(prefix="peer-dt-", dir=workdir))
    env = dict(os.environ, PYTHONPATH=str(REPO / "bench"))
    cmd = [dt_python, __file__, "--datatrove-child", "--pool", str(pool), "--out", str(out)]
    cmd += ["--workers", str(workers)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        print(proc.stdout[-3000:], proc.stderr[-5000:])
        raise SystemExit(f"datatrove failed ({proc.returncode})")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("DT "))
    return {**json.loads(line[3:]), "process_s": round(wall, 2)}, out


# ------------------------------------------------------------------------------------------------------ quality
def quality(con, truth: Path, dropped_sql: str) -> dict:
    """Recall (J >= 0.8; exact / near) and precision of the set of dropped pool ids ``dropped_sql``."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE dropped AS SELECT DISTINCT id FROM ({dropped_sql})")
    row = con.execute(
        f"""
        WITH t AS (SELECT * FROM read_parquet('{truth}'))
        SELECT
            count(*) FILTER (WHERE jaccard >= 0.8),
            count(*) FILTER (WHERE jaccard >= 0.8 AND id IN (SELECT id FROM dropped)),
            count(*) FILTER (WHERE kind = 'exact'),
            count(*) FILTER (WHERE kind = 'exact' AND id IN (SELECT id FROM dropped)),
            count(*) FILTER (WHERE kind = 'near' AND jaccard >= 0.8),
            count(*) FILTER (WHERE kind = 'near' AND jaccard >= 0.8 AND id IN (SELECT id FROM dropped)),
            (SELECT count(*) FROM dropped),
            (SELECT count(*) FROM dropped WHERE id IN (SELECT id FROM t))
        FROM t
        """
    ).fetchone()
    copies, found, exact, exact_found, near, near_found, dropped, dropped_copies = row
    return {
        "recall_j08": round(found / copies, 5),
        "recall_exact": round(exact_found / exact, 5),
        "recall_near_j08": round(near_found / near, 5),
        "precision": round(dropped_copies / dropped, 5) if dropped else None,
        "copies_j08": copies,
        "dropped": dropped,
        "dropped_not_copies": dropped - dropped_copies,
    }


def ours_dropped_sql(run: Path) -> str:
    m = json.loads((run / "manifest.json").read_text())["tables"]
    q, d, ri = (run / m[t]["path"] for t in ("questions", "dedup", "rejects/ingest"))
    return f"""
        SELECT q.source_id AS id FROM read_parquet('{d}/*.parquet') d
        JOIN read_parquet('{q}/*.parquet') q USING (qid) WHERE NOT d.kept
        UNION ALL
        SELECT json_extract_string(raw, '$.id') AS id FROM read_parquet('{ri}/*.parquet')
        WHERE reason = 'duplicate_qid'
    """


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/m1-scale"))
    ap.add_argument("--dt-python", default="/tmp/dt-venv/bin/python")
    ap.add_argument("--workers", type=int, default=2, help="datatrove worker processes = our Ray CPUs")
    ap.add_argument("--keep", action="store_true", help="keep both outputs")
    ap.add_argument("--datatrove-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--pool", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.datatrove_child:
        datatrove_child(args.pool, args.out, args.workers)
        return

    import duckdb

    sys.path.insert(0, str(REPO / "bench"))
    from zipf_pool import make_pool

    args.workdir.mkdir(parents=True, exist_ok=True)
    pool = make_pool(args.rows, args.workdir / f"pool-{args.rows}")
    load0 = os.getloadavg()[0]
    ours, run = run_ours(pool, args.workdir, args.workers)
    print("ours " + json.dumps(ours), flush=True)
    dt, out = run_datatrove(pool, args.workdir, args.dt_python, args.workers)
    print("datatrove " + json.dumps(dt), flush=True)
    con = duckdb.connect()
    q_ours = quality(con, pool / "truth.parquet", ours_dropped_sql(run))
    q_dt = quality(con, pool / "truth.parquet", f"SELECT id FROM read_json_auto('{out}/removed/*.jsonl')")
    ratio_stage = dt["total_s"] / ours["dedup_s"]
    ratio_total = dt["total_s"] / ours["total_s"]
    print(f"\n{args.rows:,} rows, {args.workers} CPUs each; load average at start {load0:.1f}")
    print(f"{'':<10}{'wall s':>10}{'recall':>9}{'exact':>8}{'near':>8}{'prec':>8}{'dropped':>9}")
    for name, wall, qq in (
        ("ours dedup", ours["dedup_s"], q_ours),
        ("datatrove", dt["total_s"], q_dt),
    ):
        print(
            f"{name:<10}{wall:>10.1f}{qq['recall_j08']:>9}{qq['recall_exact']:>8}{qq['recall_near_j08']:>8}"
            f"{qq['precision']!s:>8}{qq['dropped']:>9,}"
        )
    print(
        f"ours whole command (Ray start + ingest {ours['ingest_s']} s + dedup): {ours['total_s']} s; "
        f"datatrove steps: {dt['steps_s']}"
    )
    print(
        f"ratio datatrove / ours dedup stage: {ratio_stage:.2f}x; datatrove / ours whole command: {ratio_total:.2f}x"
    )
    print(
        "RESULT "
        + json.dumps(
            {
                "rows": args.rows,
                "cpus": args.workers,
                "ours": {**ours, **q_ours},
                "datatrove": {**dt, **q_dt},
                "ratio_dt_over_ours_dedup": round(ratio_stage, 3),
                "ratio_dt_over_ours_total": round(ratio_total, 3),
                "load_avg_start": round(load0, 1),
                "load_avg_end": round(os.getloadavg()[0], 1),
            }
        )
    )
    if not args.keep:
        subprocess.run(["rm", "-rf", str(run), str(out)], check=False)


if __name__ == "__main__":
    main()
