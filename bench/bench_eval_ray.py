"""Sweep throughput through `m1 eval`'s Ray actors against the same sweep on a bare in-process vllm.LLM.

Same model (the tiny nonsense model unless --model), same questions, same budgets and protocol, same engine
settings (eager, float32, prefix caching), one engine on each side:

- bare: ``BudgetRunner.sweep`` driving ``vllm.LLM.generate`` directly in a fresh child process (no Ray);
- Ray: ``evaluation.sweep.run_eval``: one actor holding the engine (all the node's CPUs), the questions in one
  task (the same batches as the bare side), then scoring and the atomic Parquet commit of every cell. Twice:
  with vLLM's engine core in a child process of the actor (``engine_core_process: true``) and in the
  actor's own process. The bare side keeps it in-process (as the issue-10 baseline did).

Engine load is excluded on both sides (the Ray figure counts from "every actor ready" to "last cell committed",
so it includes task dispatch, result transfer, scoring and commits). Tokens are the engine's generated tokens
(thinking + answers). Each side runs --rounds times; the median counts.

Run (heavy: keep it out of other jobs' way):
    flock /tmp/m1-heavy.lock .venv/bin/python bench/bench_eval_ray.py
Prints one line per side, the ratio Ray/bare (goal >= 0.8), and a final JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")

from bench_eval_prefix import OPTIONS, QUESTIONS  # noqa: E402


def questions(n: int) -> list[dict]:
    return [
        {
            "id": f"q{i}",
            "question": QUESTIONS[i % len(QUESTIONS)] + f" (case {i})",
            "options": OPTIONS,
            "answer_idx": "A",
        }
        for i in range(n)
    ]


def run_bare(args: argparse.Namespace) -> dict:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(args.kv_gib)
    from evaluation.budget import Protocol
    from evaluation.runner import BudgetRunner, Sample, load_engine

    llm, tok = load_engine(
        args.model,
        max_model_len=args.max_model_len,
        dtype="float32",
        seed=0,
        engine_kwargs={"enforce_eager": True},
    )
    runner = BudgetRunner(llm, tok, Protocol(answer_max_tokens=args.answer_max_tokens))
    samples = [Sample(q["id"], q["question"], q["options"], "A") for q in questions(args.questions)]
    runner.sweep(samples[:2], [8], 0)  # warm-up
    rounds = []
    for _ in range(args.rounds):
        before = runner.generated_tokens
        started = time.perf_counter()
        runner.sweep(samples, args.budgets, args.forcing, prefix_reuse=True)
        rounds.append({"s": time.perf_counter() - started, "tokens": runner.generated_tokens - before})
    return {"rounds": rounds}


def run_ray(args: argparse.Namespace, tmp: Path, core_process: bool) -> dict:
    import ray

    from evaluation.config import eval_config_from
    from evaluation.sweep import run_eval

    bench = tmp / "bench.jsonl"
    bench.write_text("\n".join(json.dumps(q) for q in questions(args.questions)) + "\n")
    os.environ["RAY_worker_niceness"] = "0"
    ray.init(
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=tempfile.mkdtemp(prefix="m1ray-", dir="/tmp"),
    )
    time.sleep(5)  # let the cluster's start-up work settle
    cfg = eval_config_from(
        {
            "models": [
                {
                    "name": "tiny",
                    "model": args.model,
                    "max_model_len": args.max_model_len,
                    "dtype": "float32",
                    "cpus_per_replica": os.cpu_count(),
                    "cpu_kvcache_space_gib": args.kv_gib,
                    "engine_kwargs": {"enforce_eager": True},
                    "engine_core_process": core_process,
                }
            ],
            "benchmarks": [{"name": "bench", "path": str(bench)}],
            "budgets": args.budgets,
            "forcing": [args.forcing],
            "markers": {"answer_max_tokens": args.answer_max_tokens},
            "samples_per_task": args.questions,
        }
    )
    rounds = []
    for n in range(args.rounds):
        summary = run_eval(cfg, str(tmp / f"run-{core_process}-{n}"), log=lambda _: None)
        rounds.append(
            {
                "s": summary["sweep_s"],
                "tokens": summary["generated_tokens"],
                "wall_s": summary["wall_s"],
                "load_s": summary["engine_load_s"],
            }
        )
    ray.shutdown()
    return {"rounds": rounds}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--budgets", default="128,256,512")
    parser.add_argument("--forcing", type=int, default=0)
    parser.add_argument("--answer-max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--kv-gib", type=int, default=2)
    parser.add_argument("--model")
    parser.add_argument("--bare-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.budgets = [int(b) for b in str(args.budgets).split(",")]
    if args.bare_child:
        print("BARE_RESULT " + json.dumps(run_bare(args)), flush=True)
        return
    with tempfile.TemporaryDirectory(prefix="m1bench-eval-") as tmp:
        if args.model is None:
            from curation.devtools.tiny_model import build_tiny_model

            args.model = str(build_tiny_model(Path(tmp) / "tiny"))
        child = [
            sys.executable,
            __file__,
            "--bare-child",
            "--model",
            args.model,
            "--questions",
            str(args.questions),
            "--budgets",
            ",".join(map(str, args.budgets)),
            "--forcing",
            str(args.forcing),
            "--answer-max-tokens",
            str(args.answer_max_tokens),
            "--rounds",
            str(args.rounds),
            "--max-model-len",
            str(args.max_model_len),
            "--kv-gib",
            str(args.kv_gib),
        ]
        proc = subprocess.run(child, capture_output=True, text=True, check=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BARE_RESULT ")]
        if proc.returncode or not lines:
            sys.exit(f"bare run failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        bare = json.loads(lines[-1].removeprefix("BARE_RESULT "))
        # The actor's engine core in its own process (vLLM's default) and in the actor's (this config's default).
        on_ray = run_ray(args, Path(tmp), core_process=True)
        in_actor = run_ray(args, Path(tmp), core_process=False)

    def tps(rounds: list[dict]) -> list[float]:
        return [r["tokens"] / r["s"] for r in rounds]

    bare_tps, ray_tps = statistics.median(tps(bare["rounds"])), statistics.median(tps(on_ray["rounds"]))
    inproc_tps = statistics.median(tps(in_actor["rounds"]))
    load = {
        side: statistics.median(r["load_s"] for r in rounds["rounds"])
        for side, rounds in (("child", on_ray), ("in_actor", in_actor))
    }
    print(
        f"workload: {args.questions} questions x budgets {args.budgets} (prefix reuse, forcing {args.forcing}), "
        f"answers up to {args.answer_max_tokens} tokens, {args.rounds} rounds per side (median), {os.cpu_count()} CPUs"
    )
    print(
        f"bare vllm.LLM.generate (BudgetRunner, no Ray): {bare_tps:,.0f} tok/s "
        f"(rounds: {', '.join(f'{t:,.0f}' for t in tps(bare['rounds']))})"
    )
    print(
        f"m1 eval on a Ray actor, engine core in a child process: {ray_tps:,.0f} tok/s "
        f"(rounds: {', '.join(f'{t:,.0f}' for t in tps(on_ray['rounds']))}; engine load {load['child']:.1f} s)"
    )
    print(
        f"m1 eval on a Ray actor, engine core in the actor (default): {inproc_tps:,.0f} tok/s "
        f"(rounds: {', '.join(f'{t:,.0f}' for t in tps(in_actor['rounds']))}; engine load {load['in_actor']:.1f} s)"
    )
    print(
        f"ratio Ray/bare, core in the actor (default): {inproc_tps / bare_tps:.2f} (goal >= 0.8); "
        f"core in a child process: {ray_tps / bare_tps:.2f}"
    )
    print(
        json.dumps(
            {
                "bench": "eval_ray_vs_bare",
                "bare_tps": round(bare_tps, 1),
                "ray_tps": round(ray_tps, 1),
                "ratio": round(ray_tps / bare_tps, 3),
                "in_actor_tps": round(inproc_tps, 1),
                "in_actor_ratio": round(inproc_tps / bare_tps, 3),
                "engine_load_s": load,
                "questions": args.questions,
                "budgets": args.budgets,
                "bare_rounds": bare["rounds"],
                "ray_rounds": on_ray["rounds"],
                "in_actor_rounds": in_actor["rounds"],
            }
        )
    )


if __name__ == "__main__":
    main()
