"""The rehearsal server, over real HTTP on loopback, with the real openai SDK and httpx as clients."""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import openai
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import schemas
from curation.devtools.rehearse import (
    FAULT_KINDS,
    FaultRates,
    PoolIndex,
    RehearsalConfig,
    RehearsalServer,
    add_parser,
    config_from_args,
    estimate_tokens,
    parse_option_lines,
    request_fingerprint,
    spawn_rehearsal_server,
    stop_rehearsal_server,
)

BOXED_PREFIX = "Return your final response within \\boxed{}. "
TEACHER = "deepseek-reasoner"
SCORER = "Qwen/Qwen2.5-7B-Instruct"

# (question, option texts, answer label). Two PubMedQA-like rows share the same yes/no/maybe block, one question
# is shorter than the lookup's 48-character tail, one row has a question that itself contains an "A. " line.
QUESTIONS = [
    (
        "A 54-year-old man has crushing chest pain radiating to the left arm for 40 minutes. Most likely diagnosis?",
        ["Pericarditis", "Acute myocardial infarction", "Aortic dissection", "Costochondritis"],
        "B",
    ),
    (
        "Which vitamin deficiency causes Wernicke encephalopathy in chronic alcohol use disorder?",
        ["Vitamin B12", "Folate", "Thiamine", "Niacin"],
        "C",
    ),
    (
        "Does early mobilisation after hip fracture surgery reduce 30-day mortality in elderly patients?",
        ["yes", "no", "maybe"],
        "A",
    ),
    (
        "Is serum procalcitonin useful to distinguish bacterial from viral pneumonia in children under five?",
        ["maybe", "yes", "no"],
        "B",
    ),
    ("Drug of choice for anaphylaxis?", ["Adrenaline", "Atropine", "Hydrocortisone", "Diphenhydramine"], "A"),
    (
        "Match the statement with the organism.\nA. forms spores in soil\nWhich organism causes tetanus in unvaccinated people?",
        [
            "Clostridium tetani",
            "Bacillus cereus",
            "Listeria monocytogenes",
            "Clostridium difficile",
            "Proteus",
        ],
        "A",
    ),
]


def render(question: str, options: list[str]) -> str:
    return question + "\n" + "\n".join(f"{chr(65 + i)}. {text}" for i, text in enumerate(options))


@pytest.fixture(scope="module")
def pool_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = []
    for i, (question, options, answer) in enumerate(QUESTIONS):
        opts = [{"label": chr(65 + j), "text": t} for j, t in enumerate(options)]
        rows.append(
            {
                "qid": f"q{i}",
                "source": "test",
                "source_id": str(i),
                "split": "train",
                "question": question,
                "options": opts,
                "answer_label": answer,
                "answer_text": options[ord(answer) - 65],
                "context": None,
                "prompt": render(question, options),
                "metadata": "{}",
                "ingested_at": datetime(2026, 1, 1, tzinfo=UTC),
            }
        )
    path = tmp_path_factory.mktemp("pool") / "questions.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schemas.get("questions").schema), path)
    return path


def quiet(**overrides: object) -> RehearsalConfig:
    """A fast config: no latency, short reasoning."""
    base: dict[str, object] = {"latency_ms": 0, "latency_jitter_ms": 0, "reasoning_tokens_mean": 30}
    base.update(overrides)
    return RehearsalConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def server(pool_path: Path) -> Iterator[RehearsalServer]:
    with RehearsalServer(quiet(pool=str(pool_path))) as srv:
        yield srv


def client_for(url: str, timeout: float = 10.0, api_key: str = "x") -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=api_key, max_retries=0, timeout=timeout)


def boxed(content: str) -> str | None:
    found = re.findall(r"\\boxed\{([^{}]*)\}", content)
    return found[-1] if found else None


def ask(client: openai.OpenAI, content: str, model: str = TEACHER, **kw: object):  # noqa: ANN201
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}], **kw)


# ------------------------------------------------------------------------------------------------ answers


