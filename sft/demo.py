"""The SFT leg of `m1 demo`: the tiny model fine-tuned for a few steps on the run's curated table with 2 CPU
workers, writing an HF checkpoint, the sft_metrics table and the loss curve.

Also :func:`synthetic_curated`: rows with the curated table's columns for tests and benchmarks (text built
for this project; nonsense medically, never for real training).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pyarrow as pa

import schemas
from curation.store.runstore import RunStore
from sft.config import load_sft_config
from sft.train import TRAIN_DIR, list_checkpoints, run_sft

_FINDINGS = [
    "fever and a productive cough",
    "crushing chest pain radiating to the left arm",
    "painless jaundice and weight loss",
    "a stiff neck and photophobia",
    "episodic palpitations and tremor",
    "bloody diarrhea after antibiotics",
]
_STEPS = [
    "The history points to an infectious cause.",
    "Laboratory studies support the diagnosis.",
    "Wait, the elevated lactate suggests tissue hypoperfusion.",
    "Beta blockers reduce mortality after myocardial infarction.",
    "Let me think step by step about the pathophysiology.",
    "Aspirin irreversibly inhibits cyclooxygenase.",
    "Sensitivity is the proportion of true positives among all patients with the disease.",
]
_OPTIONS = [
    "Pneumonia",
    "Myocardial infarction",
    "Pancreatic cancer",
    "Meningitis",
    "Thyrotoxicosis",
    "Colitis",
]


def synthetic_curated(n: int, *, seed: int = 0, reasoning_sentences: tuple[int, int] = (3, 30)) -> pa.Table:
    """``n`` rows conforming to the ``curated`` schema, with reasoning of varied length."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for i in range(n):
        k = rng.randrange(len(_FINDINGS))
        opts = rng.sample(range(len(_OPTIONS)), 4)
        if k not in opts:
            opts[rng.randrange(4)] = k
        letters = "ABCD"
        answer_letter = letters[opts.index(k)]
        prompt = f"A {rng.randint(18, 80)}-year-old patient presents with {_FINDINGS[k]}. What is the most likely diagnosis?\n"
        prompt += "\n".join(f"{letters[j]}. {_OPTIONS[o]}" for j, o in enumerate(opts))
        reasoning = " ".join(rng.choice(_STEPS) for _ in range(rng.randint(*reasoning_sentences)))
        answer = f"The most likely diagnosis is {_OPTIONS[k]}. \\boxed{{{answer_letter}}}"
        rows.append(
            {
                "answer_idx": answer_letter,
                "source": "synthetic",
                "metadata": "{}",
                "prompt": prompt,
                "answer_letter": answer_letter,
                "answer_string": _OPTIONS[k],
                "reasoning": reasoning,
                "distilled_answer_string": answer,
                "text": "",
                "qid": f"syn{i:05d}",
                "pool_index": i,
                "attempt": 0,
                "model": "synthetic",
                "request_id": f"req{i:05d}",
            }
        )
    return schemas.conform(pa.Table.from_pylist(rows), "curated")


def write_demo_config(run_dir: str | Path, model_dir: str | Path, *, steps: int, table: str) -> Path:
    """The embedded demo SFT config (curation/configs/sft_demo.yaml) with this run's paths, written into the
    run, so `m1 sft RUN/sft-demo.yaml --resume` repeats it."""
    from importlib.resources import files

    import yaml

    template = Path(str(files("curation").joinpath("configs/sft_demo.yaml")))
    raw = yaml.safe_load(template.read_text(encoding="utf-8"))
    run = Path(run_dir).resolve()
    raw["run_dir"] = str(run)
    raw["model"]["path"] = str(Path(model_dir).resolve())
    raw["data"]["table"] = table
    raw["train"]["max_steps"] = steps
    out = run / "sft-demo.yaml"
    out.write_text(
        f"# Written by the demo from {template.name}: this run's paths.\n"
        + yaml.safe_dump(raw, sort_keys=False),
        encoding="utf-8",
    )
    return out


def run_demo_sft(
    run_dir: str | Path,
    model_dir: str | Path,
    *,
    steps: int = 8,
    table: str | None = None,
    reuse: bool = False,
) -> Path:
    """Fine-tune the tiny model on the run's ``m23k`` (else ``curated``) table for ``steps`` optimizer steps
    with 2 CPU workers; returns the HF checkpoint folder. The loss curve lands in RUN/sft/demo-tiny/loss.png.
    With ``reuse``, a finished fine-tune (a complete checkpoint at ``steps``) is returned without training."""

    store = RunStore(str(run_dir), create=False)
    if table is None:
        table = next(
            (t for t in ("m23k", "curated") if store.has_table(t) and store.tables()[t]["rows"]), None
        )
        if table is None:
            raise FileNotFoundError(f"run {run_dir} has no non-empty m23k or curated table to fine-tune on")
    cfg = load_sft_config(write_demo_config(run_dir, model_dir, steps=steps, table=table))
    finished = [
        p for step, p in list_checkpoints(Path(store.path(f"sft/{cfg.name}")) / TRAIN_DIR) if step == steps
    ]
    if reuse and finished and store.has_table("sft_metrics"):
        print(f"[demo] SFT {cfg.name!r} already finished {steps} steps: reusing {finished[-1]}")
        return finished[-1]
    result = run_sft(cfg, force=True)
    print(
        f"[demo] fine-tuned the tiny model on {table} for {result.steps} steps in {result.wall_s:.0f} s "
        f"({result.plan.examples} examples, padding share {result.plan.padding_share_unpacked:.1%}):\n"
        f"  checkpoint {result.checkpoint}\n  loss curve {result.loss_png}"
    )
    return Path(result.checkpoint)
