"""Three ways to run vLLM over the same scoring requests, in one run: bare, the project's engine, ray.data.llm.

Issue 18. The workload is m1's difficulty-scoring request: the demo pool (curation/sample_pool, ingested with
the demo config: 311 questions) rendered as m1's chat messages (M1_BOXED_PREFIX + the rendered question), the
row number appended so no two prompts are equal, repeated to --rows rows. Sampling is the same everywhere:
greedy, --max-tokens tokens with ignore_eos (equal work on every path). Engine settings are the same
everywhere: max_model_len, enforce_eager (unless --compile), dtype auto, seed 0, VLLM_CPU_KVCACHE_SPACE; every
engine gets all the node's CPUs (the Ray paths reserve os.cpu_count() CPUs; Ray sets OMP_NUM_THREADS from it).

Paths:
- bare: ``vllm.LLM.generate`` on the chat-templated prompts, all rows in one call, in a fresh child process
  (started while the Ray cluster is up and idle, so it pays for Ray's daemons like the other two);
- engine: the project's engine through ``curation.engines.map_requests`` (ledger lookup on, a fresh ledger
  each round, so every row is generated): one Ray Data replica, one synchronous ``LLM.chat`` per batch, with
  its defaults; optional: ``engine-child`` (its engine core in a child process) and ``engine-async``
  (``batches_in_flight``: vLLM's async engine, several batches in flight, each row its own request; rows have
  their own wall times, so its window runs from the first row's start to the last row's end);
- ray.data.llm: ``build_processor(vLLMEngineProcessorConfig(...))``: chat-template, tokenize, vLLM's async
  engine with --max-concurrent-batches batches in flight, detokenize.

Two figures per path, both as completion tokens/s and as a ratio to bare of the same round:
- generation window: bare: the generate call; engine: the first vLLM call's start to the last one's end (from
  the response rows: rows of one call share ``created_at`` and split its wall time in ``latency_s``);
  ray.data.llm: the earliest ``arrival_time`` of vLLM's per-request metrics (wall clock, when the async
  engine got the request) to the last row reaching postprocess (wall clock; vLLM's own engine-core window,
  first ``queued_ts`` to last ``last_token_ts``, is kept in the JSON as ``engine_core_s``). Engine load is
  outside the window on every path;
- end to end: from submitting the work to holding every row (bare: engine load + generate; the Ray paths:
  actor start, engine load, every stage).

Rounds interleave the paths (order rotated each round) and the median round counts: the machine is shared.
Models: the tiny model (curation.devtools.tiny_model) and a larger random-init Qwen2 built here with the tiny
model's tokenizer (--small-shape; default hidden 512, 8 layers, 8 heads of 64, 2 KV heads, MLP 1536: 26M
parameters, 24M without embeddings). No download anywhere (HF_HUB_OFFLINE=1).

ray.data.llm on vllm-cpu needs three settings, each found by running it here (see BENCHMARKS.md):
placement_group_config with CPU-only bundles (without it the engine stage asks Ray Data for num_gpus=1 per
replica and never schedules on a CPU node), log_engine_metrics=False (its default loads vLLM's
RayPrometheusStatLogger, which imports ray.serve, absent without ray[serve]) and fractional num_cpus for the
chat-template, tokenize and detokenize stages (each takes 1 CPU by default: with the engine's reservation
they exceed a small node and the pipeline waits forever).

Run (heavy: keep it out of other jobs' way):
    flock /tmp/m1-heavy.lock .venv/bin/python bench/bench_vllm_paths.py               # 2,048 rows, both models
    .venv/bin/python bench/bench_vllm_paths.py --rows 256 --models tiny --rounds 1    # quick look
Prints one line per model and path and a final JSON line.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")

PATHS = ("bare", "engine", "ray.data.llm")
OPTIONAL_PATHS = ("engine-child", "engine-async")


# --- workload -----------------------------------------------------------------------------------------------


def demo_messages(rows: int, work: Path) -> list[list[dict[str, str]]]:
    """m1 scoring messages for the demo pool's questions, numbered and repeated to ``rows``."""
    from curation.config import M1_BOXED_PREFIX, load_config
    from curation.pipeline import run_stages
    from curation.stages.ingest import IngestStage
    from curation.stages.llm import chat_messages
    from curation.store.runstore import RunStore

    cfg = load_config(Path(__file__).resolve().parents[1] / "curation" / "configs" / "demo.yaml")
    cfg = cfg.model_copy(update={"dedup": None, "decontaminate": None})
    store = RunStore(str(work / "demo-run"))
    run_stages([IngestStage()], cfg, store, log=lambda _m: None)
    prompts = store.read_table("questions", columns=["prompt"]).column("prompt").to_pylist()
    return [
        chat_messages(f"{prompts[i % len(prompts)]}\n[{i}]", prefix=M1_BOXED_PREFIX, suffix="", system=None)
        for i in range(rows)
    ]


