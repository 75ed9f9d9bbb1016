"""The LLM stages: difficulty rules on hand-made tallies, teacher judgement, and score -> teacher -> curate end to
end against the rehearsal server (a real OpenAI-compatible HTTP server on loopback, faults injected)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import pytest

from curation.config import CurationConfig
from curation.rules.difficulty import Tally, decide
from curation.rules.traces import ANSWER_MARKER, THINK_MARKER, assistant_text, judge_attempt, sft_text

POOL = Path(__file__).resolve().parents[1] / "curation" / "sample_pool"
OPTIONS = {"A": "Cobra", "B": "Viper", "C": "Cobalt", "D": "Krait"}


# ---- the hard / easy rule -----------------------------------------------------------------------------
def test_m1_rule_is_hard_iff_every_scorer_is_wrong() -> None:
    wrong, right, invalid = Tally(wrong=1), Tally(correct=1), Tally(invalid=1)
    assert decide({"qwen7b": wrong, "qwen32b": wrong}).decision == "hard"
    assert (
        decide({"qwen7b": wrong, "qwen32b": invalid}).decision == "hard"
    )  # an unreadable answer is not right
    verdict = decide({"qwen7b": wrong, "qwen32b": right})
    assert verdict.decision == "easy" and verdict.rule == "all_wrong: correct by qwen32b"
    assert verdict.pass_rates == {"qwen32b": 1.0, "qwen7b": 0.0} and verdict.pass_rate == 0.5


def test_a_failed_scorer_request_makes_the_question_undecided_never_easy_or_hard() -> None:
    verdict = decide({"qwen7b": Tally(correct=1), "qwen32b": Tally(error=1)})
    assert verdict.decision == "undecided"
    assert "1 request(s) failed" in verdict.rule and "qwen32b" in verdict.rule
    assert decide({"qwen7b": Tally(wrong=1), "qwen32b": Tally(error=1)}).decision == "undecided"
    assert decide({}).decision == "undecided"
    assert decide({"a": Tally(wrong=3, error=1)}, "pass_rate", 0.5).decision == "undecided"


@pytest.mark.parametrize(
    ("tally", "max_rate", "decision"),
    [
        (Tally(correct=1, wrong=3), 0.25, "hard"),  # 0.25 <= 0.25
        (Tally(correct=2, wrong=2), 0.25, "easy"),
        (Tally(wrong=4), 0.0, "hard"),
        (Tally(correct=1, wrong=3), 0.0, "easy"),
        (Tally(correct=1, invalid=7), 0.125, "hard"),
    ],
)
def test_pass_rate_rule_over_all_samples(tally: Tally, max_rate: float, decision: str) -> None:
    verdict = decide({"a": tally}, "pass_rate", max_rate)
    assert verdict.decision == decision
    assert verdict.rule.startswith("pass_rate: ")


def test_pass_rate_pools_samples_of_all_scorers() -> None:
    verdict = decide({"a": Tally(correct=2, wrong=2), "b": Tally(wrong=4)}, "pass_rate", 0.25)
    assert verdict.pass_rate == 0.25 and verdict.decision == "hard"
    assert verdict.pass_rates == {"a": 0.5, "b": 0.0}


# ---- teacher judgement ----------------------------------------------------------------------------------
def test_truncated_filtered_and_failed_traces_are_never_accepted() -> None:
    good = "The venom is neurotoxic.\n\n**Answer:** \\boxed{D}"
    assert judge_attempt(
        good, reasoning="r", finish_reason="stop", error=None, options=OPTIONS, answer_label="D"
    ).accepted
    cut = judge_attempt(
        good, reasoning="r", finish_reason="length", error=None, options=OPTIONS, answer_label="D"
    )
    assert (cut.outcome, cut.accepted) == ("truncated", False)
    assert judge_attempt(
        good, reasoning="r", finish_reason="content_filter", error=None, options=OPTIONS, answer_label="D"
    ).outcome == ("filtered")
    failed = judge_attempt(
        None, reasoning=None, finish_reason=None, error="APIError: 500", options=OPTIONS, answer_label="D"
    )
    assert (failed.outcome, failed.how) == ("error", "APIError: 500")


def test_m1_first_character_bug_does_not_survive() -> None:
    # m1 counted any answer whose first character is the key's letter: "Cobalt" for C.
    verdict = judge_attempt(
        "\\boxed{Cobalt}", reasoning="r", finish_reason="stop", error=None, options=OPTIONS, answer_label="A"
    )
    assert (verdict.outcome, verdict.label) == ("wrong", "C")
    verdict = judge_attempt(
        "\\boxed{}", reasoning="r", finish_reason="stop", error=None, options=OPTIONS, answer_label="A"
    )
    assert verdict.outcome == "invalid" and verdict.label is None


def test_sft_text_is_m1s_format() -> None:
    assert assistant_text(" because X. ", "\\boxed{B}") == (
        f"{THINK_MARKER}\nbecause X.\n{ANSWER_MARKER}\nAnswer: \\boxed{{B}}"
    )
    text = sft_text("Q?\nA. a\nB. b", "because X.", "\\boxed{B}")
    assert text.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
    assert "<|im_start|>user\nQ?\nA. a\nB. b<|im_end|>\n<|im_start|>assistant\n<|im_start|>think\n" in text
    assert text.endswith("<|im_start|>answer\nAnswer: \\boxed{B}<|im_end|>")


# ---- the question rows an LLM stage streams ---------------------------------------------------------------
def test_question_dataset_reads_every_row_group_into_engine_sized_blocks(
    ray_local: None, tmp_path: Path
) -> None:
    import pyarrow as pa
    import ray

    from curation.engines import block_rows
    from curation.engines.config import OpenAIEngineConfig
    from curation.stages.llm import question_dataset, write_rows
    from curation.store.runstore import RunStore

    store = RunStore(str(tmp_path / "run"))
    sizes = [700, 130, 1500]  # one row group each
    batches = [
        pa.table(
            {
                "source": ["medqa"] * n,
                "qid": [f"{g}-{i}" for i in range(n)],
                "prompt": ["p"] * n,
                "x": [g] * n,
            }
        )
        for g, n in enumerate(sizes)
    ]
    assert write_rows(store, "scratch/q", batches) == sum(sizes)
    engine = OpenAIEngineConfig(base_url="http://127.0.0.1:9/v1", model="m", max_concurrency=512, actors=2)
    ds, n = question_dataset(
        store, ["source", "qid", "prompt"], engine=engine, requests_per_row=2, rel="scratch/q"
    )
    per_block = block_rows(engine, n * 2) // 2
    assert n == 2330 and per_block == 582
    blocks = ray.get(ds.to_arrow_refs())
    assert [b.num_rows for b in blocks] == [582, 118, 130, 582, 582, 336]
    assert all(b.column_names == ["source", "qid", "prompt"] for b in blocks)
    qids = [q for b in blocks for q in b.column("qid").to_pylist()]
    assert qids == [f"{g}-{i}" for g, size in enumerate(sizes) for i in range(size)]

    assert write_rows(store, "scratch/empty", [batches[0].slice(0, 0)]) == 0
    ds, n = question_dataset(store, ["source", "qid"], engine=engine, requests_per_row=1, rel="scratch/empty")
    assert n == 0 and ds.count() == 0 and ds.schema().names == ["source", "qid"]


# ---- end to end against the rehearsal server -------------------------------------------------------------
SCORER_RATES = {"Qwen/Qwen2.5-7B-Instruct": 0.6, "Qwen/Qwen2.5-32B-Instruct": 0.7}


def llm_config(base_url: str, *, max_attempts: int = 2) -> dict[str, Any]:
    def engine(model: str) -> dict[str, Any]:
        return {
            "kind": "openai",
            "base_url": base_url,
            "model": model,
            "max_concurrency": 16,
            "backoff_base_s": 0.01,
            "backoff_max_s": 0.1,
            "price": {"input_per_mtok": 0.55, "output_per_mtok": 2.19},
        }

    return {
        "name": "llm-stages-test",
        "sources": [
            {"name": "medqa", "format": "medqa", "path": str(POOL / "medqa.jsonl")},
            {"name": "pubmedqa", "format": "pubmedqa", "path": str(POOL / "pubmedqa.jsonl")},
        ],
        "ingest": {"m1_shuffle": True},
        "engines": {
            "qwen7b": engine("Qwen/Qwen2.5-7B-Instruct"),
            "qwen32b": engine("Qwen/Qwen2.5-32B-Instruct"),
            "teacher": engine("deepseek-reasoner"),
        },
        "score": {
            "scorers": [
                {"name": "qwen7b", "engine": "qwen7b", "max_tokens": 4000},
                {"name": "qwen32b", "engine": "qwen32b", "max_tokens": 4000},
            ]
        },
        "teacher": {"engine": "teacher", "max_attempts": max_attempts},
    }


def run_pipeline(cfg: CurationConfig, run_dir: Path, **kwargs: Any) -> dict[str, dict[str, Any]]:
    from curation.pipeline import run_stages
    from curation.stages import stage_registry
    from curation.store.runstore import RunStore

    stages = [cls() for cls in stage_registry().values()]
    records = run_stages(stages, cfg, RunStore(str(run_dir)), log=lambda _m: None, **kwargs)
    return {r["name"]: r for r in records}


@pytest.fixture(scope="module")
def ingested_once(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CurationConfig]:
    """The CPU stages (ingest, dedup, decontaminate) run once for the module on the real Ray path."""
    run_dir = tmp_path_factory.mktemp("ingested") / "run"
    cfg = CurationConfig.model_validate({**llm_config("http://127.0.0.1:9/v1"), "score": {}, "teacher": {}})
    run_pipeline(cfg, run_dir)
    return run_dir, cfg


@pytest.fixture
def ingested(ingested_once: tuple[Path, CurationConfig], tmp_path: Path) -> tuple[Path, CurationConfig]:
    """A copy of the ingested run per test (a run directory is relocatable), for the test's own LLM stages."""
    import shutil

    source, cfg = ingested_once
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)
    return run_dir, cfg


