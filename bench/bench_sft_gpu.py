"""GPU benchmark for `m1 sft`: tokens/s per GPU and MFU of a Qwen2.5-size model under FSDP full shard.

    # on a GPU node (pip install -e ".[gpu]"), with the weights local or the hub reachable:
    python bench/bench_sft_gpu.py --model Qwen/Qwen2.5-7B-Instruct --gpus 8 --steps 30
    # no weights at hand: a random-init model of Qwen2.5-7B's shape (same FLOPs), built on the node
    python bench/bench_sft_gpu.py --random-init 7b --gpus 1 --steps 20 --max-length 8192

It writes a synthetic curated table with m1's reasoning-length distribution (bench_sft_padding.py: log-normal,
median 985, mean ~1,383 tokens, max 7,461), runs the m1 preset (curation/configs/sft_m1.yaml: bf16, FSDP full
shard per decoder layer, AdamW, cosine) through run_sft with --gpus Ray Train workers for --steps optimizer
steps, and reads the per-step rows of the sft_metrics table. Reported over the steps after --warmup:

- tokens/s per GPU = real tokens / step wall time / GPUs
- MFU = 6 * N * tokens/s (+ causal attention: 6 * layers * hidden * seq per token) / (GPUs * peak bf16 FLOP/s)
  with N the non-embedding parameters (embedding lookups are not matmuls) plus the LM head,
  and the peak from --peak-tflops (H100 SXM dense bf16: 989).

Not run in this project's CI (no GPU); numbers go to BENCHMARKS.md whenever a GPU is lent.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QWEN25 = {  # hidden, layers, heads, kv heads, intermediate, vocab
    "0.5b": (896, 24, 14, 2, 4864, 151936),
    "1.5b": (1536, 28, 12, 2, 8960, 151936),
    "7b": (3584, 28, 28, 4, 18944, 152064),
    "32b": (5120, 64, 40, 8, 27648, 152064),
}


def random_init_model(size: str, out: Path) -> Path:
    """A random-init Qwen2 of a Qwen2.5 size (same FLOPs per token), with the tiny model's tokenizer."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from curation.devtools.tiny_model import build_tiny_model

    tiny = build_tiny_model(out / "tokenizer-src")
    hidden, layers, heads, kv, inter, vocab = QWEN25[size]
    cfg = Qwen2Config(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        intermediate_size=inter,
        max_position_embeddings=32768,
        tie_word_embeddings=size in ("0.5b", "1.5b"),
        torch_dtype="bfloat16",
    )
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    path = out / f"qwen2.5-{size}-random"
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny).save_pretrained(path)
    return path


def flops_per_token(config: dict, seq: float) -> float:
    h, n_layers = config["hidden_size"], config["num_hidden_layers"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    inter, vocab = config["intermediate_size"], config["vocab_size"]
    head_dim = h // heads
    per_layer = h * heads * head_dim + 2 * h * kv * head_dim + heads * head_dim * h + 3 * h * inter
    n = n_layers * per_layer + h * vocab  # + LM head
    return 6 * n + 6 * n_layers * h * seq  # causal attention (half of 12*L*h*seq)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="HF model path or hub id")
    ap.add_argument("--random-init", choices=sorted(QWEN25), default=None)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--max-length", type=int, default=32768)
    ap.add_argument("--per-device-batch", type=int, default=1)
    ap.add_argument("--packing", action="store_true")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--cpu", action="store_true", help="smoke-test the script on CPU (no bf16, no FSDP)")
    args = ap.parse_args()

    import numpy as np
    import pyarrow as pa

    from curation.store.runstore import RunStore
    from sft.config import load_sft_config
    from sft.demo import synthetic_curated
    from sft.train import run_sft

    work = Path(args.workdir or tempfile.mkdtemp(prefix="m1-bench-sft-gpu-"))
    model = args.model or str(random_init_model(args.random_init or "7b", work))
    # Rows with m1's reasoning lengths: repeat a sentence of ~10 tokens to the drawn length.
    rng = np.random.default_rng(0)
    reasoning_tokens = np.clip(rng.lognormal(math.log(985), 0.824, args.rows), 40, 7461).astype(int)
    table = synthetic_curated(args.rows, seed=0, reasoning_sentences=(1, 1))
    unit = "The history points to an infectious cause. "
    table = table.set_column(
        table.schema.get_field_index("reasoning"),
        "reasoning",
        pa.array([unit * max(1, int(n) // 9) for n in reasoning_tokens]),
    )
    run = work / "run"
    store = RunStore(str(run))
    store.commit([store.write_table("curated", table)])
    preset = Path(__file__).resolve().parents[1] / "curation/configs/sft_m1.yaml"
    accum = max(1, 16 // (args.gpus * args.per_device_batch))
    cfg = load_sft_config(
        preset,
        {
            "name": "bench-gpu",
            "run_dir": str(run),
            "data": {"table": "curated"},
            "model.path": model,
            "train.max_steps": args.steps,
            "train.max_length": args.max_length,
            "train.per_device_batch_size": args.per_device_batch,
            "train.global_batch_size": accum * args.gpus * args.per_device_batch,
            "train.packing": args.packing,
            "train.gradient_checkpointing": args.gradient_checkpointing,
            "train.save_every_epochs": 0,
            "resources.num_workers": args.gpus,
            "resources.cpus_per_worker": max(1, (os.cpu_count() or 8) // (args.gpus + 1)),
            **(
                {
                    "resources.use_gpu": False,
                    "resources.cpus_per_worker": 0.5,
                    "train.bf16": False,
                    "train.fsdp.enabled": False,
                    "model.dtype": "float32",
                }
                if args.cpu
                else {}
            ),
        },
    )
    t0 = time.perf_counter()
    result = run_sft(cfg, force=True)
    wall = time.perf_counter() - t0
    metrics = RunStore(str(run), create=False).read_table("sft_metrics")  # a fresh manifest read
    rows = [r for r in metrics.to_pylist() if r["sft_run"] == "bench-gpu"]
    rows = sorted(rows, key=lambda r: r["step"])[args.warmup :]
    tokens = sum(r["tokens"] for r in rows)
    seconds = sum(r["step_s"] for r in rows)
    config = json.loads((Path(result.checkpoint) / "config.json").read_text())
    seq = statistics.mean(r["tokens"] / max(r["examples"], 1) for r in rows)
    tps_gpu = tokens / seconds / args.gpus
    mfu = flops_per_token(config, seq) * tps_gpu / (args.peak_tflops * 1e12)
    print(
        f"model {model}: {args.gpus} GPU(s), {len(rows)} timed steps, mean {seq:,.0f} tokens/example, "
        f"padding share {statistics.mean(r['padding_share'] for r in rows):.1%}\n"
        f"tokens/s per GPU {tps_gpu:,.0f}; MFU {mfu:.1%} (peak {args.peak_tflops} TFLOP/s); wall {wall:.0f} s"
    )
    print(
        json.dumps(
            {
                "bench": "sft_gpu",
                "model": model,
                "gpus": args.gpus,
                "tokens_per_s_per_gpu": tps_gpu,
                "mfu": mfu,
                "median_step_s": statistics.median(r["step_s"] for r in rows),
                "packing": args.packing,
                "max_length": args.max_length,
            }
        )
    )


if __name__ == "__main__":
    main()
