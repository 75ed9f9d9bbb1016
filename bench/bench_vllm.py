"""Throughput of vLLM replicas through Ray Data (curation.engines.vllm_engine) against bare vllm.LLM.generate.

Same model (the tiny nonsense model unless --model), same prompts, same sampling (greedy, ignore_eos so
every request makes exactly --max-tokens tokens: equal work on both sides), same engine settings, and one
engine process on each side (1 Ray actor holding all the node's CPUs vs 1 bare process; the engine core
runs in-process on both). Both sides send the prompts as calls of --batch-size rows (the Ray side because
that is its batch size). Engine load time is excluded from both figures:

- bare: the calls timed after a small warm-up call, in a fresh child process, once before Ray starts and
  (control) once more while the Ray cluster is up but idle: on a small node Ray's own daemons take CPU
  from the engine, which is a cost of running on Ray at all, not of Ray Data;
- Ray: the generation window, from the start of the actor's first vLLM call to the end of its last, read
  from the response rows (rows of one call share ``created_at`` and split its wall time in ``latency_s``).
  It includes everything Ray Data does between calls. The end-to-end wall (actor start and load
  included) is printed too.

Each side runs --rounds times and the median round counts (the machine may be shared: single shots lie).

Run (heavy: keep it out of other jobs' way):
    flock /tmp/m1-heavy.lock .venv/bin/python bench/bench_vllm.py
Prints one line per side, the ratio (goal >= 0.8), and a final JSON line.
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
from collections import defaultdict
from pathlib import Path
from typing import Any

# Runnable as a script from the repository root without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")


def make_prompts(n: int) -> list[str]:
    ages = range(18, 90)
    complaints = [
        "chest pain",
        "fever and cough",
        "abdominal pain",
        "headache",
        "fatigue",
        "a rash",
        "dyspnea",
    ]
    return [
        f"Case {i}: A {ages[i % len(ages)]}-year-old patient presents with {complaints[i % len(complaints)]}. "
        "Which of the following is the most likely diagnosis?"
        for i in range(n)
    ]


def engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {} if args.compile else {"enforce_eager": True}


def run_bare(args: argparse.Namespace) -> dict[str, Any]:
    """Bare vllm.LLM in this process, with the same settings the Ray replica uses; --rounds timed rounds."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(args.kv_gib)
    from vllm import LLM, SamplingParams

    started = time.perf_counter()
    llm = LLM(model=args.model, max_model_len=args.max_model_len, seed=0, dtype="auto", **engine_kwargs(args))
    load_s = time.perf_counter() - started
    sampling = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    llm.generate(make_prompts(8), sampling, use_tqdm=False)  # warm-up
    prompts = make_prompts(args.prompts)
    rounds = []
    for _ in range(args.rounds):
        tokens = 0
        started = time.perf_counter()
        for start in range(0, len(prompts), args.batch_size):
            outputs = llm.generate(prompts[start : start + args.batch_size], sampling, use_tqdm=False)
            tokens += sum(len(o.outputs[0].token_ids) for o in outputs)
        rounds.append({"gen_s": time.perf_counter() - started, "completion_tokens": tokens})
    return {"load_s": load_s, "rounds": rounds}