def table(run_dir: Path, name: str) -> Any:
    from curation.store.runstore import RunStore

    return RunStore(str(run_dir)).read_table(name)


@pytest.fixture(scope="module")
def faulted_run(
    ingested_once: tuple[Path, CurationConfig], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Every stage after the CPU ones against a rehearsal server that injects rate limits, server errors,
    malformed JSON and length cuts, then a forced rerun of the same config; checked by the two tests below."""
    import shutil

    from curation.devtools.rehearse import FaultRates, RehearsalConfig, RehearsalServer

    source, _ = ingested_once
    run_dir = tmp_path_factory.mktemp("faulted") / "run"
    shutil.copytree(source, run_dir)
    server_cfg = RehearsalConfig(
        pool=str(run_dir / "tables" / "questions"),
        latency_ms=0,
        latency_jitter_ms=0,
        reasoning_tokens_mean=60,
        model_correct_rates=SCORER_RATES,
        correct_rate=0.6,
        faults=FaultRates(rate_limit=0.05, server_error=0.05, malformed_json=0.03, length=0.15),
        retry_after_s=0.01,
    )
    with RehearsalServer(server_cfg) as server:
        cfg = CurationConfig.model_validate(llm_config(server.url))
        records = run_pipeline(cfg, run_dir)
        # A rerun of the same config is a no-op; forcing the LLM stages re-judges from the ledger, paying nothing.
        before = _served(server)
        rerun = run_pipeline(cfg, run_dir, force=True)
        after = _served(server)
    return {"run_dir": run_dir, "records": records, "rerun": rerun, "served": (before, after)}


def test_score_teacher_curate_end_to_end_with_faults(faulted_run: dict[str, Any]) -> None:
    run_dir, records, rerun = faulted_run["run_dir"], faulted_run["records"], faulted_run["rerun"]
    before, after = faulted_run["served"]
    assert after == before, "a forced rerun sent requests the ledger already answered"
    assert rerun["teacher"]["rejected_by_reason"] == records["teacher"]["rejected_by_reason"]
    questions = table(run_dir, "questions")
    n = questions.num_rows
    scores, difficulty = table(run_dir, "scores"), table(run_dir, "difficulty")
    traces, curated = table(run_dir, "traces"), table(run_dir, "curated")
    assert scores.num_rows == 2 * n  # every question x 2 scorers x 1 sample, errors included
    assert Counter(scores.column("scorer").to_pylist()) == {"qwen7b": n, "qwen32b": n}
    decisions = Counter(difficulty.column("decision").to_pylist())
    assert sum(decisions.values()) == n
    assert decisions["hard"] > 0 and decisions["easy"] > 0
    score_rec, teacher_rec, curate_rec = records["score"], records["teacher"], records["curate"]
    assert (score_rec["rows_in"], score_rec["rows_out"]) == (n, decisions["hard"])
    assert teacher_rec["rows_in"] == decisions["hard"]
    accepted = {(r["source"], r["qid"]) for r in traces.to_pylist() if r["accepted"]}
    assert teacher_rec["rows_out"] == len(accepted) == curated.num_rows == curate_rec["rows_out"]
    assert teacher_rec["rows_out"] + teacher_rec["rows_rejected"] == decisions["hard"]
    # Every hard question got attempt 1; only questions without an accepted first attempt got attempt 2.
    attempts = Counter(traces.column("attempt").to_pylist())
    first_ok = {(r["source"], r["qid"]) for r in traces.to_pylist() if r["accepted"] and r["attempt"] == 1}
    assert attempts[1] == decisions["hard"] and attempts[2] == decisions["hard"] - len(first_ok)
    assert (
        len(set(traces.column("request_id").to_pylist())) == traces.num_rows
    )  # attempts are distinct requests
    # Curated rows are m1's records of the accepted attempt, judged correct against the key.
    for row in curated.to_pylist():
        assert row["answer_idx"] == row["answer_letter"]
        assert row["reasoning"] and row["distilled_answer_string"]
        assert row["text"].endswith(f"Answer: {row['distilled_answer_string'].strip()}<|im_end|>")
    assert rerun["curate"]["rows_out"] == curated.num_rows


def test_rehearsal_engines_are_started_by_the_engine_layer_and_answer_from_the_stages_questions(
    ingested: tuple[Path, CurationConfig], capsys: pytest.CaptureFixture[str]
) -> None:
    """`kind: rehearsal` scorers and teacher: no server started here, none configured with a pool; the engine
    layer starts one per engine around each stage, fed the questions the stage asks about (so the scorers'
    correct_rate 0 makes every question hard and the teacher's 1 makes every trace right)."""
    run_dir, _ = ingested
    raw = llm_config("http://127.0.0.1:9/v1", max_attempts=1)
    server = {"latency_ms": 0, "latency_jitter_ms": 0, "reasoning_tokens_mean": 20}
    for name, rate in (("qwen7b", 0.0), ("qwen32b", 0.0), ("teacher", 1.0)):
        engine = raw["engines"][name]
        del engine["base_url"]
        engine.update(kind="rehearsal", server={**server, "correct_rate": rate})
    records = run_pipeline(CurationConfig.model_validate(raw), run_dir)
    assert capsys.readouterr().out.count("REHEARSAL") == 3  # two scorer engines, one teacher
    n = table(run_dir, "questions").num_rows
    assert Counter(table(run_dir, "difficulty").column("decision").to_pylist()) == {"hard": n}
    assert records["teacher"]["rows_in"] == n
    traces = table(run_dir, "traces")
    assert traces.num_rows == n and all(traces.column("accepted").to_pylist())


def _served(server: Any) -> int:
    return int(server.stats(per_request=False)["requests_total"])


def test_undecided_after_errors_never_reaches_the_teacher(ingested: tuple[Path, CurationConfig]) -> None:
    from curation.devtools.rehearse import FaultRates, RehearsalConfig, RehearsalServer

    run_dir, _ = ingested
    server_cfg = RehearsalConfig(
        pool=str(run_dir / "tables" / "questions"),
        latency_ms=0,
        latency_jitter_ms=0,
        reasoning_tokens_mean=40,
        model_correct_rates={"Qwen/Qwen2.5-7B-Instruct": 0.0, "Qwen/Qwen2.5-32B-Instruct": 0.0},
        faults=FaultRates(server_error=0.5),
    )
    with RehearsalServer(server_cfg) as server:
        raw = llm_config(server.url)
        for engine in raw["engines"].values():
            engine["max_attempts"] = 1  # one try: about half of the scorer requests fail for good
        records = run_pipeline(CurationConfig.model_validate(raw), run_dir)
    difficulty = table(run_dir, "difficulty")
    scores = table(run_dir, "scores")
    con = duckdb.connect()
    con.register("scores", scores)
    con.register("difficulty", difficulty)
    errored = {r[0] for r in con.sql("SELECT DISTINCT qid FROM scores WHERE outcome = 'error'").fetchall()}
    undecided = {r[0] for r in con.sql("SELECT qid FROM difficulty WHERE decision = 'undecided'").fetchall()}
    assert errored and errored == undecided
    # Both scorers always wrong: every question without an error is hard, and only those reach the teacher.
    assert records["score"]["rows_out"] == difficulty.num_rows - len(undecided)
    assert records["score"]["rejected_by_reason"] == {"undecided": len(undecided)}
    assert records["teacher"]["rows_in"] == records["score"]["rows_out"]
    sent = set(table(run_dir, "traces").column("qid").to_pylist())
    assert not sent & undecided


def test_lineage_accounts_for_every_pool_question_and_export_round_trips(
    faulted_run: dict[str, Any], tmp_path: Path
) -> None:
    import datasets

    from curation.store.catalog import connect
    from curation.store.export import ExportError, export_table
    from curation.store.runstore import RunStore

    run_dir, records = faulted_run["run_dir"], faulted_run["rerun"]  # the tables are the forced rerun's
    con = connect(RunStore(str(run_dir)))
    n = con.execute("SELECT count(*) FROM questions").fetchall()[0][0]
    lineage = dict(
        ((status, stage, reason), count)
        for status, stage, reason, count in con.execute(
            "SELECT status, stage, coalesce(reason, ''), count(*) FROM lineage GROUP BY ALL"
        ).fetchall()
    )
    assert sum(lineage.values()) == n  # one row per pool question, nothing lost or counted twice
    # No eval set is configured here, so m23k (the run's last table) keeps every curated row.
    assert records["m23k"]["rows_out"] == records["curate"]["rows_out"]
    assert lineage[("kept", "m23k", "")] == records["m23k"]["rows_out"]
    assert lineage.get(("dropped", "score", "easy"), 0) == records["score"]["rejected_by_reason"].get(
        "easy", 0
    )
    teacher_drops = {r: c for (status, stage, r), c in lineage.items() if stage == "teacher"}
    assert teacher_drops == records["teacher"]["rejected_by_reason"]
    assert teacher_drops.get("truncated", 0) > 0  # length-cut traces are dropped, never accepted
    truncated = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE accepted) FROM traces WHERE outcome = 'truncated'"
    ).fetchall()
    assert truncated[0][0] > 0 and truncated[0][1] == 0

    curated = RunStore(str(run_dir)).read_table("curated")
    for fmt, name in (("jsonl", "c.jsonl"), ("parquet", "c.parquet"), ("hf", "c_hf")):
        path, rows = export_table(str(run_dir), "curated", fmt, str(tmp_path / name))
        assert rows == curated.num_rows
        if fmt == "hf":
            loaded = datasets.load_dataset(str(path), split="train")
        else:
            loaded = datasets.load_dataset(
                "json" if fmt == "jsonl" else "parquet", data_files=str(path), split="train"
            )
        assert loaded.num_rows == curated.num_rows, (fmt, path)
        assert sorted(loaded["qid"]) == sorted(curated.column("qid").to_pylist())
        assert {"prompt", "reasoning", "distilled_answer_string", "text", "answer_letter"} <= set(
            loaded.column_names
        )
    with pytest.raises(ExportError, match="exists"):
        export_table(str(run_dir), "curated", "jsonl", str(tmp_path / "c.jsonl"))
    with pytest.raises(ExportError, match="no table 'nope'"):
        export_table(str(run_dir), "nope", "jsonl", str(tmp_path / "x.jsonl"))