def test_answer_wire_format_and_determinism(server: RehearsalServer) -> None:
    client = client_for(server.url)
    prompt = BOXED_PREFIX + render(*QUESTIONS[0][:2])
    first, second = ask(client, prompt), ask(client, prompt)
    assert first.object == "chat.completion" and first.model == TEACHER and first.created > 0
    assert first.id.startswith("chatcmpl-")
    choice = first.choices[0]
    assert choice.index == 0 and choice.finish_reason == "stop" and choice.message.role == "assistant"
    reasoning = choice.message.reasoning_content  # type: ignore[attr-defined]
    assert reasoning and reasoning.startswith("Okay")
    assert boxed(choice.message.content) is not None
    # Same request, same answer and reasoning.
    assert second.choices[0].message.content == choice.message.content
    assert second.choices[0].message.reasoning_content == reasoning  # type: ignore[attr-defined]
    # Token counts are the documented estimate, exactly.
    usage = first.usage
    assert usage.prompt_tokens == estimate_tokens(prompt)
    assert usage.completion_tokens == estimate_tokens(reasoning) + estimate_tokens(choice.message.content)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_correct_rate_and_correct_option_boxed(server: RehearsalServer) -> None:
    client = client_for(server.url)
    server.reset_stats()
    correct = text_boxed = 0
    lengths = []
    n = 420
    for i in range(n):
        question, options, answer = QUESTIONS[i % len(QUESTIONS)]
        content = f"{BOXED_PREFIX}{render(question, options)}\nThink step by step (variant {i})."
        message = ask(client, content).choices[0].message
        got = boxed(message.content)
        assert got is not None, message.content
        labels = [chr(65 + j) for j in range(len(options))]
        assert got in labels or got in options, got
        chosen = labels.index(got) if got in labels else options.index(got)
        text_boxed += got in options
        correct += labels[chosen] == answer
        lengths.append(estimate_tokens(message.reasoning_content))  # type: ignore[attr-defined]
        # The reasoning concludes with the option that is boxed (when it is long enough to hold it).
        if lengths[-1] >= 20:
            assert message.reasoning_content.endswith(f"{labels[chosen]}: {options[chosen]}.")  # type: ignore[attr-defined]
    assert abs(correct / n - 0.62) < 0.07, correct / n
    assert abs(text_boxed / n - 0.2) < 0.07, text_boxed / n
    assert 0.8 * 30 < statistics.mean(lengths) < 1.2 * 30
    stats = server.stats(per_request=False)
    assert stats["answers"] == {"correct": correct, "wrong": n - correct, "unknown": 0}
    assert stats["by_outcome"] == {"ok": n}


def test_model_correct_rates_override(pool_path: Path) -> None:
    cfg = quiet(pool=str(pool_path), model_correct_rates={SCORER: 0.0, "always-right": 1.0})
    with RehearsalServer(cfg) as srv:
        client = client_for(srv.url)
        for i in range(30):
            question, options, answer = QUESTIONS[i % len(QUESTIONS)]
            content = render(question, options) + f"\n(run {i})"
            right = ask(client, content, model="always-right").choices[0].message.content
            wrong = ask(client, content, model=SCORER).choices[0].message.content
            assert boxed(right) in (answer, options[ord(answer) - 65])
            assert boxed(wrong) not in (answer, options[ord(answer) - 65])


def test_without_pool_or_options(pool_path: Path) -> None:
    with RehearsalServer(quiet()) as srv:
        client = client_for(srv.url)
        answers = {
            boxed(ask(client, f"Pick one.\nA. red\nB. green\nC. blue\n(case {i})").choices[0].message.content)
            for i in range(40)
        }
        assert answers <= {"A", "B", "C", "red", "green", "blue"} and len(answers) >= 3
        plain = ask(client, "Classify this abstract into one MeSH qualifier.").choices[0].message.content
        assert (
            plain == ask(client, "Classify this abstract into one MeSH qualifier.").choices[0].message.content
        )
        assert re.fullmatch(r"\d{2}", plain.splitlines()[-1]) and 0 <= int(plain.splitlines()[-1]) <= 75
        assert srv.stats(per_request=False)["answers"]["unknown"] == 42


def test_scorer_has_no_reasoning_content(server: RehearsalServer) -> None:
    body = {
        "model": SCORER,
        "messages": [{"role": "user", "content": BOXED_PREFIX + render(*QUESTIONS[1][:2])}],
    }
    data = httpx.post(server.url + "/chat/completions", json=body).json()
    assert set(data) >= {"id", "object", "created", "model", "choices", "usage"}
    message = data["choices"][0]["message"]
    assert "reasoning_content" not in message and boxed(message["content"]) is not None
    assert data["usage"]["completion_tokens"] == estimate_tokens(message["content"])