def run_bare_child(args: argparse.Namespace) -> dict[str, Any]:
    """run_bare in a fresh process, so its engine is gone before anything else runs."""
    child = [sys.executable, __file__, "--bare-child", "--model", args.model, "--rounds", str(args.rounds)]
    child += ["--prompts", str(args.prompts), "--max-tokens", str(args.max_tokens)]
    child += ["--batch-size", str(args.batch_size), "--max-model-len", str(args.max_model_len)]
    child += ["--kv-gib", str(args.kv_gib)] + (["--compile"] if args.compile else [])
    proc = subprocess.run(child, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BARE_RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"bare vLLM run failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1].removeprefix("BARE_RESULT "))


def start_ray(worker_niceness: int | None) -> None:
    import ray

    if worker_niceness is not None:
        # Ray starts workers (so the vLLM actor) at nice 15 to keep its daemons responsive; on a busy node
        # that costs a CPU engine its share against every nice-0 process. The raylet reads this at start.
        os.environ["RAY_worker_niceness"] = str(worker_niceness)

    ray.init(
        num_cpus=os.cpu_count() or 1,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=tempfile.mkdtemp(prefix="m1ray-", dir="/tmp"),
    )
    time.sleep(5)  # let the cluster's start-up work settle


def run_ray_round(args: argparse.Namespace) -> dict[str, Any]:
    """One pass of all prompts through generate(): a fresh actor pool, as in a pipeline stage."""
    import pyarrow as pa
    import ray
    import ray.data

    from curation.engines.request import make_request, requests_table
    from curation.engines.vllm_engine import VLLMEngineConfig, generate

    cpus = os.cpu_count() or 1
    requests = [
        make_request(f"p{i}", "tiny", prompt=p, temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
        for i, p in enumerate(make_prompts(args.prompts))
    ]
    cfg = VLLMEngineConfig(
        model=args.model,
        replicas=1,
        cpus_per_replica=cpus,  # the whole node, like the bare process (Ray sets OMP_NUM_THREADS from it)
        batch_size=args.batch_size,
        max_model_len=args.max_model_len,
        cpu_kvcache_space_gib=args.kv_gib,
        engine_kwargs=engine_kwargs(args),
    )
    with tempfile.TemporaryDirectory(prefix="m1bench-ledger-") as ledger_uri:
        started = time.perf_counter()
        ds = generate(ray.data.from_arrow(requests_table(requests)), cfg, ledger_uri)
        table = pa.concat_tables(ray.get(ds.to_arrow_refs()))
        wall_s = time.perf_counter() - started
    rows = table.to_pylist()
    errors = [r["error"] for r in rows if r["error"]]
    if errors:
        raise RuntimeError(f"{len(errors)} rows failed; first: {errors[0]}")
    # One vLLM call = the rows sharing created_at; its wall time is the sum of their latency shares.
    calls: dict[Any, float] = defaultdict(float)
    for r in rows:
        calls[r["created_at"]] += r["latency_s"]
    starts = [end.timestamp() - wall for end, wall in calls.items()]
    ends = [end.timestamp() for end in calls]
    return {
        "gen_s": max(ends) - min(starts),
        "busy_s": sum(calls.values()),
        "wall_s": wall_s,
        "calls": len(calls),
        "completion_tokens": sum(r["completion_tokens"] for r in rows),
    }


def tps(rounds: list[dict[str, Any]], seconds: str = "gen_s") -> list[float]:
    return [r["completion_tokens"] / r[seconds] for r in rounds]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=2048)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=512, help="rows per Ray Data batch = per vLLM call")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per side; the median counts")
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--kv-gib", type=int, default=2, help="VLLM_CPU_KVCACHE_SPACE on both sides")
    parser.add_argument("--model", help="model dir or hub id (default: build the tiny model in a temp dir)")
    parser.add_argument("--compile", action="store_true", help="let vLLM compile (default: enforce_eager)")
    parser.add_argument("--no-control", action="store_true", help="skip the bare run beside an idle Ray")
    parser.add_argument(
        "--worker-niceness",
        type=int,
        default=0,
        help="RAY_worker_niceness for the Ray cluster (default 0, as m1 sets for local clusters; Ray's own: 15)",
    )
    parser.add_argument("--bare-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.bare_child:
        print("BARE_RESULT " + json.dumps(run_bare(args)), flush=True)
        return

    with tempfile.TemporaryDirectory(prefix="m1bench-model-") as tmp:
        if args.model is None:
            from curation.devtools.tiny_model import build_tiny_model

            args.model = str(build_tiny_model(Path(tmp) / "tiny"))
        bare = run_bare_child(args)
        start_ray(args.worker_niceness)
        control = None if args.no_control else run_bare_child(args)
        ray_rounds = [run_ray_round(args) for _ in range(args.rounds)]

    bare_tps = statistics.median(tps(bare["rounds"]))
    ray_tps = statistics.median(tps(ray_rounds))
    e2e_tps = statistics.median(tps(ray_rounds, "wall_s"))
    ratio = ray_tps / bare_tps
    fmt = ", ".join
    print(
        f"workload: {args.prompts} prompts x {args.max_tokens} tokens (ignore_eos) in calls of {args.batch_size}, "
        f"{args.rounds} rounds per side (median), model {args.model}, {os.cpu_count()} CPUs, "
        f"{'compiled' if args.compile else 'eager'}, Ray worker niceness "
        f"{args.worker_niceness if args.worker_niceness is not None else 15}"
    )
    print(
        f"bare vllm.LLM.generate : {bare_tps:,.0f} tok/s (rounds: {fmt(f'{t:,.0f}' for t in tps(bare['rounds']))}; "
        f"load {bare['load_s']:.1f} s excluded)"
    )
    print(
        f"Ray Data, 1 replica    : {ray_tps:,.0f} tok/s (rounds: {fmt(f'{t:,.0f}' for t in tps(ray_rounds))}; "
        f"engine busy {statistics.median(r['busy_s'] / r['gen_s'] for r in ray_rounds):.1%} of the window; "
        f"end-to-end incl. actor start and load {e2e_tps:,.0f} tok/s)"
    )
    print(f"ratio Ray/bare         : {ratio:.2f} (goal >= 0.8)")
    control_tps = control_ratio = None
    if control is not None:
        control_tps = statistics.median(tps(control["rounds"]))
        control_ratio = ray_tps / control_tps
        print(
            f"control: bare beside an idle Ray cluster: {control_tps:,.0f} tok/s "
            f"(rounds: {fmt(f'{t:,.0f}' for t in tps(control['rounds']))}); Ray Data/control = {control_ratio:.2f}"
        )
    print(
        json.dumps(
            {
                "bench": "vllm_ray_vs_bare",
                "prompts": args.prompts,
                "max_tokens": args.max_tokens,
                "batch_size": args.batch_size,
                "rounds": args.rounds,
                "cpus": os.cpu_count(),
                "eager": not args.compile,
                "ray_worker_niceness": args.worker_niceness if args.worker_niceness is not None else 15,
                "bare_tokens_per_s": round(bare_tps, 1),
                "ray_tokens_per_s": round(ray_tps, 1),
                "ray_end_to_end_tokens_per_s": round(e2e_tps, 1),
                "ratio": round(ratio, 3),
                "control_tokens_per_s": round(control_tps, 1) if control_tps else None,
                "ratio_vs_control": round(control_ratio, 3) if control_ratio else None,
                "bare": bare,
                "control": control,
                "ray": ray_rounds,
            }
        )
    )


if __name__ == "__main__":
    main()
