"""Benchmark: share of padding tokens with and without sequence packing, on m1's length distribution.

    .venv/bin/python bench/bench_sft_padding.py [--examples 23493] [--seed 0]

Example lengths are drawn to match m1's released m23K: reasoning tokens (Qwen2.5 tokenizer) mean 1,383,
median 985, max 7,461 -> a log-normal with median 985 and sigma 0.824 (mean exp(mu + sigma^2/2) = 1,383),
clipped to [40, 7,461]; plus a prompt of 60-400 tokens (MedMCQA stems are short, MedQA vignettes long) and
~60 tokens of chat template, markers and answer. Rows are shuffled as training sees them.

For each per-device batch size the baseline is the unpacked run (each batch padded to its longest example,
as m1 trained); packing uses the project's own code (sft.format.pack_best_fit over buffers of 1,024 examples,
sft.data.packed_lengths) into rows of pack_length tokens, batches padded to their longest row. Printed:
padding share, rows and optimizer-step inputs per epoch, and the ratio of padded positions computed
(unpacked / packed) for the same real tokens.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sft.data import packed_lengths  # noqa: E402
from sft.format import padding_share  # noqa: E402


def m1_lengths(n: int, seed: int) -> tuple[list[int], np.ndarray]:
    """(example lengths, reasoning lengths)."""
    rng = np.random.default_rng(seed)
    reasoning = np.clip(rng.lognormal(math.log(985), 0.824, n), 40, 7461).astype(int)
    prompt = rng.integers(60, 400, n)
    return (reasoning + prompt + 60).tolist(), reasoning


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=23493)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pack-lengths", default="8192,16384,32768")
    ap.add_argument("--batch-sizes", default="1,2,4,8,16")
    args = ap.parse_args()
    lengths, reasoning = m1_lengths(args.examples, args.seed)
    print(
        f"{len(lengths):,} examples; reasoning tokens mean {reasoning.mean():,.0f}, median "
        f"{np.median(reasoning):,.0f}, max {reasoning.max():,} (m1: 1,383 / 985 / 7,461); example tokens mean "
        f"{np.mean(lengths):,.0f}, max {max(lengths):,}; {sum(lengths):,} tokens/epoch"
    )
    results = []
    print(f"{'batch':>5} {'mode':>14} {'rows/epoch':>10} {'padding share':>13} {'positions/real':>14}")
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        base = padding_share(lengths, bs)
        results.append({"batch": bs, "mode": "unpacked", "rows": len(lengths), "padding_share": base})
        print(f"{bs:>5} {'unpacked':>14} {len(lengths):>10,} {base:>13.1%} {1 / (1 - base):>14.3f}")
        for cap in (int(c) for c in args.pack_lengths.split(",")):
            packed = packed_lengths(lengths, cap, 1024)
            share = padding_share(packed, bs)
            results.append(
                {"batch": bs, "mode": f"packed {cap}", "rows": len(packed), "padding_share": share}
            )
            ratio = (1 / (1 - base)) / (1 / (1 - share))
            print(
                f"{bs:>5} {'packed ' + str(cap):>14} {len(packed):>10,} {share:>13.1%} {1 / (1 - share):>14.3f}"
                f"   (unpacked computes {ratio:.2f}x the positions)"
            )
    print(json.dumps({"bench": "sft_padding", "examples": len(lengths), "results": results}))


if __name__ == "__main__":
    main()
