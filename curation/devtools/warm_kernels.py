"""Compile the MinHash and decontamination numba kernels once, into numba's on-disk cache, at install time.

The kernels are ``cache=True``: numba keeps the compiled code beside the source (``__pycache__``) and reuses it
in every later process. Until that cache exists, each process that first calls a kernel compiles it: ~25 s of
CPU for the whole set on a 2-core machine (the dedup, decontamination and MinHash tests: 28 s of user CPU with
an empty cache, 9 s with a warm one), and the Ray workers of a fresh node's first run all compile at once.
`cluster/install-node.sh` (so `make setup` and the node image too) runs this after installing, so that cost is
paid once, serially, where nothing waits on it.

It runs the real code paths, in this process and without Ray, on the packaged sample pool: the ingest, the
dedup decisions with each shingle kind and verification measure, and the decontamination of the pool against
the demo's evaluation sets (every kernel compiles for the argument types the stages pass).

    python -m curation.devtools.warm_kernels
"""

from __future__ import annotations

import time
from importlib.resources import files
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads

from curation.config import DedupOptions, MinHashOptions, load_config
from curation.stages.decontaminate import decontaminate_block, load_eval_indexes
from curation.stages.dedup import dedup_decisions
from curation.stages.ingest import ingest_in_process


def warm_kernels() -> dict[str, int]:
    """Run dedup and decontamination on the sample pool; returns what each step found (for a sanity check)."""
    cfg = load_config(Path(str(files("curation").joinpath("configs/demo.yaml"))))  # the embedded demo config
    questions = ingest_in_process(cfg.sources, cfg.ingest).questions
    pool = pads.dataset(questions)
    variants = [
        cfg.dedup,  # the demo's: char 4-shingles, fuzz.ratio verification (m1's rule)
        DedupOptions(),  # the default: word 5-shingles, shingle Jaccard
        DedupOptions(text="question_options", minhash=MinHashOptions(shingle="char", k=5)),
    ]
    seen = {"questions": questions.num_rows}
    for i, opts in enumerate(variants):
        _, details = dedup_decisions(pool, opts)
        seen[f"dedup_{i}_near_duplicates"] = details["near_duplicates"]
    indexes = load_eval_indexes(cfg.decontaminate)
    candidates, _, _ = decontaminate_block(
        questions, np.arange(questions.num_rows, dtype=np.int64), None, indexes, cfg.decontaminate
    )
    seen["decontaminate_kept"] = candidates.num_rows
    return seen


def main() -> int:
    started = time.perf_counter()
    seen = warm_kernels()
    print(
        f"numba kernels compiled and cached ({time.perf_counter() - started:.1f} s; "
        f"{seen['questions']} sample questions, {seen['decontaminate_kept']} after decontamination)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