def test_reasoning_off_in_config(pool_path: Path) -> None:
    with RehearsalServer(quiet(pool=str(pool_path), reasoning=False)) as srv:
        body = {"model": TEACHER, "messages": [{"role": "user", "content": render(*QUESTIONS[0][:2])}]}
        assert (
            "reasoning_content"
            not in httpx.post(srv.url + "/chat/completions", json=body).json()["choices"][0]["message"]
        )


def test_max_tokens_truncates_with_length(server: RehearsalServer) -> None:
    client = client_for(server.url)
    prompt = render(*QUESTIONS[0][:2])
    response = ask(client, prompt, max_tokens=5)
    choice = response.choices[0]
    assert choice.finish_reason == "length" and response.usage.completion_tokens == 5
    assert "\\boxed" not in (choice.message.content or "")
    assert estimate_tokens(choice.message.reasoning_content) == 5  # type: ignore[attr-defined]
    scorer = ask(client, prompt, model=SCORER, max_tokens=6).choices[0]
    assert scorer.finish_reason == "length" and "\\boxed" not in scorer.message.content
    assert ask(client, prompt, max_tokens=8000).choices[0].finish_reason == "stop"


def test_completions_endpoint(server: RehearsalServer) -> None:
    client = client_for(server.url)
    prompt = BOXED_PREFIX + render(*QUESTIONS[1][:2])
    teacher = client.completions.create(model=TEACHER, prompt=prompt)
    assert teacher.object == "text_completion" and teacher.choices[0].finish_reason == "stop"
    text = teacher.choices[0].text
    assert text.startswith("<think>\n") and "\n</think>\n\n" in text and boxed(text) is not None
    scorer = client.completions.create(model=SCORER, prompt=prompt, max_tokens=4000)
    assert "<think>" not in scorer.choices[0].text and boxed(scorer.choices[0].text) is not None


def test_models_health_and_stream_rejected(server: RehearsalServer) -> None:
    client = client_for(server.url)
    assert TEACHER in [m.id for m in client.models.list()]
    base = server.url.removesuffix("/v1")
    assert httpx.get(base + "/health").json() == {"status": "ok", "pool_questions": len(QUESTIONS)}
    with pytest.raises(openai.BadRequestError, match="stream"):
        ask(client, "hi", stream=True)


# -------------------------------------------------------------------------------------------------- pool


def test_pool_lookup(pool_path: Path) -> None:
    index = PoolIndex.from_parquet(pool_path)
    for question, options, answer in QUESTIONS:
        prompt = render(question, options)
        for content in (
            prompt,
            BOXED_PREFIX + prompt,
            prompt + "\nPlease answer.",
            "Say:\n" + prompt + " Thanks",
        ):
            found = index.find(content)
            assert found is not None and found.question == question and found.answer_label == answer
    assert index.find(render("Some other question about the same options?", QUESTIONS[2][1])) is None
    assert index.find("no options here") is None
    assert parse_option_lines("Q\nA. x\nB. y\nD. skipped\nE. z") == [("A", "x"), ("B", "y")]


# ------------------------------------------------------------------------------------------------ faults


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_each_fault_has_its_wire_behaviour(kind: str, pool_path: Path) -> None:
    cfg = quiet(pool=str(pool_path), faults={kind: 1.0}, retry_after_s=7, slow_s=1.0)
    prompt = render(*QUESTIONS[0][:2])
    body = {"model": TEACHER, "messages": [{"role": "user", "content": prompt}]}
    with RehearsalServer(cfg) as srv:
        client = client_for(srv.url, timeout=0.3 if kind == "slow" else 10.0)
        if kind == "rate_limit":
            with pytest.raises(openai.RateLimitError) as err:
                ask(client, prompt)
            assert err.value.status_code == 429 and err.value.response.headers["Retry-After"] == "7"
            assert err.value.body["code"] == "rate_limit_exceeded"  # type: ignore[index]
        elif kind == "server_error":
            with pytest.raises(openai.InternalServerError) as err:
                ask(client, prompt)
            assert err.value.status_code == 500
        elif kind == "unavailable":
            with pytest.raises(openai.InternalServerError) as err:
                ask(client, prompt)
            assert err.value.status_code == 503
        elif kind == "connection_reset":
            with pytest.raises(openai.APIConnectionError):
                ask(client, prompt)
            with pytest.raises(httpx.TransportError):
                httpx.post(srv.url + "/chat/completions", json=body)
        elif kind == "slow":
            with pytest.raises(openai.APITimeoutError):
                ask(client, prompt)
            # Given the time, the slow answer is a normal one.
            late = httpx.post(srv.url + "/chat/completions", json=body, timeout=5)
            assert late.status_code == 200 and boxed(late.json()["choices"][0]["message"]["content"])
        elif kind == "malformed_json":
            raw = httpx.post(srv.url + "/chat/completions", json=body)
            assert raw.status_code == 200 and raw.headers["content-type"].startswith("application/json")
            with pytest.raises(json.JSONDecodeError):
                json.loads(raw.content)
            with pytest.raises(json.JSONDecodeError):
                ask(client, prompt)
        elif kind == "empty_choices":
            response = ask(client, prompt)
            assert response.choices == [] and response.usage.prompt_tokens == estimate_tokens(prompt)
        elif kind == "length":
            choice = ask(client, prompt).choices[0]
            assert choice.finish_reason == "length" and "\\boxed" not in (choice.message.content or "")
            assert choice.message.reasoning_content  # type: ignore[attr-defined]
        elif kind == "content_filter":
            response = ask(client, prompt)
            choice = response.choices[0]
            assert choice.finish_reason == "content_filter" and choice.message.content == ""
            assert choice.message.reasoning_content and response.usage.completion_tokens > 0  # type: ignore[attr-defined]
        else:  # pragma: no cover - a new fault kind needs a case here
            pytest.fail(f"no wire check for fault {kind}")
        stats = srv.stats()
    assert stats["by_outcome"].get(kind, 0) >= 1
    assert sum(stats["successes_by_request"].values()) == (1 if kind == "slow" else 0)


