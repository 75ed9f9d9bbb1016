"""vLLM replicas as Ray Data actors, with real vLLM (CPU) and the tiny model.

One engine run per scenario (an engine load costs seconds even in eager mode, ~14 CPU-s with vLLM's import): the
module fixtures run a mixed request set once per replica kind, and several tests check each result.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import schemas
from curation.engines.ledger import Ledger
from curation.engines.request import make_request, requests_table, responses_table
from curation.engines.vllm_engine import VLLMEngineConfig, generate, sampling_kwargs

MAX_MODEL_LEN = 512
CHAT_PARAMS = {"temperature": 0.0, "max_tokens": 8}
COMPLETION_PARAMS = {"temperature": 0.8, "top_p": 0.9, "seed": 7, "max_tokens": 16, "stop": ["zzzz"]}


def _engine_cfg(model: Path, **overrides: Any) -> VLLMEngineConfig:
    # enforce_eager: no torch.compile, so the engine loads in seconds on CPU.
    base: dict[str, Any] = {
        "model": str(model),
        "max_model_len": MAX_MODEL_LEN,
        "batch_size": 8,
        "engine_kwargs": {"enforce_eager": True},
        # The engine core in the actor's process (the CPU default): loads in ~3 s instead of ~17 s. A child
        # process (the GPU default) runs the mixed request sets below.
    }
    return VLLMEngineConfig(**(base | overrides))


def _collect(ds: Any) -> pa.Table:
    import ray

    return pa.concat_tables(ray.get(ds.to_arrow_refs()))


def _mixed_requests() -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Chat and completion rows in two params groups, duplicate keys, one exact duplicate, three bad rows."""
    requests = []
    for i in range(8):
        # Keys repeat (q0..q3 twice): a key is the caller's join key, not an identity.
        messages = [{"role": "user", "content": f"Question {i}: which drug is most likely?"}]
        requests.append(make_request(f"q{i % 4}", "tiny", messages=messages, **CHAT_PARAMS))
    requests.append(dict(requests[0]))  # the same request twice: two rows in, two rows out
    for i in range(9):
        requests.append(
            make_request(f"c{i}", "tiny", prompt=f"A {30 + i}-year-old man presents", **COMPLETION_PARAMS)
        )
    # Over-long prompt in the completion group: its call fails and is bisected down to this row alone.
    too_long = make_request("too-long", "tiny", prompt="word " * (MAX_MODEL_LEN * 2), **COMPLETION_PARAMS)
    bad_n = make_request("bad-n", "tiny", prompt="x", n=2, max_tokens=4)
    bad_temperature = make_request("bad-temperature", "tiny", prompt="x", temperature=-1.0, max_tokens=4)
    requests[12:12] = [too_long]
    requests += [bad_n, bad_temperature]
    errors = {"too-long": "maximum context length", "bad-n": "n=2", "bad-temperature": "temperature"}
    return requests, errors


def _other_requests() -> list[dict[str, Any]]:
    """A second model's requests: the first six completion prompts of the mixed set, with the same (seeded)
    sampling params."""
    prompts = [r["prompt"] for r in _mixed_requests()[0] if r["key"].startswith("c")][:6]
    return [make_request(f"b{i}", "tiny-b", prompt=p, **COMPLETION_PARAMS) for i, p in enumerate(prompts)]


def _mixed_run(
    cfg: VLLMEngineConfig, tmp_path_factory: pytest.TempPathFactory, other: VLLMEngineConfig | None = None
) -> dict[str, Any]:
    """The mixed request set through ``cfg``. With ``other``: a second model's pool feeds the same dataset beside
    it (its own ledger), and its rows are returned apart, under "other"."""
    import ray.data

    requests, errors = _mixed_requests()
    ledger_uri = str(tmp_path_factory.mktemp("vllm-ledger"))
    out = generate(ray.data.from_arrow(requests_table(requests)), cfg, ledger_uri)
    other_ledger = None
    if other is not None:
        other_ledger = str(tmp_path_factory.mktemp("vllm-ledger-b"))
        out = out.union(generate(ray.data.from_arrow(requests_table(_other_requests())), other, other_ledger))
    rows = _collect(out)
    is_other = pc.equal(rows.column("model"), "tiny-b")
    return {
        "requests": requests,
        "errors": errors,
        "responses": rows.filter(pc.invert(is_other)),
        "ledger": Ledger(ledger_uri),
        "in_flight": cfg.batches_in_flight,
        "other": {"rows": rows.filter(is_other).to_pylist(), "ledger_uri": other_ledger},
    }


