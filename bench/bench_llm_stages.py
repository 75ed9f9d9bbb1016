"""LLM stage benchmarks: the scoring stage against its engine alone, and the teacher stage's driver memory.

score:           the score stage (requests built from the question table, the engine, answer extraction,
                 the scores / difficulty tables) against `run_requests` alone on the same requests, same engine,
                 fresh ledger each time. Prints stage throughput / engine throughput (goal >= 0.9).
teacher-memory:  the teacher stage over N hard questions against the rehearsal server (in its own process),
                 in a fresh driver process per size; prints the driver's peak RSS and the ratio of the largest
                 to the smallest size (goal: <= 1.3 from 50K to 200K, i.e. streaming, not growing with the pool).
                 The peak is the driver's own high-water mark (VmHWM of /proc/self/status). Not ru_maxrss: on
                 Linux a child's ru_maxrss starts from the RSS of the process that forked it (here the harness,
                 which generated and ingested the pool, so it grows with N); it is printed beside, for reference.

    .venv/bin/python bench/bench_llm_stages.py score --questions 4000
    .venv/bin/python bench/bench_llm_stages.py score --questions 600 --engine vllm
    .venv/bin/python bench/bench_llm_stages.py teacher-memory --sizes 50000,200000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_worker_niceness", "0")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def prepare_run(rows: int, work: Path, *, hard: bool) -> Path:
    """A run with `rows` synthetic MedQA questions ingested (and, with ``hard``, a difficulty table: all hard)."""
    import pyarrow as pa

    from curation.config import CurationConfig
    from curation.devtools.synth import generate_pool
    from curation.pipeline import run_stages
    from curation.stages.ingest import IngestStage
    from curation.store.runstore import RunStore

    pool = work / "pool"
    generate_pool(pool, rows, format="medqa", seed=1, dup_exact_frac=0.0, dup_near_frac=0.0)
    cfg = CurationConfig.model_validate(
        {"sources": [{"name": "medqa", "format": "medqa", "path": str(pool / "medqa.jsonl")}]}
    )
    run = work / "run"
    store = RunStore(str(run))
    run_stages([IngestStage()], cfg, store, log=lambda _m: None)
    if hard:
        q = store.read_table("questions", columns=["source", "qid"])
        n = q.num_rows
        difficulty = q.append_column("pass_rates", pa.array(["{}"] * n))
        for name, value in (("samples", 2), ("correct", 0), ("errors", 0)):
            difficulty = difficulty.append_column(name, pa.array([value] * n, pa.int32()))
        difficulty = difficulty.append_column("pass_rate", pa.array([0.0] * n))
        difficulty = difficulty.append_column("decision", pa.array(["hard"] * n))
        difficulty = difficulty.append_column("rule", pa.array(["all_wrong: bench"] * n))
        store.commit([store.write_table("difficulty", difficulty)])
    return run


def _engine(kind: str, base_url: str | None, model_dir: str | None) -> dict[str, Any]:
    if kind == "vllm":
        return {"kind": "vllm", "model": model_dir, "replicas": 1, "batch_size": 64, "max_model_len": 2048}
    return {
        "kind": "openai",
        "base_url": base_url,
        "model": "Qwen/Qwen2.5-7B-Instruct",
        "max_concurrency": 128,
    }


def bench_score(args: argparse.Namespace) -> None:
    import ray

    from curation.config import CurationConfig
    from curation.devtools.rehearse import RehearsalConfig, spawn_rehearsal_server, stop_rehearsal_server
    from curation.engines import run_requests
    from curation.pipeline import StageContext
    from curation.stages.score import ScoreStage
    from curation.store.runstore import RunStore

    work = Path(tempfile.mkdtemp(prefix="m1bench-score-"))
    proc = None
    try:
        run = prepare_run(args.questions, work, hard=False)
        store = RunStore(str(run))
        base_url, model_dir = None, None
        if args.engine == "vllm":
            from curation.devtools.tiny_model import build_tiny_model

            model_dir = str(build_tiny_model(work / "tiny"))
        else:
            proc, base_url = spawn_rehearsal_server(
                RehearsalConfig(pool=store.table_location("questions"), latency_ms=0, latency_jitter_ms=0)
            )
        cfg = CurationConfig.model_validate(
            {
                "sources": [{"name": "x", "format": "medqa", "path": str(work)}],
                "engines": {"s": _engine(args.engine, base_url, model_dir)},
                "score": {"scorers": [{"name": "s", "engine": "s", "max_tokens": args.max_tokens}]},
            }
        )
        if not ray.is_initialized():  # prepare_run's ingest may have started it
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        stage = ScoreStage()
        label, engine, requests = next(stage.requests_per_engine(cfg, store))
        # Warm-up (actor start, vLLM load, server JIT) on a slice, so neither side pays it.
        run_requests(
            requests.slice(0, 64), engine, ledger_uri=str(work / "warm"), progress=False
        ).materialize()

        results: dict[str, list[float]] = {"engine": [], "stage": []}
        for rep in range(args.repeats):
            for mode in ("engine", "stage") if rep % 2 == 0 else ("stage", "engine"):
                shutil.rmtree(store.path("ledger"), ignore_errors=True)
                t0 = time.perf_counter()
                if mode == "engine":
                    _, engine, requests = next(stage.requests_per_engine(cfg, store))
                    run_requests(requests, engine, ledger_uri=store.ledger_uri, progress=False).materialize()
                else:
                    stage.run(StageContext(store=store, config=cfg, input_hash="bench"))
                    store.gc()
                results[mode].append(time.perf_counter() - t0)
        engine_s, stage_s = min(results["engine"]), min(results["stage"])
        n = requests.num_rows
        print(
            json.dumps(
                {
                    "bench": "score_stage_vs_engine",
                    "engine_kind": args.engine,
                    "requests": n,
                    "engine_alone_s": round(engine_s, 3),
                    "stage_s": round(stage_s, 3),
                    "engine_req_per_s": round(n / engine_s, 1),
                    "stage_req_per_s": round(n / stage_s, 1),
                    "stage_over_engine_throughput": round(engine_s / stage_s, 3),
                    "goal": ">= 0.9",
                    "all_runs_s": results,
                }
            )
        )
    finally:
        if proc is not None:
            stop_rehearsal_server(proc)
        shutil.rmtree(work, ignore_errors=True)


CHILD = """
import json, os, resource, sys, time
sys.path.insert(0, {root!r})
import ray
from curation.config import CurationConfig
from curation.pipeline import StageContext
from curation.stages.teacher import TeacherStage
from curation.store.runstore import RunStore
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
cfg = CurationConfig.model_validate({{
    "sources": [{{"name": "x", "format": "medqa", "path": "/"}}],
    "engines": {{"t": {{"kind": "openai", "base_url": {url!r}, "model": "deepseek-reasoner",
                       "max_concurrency": 256, "actors": 2}}}},
    "teacher": {{"engine": "t", "max_tokens": 8000}},
}})
store = RunStore({run!r})
t0 = time.perf_counter()
result = TeacherStage().run(StageContext(store=store, config=cfg, input_hash="bench"))
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({{"rows_in": result.rows_in, "wall_s": time.perf_counter() - t0,
                  "driver_peak_rss_mib": hwm / 1024,
                  "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def bench_teacher_memory(args: argparse.Namespace) -> None:
    from curation.devtools.rehearse import RehearsalConfig, spawn_rehearsal_server, stop_rehearsal_server
    from curation.store.runstore import RunStore

    sizes = [int(s) for s in args.sizes.split(",")]
    out: dict[str, Any] = {"bench": "teacher_stage_driver_memory", "runs": {}}
    for size in sizes:
        work = Path(tempfile.mkdtemp(prefix="m1bench-teacher-"))
        proc = None
        try:
            run = prepare_run(size, work, hard=True)
            proc, url = spawn_rehearsal_server(
                RehearsalConfig(
                    pool=RunStore(str(run)).table_location("questions"),
                    latency_ms=0,
                    latency_jitter_ms=0,
                    reasoning_tokens_mean=40,
                    reasoning_tokens_sigma=0.0,
                )
            )
            code = CHILD.format(root=str(ROOT), url=url, run=str(run))
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3600)
            if done.returncode:
                raise RuntimeError(done.stderr[-3000:])
            out["runs"][size] = json.loads(done.stdout.strip().splitlines()[-1])
        finally:
            if proc is not None:
                stop_rehearsal_server(proc)
            shutil.rmtree(work, ignore_errors=True)
    small, large = out["runs"][sizes[0]], out["runs"][sizes[-1]]
    out["peak_ratio_largest_over_smallest"] = round(
        large["driver_peak_rss_mib"] / small["driver_peak_rss_mib"], 3
    )
    out["goal"] = "<= 1.3"
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="bench", required=True)
    p = sub.add_parser("score")
    p.add_argument("--questions", type=int, default=4000)
    p.add_argument("--engine", choices=["rehearse", "vllm"], default="rehearse")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.set_defaults(func=bench_score)
    p = sub.add_parser("teacher-memory")
    p.add_argument("--sizes", default="50000,200000")
    p.set_defaults(func=bench_teacher_memory)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