def test_bad_request_keys_and_auth(pool_path: Path) -> None:
    token = "sk-rehearsal-secret-123"
    cfg = quiet(pool=str(pool_path), bad_request_keys=["POISON"], auth_token=token)
    with RehearsalServer(cfg) as srv:
        with pytest.raises(openai.AuthenticationError) as err:
            ask(client_for(srv.url, api_key="wrong"), "hello")
        assert err.value.status_code == 401 and token not in str(err.value.body)
        assert (
            httpx.post(srv.url + "/chat/completions", json={"model": TEACHER, "messages": []}).status_code
            == 401
        )
        client = client_for(srv.url, api_key=token)
        with pytest.raises(openai.BadRequestError, match="POISON") as err:
            ask(client, "Question with POISON inside\nA. a\nB. b")
        assert err.value.status_code == 400
        assert ask(client, render(*QUESTIONS[0][:2])).choices[0].finish_reason == "stop"
        assert srv.stats()["by_outcome"] == {"unauthorized": 2, "bad_request": 1, "ok": 1}


def test_retry_of_faulted_request_succeeds_with_the_same_answer(pool_path: Path) -> None:
    prompt = render(*QUESTIONS[3][:2])
    with RehearsalServer(quiet(pool=str(pool_path))) as clean:
        expected = ask(client_for(clean.url), prompt).choices[0].message.content
    faults = {"rate_limit": 0.3, "server_error": 0.2, "unavailable": 0.1, "empty_choices": 0.1}
    with RehearsalServer(quiet(pool=str(pool_path), faults=faults)) as srv:
        client = client_for(srv.url)
        for request_no in range(5):
            rid = f"retry-{request_no}"
            for attempt in range(1, 40):  # noqa: B007 - the count is checked after the loop
                try:
                    response = ask(client, prompt, extra_headers={"X-M1-Request-Id": rid})
                except (openai.RateLimitError, openai.InternalServerError):
                    continue
                if response.choices:
                    break
            assert response.choices[0].message.content == expected
            stats = srv.stats()
            assert stats["attempts_by_request"][rid] == attempt
            assert stats["successes_by_request"][rid] == 1
        faulted = stats["requests_total"] - stats["by_outcome"]["ok"]
        assert faulted >= 1, "with 70% fault rates some attempt must have failed"


def test_fault_rate_per_attempt_and_determinism(pool_path: Path) -> None:
    cfg = quiet(pool=str(pool_path), faults={"server_error": 0.5})
    runs = []
    for _ in range(2):
        with RehearsalServer(cfg) as srv:
            with httpx.Client() as http:
                codes = [
                    http.post(
                        srv.url + "/chat/completions",
                        json={"model": TEACHER, "messages": [{"role": "user", "content": "hi"}]},
                        headers={"X-M1-Request-Id": f"id-{i % 100}"},
                    ).status_code
                    for i in range(300)
                ]
            runs.append(codes)
    assert runs[0] == runs[1]  # same seed, same decisions
    assert 0.4 < runs[0].count(500) / 300 < 0.6
    # Attempts 0, 1, 2 of one id are separate draws: some ids fail first and then pass.
    assert any(runs[0][i] == 500 and runs[0][i + 100] == 200 for i in range(100))