def test_dry_run_prints_plan_and_cost_and_sends_nothing(
    ingested: tuple[Path, CurationConfig], capsys: pytest.CaptureFixture[str]
) -> None:
    from curation.devtools.rehearse import RehearsalConfig, RehearsalServer
    from curation.pipeline import run_stages
    from curation.stages import stage_registry
    from curation.store.runstore import RunStore

    run_dir, _ = ingested
    with RehearsalServer(RehearsalConfig(pool=str(run_dir / "tables" / "questions"), latency_ms=0)) as server:
        cfg = CurationConfig.model_validate(llm_config(server.url))
        lines: list[str] = []
        run_stages(
            [c() for c in stage_registry().values()],
            cfg,
            RunStore(str(run_dir)),
            dry_run=True,
            log=lines.append,
        )
        assert server.stats(per_request=False)["requests_total"] == 0
    out = "\n".join(lines) + capsys.readouterr().out
    n = RunStore(str(run_dir)).read_table("questions").num_rows
    assert f"qwen7b on engine qwen7b: {n:,} requests, {n:,} to send" in out
    assert "assuming m1's hard share of 19.7%" in out and "expected $" in out
    assert "[curate] dry run: free" in out
    assert not RunStore(str(run_dir)).has_table("scores")


def test_m1_preset_dry_run_prints_the_rebuild_plan_and_cost(
    ray_local: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The m23K rebuild config, pointed at local copies of its sources: the plan and cost, nothing sent."""
    import yaml

    from curation.cli import main as m1_main

    preset = Path(__file__).resolve().parents[1] / "curation" / "configs" / "m1.yaml"
    raw = yaml.safe_load(preset.read_text())
    local = {
        "medqa": "medqa.jsonl",
        "headqa": "headqa.json",
        "medmcqa": "medmcqa.parquet",
        "pubmedqa": "pubmedqa.jsonl",
    }
    for source in raw["sources"]:
        source["path"] = str(POOL / local[source["name"]])
    # m1's decontamination list, by hub id; offline, two local stand-ins in the same formats.
    assert [e["name"] for e in raw["decontaminate"]["eval_sets"]] == [
        "medqa_test",
        "medmcqa_validation",
        "pubmedqa_test",
        *(
            f"mmlu_{s}"
            for s in (
                "anatomy",
                "clinical_knowledge",
                "college_biology",
                "college_medicine",
                "medical_genetics",
                "professional_medicine",
            )
        ),
        "gpqa_diamond",
        "mmlu_pro_test",
    ]
    raw["decontaminate"]["eval_sets"] = [
        {
            "name": "pubmedqa_test",
            "format": "pubmedqa",
            "path": str(POOL / "pubmedqa.jsonl"),
            "split": "test",
        },
        {"name": "medmcqa_validation", "format": "medmcqa", "path": str(POOL / "medmcqa.parquet")},
    ]
    assert [s["engine"] for s in raw["score"]["scorers"]] == ["qwen7b", "qwen32b"]
    assert raw["teacher"] == {"engine": "teacher", "max_attempts": 1, "max_tokens": 8000}
    config = tmp_path / "m1-local.yaml"
    config.write_text(yaml.safe_dump(raw))
    run_dir = tmp_path / "run"
    assert m1_main(["curate", str(config), "--run-dir", str(run_dir), "--dry-run"]) == 0
    out = capsys.readouterr().out
    # The free stages ran (dedup, decontamination): scoring would get their candidates, one request each.
    n = table(run_dir, "candidates").num_rows
    assert 0 < n < table(run_dir, "questions").num_rows
    assert f"[score] dry run: qwen7b on engine qwen7b: {n:,} requests, {n:,} to send" in out
    assert f"qwen32b on engine qwen32b: {n:,} requests" in out
    assert "[teacher] dry run: ~" in out and "up to 1 attempt(s) each; expected $" in out
    assert not (run_dir / "ledger").exists() or not any((run_dir / "ledger").iterdir())


def test_both_reasoning_shapes_are_read_and_a_trace_without_reasoning_is_not_accepted() -> None:
    from curation.rules.traces import split_reasoning

    assert split_reasoning("\\boxed{D}", "Krait venom is neurotoxic.") == (
        "Krait venom is neurotoxic.",
        "\\boxed{D}",
    )
    assert split_reasoning("<think>\nKrait venom.\n</think>\n\nThe answer is \\boxed{D}", None) == (
        "Krait venom.",
        "The answer is \\boxed{D}",
    )
    reasoning, answer = split_reasoning("The answer is \\boxed{D}", None)
    assert reasoning is None
    verdict = judge_attempt(
        answer, reasoning=reasoning, finish_reason="stop", error=None, options=OPTIONS, answer_label="D"
    )
    assert (verdict.outcome, verdict.accepted) == ("no_reasoning", False)
    cut = split_reasoning("<think>\nstill thinking", None)
    assert cut == ("still thinking", None)
    assert (
        judge_attempt(
            cut[1], reasoning=cut[0], finish_reason="length", error=None, options=OPTIONS, answer_label="D"
        ).outcome
        == "truncated"
    )