def build_small_model(out: Path, tiny: Path, shape: tuple[int, int, int, int, int]) -> Path:
    """A random-init Qwen2 of ``shape`` (hidden, layers, heads, kv heads, intermediate) with the tiny tokenizer."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    hidden, layers, heads, kv_heads, intermediate = shape
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    base = Qwen2Config.from_pretrained(tiny)
    config = Qwen2Config(
        vocab_size=base.vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=hidden // heads,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=base.bos_token_id,
        eos_token_id=base.eos_token_id,
        pad_token_id=base.pad_token_id,
        use_sliding_window=False,
        torch_dtype="float32",
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if (tiny / "generation_config.json").exists():
        (out / "generation_config.json").write_text((tiny / "generation_config.json").read_text())
    return out


def count_params(model_dir: Path) -> tuple[int, int]:
    """(all parameters, parameters without the embedding) of a saved model, from its safetensors."""
    from safetensors import safe_open

    total = embed = 0
    for f in model_dir.glob("*.safetensors"):
        with safe_open(f, "pt") as st:
            for name in st.keys():  # noqa: SIM118 -- safe_open is not a mapping
                n = st.get_slice(name).get_shape()
                size = 1
                for d in n:
                    size *= d
                total += size
                embed += size if "embed_tokens" in name else 0
    return total, total - embed


# --- the three paths ----------------------------------------------------------------------------------------


def engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"max_model_len": args.max_model_len, "dtype": "auto", "seed": 0}
    if not args.compile:
        kwargs["enforce_eager"] = True
    kwargs.update(json.loads(args.engine_kwargs or "{}"))
    return kwargs


def sampling(args: argparse.Namespace) -> dict[str, Any]:
    return {"temperature": 0.0, "max_tokens": args.max_tokens, "ignore_eos": True}


def run_bare(args: argparse.Namespace) -> dict[str, Any]:
    """In the child: one vllm.LLM, the chat-templated prompts in one generate call."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(args.kv_gib)
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    messages = json.loads(Path(args.messages_file).read_text())
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    prompts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages]
    started = time.perf_counter()
    llm = LLM(model=args.model, **engine_kwargs(args))
    load_s = time.perf_counter() - started
    params = SamplingParams(**sampling(args))
    gen_started = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    gen_s = time.perf_counter() - gen_started
    return {
        "gen_s": gen_s,
        "wall_s": load_s + gen_s,
        "load_s": load_s,
        "completion_tokens": sum(len(o.outputs[0].token_ids) for o in outputs),
        "prompt_tokens": sum(len(o.prompt_token_ids or []) for o in outputs),
    }


