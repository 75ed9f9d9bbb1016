"""Benchmark: every CPU stage of a 196K pool end to end (ingest, dedup, decontaminate, m23k, classify, sample).

    flock /tmp/m1-heavy.lock .venv/bin/python bench/bench_cpu_stages.py [--rows 196157] [--preset default|m1]
        [--workdir /tmp/m1-bench]

A synthetic pool in m1's source mix (curation.devtools.synth, 2% exact and 3% near copies; not timed) runs through
the pipeline runner on a local Ray with 2 CPUs (Ray start-up reported apart): ingest, dedup, decontaminate (against
a 5,000-question eval set in MedQA layout holding 500 pool copies with rotated options), then, standing in for the
LLM stages (not timed), every candidate becomes a curated row with a canned reasoning, and m23k (second
decontamination), classify (offline MeSH rules) and sample (m1's sampler, 1,000 rows) run. Every stage writes its
tables through the run store. The baseline is the goal (60 s on 2 cores).

Presets: default (question + sorted options, word 5-shingle Jaccard >= 0.8, cluster rule; 13-gram and MinHash
decontamination) and m1 (fuzz.ratio >= 95 on prompts with char-shingle candidates, m1's earlier-row rule; ratio
decontamination added).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def eval_file(pool: Path, out: Path) -> None:
    from curation.devtools.synth import medqa_row

    rng = random.Random(9)
    rows = [json.loads(line) for line in (pool / "medmcqa.jsonl").open() if line.strip()]
    with out.open("w") as f:
        for _ in range(4500):
            f.write(json.dumps(medqa_row(rng, 4)) + "\n")
        for r in rng.sample(rows, 500):
            opts = [r["opb"], r["opc"], r["opd"], r["opa"]]
            ans = [r["opa"], r["opb"], r["opc"], r["opd"]][r["cop"]]
            f.write(
                json.dumps(
                    {
                        "question": r["question"],
                        "options": dict(zip("ABCD", opts, strict=True)),
                        "answer": ans,
                        "answer_idx": "ABCD"[opts.index(ans)],
                        "meta_info": "x",
                    }
                )
                + "\n"
            )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=196_157)
    ap.add_argument("--preset", choices=["default", "m1"], default="default")
    ap.add_argument("--workdir", default="/tmp/m1-bench")
    args = ap.parse_args()

    import pyarrow as pa

    from curation.config import CurationConfig, preset_section
    from curation.devtools.synth import generate_pool
    from curation.pipeline import ensure_ray, run_stages
    from curation.stages.classify import ClassifyStage
    from curation.stages.decontaminate import DecontaminateStage
    from curation.stages.dedup import DedupStage
    from curation.stages.ingest import IngestStage
    from curation.stages.m23k import M23kStage
    from curation.stages.sample import SampleStage
    from curation.store.runstore import RunStore

    work = Path(args.workdir)
    pool = work / f"mixed-{args.rows}"
    if not (pool / "medmcqa.jsonl").exists():
        generate_pool(pool, args.rows, format="mixed", seed=0, workers=2)
    if not (pool / "eval.jsonl").exists():
        eval_file(pool, pool / "eval.jsonl")
    run = work / f"run-cpu-{args.preset}-{args.rows}-{os.getpid()}"
    sources = [
        {
            "name": n,
            "format": n,
            "path": str(pool / f"{n}.jsonl"),
            **({"split": "train"} if n == "pubmedqa" else {}),
        }
        for n in ("medqa", "headqa", "medmcqa", "pubmedqa")
    ]
    presets = {
        "default": {"dedup": {"text": "question_options"}, "decontaminate": {}},
        "m1": {
            "dedup": preset_section("m1", "dedup"),  # the preset's own rule and candidate settings
            "decontaminate": {"ratio_threshold": 95},
        },
    }
    p = presets[args.preset]
    cfg = CurationConfig(
        sources=sources,
        ingest={"m1_shuffle": True},
        ray={"num_cpus": 2},
        dedup=p["dedup"],
        decontaminate={
            "eval_sets": [
                {"name": "eval", "format": "medqa", "path": str(pool / "eval.jsonl"), "split": "test"}
            ],
            **p["decontaminate"],
        },
        teacher={"engine": "t"},
        engines={"t": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}},
        classify={"method": "offline"},
        sample={"method": "m1", "size": 1000},
    )
    store = RunStore(str(run))
    t = time.perf_counter()
    ensure_ray(cfg)
    ray_s = time.perf_counter() - t
    quiet = lambda *a, **k: None  # noqa: E731
    t0 = time.perf_counter()
    first = run_stages([IngestStage(), DedupStage(), DecontaminateStage()], cfg, store, log=quiet)
    mid = time.perf_counter()
    # Stand-in for score/teacher/curate (not timed): every candidate validated with a canned trace.
    cand = store.read_table("candidates")
    n = cand.num_rows
    curated = pa.table(
        {
            "answer_idx": cand.column("answer_label"),
            "source": cand.column("source"),
            "metadata": cand.column("metadata"),
            "prompt": cand.column("prompt"),
            "answer_letter": cand.column("answer_label"),
            "answer_string": cand.column("answer_text"),
            "reasoning": pa.array(["Let me think step by step about the findings."] * n),
            "distilled_answer_string": cand.column("answer_text"),
            "text": cand.column("prompt"),
            "qid": cand.column("qid"),
            "pool_index": cand.column("pool_index"),
            "attempt": pa.array([1] * n, pa.int32()),
            "model": pa.array(["canned"] * n),
            "request_id": pa.array([f"r{i}" for i in range(n)]),
        }
    )
    store.commit([store.write_table("curated", curated)])
    t1 = time.perf_counter()
    second = run_stages([M23kStage(), ClassifyStage(), SampleStage()], cfg, store, log=quiet)
    t2 = time.perf_counter()
    stages = {r["name"]: {"s": r["wall_s"], "in": r["rows_in"], "out": r["rows_out"]} for r in first + second}
    res = {
        "rows": args.rows,
        "preset": args.preset,
        "cpus": 2,
        "ray_start_s": round(ray_s, 1),
        "stages": stages,
        "total_s": round((mid - t0) + (t2 - t1), 1),
        "goal_s": 60,
        "driver_peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }
    print(f"{'stage':<16}{'in':>10}{'out':>10}{'s':>8}")
    for name, s in stages.items():
        print(f"{name:<16}{s['in']:>10,}{s['out']:>10,}{s['s']:>8.1f}")
    print(f"total {res['total_s']} s (goal < 60 s; Ray start {res['ray_start_s']} s apart)")
    print(json.dumps(res))
    import shutil

    shutil.rmtree(run, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
