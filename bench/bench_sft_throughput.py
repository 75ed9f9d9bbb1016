"""Benchmark: CPU training tokens/s of the tiny model through `m1 sft` (Ray Train, 1 worker) against the same
model and data in a plain single-process PyTorch/transformers loop.

    flock /tmp/m1-heavy.lock .venv/bin/python bench/bench_sft_throughput.py [--steps 40] [--rows 64]

Both sides: the tiny random-init Qwen2 (curation.devtools.tiny_model), the same synthetic curated rows
(sft.demo.synthetic_curated), tokenized with sft.format.tokenize_example, batches of 4 unpacked examples
collated by sft.format.collate, AdamW at the same lr, one CPU thread for the model (Ray gives its worker
OMP_NUM_THREADS=1 for cpus_per_worker=1; the baseline calls torch.set_num_threads(1)).

- baseline: a bare loop in one process (forward, backward, clip, AdamW step, scheduler), no Trainer, no Ray;
            run before and after the Ray run and pooled (the shared machine's load drifts).
- ray:      `m1 sft` (run_sft): Ray Data streaming tokenized rows to one Ray Train worker running the
            transformers Trainer, with per-step metrics and a final checkpoint.

Throughput is real tokens over the wall time of steps 6..N (after warm-up; the first steps pay for
imports and the first Ray Data batches). For Ray, per-step wall times come from the sft_metrics table
(step_s). Goal: ray >= 0.9 x baseline. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

WARMUP = 5
BATCH = 4
LR = 1e-3


def baseline(model_dir: Path, table, steps: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_cosine_schedule_with_warmup

    from sft.format import collate, row_of, tokenize_example

    torch.set_num_threads(1)
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.config.use_cache = False
    model.train()
    rows = [
        row_of(tokenize_example(tok, r["prompt"], r["reasoning"], r["distilled_answer_string"]))
        for r in table.to_pylist()
    ]
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=1e-4)
    sched = get_cosine_schedule_with_warmup(opt, 1, steps)
    times, tokens = [], []
    i = 0
    for _ in range(steps):
        t0 = time.perf_counter()
        batch_rows = [rows[(i + k) % len(rows)] for k in range(BATCH)]
        i += BATCH
        batch, stats = collate(batch_rows, tok.pad_token_id, packed=False)
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        tokens.append(stats.tokens)
    return {
        "tokens": sum(tokens[WARMUP:]),
        "seconds": sum(times[WARMUP:]),
        "median_step_s": statistics.median(times[WARMUP:]),
        "median_tokens_per_step": statistics.median(tokens[WARMUP:]),
        "last_loss": float(loss),
    }


def ray_train(model_dir: Path, run: Path, steps: int) -> dict:
    import ray
    import yaml

    from curation.store.runstore import RunStore
    from sft.config import load_sft_config
    from sft.train import run_sft

    ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=tempfile.mkdtemp(prefix="h6b-")
    )
    try:
        config = run / "bench.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "name": "bench",
                    "run_dir": str(run),
                    "data": {"table": "curated"},
                    "model": {"path": str(model_dir)},
                    "train": {
                        "lr": LR,
                        "max_steps": steps,
                        "global_batch_size": BATCH,
                        "per_device_batch_size": BATCH,
                        "max_length": 4096,
                        "save_every_epochs": 0,
                        "warmup_ratio": 0.0,
                    },
                    "resources": {"num_workers": 1, "cpus_per_worker": 1},
                }
            )
        )
        t0 = time.perf_counter()
        result = run_sft(load_sft_config(config), force=True)
        wall = time.perf_counter() - t0
        table = RunStore(str(run), create=False).read_table("sft_metrics").to_pylist()
    finally:
        ray.shutdown()
    rows = sorted((r for r in table if r["sft_run"] == "bench"), key=lambda r: r["step"])[WARMUP:]
    return {
        "tokens": sum(r["tokens"] for r in rows),
        "seconds": sum(r["step_s"] for r in rows),
        "wall_s_with_startup": wall,
        "median_step_s": statistics.median(r["step_s"] for r in rows),
        "median_tokens_per_step": statistics.median(r["tokens"] for r in rows),
        "max_step_s": max(r["step_s"] for r in rows),
        "last_loss": rows[-1]["loss"],
        "steps": result.steps,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    # 256 rows = 64 steps per epoch: the timed steps lie in the first epoch. Each new epoch restarts the Ray
    # Data stream (read + tokenize), a few seconds here that a real epoch (m23K: ~1,470 steps) amortizes.
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    from curation.devtools.tiny_model import build_tiny_model
    from curation.store.runstore import RunStore
    from sft.demo import synthetic_curated

    work = Path(args.workdir or tempfile.mkdtemp(prefix="m1-bench-sft-"))
    model_dir = work / "tiny"
    if not (model_dir / "config.json").exists():
        build_tiny_model(model_dir)
    table = synthetic_curated(args.rows, seed=3)
    run = work / "run"
    store = RunStore(str(run))
    store.commit([store.write_table("curated", table)])

    # The baseline runs before and after Ray and counts once, pooled: on a shared machine the load drifts.
    before = baseline(model_dir, table, args.steps)
    ray_ = ray_train(model_dir, run, args.steps)
    after = baseline(model_dir, table, args.steps)
    base = {
        "tokens": before["tokens"] + after["tokens"],
        "seconds": before["seconds"] + after["seconds"],
        "median_step_s": statistics.median([before["median_step_s"], after["median_step_s"]]),
        "median_tokens_per_step": statistics.median(
            [before["median_tokens_per_step"], after["median_tokens_per_step"]]
        ),
        "before_tokens_per_s": before["tokens"] / before["seconds"],
        "after_tokens_per_s": after["tokens"] / after["seconds"],
    }
    b_tps = base["tokens"] / base["seconds"]
    r_tps = ray_["tokens"] / ray_["seconds"]
    print(f"{'':10} {'tokens/s':>10} {'steps timed':>11}")
    print(
        f"{'baseline':10} {b_tps:>10,.0f} {2 * (args.steps - WARMUP):>11}   (before Ray "
        f"{base['before_tokens_per_s']:,.0f}, after {base['after_tokens_per_s']:,.0f})"
    )
    print(
        f"{'ray train':10} {r_tps:>10,.0f} {args.steps - WARMUP:>11}   (wall with start-up {ray_['wall_s_with_startup']:.0f} s)"
    )
    b_med = base["median_tokens_per_step"] / base["median_step_s"]
    r_med = ray_["median_tokens_per_step"] / ray_["median_step_s"]
    print(
        f"ratio ray/baseline: {r_tps / b_tps:.2f} over all timed steps, {r_med / b_med:.2f} on median steps (goal >= 0.9)"
    )
    print(
        json.dumps(
            {
                "bench": "sft_throughput",
                "baseline": base,
                "ray": ray_,
                "ratio": r_tps / b_tps,
                "ratio_median": r_med / b_med,
            }
        )
    )


if __name__ == "__main__":
    main()
