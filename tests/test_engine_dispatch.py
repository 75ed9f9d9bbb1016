"""`run_requests`: ledger skips, duplicate fan-back, engine dispatch, dry-run cost, and the importer."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pydantic import TypeAdapter, ValidationError

from curation.devtools.rehearse import RehearsalConfig, RehearsalServer
from curation.engines import (
    CostEstimate,
    EngineConfig,
    Ledger,
    OpenAIEngineConfig,
    make_request,
    plan_requests,
    requests_table,
    run_requests,
)
from curation.engines.config import Price
from curation.engines.cost import estimate, format_info
from curation.engines.importer import import_responses, render
from curation.engines.ratelimit import estimate_prompt_tokens
from curation.engines.vllm_engine import VLLMEngineConfig

MODEL = "deepseek-reasoner"
TEMPLATE = "Return your final response within \\boxed{}. {prompt}"


def _collect(ds: Any) -> pa.Table:
    import ray

    return pa.concat_tables(ray.get(ds.to_arrow_refs()))


def _chat(key: str, content: str, **params: Any) -> dict[str, Any]:
    return make_request(
        key, MODEL, messages=[{"role": "user", "content": content}], **({"max_tokens": 300} | params)
    )


@pytest.fixture
def server() -> Iterator[RehearsalServer]:
    srv = RehearsalServer(RehearsalConfig(latency_ms=2, latency_jitter_ms=0, reasoning_tokens_mean=20))
    srv.start()
    yield srv
    srv.stop()


# ---- configs ---------------------------------------------------------------------------------------------
def test_engine_config_is_a_tagged_union_with_named_errors() -> None:
    adapter = TypeAdapter(EngineConfig)
    openai_cfg = adapter.validate_python(
        {"kind": "openai", "base_url": "https://api.deepseek.com/v1/", "rpm": 500}
    )
    assert isinstance(openai_cfg, OpenAIEngineConfig)
    assert (
        openai_cfg.base_url == "https://api.deepseek.com/v1"
        and openai_cfg.engine_name == "openai:api.deepseek.com"
    )
    vllm_cfg = adapter.validate_python({"kind": "vllm", "model": "Qwen/Qwen2.5-7B-Instruct"})
    assert isinstance(vllm_cfg, VLLMEngineConfig)
    with pytest.raises(ValidationError, match="tmp"):
        adapter.validate_python({"kind": "openai", "base_url": "http://h/v1", "tmp": 1})
    with pytest.raises(ValidationError, match="kind"):
        adapter.validate_python({"kind": "sglang", "base_url": "http://h/v1"})
    with pytest.raises(ValidationError, match="extra_headers"):
        OpenAIEngineConfig(base_url="http://h/v1", extra_headers={"Authorization": "Bearer x"})


# ---- planning --------------------------------------------------------------------------------------------
def test_plan_splits_cached_new_and_duplicates() -> None:
    a, b, c = _chat("k1", "alpha"), _chat("k2", "beta"), _chat("k3", "gamma")
    twin = _chat("k4", "beta")  # same content as b under another key: same id
    rows = [a, b, c, twin, dict(b)]  # and b twice, identical
    plan = plan_requests(requests_table(rows), pa.array([a["request_id"]], pa.string()))
    assert plan.cached_pairs.to_pylist() == [{"request_id": a["request_id"], "key": "k1"}]
    assert sorted(plan.send.column("key").to_pylist()) == ["k2", "k3"]
    assert sorted(plan.extra_pairs.column("key").to_pylist()) == ["k2", "k4"]
    assert set(plan.extra_pairs.column("request_id").to_pylist()) == {b["request_id"]}


def test_duplicates_are_sent_once_and_every_row_gets_its_own_response(
    ray_local: None, server: RehearsalServer, tmp_path: Path
) -> None:
    rows = [_chat(f"q{i}", f"question {i % 5}?\nA. x\nB. y") for i in range(12)]  # 5 distinct ids, 12 rows
    rows.append(dict(rows[0]))  # an identical row: two rows in, two out
    rows.append(_chat("q1", "another question under a repeated key?"))  # a key is not an identity
    cfg = OpenAIEngineConfig(base_url=server.url, max_concurrency=8)
    out = _collect(run_requests(requests_table(rows), cfg, ledger_uri=str(tmp_path), progress=False))
    stats = server.stats()
    assert stats["requests_total"] == 6 and set(stats["attempts_by_request"].values()) == {1}
    pairs = Counter(zip(out.column("request_id").to_pylist(), out.column("key").to_pylist(), strict=True))
    assert pairs == Counter((r["request_id"], r["key"]) for r in rows)
    by_id = {}
    for r in out.to_pylist():
        assert r["error"] is None
        assert by_id.setdefault(r["request_id"], r["text"]) == r["text"]  # the twins share one answer

    # A later call with the same questions under new keys: all from the ledger, re-keyed.
    again = [_chat(f"new{i}", f"question {i}?\nA. x\nB. y") for i in range(5)]
    out2 = _collect(run_requests(requests_table(again), cfg, ledger_uri=str(tmp_path), progress=False))
    assert server.stats()["requests_total"] == 6
    assert sorted(out2.column("key").to_pylist()) == [f"new{i}" for i in range(5)]
    assert all(out2.column("cached").to_pylist())
    assert {r["request_id"]: r["text"] for r in out2.to_pylist()} == {
        k: v for k, v in by_id.items() if k in {r["request_id"] for r in again}
    }


def test_run_requests_accepts_a_ray_dataset_and_prints_a_summary(
    ray_local: None, server: RehearsalServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import ray

    rows = [_chat(f"d{i}", f"dataset question {i}") for i in range(20)]
    ds = ray.data.from_arrow(requests_table(rows))
    cfg = OpenAIEngineConfig(base_url=server.url, price=Price(input_per_mtok=1.0, output_per_mtok=4.0))
    out = _collect(run_requests(ds, cfg, ledger_uri=str(tmp_path), progress=True))
    assert out.num_rows == 20 and out.column("error").null_count == 20
    err = capsys.readouterr().err
    assert f"m1 {cfg.engine_name}: 20 requests: 0 from the ledger, 20 sent" in err and "0 failed" in err


def test_empty_input_returns_an_empty_responses_dataset(ray_local: None, tmp_path: Path) -> None:
    cfg = OpenAIEngineConfig(base_url="http://127.0.0.1:9/v1")
    out = run_requests(requests_table([]), cfg, ledger_uri=str(tmp_path), progress=False)
    assert out.count() == 0


# ---- dry run and cost ------------------------------------------------------------------------------------
def test_dry_run_projects_cost_and_sends_nothing(
    ray_local: None, server: RehearsalServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [_chat(f"c{i}", "x" * (40 * (i + 1)), max_tokens=1000) for i in range(10)]
    rows.append(dict(rows[0], key="c0-again"))  # a duplicate is paid once
    ledger = Ledger(str(tmp_path))
    from curation.engines import response_row, responses_table

    ledger.append(responses_table([response_row(rows[9], engine="openai:x", text="done")]))
    price = Price(input_per_mtok=2.0, output_per_mtok=8.0)
    cfg = OpenAIEngineConfig(base_url=server.url, price=price, expected_completion_tokens=600)
    est = run_requests(requests_table(rows), cfg, ledger_uri=str(tmp_path), dry_run=True)
    assert isinstance(est, CostEstimate)
    assert server.stats()["requests_total"] == 0
    prompt = sum(estimate_prompt_tokens(r) for r in rows[:9])
    assert (est.n_requests, est.n_cached, est.n_to_send) == (11, 1, 9)
    assert est.prompt_tokens_est == prompt
    assert est.completion_tokens_est == 9 * 600 and est.completion_tokens_max == 9 * 1000
    assert est.cost_expected == pytest.approx((prompt * 2.0 + 5400 * 8.0) / 1e6)
    assert est.cost_low < est.cost_expected < est.cost_high
    assert est.cost_high == pytest.approx((int(prompt * 1.25) * 2.0 + 9000 * 8.0) / 1e6)
    assert "9 to send" in capsys.readouterr().out


def test_estimate_needs_a_completion_budget() -> None:
    cfg = OpenAIEngineConfig(base_url="http://h/v1")
    rows = [make_request("k", MODEL, messages=[{"role": "user", "content": "hi"}])]  # no max_tokens
    with pytest.raises(ValueError, match="expected_completion_tokens"):
        estimate(requests_table(rows), cfg)
    assert (
        estimate(requests_table(rows), cfg.model_copy(update={"expected_completion_tokens": 5})).cost_high
        is None
    )


def test_progress_line_projects_total_cost() -> None:
    info = format_info(
        {"done": 50, "failed": 2, "prompt_tokens": 1500, "completion_tokens": 2_500_000, "cost_usd": 1.0}, 200
    )
    assert info == "2 failed | 1.5K+2.5M tok | $1.00 -> ~$4.00"


# ---- importer --------------------------------------------------------------------------------------------
def test_render_keeps_literal_braces() -> None:
    assert render(TEMPLATE, {"prompt": "Q?"}) == "Return your final response within \\boxed{}. Q?"
    assert render("{a} {missing}", {"a": 1}) == "1 {missing}"


def test_imported_traces_make_the_stage_send_nothing(
    ray_local: None, server: RehearsalServer, tmp_path: Path
) -> None:
    records = [
        {
            "prompt": f"Question {i}?\nA. yes\nB. no",
            "reasoning": f"thinking about {i}",
            "distilled_answer_string": f"\\boxed{{{'AB'[i % 2]}}}",
        }
        for i in range(30)
    ]
    records.append({"prompt": "no answer recorded", "reasoning": None, "distilled_answer_string": None})
    path = tmp_path / "m23k.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    params = {"max_tokens": 8000}
    ledger = str(tmp_path / "ledger")
    written = import_responses(
        str(path), ledger_uri=ledger, model=MODEL, params=params, template=TEMPLATE, name="m23k"
    )
    assert written == 30
    # Importing again adds nothing: the ids are already answered.
    assert (
        import_responses(
            str(path), ledger_uri=ledger, model=MODEL, params=params, template=TEMPLATE, name="m23k"
        )
        == 0
    )

    # What the teacher stage would send for the same questions:
    stage = [
        make_request(f"qid{i}", MODEL, messages=[{"role": "user", "content": render(TEMPLATE, r)}], **params)
        for i, r in enumerate(records[:30])
    ]
    cfg = OpenAIEngineConfig(base_url=server.url)
    assert run_requests(requests_table(stage), cfg, ledger_uri=ledger, dry_run=True).n_to_send == 0
    out = _collect(run_requests(requests_table(stage), cfg, ledger_uri=ledger, progress=False))
    assert server.stats()["requests_total"] == 0
    rows = {r["key"]: r for r in out.to_pylist()}
    assert rows["qid3"]["text"] == "\\boxed{B}" and rows["qid3"]["reasoning"] == "thinking about 3"
    assert {r["engine"] for r in rows.values()} == {"import:m23k"} and all(r["cached"] for r in rows.values())


def test_ledger_import_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from curation.cli import main

    path = tmp_path / "traces.parquet"
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["a", "b"], "question": ["Q1", "Q2"], "answer": ["A", "B"]}), path)
    code = main(
        [
            "ledger-import", str(path), "--ledger", str(tmp_path / "ledger"), "--model", MODEL,
            "--params", '{"temperature": 0}', "--template", "{question}", "--system", "Be brief.",
            "--text-column", "answer", "--reasoning-column", "", "--key-column", "id", "--name", "mine",
        ]
    )  # fmt: skip
    assert code == 0 and "2 responses" in capsys.readouterr().out
    table = Ledger(str(tmp_path / "ledger")).read()
    expected = make_request(
        "a",
        MODEL,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q1"}],
        temperature=0,
    )
    row = [r for r in table.to_pylist() if r["key"] == "a"][0]
    assert (
        row["request_id"] == expected["request_id"]
        and row["engine"] == "import:mine"
        and row["attempts"] == 0
    )
    with pytest.raises(ValueError, match="missing"):
        import_responses(
            str(path), ledger_uri=str(tmp_path / "l2"), model=MODEL, params={}, text_column="nope"
        )


# The vllm branch of the dispatch (run_requests -> vLLM replicas: cached rows from the ledger, a new row generated)
# is the rerun in tests/test_vllm_engine.py::test_map_requests_streams_through_vllm_and_a_rerun_generates_nothing.
