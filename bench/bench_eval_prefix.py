"""Prefix reuse in a budget sweep: generated tokens and wall time against independent runs, same answers.

Baseline ("independent"): one run per budget, as m1 ran its sweep: each budget's thinking generated from the
prompt, then its answers. Prefix reuse: one run: the largest budget's thinking generated once, every smaller
budget's thinking derived from it (greedy), then the answers of all budgets (vLLM's prefix cache serves the
shared prompt + thinking prefixes). Both sides use the same in-process ``vllm.LLM`` (engine load excluded), the
same questions, the same protocol; the script checks that every (question, budget) has identical thinking
tokens, forcing, ran-out flag and answer text on both sides, and exits non-zero otherwise.

Token counts are what the engine generated (thinking + answers). The tiny model never stops on its own, so every
thinking uses its whole budget and every answer its whole ``--answer-max-tokens`` (m1: 1,024; a real model's
answer is a few dozen tokens, so the default here is 64; the printed formula shows the effect of that choice).

Run:  .venv/bin/python bench/bench_eval_prefix.py [--questions 4] [--budgets 128,256,...,8192]
Prints one line per side, the ratios (goal: tokens <= 0.55x with identical answers), and a final JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

QUESTIONS = [
    "A 45-year-old man presents with crushing chest pain radiating to the left arm. Which drug is given first?",
    "A 6-year-old girl is brought to the emergency department with fever and a stiff neck. Which organism?",
    "Serum potassium is 6.1 mEq/L and creatinine is 2.4 mg/dL. Which treatment stabilizes the myocardium?",
    "A 67-year-old man comes to the physician because of painless jaundice. Which test is best initially?",
    "Which of the following is the most likely cause of episodic palpitations in a 23-year-old woman?",
    "Does preoperative anemia predict postoperative complications in elderly patients?",
    "Which adverse effect of lithium involves the thyroid gland?",
    "Kawasaki disease is treated with which of the following?",
]
OPTIONS = {"A": "Aspirin", "B": "Heparin", "C": "Calcium gluconate", "D": "Ultrasound"}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--questions", type=int, default=4)
    parser.add_argument("--budgets", default="128,256,512,1024,2048,4096,8192")
    parser.add_argument("--forcing", type=int, default=0)
    parser.add_argument("--answer-max-tokens", type=int, default=64)
    parser.add_argument("--model", help="model dir (default: build the tiny model in a temp dir)")
    parser.add_argument("--kv-gib", type=int, default=2)
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(args.kv_gib)

    from evaluation.budget import Protocol
    from evaluation.runner import BudgetRunner, Sample, load_engine

    with tempfile.TemporaryDirectory(prefix="m1bench-model-") as tmp:
        model = args.model
        if model is None:
            from curation.devtools.tiny_model import build_tiny_model

            model = str(build_tiny_model(Path(tmp) / "tiny"))
        started = time.perf_counter()
        llm, tokenizer = load_engine(
            model,
            max_model_len=max(budgets) + 1024,
            dtype="float32",
            seed=0,
            engine_kwargs={"enforce_eager": True},
        )
        load_s = time.perf_counter() - started
        runner = BudgetRunner(llm, tokenizer, Protocol(answer_max_tokens=args.answer_max_tokens))
        samples = [
            Sample(f"q{i}", QUESTIONS[i % len(QUESTIONS)] + f" (case {i})", OPTIONS, "A")
            for i in range(args.questions)
        ]
        runner.sweep(samples[:1], [8], 0, prefix_reuse=False)  # warm-up

        def timed(fn):
            before = runner.generated_tokens
            t0 = time.perf_counter()
            out = fn()
            return out, runner.generated_tokens - before, time.perf_counter() - t0

        independent, ind_tokens, ind_s = timed(
            lambda: [g for b in budgets for g in runner.sweep(samples, [b], args.forcing, prefix_reuse=False)]
        )
        reused, reuse_tokens, reuse_s = timed(
            lambda: runner.sweep(samples, budgets, args.forcing, prefix_reuse=True)
        )

    def key(g):
        return (g.sample_id, g.budget, g.thinking_ids, g.forced, g.ran_out, g.answer_text)

    same = sorted(map(key, independent)) == sorted(map(key, reused))
    n, a = args.questions, args.answer_max_tokens
    print(
        f"workload: {n} questions x budgets {budgets} (forcing {args.forcing}), answers up to {a} tokens, "
        f"model {model}, {os.cpu_count()} CPUs, eager; engine load {load_s:.1f} s excluded"
    )
    print(f"independent runs (baseline): {ind_tokens:,} generated tokens, {ind_s:.1f} s")
    print(f"prefix reuse               : {reuse_tokens:,} generated tokens, {reuse_s:.1f} s")
    expected = (max(budgets) + len(budgets) * a) / (sum(budgets) + len(budgets) * a)
    print(
        f"ratio reuse/independent    : tokens {reuse_tokens / ind_tokens:.3f} (goal <= 0.55; expected "
        f"(max B + k*A)/(sum B + k*A) = {expected:.3f}), wall {reuse_s / ind_s:.3f}; identical answers: {same}"
    )
    print(
        json.dumps(
            {
                "bench": "eval_prefix_reuse",
                "questions": n,
                "budgets": budgets,
                "answer_max_tokens": a,
                "independent_tokens": ind_tokens,
                "independent_s": round(ind_s, 2),
                "reuse_tokens": reuse_tokens,
                "reuse_s": round(reuse_s, 2),
                "token_ratio": round(reuse_tokens / ind_tokens, 4),
                "wall_ratio": round(reuse_s / ind_s, 4),
                "identical_answers": same,
            }
        )
    )
    if not same:
        sys.exit("prefix reuse changed some answers")


if __name__ == "__main__":
    main()