def test_stats_per_fingerprint(server: RehearsalServer) -> None:
    server.reset_stats()
    sent = {"a": 3, "b": 1, "c": 2}
    with httpx.Client() as http:
        for rid, times in sent.items():
            for _ in range(times):
                body = {
                    "model": TEACHER,
                    "messages": [{"role": "user", "content": f"question {rid}\nA. x\nB. y"}],
                }
                assert (
                    http.post(
                        server.url + "/chat/completions", json=body, headers={"X-M1-Request-Id": rid}
                    ).status_code
                    == 200
                )
        body = {"model": SCORER, "messages": [{"role": "user", "content": "no header"}], "temperature": 0}
        assert http.post(server.url + "/chat/completions", json=body).status_code == 200
        stats = http.get(server.url.removesuffix("/v1") + "/stats").json()
        assert stats["requests_total"] == 7 and stats["by_outcome"] == {"ok": 7}
        assert stats["attempts_by_request"] == {**sent, request_fingerprint(body): 1}
        assert stats["successes_by_request"] == stats["attempts_by_request"]
        assert stats["tokens"]["prompt"] > 0 and stats["tokens"]["completion"] > 0
        assert http.post(server.url.removesuffix("/v1") + "/stats/reset").status_code == 200
        stats = http.get(server.url.removesuffix("/v1") + "/stats?summary=1").json()
    assert stats["requests_total"] == 0 and "attempts_by_request" not in stats


# ------------------------------------------------------------------------------------------ config and CLI


def test_config_validation_and_yaml(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="less than or equal to 1"):
        FaultRates(rate_limit=1.5)
    with pytest.raises(ValueError, match="sum"):
        FaultRates(rate_limit=0.6, server_error=0.6)
    path = tmp_path / "rehearse.yaml"
    path.write_text("correct_rate: 0.5\nfaults:\n  rate_limit: 0.1\n", encoding="utf-8")
    cfg = RehearsalConfig.from_yaml(path, latency_ms=0)
    assert cfg.correct_rate == 0.5 and cfg.faults.rate_limit == 0.1 and cfg.latency_ms == 0
    path.write_text("faults:\n  rate_limt: 0.1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"rehearse.yaml: faults.rate_limt"):
        RehearsalConfig.from_yaml(path)


def test_cli_parser(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="m1")
    add_parser(parser.add_subparsers(dest="command"))
    yaml_path = tmp_path / "r.yaml"
    yaml_path.write_text("latency_ms: 5\nfaults: {slow: 0.2}\n", encoding="utf-8")
    args = parser.parse_args(
        ["rehearse", "--config", str(yaml_path), "--port", "0", "--correct-rate", "0.7", "--fault", "rate_limit=0.1",
         "--fault", "malformed_json=0.05", "--reasoning-tokens", "20"]
    )  # fmt: skip
    assert callable(args.func)
    cfg = config_from_args(args)
    assert cfg.correct_rate == 0.7 and cfg.latency_ms == 5 and cfg.reasoning_tokens_mean == 20
    assert (cfg.faults.slow, cfg.faults.rate_limit, cfg.faults.malformed_json) == (0.2, 0.1, 0.05)
    with pytest.raises(ValueError, match="KIND=RATE"):
        config_from_args(parser.parse_args(["rehearse", "--fault", "meteor=0.1"]))


def test_spawned_process_serves_and_stops_cleanly(pool_path: Path, tmp_path: Path) -> None:
    token = "sk-spawn-secret"
    log = tmp_path / "rehearse.log"
    proc, url = spawn_rehearsal_server(quiet(pool=str(pool_path), auth_token=token), log_path=log)
    try:
        assert token not in " ".join(map(str, proc.args))
        response = ask(client_for(url, api_key=token), render(*QUESTIONS[0][:2]))
        assert boxed(response.choices[0].message.content) is not None
        stats = httpx.get(url.removesuffix("/v1") + "/stats").json()
        assert stats["by_outcome"] == {"ok": 1}
    finally:
        code = stop_rehearsal_server(proc)
    assert code == 0
    output = log.read_text(encoding="utf-8")
    assert f"API at {url}" in output and '"ok": 1' in output.split("stopped; stats:")[1]