def run_bare_child(args: argparse.Namespace, model: str, messages_file: Path) -> dict[str, Any]:
    child = [
        sys.executable,
        __file__,
        "--bare-child",
        "--model",
        model,
        "--messages-file",
        str(messages_file),
    ]
    child += ["--max-tokens", str(args.max_tokens), "--max-model-len", str(args.max_model_len)]
    child += ["--kv-gib", str(args.kv_gib), "--engine-kwargs", args.engine_kwargs]
    child += ["--compile"] if args.compile else []
    started = time.perf_counter()
    proc = subprocess.run(child, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BARE_RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"bare vLLM run failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(lines[-1].removeprefix("BARE_RESULT "))
    result["process_wall_s"] = time.perf_counter() - started
    return result


def run_engine(
    args: argparse.Namespace,
    model: str,
    messages: list[Any],
    *,
    core_process: bool | None = None,
    batches_in_flight: int = 1,
) -> dict[str, Any]:
    """The project's engine: map_requests over a fresh ledger, one replica holding all the CPUs.

    ``engine``: its defaults (on CPU the engine core runs in the actor's process since stop 26);
    ``engine-child``: ``engine_core_process: true`` (the core in a child process of the replica, vLLM's and
    ray.data.llm's way, and the engine's CPU default in stop 25); ``engine-async``: ``batches_in_flight`` =
    ``--in-flight`` (vLLM's async engine, several batches queued, as ray.data.llm)."""
    import pyarrow as pa
    import ray
    import ray.data

    from curation.engines import map_requests
    from curation.engines.request import make_request, requests_table
    from curation.engines.vllm_engine import VLLMEngineConfig

    requests = [make_request(f"r{i}", "bench", messages=m, **sampling(args)) for i, m in enumerate(messages)]
    kwargs = engine_kwargs(args)
    cfg = VLLMEngineConfig(
        model=model,
        replicas=1,
        cpus_per_replica=os.cpu_count() or 1,
        batch_size=args.batch_size,
        max_model_len=kwargs.pop("max_model_len"),
        dtype=kwargs.pop("dtype"),
        seed=kwargs.pop("seed"),
        cpu_kvcache_space_gib=args.kv_gib,
        engine_kwargs=kwargs,
        engine_core_process=core_process,
        batches_in_flight=batches_in_flight,
    )
    table = requests_table(requests)
    with tempfile.TemporaryDirectory(prefix="m1bench-ledger-") as ledger_uri:
        started = time.perf_counter()
        blocks = [table.slice(i, args.batch_size) for i in range(0, table.num_rows, args.batch_size)]
        ds = map_requests(ray.data.from_arrow(blocks), cfg, ledger_uri=ledger_uri, progress=False)
        out = pa.concat_tables(ray.get(ds.to_arrow_refs()))
        wall_s = time.perf_counter() - started
    rows = out.to_pylist()
    errors = [r["error"] for r in rows if r["error"]]
    if errors or len(rows) != len(messages):
        raise RuntimeError(
            f"engine: {len(rows)} rows for {len(messages)} requests, {len(errors)} errors: {errors[:1]}"
        )
    calls: dict[Any, float] = defaultdict(float)
    if batches_in_flight > 1:  # each row is its own request, with its own wall time
        ends = [r["created_at"].timestamp() for r in rows]
        starts = [end - r["latency_s"] for end, r in zip(ends, rows, strict=True)]
        calls = {r["created_at"]: r["latency_s"] for r in rows}
    else:  # a call's rows share its end time and split its wall time
        for r in rows:
            calls[r["created_at"]] += r["latency_s"]
        starts = [end.timestamp() - wall for end, wall in calls.items()]
    return {
        "gen_s": max(end.timestamp() for end in calls) - min(starts),
        "wall_s": wall_s,
        "calls": len(calls),
        "completion_tokens": sum(r["completion_tokens"] for r in rows),
        "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
    }


def _rdl_preprocess(max_tokens: int) -> Any:
    def pre(row: dict[str, Any]) -> dict[str, Any]:
        return {
            "messages": json.loads(row["messages"]),
            "sampling_params": {"temperature": 0.0, "max_tokens": max_tokens, "ignore_eos": True},
        }

    return pre


def _rdl_postprocess(row: dict[str, Any]) -> dict[str, Any]:
    metrics = row.get("metrics") or {}
    return {
        "completion_tokens": int(row["num_generated_tokens"]),
        "prompt_tokens": int(row["num_input_tokens"]),
        "queued_ts": float(metrics.get("queued_ts") or 0.0),
        "last_token_ts": float(metrics.get("last_token_ts") or 0.0),
        "arrival_time": float(metrics.get("arrival_time") or 0.0),  # wall clock, when vLLM got the request
        "done_time": time.time(),  # wall clock, when the row reached postprocess (after detokenize)
    }


def run_ray_data_llm(args: argparse.Namespace, model: str, messages: list[Any]) -> dict[str, Any]:
    """ray.data.llm's vLLM processor with the same engine settings, CPU-only bundles, all CPUs to the engine."""
    import ray.data
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    cpus = os.cpu_count() or 1
    small_stage = {"num_cpus": 0.25, "concurrency": 1}
    config = vLLMEngineProcessorConfig(
        model_source=model,
        engine_kwargs=engine_kwargs(args),
        batch_size=args.batch_size,
        concurrency=1,
        max_concurrent_batches=args.max_concurrent_batches,
        placement_group_config={"bundles": [{"CPU": cpus}]},
        log_engine_metrics=False,
        chat_template_stage=small_stage,
        tokenize_stage=small_stage,
        detokenize_stage=small_stage,
        runtime_env={"env_vars": {"VLLM_CPU_KVCACHE_SPACE": str(args.kv_gib), "HF_HUB_OFFLINE": "1"}},
    )
    processor = build_processor(
        config, preprocess=_rdl_preprocess(args.max_tokens), postprocess=_rdl_postprocess
    )
    items = [{"messages": json.dumps(m)} for m in messages]
    started = time.perf_counter()
    rows = processor(
        ray.data.from_items(items, override_num_blocks=max(1, len(items) // args.batch_size))
    ).take_all()
    wall_s = time.perf_counter() - started
    if len(rows) != len(messages):
        raise RuntimeError(f"ray.data.llm: {len(rows)} rows for {len(messages)} requests")
    queued = [r["queued_ts"] for r in rows if r["queued_ts"]]
    last = [r["last_token_ts"] for r in rows if r["last_token_ts"]]
    arrived = [r["arrival_time"] for r in rows if r["arrival_time"]]
    return {
        # Wall clock, like the engine's window: the first request handed to vLLM to the last row out of the
        # detokenize stage (the processor's own tail included).
        "gen_s": (max(r["done_time"] for r in rows) - min(arrived)) if arrived else float("nan"),
        # vLLM's own view (engine-core clock): first request queued to last token.
        "engine_core_s": (max(last) - min(queued)) if queued and last else None,
        "wall_s": wall_s,
        "completion_tokens": sum(r["completion_tokens"] for r in rows),
        "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
    }


# --- driver -------------------------------------------------------------------------------------------------


def start_ray() -> None:
    import ray

    # Logical CPUs: the engine's reservation (all cores) plus room for Ray Data's small stages and tasks;
    # the engines still share the same physical cores.
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(
        num_cpus=(os.cpu_count() or 1) + 2,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=tempfile.mkdtemp(prefix="m1rp-", dir="/tmp"),
    )
    time.sleep(3)


def tps(r: dict[str, Any], seconds: str) -> float:
    return r["completion_tokens"] / r[seconds]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=2048, help="scoring requests per path and round")
    parser.add_argument(
        "--max-tokens", type=int, default=32, help="completion tokens per request (ignore_eos)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=256, help="Ray Data rows per batch (both Ray paths)"
    )
    parser.add_argument(
        "--max-concurrent-batches", type=int, default=4, help="ray.data.llm batches in flight"
    )
    parser.add_argument(
        "--in-flight", type=int, default=4, help="engine-async: the engine's batches_in_flight"
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds per model; the median counts")
    parser.add_argument("--models", default="tiny,small", help="comma list of: tiny, small")
    parser.add_argument("--small-shape", default="512,8,8,2,1536", help="hidden,layers,heads,kv_heads,mlp")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--kv-gib", type=int, default=2, help="VLLM_CPU_KVCACHE_SPACE on every path")
    parser.add_argument("--compile", action="store_true", help="let vLLM compile (default: enforce_eager)")
    parser.add_argument(
        "--paths", default=",".join(PATHS), help="comma list of: " + ", ".join(PATHS + OPTIONAL_PATHS)
    )
    parser.add_argument(
        "--engine-kwargs",
        default="{}",
        help="JSON of extra vLLM engine arguments for every path, e.g. "
        '\'{"max_num_seqs": 128, "max_num_batched_tokens": 2048}\' (the async engine\'s CPU defaults)',
    )
    parser.add_argument("--bare-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--messages-file", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.bare_child:
        print("BARE_RESULT " + json.dumps(run_bare(args)), flush=True)
        return

    paths = [p for p in args.paths.split(",") if p]
    if "bare" not in paths:
        sys.exit("--paths must include bare: every ratio is to bare of the same round")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="m1bench-paths-") as tmp:
        work = Path(tmp)
        from curation.devtools.tiny_model import build_tiny_model

        tiny = build_tiny_model(work / "tiny")
        models = {"tiny": tiny}
        if "small" in args.models.split(","):
            shape = tuple(int(x) for x in args.small_shape.split(","))
            models["small"] = build_small_model(work / "small", tiny, shape)  # type: ignore[arg-type]
        models = {k: v for k, v in models.items() if k in args.models.split(",")}
        start_ray()  # before the ingest, which would otherwise start a Ray of its own
        messages = demo_messages(args.rows, work)
        messages_file = work / "messages.json"
        messages_file.write_text(json.dumps(messages))
        for name, model in models.items():
            total, non_embed = count_params(model)
            rounds: dict[str, list[dict[str, Any]]] = {p: [] for p in paths}
            for k in range(args.rounds):
                order = paths[k % len(paths) :] + paths[: k % len(paths)]
                for path in order:
                    if path == "bare":
                        r = run_bare_child(args, str(model), messages_file)
                    elif path == "engine":
                        r = run_engine(args, str(model), messages)
                    elif path == "engine-child":
                        r = run_engine(args, str(model), messages, core_process=True)
                    elif path == "engine-async":
                        r = run_engine(args, str(model), messages, batches_in_flight=args.in_flight)
                    else:
                        r = run_ray_data_llm(args, str(model), messages)
                    rounds[path].append(r)
                    print(
                        f"  {name} round {k + 1} {path:<13} gen {tps(r, 'gen_s'):>9,.0f} tok/s  "
                        f"end-to-end {tps(r, 'wall_s'):>9,.0f} tok/s  ({r['completion_tokens']:,} completion, "
                        f"{r['prompt_tokens']:,} prompt tokens)",
                        flush=True,
                    )
            summary: dict[str, Any] = {"params": total, "params_non_embedding": non_embed, "paths": {}}
            for path in paths:
                ratios_gen = [
                    tps(r, "gen_s") / tps(b, "gen_s")
                    for r, b in zip(rounds[path], rounds["bare"], strict=True)
                ]
                ratios_e2e = [
                    tps(r, "wall_s") / tps(b, "wall_s")
                    for r, b in zip(rounds[path], rounds["bare"], strict=True)
                ]
                summary["paths"][path] = {
                    "gen_tokens_per_s": round(statistics.median(tps(r, "gen_s") for r in rounds[path]), 1),
                    "e2e_tokens_per_s": round(statistics.median(tps(r, "wall_s") for r in rounds[path]), 1),
                    "gen_ratio_to_bare": round(statistics.median(ratios_gen), 3),
                    "e2e_ratio_to_bare": round(statistics.median(ratios_e2e), 3),
                    "rounds": rounds[path],
                }
            results[name] = summary
            print(f"{name} ({total / 1e6:.1f}M params, {non_embed / 1e6:.1f}M without embeddings):")
            for path, s in summary["paths"].items():
                print(
                    f"  {path:<13} generation {s['gen_tokens_per_s']:>9,.0f} tok/s ({s['gen_ratio_to_bare']:.2f} of bare)"
                    f"   end to end {s['e2e_tokens_per_s']:>9,.0f} tok/s ({s['e2e_ratio_to_bare']:.2f} of bare)",
                    flush=True,
                )
    print(
        json.dumps(
            {
                "bench": "vllm_paths",
                "rows": args.rows,
                "max_tokens": args.max_tokens,
                "batch_size": args.batch_size,
                "max_concurrent_batches": args.max_concurrent_batches,
                "in_flight": args.in_flight,
                "rounds": args.rounds,
                "cpus": os.cpu_count(),
                "eager": not args.compile,
                "engine_kwargs": json.loads(args.engine_kwargs),
                "models": results,
            }
        )
    )


if __name__ == "__main__":
    main()