@pytest.fixture(scope="module")
def mixed_run(
    ray_local: None, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """One synchronous vllm.LLM call per batch and params group, the engine core in a child process (the GPU
    default), beside a second model's pool in the same dataset (test_two_models_in_one_pipeline). Half a CPU
    each: both pools fit the 2-CPU test cluster with room for Ray Data's own tasks."""
    from curation.devtools.tiny_model import build_tiny_model

    other_model = build_tiny_model(tmp_path_factory.mktemp("tiny-model-b"), seed=1)
    cfg = _engine_cfg(tiny_model_dir, engine_core_process=True, cpus_per_replica=0.5)
    # Batches of 3, flushed to the ledger every 2 rows: each batch writes 2 shards.
    other = _engine_cfg(other_model, cpus_per_replica=0.5, batch_size=3, flush_every_rows=2)
    return _mixed_run(cfg, tmp_path_factory, other)


@pytest.fixture(scope="module")
def mixed_run_in_flight(
    ray_local: None, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """vLLM's async engine with the request set's three batches of 8 in flight at once."""
    cfg = _engine_cfg(tiny_model_dir, batches_in_flight=3)
    return _mixed_run(cfg, tmp_path_factory)


# The checks below hold for both replicas.
BOTH = pytest.mark.parametrize("run_name", ["mixed_run", "mixed_run_in_flight"])


@pytest.mark.slow
@BOTH
def test_one_response_per_request(run_name: str, request: pytest.FixtureRequest) -> None:
    mixed_run = request.getfixturevalue(run_name)
    requests, responses = mixed_run["requests"], mixed_run["responses"]
    assert responses.num_rows == len(requests) == 21
    assert Counter(responses.column("request_id").to_pylist()) == Counter(r["request_id"] for r in requests)
    assert Counter(responses.column("key").to_pylist()) == Counter(r["key"] for r in requests)
    schemas.conform(responses, "responses")  # raises on any schema mismatch
    assert set(responses.column("engine").to_pylist()) == {"vllm"}


@pytest.mark.slow
@BOTH
def test_successful_rows_are_well_formed(
    run_name: str, request: pytest.FixtureRequest, tiny_model_dir: Path
) -> None:
    mixed_run = request.getfixturevalue(run_name)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    by_id = {r["request_id"]: r for r in mixed_run["requests"]}
    ok = [r for r in mixed_run["responses"].to_pylist() if r["error"] is None]
    assert len(ok) == 21 - len(mixed_run["errors"])
    for row in ok:
        request = by_id[row["request_id"]]
        max_tokens = json.loads(request["params"])["max_tokens"]
        assert row["text"], row
        assert row["finish_reason"] in {"stop", "length"}
        assert 1 <= row["completion_tokens"] <= max_tokens
        if row["finish_reason"] == "length":
            assert row["completion_tokens"] == max_tokens
        assert row["latency_s"] > 0 and row["attempts"] >= 1 and row["cached"] is False
        # The prompt vLLM saw is the chat template's rendering (chat) or the raw prompt (completion).
        if request["kind"] == "chat":
            expected = tokenizer.apply_chat_template(
                request["messages"], add_generation_prompt=True, tokenize=True
            )
            expected = expected["input_ids"] if hasattr(expected, "keys") else expected
        else:
            expected = tokenizer(request["prompt"])["input_ids"]
        assert row["prompt_tokens"] == len(expected), row["key"]


@pytest.mark.slow
@BOTH
def test_greedy_duplicates_agree(run_name: str, request: pytest.FixtureRequest) -> None:
    mixed_run = request.getfixturevalue(run_name)
    first_id = mixed_run["requests"][0]["request_id"]
    texts = [r["text"] for r in mixed_run["responses"].to_pylist() if r["request_id"] == first_id]
    assert len(texts) == 2 and texts[0] == texts[1]


@pytest.mark.slow
@BOTH
def test_bad_rows_become_error_rows_and_the_rest_complete(
    run_name: str, request: pytest.FixtureRequest
) -> None:
    mixed_run = request.getfixturevalue(run_name)
    rows = {r["key"]: r for r in mixed_run["responses"].to_pylist()}
    for key, fragment in mixed_run["errors"].items():
        row = rows[key]
        assert row["text"] is None and row["finish_reason"] is None and row["completion_tokens"] is None
        assert fragment in row["error"], row["error"]
    assert rows["too-long"]["error"].startswith("VLLMValidationError: request ")
    assert "(key too-long)" in rows["too-long"]["error"]
    if mixed_run["in_flight"] == 1:
        assert rows["too-long"]["attempts"] > 1  # it sat in a failing batch call before standing alone
    else:
        assert rows["too-long"]["attempts"] == 1  # one engine request per row: it failed alone
    # Its params group still completed.
    assert all(rows[f"c{i}"]["error"] is None for i in range(9))


@pytest.mark.slow
@BOTH
def test_ledger_holds_exactly_the_successes(run_name: str, request: pytest.FixtureRequest) -> None:
    mixed_run = request.getfixturevalue(run_name)
    ledger_rows = mixed_run["ledger"].read()
    ok = [r for r in mixed_run["responses"].to_pylist() if r["error"] is None]
    assert ledger_rows.num_rows == len(ok)
    assert Counter(ledger_rows.column("request_id").to_pylist()) == Counter(r["request_id"] for r in ok)
    assert ledger_rows.filter(pa.compute.is_valid(ledger_rows.column("error"))).num_rows == 0
    answered = set(mixed_run["ledger"].answered_ids().to_pylist())
    assert answered == {r["request_id"] for r in ok}


@pytest.mark.slow
def test_batches_in_flight_send_what_one_call_per_batch_sends(
    mixed_run: dict[str, Any], mixed_run_in_flight: dict[str, Any]
) -> None:
    """The async replica renders and tokenizes as LLM.chat / LLM.generate do: the same prompt tokens per request,
    the same rows failing. (Answers are not compared: batch composition moves CPU numerics, and so ties.)"""

    def outcome(run: dict[str, Any]) -> list[tuple[str, int | None, bool]]:
        rows = run["responses"].to_pylist()
        return sorted((r["request_id"], r["prompt_tokens"], r["error"] is None) for r in rows)

    assert outcome(mixed_run_in_flight) == outcome(mixed_run)
    assert sum(ok for *_, ok in outcome(mixed_run)) == 21 - 3


def test_batches_in_flight_need_the_child_process_core() -> None:
    with pytest.raises(ValueError, match="async engine"):
        VLLMEngineConfig(model="m", batches_in_flight=2, engine_core_process=False)
    assert VLLMEngineConfig(model="m", batches_in_flight=2).core_in_child_process
    # Where the core runs by default: the actor's process on CPU, a child process on GPU (vLLM's default).
    assert not VLLMEngineConfig(model="m").core_in_child_process
    assert VLLMEngineConfig(model="m", gpus_per_replica=1).core_in_child_process
    assert VLLMEngineConfig(model="m", engine_core_process=True).core_in_child_process


@pytest.mark.slow
def test_two_models_in_one_pipeline(mixed_run: dict[str, Any]) -> None:
    """Two engines (two models, two actor pools) feeding one Dataset, running side by side: the mixed set's
    engine and a second model given the same seeded completion prompts."""
    rows = mixed_run["other"]["rows"]
    assert sorted(r["key"] for r in rows) == [f"b{i}" for i in range(6)]
    assert all(r["error"] is None and r["completion_tokens"] >= 1 for r in rows)
    # Different weights, same prompts and seed: the two models must not give the same answers everywhere.
    by_prompt = {r["prompt"]: r["request_id"] for r in mixed_run["requests"] if r["key"].startswith("c")}
    first_model = {r["request_id"]: r["text"] for r in mixed_run["responses"].to_pylist()}
    prompts = {r["key"]: r["prompt"] for r in _other_requests()}
    assert any(r["text"] != first_model[by_prompt[prompts[r["key"]]]] for r in rows)
    ledger_b = mixed_run["other"]["ledger_uri"]
    assert Ledger(ledger_b).read().num_rows == 6
    # Batches of 3 flushed every 2 rows: each batch wrote 2 shards.
    assert len(list(Path(ledger_b).glob("*.parquet"))) == 4


def test_sampling_kwargs() -> None:
    assert sampling_kwargs('{"max_tokens":5,"temperature":0}') == {"max_tokens": 5, "temperature": 0}
    assert sampling_kwargs('{"n":1,"stop":["x"]}') == {"stop": ["x"], "max_tokens": None}
    with pytest.raises(ValueError, match="n=3"):
        sampling_kwargs('{"n":3}')
    with pytest.raises(ValueError, match="JSON object"):
        sampling_kwargs("[1]")


def test_salts_reach_neither_sampling_params_nor_the_batch_grouping() -> None:
    from curation.engines.vllm_engine import _sampling_group

    salted = [make_request(f"q|{a}", "tiny", prompt="p", temperature=0.7, _attempt=a) for a in range(3)]
    assert len({r["request_id"] for r in salted}) == 3
    assert all(sampling_kwargs(r["params"]) == {"temperature": 0.7, "max_tokens": None} for r in salted)
    # One vLLM call for all attempts of a prompt, not one per salt.
    assert len({_sampling_group(r["params"]) for r in salted}) == 1


def test_config_rejects_unknown_keys_and_too_few_gpus() -> None:
    with pytest.raises(ValueError, match="replica"):
        VLLMEngineConfig(model="m", replica=2)
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        VLLMEngineConfig(model="m", gpus_per_replica=1, tensor_parallel_size=2)
    cfg = VLLMEngineConfig(model="Qwen/Qwen2.5-7B-Instruct", gpus_per_replica=2, tensor_parallel_size=2)
    assert not cfg.on_cpu and cfg.engine_name == "vllm"


@pytest.mark.slow
def test_map_requests_streams_through_vllm_and_a_rerun_generates_nothing(
    ray_local: None, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Salted attempts, a duplicate and a bad row stream through vLLM replicas over a ledger that already answers
    two of them (as a killed run leaves it): those come back from the ledger, the rest is generated; a rerun of
    the answered rows loads no engine. (`run_requests`, the eager entry point, runs vLLM in test_classify.)"""
    import ray.data

    from curation.engines import map_requests
    from curation.engines.request import response_row

    requests = [
        make_request(f"m{i}", "tiny", prompt=f"Patient {i} has", temperature=0, max_tokens=4)
        for i in range(6)
    ]
    requests.insert(1, {**requests[0], "key": "m0-again"})  # same id, same batch: generated once
    requests += [
        make_request(f"s|{a}", "tiny", prompt="A salted prompt", temperature=0.9, max_tokens=4, _attempt=a)
        for a in range(3)
    ]
    requests.append(make_request("bad", "tiny", prompt="x", temperature=-1.0, max_tokens=4))
    table = requests_table(requests)
    cfg = _engine_cfg(tiny_model_dir, batch_size=4)
    ledger_uri = str(tmp_path / "ledger")
    # A prompt and one salted attempt were answered before: the ledger serves them, the other attempts of the
    # same prompt (other salts) are generated.
    seeded = {r["key"]: r for r in requests if r["key"] in ("m2", "s|0")}
    Ledger(ledger_uri).append(
        responses_table(
            [
                response_row(r, engine="vllm", text=f"seeded {k}", finish_reason="stop")
                for k, r in seeded.items()
            ]
        )
    )

    def run(rows: pa.Table = table, engine: VLLMEngineConfig = cfg) -> pa.Table:
        ds = ray.data.from_arrow([rows.slice(i, 4) for i in range(0, rows.num_rows, 4)])
        return _collect(map_requests(ds, engine, ledger_uri=ledger_uri, progress=False))

    first = run()
    assert first.num_rows == table.num_rows
    assert Counter(first.column("key").to_pylist()) == Counter(table.column("key").to_pylist())
    rows = {r["key"]: r for r in first.to_pylist()}
    assert rows["bad"]["error"] and "temperature" in rows["bad"]["error"]
    assert all(r["error"] is None for k, r in rows.items() if k != "bad")
    assert {k for k, r in rows.items() if r["cached"]} == set(seeded)
    assert {k: rows[k]["text"] for k in seeded} == {k: f"seeded {k}" for k in seeded}
    generated = [r for k, r in rows.items() if k not in seeded and k != "bad"]
    assert len(generated) == 8 and all(
        r["engine"] == "vllm" and r["completion_tokens"] > 0 for r in generated
    )
    assert rows["m0-again"]["text"] == rows["m0"]["text"]
    assert len(Ledger(ledger_uri).answered_ids()) == 9  # 6 prompts + 3 salted attempts; the twin once

    # Every request in the ledger: no replica loads vLLM. This engine points at a model directory that does not
    # exist, so loading it would fail the run: a passing run proves no engine was loaded (request ids name the
    # request's model, not the engine's path).
    answered = table.filter(pc.not_equal(table.column("key"), "bad"))
    third = run(answered, _engine_cfg(tmp_path / "no-such-model", batch_size=4))
    assert third.num_rows == answered.num_rows == table.num_rows - 1
    assert all(r["cached"] and r["error"] is None for r in third.to_pylist())
    assert {r["key"]: r["text"] for r in third.to_pylist()} == {
        k: r["text"] for k, r in rows.items() if k != "bad"
    }
