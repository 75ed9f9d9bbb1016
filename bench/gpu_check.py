"""GPU readiness check (issue 18): SFT tokens/s and MFU with m1's recipe, plus a transformers.generate baseline.

Sized for one H100 in under 8 minutes; imports torch, transformers and the project's pure `sft.format` only
(the device image has no Ray, vLLM, pyarrow or pydantic), and downloads nothing: the models are random-init
Qwen2 of Qwen2.5-0.5B's and -1.5B's shapes (vocabulary 151,936 included, so the LM head costs what it costs),
built from a config on the device.

Training: a transformers ``Trainer`` with the m1 preset's settings (curation/configs/sft_m1.yaml and
``sft.train._training_args``): bf16, AdamW (0.9, 0.95), weight decay 1e-4, lr 1e-5 cosine with warm-up, max
grad norm 1, per-device batch 1, gradient checkpointing on, sdpa attention; rows built and collated by
``sft.format`` (``pack_best_fit``, ``collate``: position ids restart per example, no attention mask when
packed), packing off (m1) and on. Sequence lengths follow m1's reasoning-length distribution (log-normal,
median 985 tokens, clipped to [40, 7461]; bench_sft_padding.py), random token ids. Reported over the steps
after --warmup:

- tokens/s = real tokens / step wall time (CUDA synchronised at step begin and end);
- MFU = flops per token * tokens/s / peak, with flops per token = 6 * (non-embedding parameters + LM head)
  + 6 * layers * hidden * mean example length (causal attention), peak from --peak-tflops (989: H100 SXM
  dense bf16; H200 has the same).

Generation baseline for the budget protocol: plain ``model.generate`` (greedy, min_new_tokens =
max_new_tokens so every row decodes the whole budget), a batch of --gen-batch prompts of --gen-prompt tokens,
--gen-tokens new tokens: tokens/s. This is what evaluation's budget sweep costs without vLLM.

    python bench/gpu_check.py                  # on the GPU machine: both sizes, packing off/on, generate
    python bench/gpu_check.py --smoke          # anywhere, CPU, tiny shapes, < 1 minute (tests/test_gpu_check.py)

Prints one line per case and a final JSON line (also written to --out).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

QWEN25 = {  # hidden, layers, heads, kv heads, intermediate, vocab (Qwen2.5 configs)
    "0.5b": (896, 24, 14, 2, 4864, 151936),
    "1.5b": (1536, 28, 12, 2, 8960, 151936),
    "smoke": (64, 2, 2, 1, 128, 512),
}
# m1's reasoning lengths (bench_sft_padding.py): log-normal, median 985, clipped to [40, 7461].
LENGTH_MEDIAN, LENGTH_SIGMA, LENGTH_MIN, LENGTH_MAX = 985, 0.824, 40, 7461


def build_model(size: str, device: str, dtype: Any) -> Any:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    hidden, layers, heads, kv, inter, vocab = QWEN25[size]
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        intermediate_size=inter,
        max_position_embeddings=32768,
        tie_word_embeddings=True,  # as Qwen2.5-0.5B and -1.5B
        use_sliding_window=False,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=0,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(config)
    return model.to(dtype)


def flops_per_token(config: Any, seq: float) -> float:
    """6 * (non-embedding parameters + LM head) + causal attention (6 * layers * hidden * seq)."""
    h, n_layers = config.hidden_size, config.num_hidden_layers
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    per_layer = (
        h * heads * head_dim + 2 * h * kv * head_dim + heads * head_dim * h + 3 * h * config.intermediate_size
    )
    n = n_layers * per_layer + h * config.vocab_size
    return 6 * n + 6 * n_layers * h * seq


def example_lengths(n: int, scale: float, cap: int, seed: int = 0) -> list[int]:
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        x = math.exp(rng.gauss(math.log(LENGTH_MEDIAN), LENGTH_SIGMA))
        out.append(int(min(max(x, LENGTH_MIN), LENGTH_MAX) * scale))
    return [max(8, min(x, cap)) for x in out]


def training_rows(lengths: list[int], vocab: int, capacity: int, packed: bool) -> list[Any]:
    """sft.format Rows of random token ids: one example per row, or best-fit packed into ``capacity``."""
    import random

    from sft.format import Row, pack_best_fit

    rng = random.Random(1)
    examples = []
    for n in lengths:
        ids = [rng.randrange(3, vocab) for _ in range(n)]
        # Loss on the second half (the assistant turn), as m1's assistant-only loss.
        labels = [-100] * (n // 2) + ids[n // 2 :]
        examples.append((ids, labels))
    if not packed:
        return [Row(ids, labels, list(range(len(ids))), 1) for ids, labels in examples]
    rows = []
    for group in pack_best_fit(lengths, capacity):
        ids: list[int] = []
        labels: list[int] = []
        pos: list[int] = []
        for i in group:
            ids += examples[i][0]
            labels += examples[i][1]
            pos += range(len(examples[i][0]))
        rows.append(Row(ids, labels, pos, len(group)))
    # Best-fit decreasing fills its first bins with the longest examples: shuffle, so the timed steps see
    # the mix a training epoch sees.
    rng.shuffle(rows)
    return rows


def train_case(size: str, packed: bool, args: argparse.Namespace, device: str) -> dict[str, Any]:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from sft.format import collate

    on_gpu = device == "cuda"
    dtype = torch.bfloat16 if on_gpu else torch.float32
    model = build_model(size, device, dtype)
    scale = args.length_scale
    capacity = args.max_length
    steps = args.warmup + args.steps
    lengths = example_lengths(steps * (16 if packed else 1) + 64, scale, capacity)
    rows = training_rows(lengths, model.config.vocab_size, capacity, packed)
    batches = [collate([r], pad_id=0, packed=packed) for r in rows[:steps]]
    step_tokens = [stats.tokens for _, stats in batches]
    step_examples = [stats.examples for _, stats in batches]

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self) -> Any:
            for batch, _ in batches:
                yield dict(batch)

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self._t = 0.0

        def on_step_begin(self, *a: Any, **k: Any) -> None:
            if on_gpu:
                torch.cuda.synchronize()
            self._t = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            if on_gpu:
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self._t)

    class CheckTrainer(Trainer):
        def get_train_dataloader(self) -> Any:
            return torch.utils.data.DataLoader(Stream(), batch_size=None, num_workers=0)

        def training_step(self, model: Any, inputs: dict[str, Any], *a: Any, **k: Any) -> Any:
            inputs["use_cache"] = False  # as sft.train: no KV cache in training
            return super().training_step(model, inputs, *a, **k)

    out_dir = Path(args.workdir) / f"train-{size}-{'packed' if packed else 'unpacked'}"
    targs = TrainingArguments(
        output_dir=str(out_dir),
        per_device_train_batch_size=1,
        gradient_accumulation_steps=1,
        learning_rate=1e-5,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, args.warmup),
        weight_decay=1e-4,
        adam_beta1=0.9,
        adam_beta2=0.95,
        max_grad_norm=1.0,
        max_steps=steps,
        bf16=on_gpu,
        gradient_checkpointing=True,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=not on_gpu,
        seed=0,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    clock = StepClock()
    trainer = CheckTrainer(model=model, args=targs, train_dataset=Stream(), callbacks=[clock])
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    result = trainer.train()
    timed = clock.times[args.warmup :]
    tokens = step_tokens[args.warmup : args.warmup + len(timed)]
    examples = step_examples[args.warmup : args.warmup + len(timed)]
    tps = sum(tokens) / sum(timed)
    mean_example = sum(tokens) / max(1, sum(examples))
    fpt = flops_per_token(model.config, mean_example)
    mfu = fpt * tps / (args.peak_tflops * 1e12) if on_gpu else None
    case = {
        "size": size,
        "packing": packed,
        "steps_timed": len(timed),
        "tokens_per_step": round(statistics.mean(tokens), 1),
        "examples_per_step": round(statistics.mean(examples), 2),
        "step_s_median": round(statistics.median(timed), 4),
        "tokens_per_s": round(tps, 1),
        "mfu": round(mfu, 4) if mfu is not None else None,
        "final_loss": round(float(result.training_loss), 4),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if on_gpu else None,
    }
    del trainer, model
    if on_gpu:
        torch.cuda.empty_cache()
    return case


def generate_case(size: str, args: argparse.Namespace, device: str) -> dict[str, Any]:
    import torch

    on_gpu = device == "cuda"
    model = build_model(size, device, torch.bfloat16 if on_gpu else torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (args.gen_batch, args.gen_prompt), generator=g).to(device)
    kwargs = {
        "attention_mask": torch.ones_like(ids),
        "do_sample": False,
        "max_new_tokens": args.gen_tokens,
        "min_new_tokens": args.gen_tokens,
        "pad_token_id": 0,
    }
    with torch.no_grad():
        model.generate(
            ids[:, : min(8, args.gen_prompt)],
            **{**kwargs, "attention_mask": None, "max_new_tokens": 4, "min_new_tokens": 4},
        )
        if on_gpu:
            torch.cuda.synchronize()
        started = time.perf_counter()
        out = model.generate(ids, **kwargs)
        if on_gpu:
            torch.cuda.synchronize()
        wall = time.perf_counter() - started
    new = (out.shape[1] - ids.shape[1]) * out.shape[0]
    del model
    if on_gpu:
        torch.cuda.empty_cache()
    return {
        "size": size,
        "batch": args.gen_batch,
        "prompt_tokens": args.gen_prompt,
        "new_tokens_per_row": args.gen_tokens,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(new / wall, 1),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, a few steps: checks the script")
    ap.add_argument("--sizes", default="0.5b,1.5b")
    ap.add_argument("--steps", type=int, default=20, help="timed optimizer steps per case")
    ap.add_argument("--warmup", type=int, default=5, help="untimed first steps")
    ap.add_argument("--max-length", type=int, default=8192, help="row capacity (packing) and length cap")
    ap.add_argument("--length-scale", type=float, default=1.0, help="multiply m1's example lengths")
    ap.add_argument("--gen-batch", type=int, default=32)
    ap.add_argument("--gen-prompt", type=int, default=256)
    ap.add_argument("--gen-tokens", type=int, default=512)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of one GPU")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None, help="also write the JSON result here")
    args = ap.parse_args(argv)

    import tempfile

    import torch

    if args.smoke:
        args.sizes, args.steps, args.warmup, args.max_length, args.length_scale = "smoke", 2, 1, 256, 0.02
        args.gen_batch, args.gen_prompt, args.gen_tokens = 2, 16, 8
        device = "cpu"
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    else:
        if not torch.cuda.is_available():
            sys.exit("gpu_check: no CUDA device; run with --smoke to check the script on CPU")
        device = "cuda"
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="m1-gpu-check-")
    started = time.perf_counter()
    result: dict[str, Any] = {
        "bench": "gpu_check",
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "smoke": args.smoke,
        "train": [],
        "generate": [],
    }
    for size in args.sizes.split(","):
        for packed in (False, True):
            case = train_case(size, packed, args, device)
            result["train"].append(case)
            mfu = f"MFU {case['mfu']:.1%}" if case["mfu"] is not None else "MFU n/a (CPU)"
            print(
                f"sft {size:>5} packing={'on ' if packed else 'off'} {case['tokens_per_s']:>10,.0f} tok/s  {mfu}  "
                f"({case['tokens_per_step']:,.0f} tokens/step, step {case['step_s_median']:.3f} s, "
                f"peak mem {case['peak_mem_gib']} GiB)",
                flush=True,
            )
        gen = generate_case(size, args, device)
        result["generate"].append(gen)
        print(
            f"generate {size:>5} batch {gen['batch']} x {gen['new_tokens_per_row']} new tokens: "
            f"{gen['tokens_per_s']:,.0f} tok/s ({gen['wall_s']:.1f} s)",
            flush=True,
        )
    result["wall_s"] = round(time.perf_counter() - started, 1)
    result["imported_ray_or_vllm"] = sorted(m for m in ("ray", "vllm") if m in sys.modules)
    print(json.dumps(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
