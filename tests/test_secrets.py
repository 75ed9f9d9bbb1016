"""Secrets never on disk: a key pasted into a config is refused before anything runs (and never echoed), the
manifest and stage records carry no secret, and a real run with keys in its environment writes none of them into
any file of its run directory. Also: the secret filter removes real credential shapes and leaves ordinary words."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curation.cli import main

OPENAI_KEY = "sk-live1234567890abcdefSECRETxyz"
HF_TOKEN = "hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"
POOL = Path(__file__).resolve().parents[1] / "curation" / "sample_pool"


def cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def refused(result: tuple[int, str, str], *needles: str) -> str:
    code, out, err = result
    assert code == 2, (code, out, err)
    assert "Traceback" not in out + err
    for needle in needles:
        assert needle in err, (needle, err)
    for secret in (OPENAI_KEY, HF_TOKEN, "1234567890abcdef", "AbCdEfGhIjKl"):
        assert secret not in out + err
    return err


def base_config(extra: str) -> str:
    return f"sources:\n  - {{name: a, format: medqa, path: {POOL / 'medqa.jsonl'}}}\n{extra}"


# ------------------------------------------------------------------------------------ refused before any run


@pytest.mark.parametrize("dry_run", [False, True], ids=["curate", "curate-dry-run"])
@pytest.mark.parametrize("used", [False, True], ids=["unused-engine", "teacher-engine"])
def test_a_key_pasted_as_api_key_env_stops_the_run_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dry_run: bool, used: bool
) -> None:
    """Was: an engine no stage used was never validated (exit 0, the key in manifest.json); with --dry-run and a
    teacher on such an engine, ingest wrote the key into the manifest before the teacher's check failed."""
    teacher = "teacher: {engine: spare}\n" if used else ""
    text = base_config(
        f"engines:\n  spare: {{kind: openai, base_url: 'https://api.example.com/v1', "
        f"api_key_env: '{OPENAI_KEY}'}}\n{teacher}"
    )
    config = tmp_path / "cfg.yaml"
    config.write_text(text)
    args = ["curate", config, "--run-dir", tmp_path / "run"] + (["--dry-run"] if dry_run else [])
    refused(
        cli(capsys, *args), str(config), "engines.spare.openai.api_key_env", "NAME of an environment variable"
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "name",
    [OPENAI_KEY, "sk_live_abcdefghijklmnop", HF_TOKEN, "1DEEPSEEK_KEY", "DEEPSEEK-KEY", "MY KEY", "KEYÄ", ""],
    ids=["sk-key", "stripe-key", "hf-token", "leading-digit", "hyphen", "space", "non-ascii", "empty"],
)
def test_api_key_env_must_be_a_variable_name(name: str) -> None:
    from pydantic import ValidationError

    from curation.engines.config import OpenAIEngineConfig

    with pytest.raises(ValidationError) as info:
        OpenAIEngineConfig(base_url="https://api.example.com/v1", api_key_env=name)
    message = str(info.value)
    assert "api_key_env" in message and "never the key itself" in message
    assert not name or name not in message


@pytest.mark.parametrize("name", ["DEEPSEEK_API_KEY", "OPENAI_API_KEY", "_PRIVATE", "hf_token"])
def test_api_key_env_accepts_ordinary_variable_names(name: str) -> None:
    from curation.engines.config import OpenAIEngineConfig

    assert OpenAIEngineConfig(base_url="https://x/v1", api_key_env=name).api_key_env == name


@pytest.mark.parametrize(
    ("entry", "needles"),
    [
        (
            f"engines:\n  t: {{kind: openai, base_url: 'https://user:{OPENAI_KEY}@api.example.com/v1'}}\n",
            ["engines.t"],
        ),
        (
            f"engines:\n  t: {{kind: openai, base_url: 'https://x/v1', extra_headers: {{X-Token: '{OPENAI_KEY}'}}}}\n",
            ["engines.t.extra_headers.X-Token"],
        ),
        (
            f"engines:\n  t: {{kind: openai, base_url: 'https://x/v1', extra_body: {{user: '{OPENAI_KEY}'}}}}\n",
            ["engines.t.extra_body.user"],
        ),
        (
            f"engines:\n  v: {{kind: vllm, model: m, env_vars: {{HF_TOKEN: '{HF_TOKEN}'}}}}\n",
            ["env_vars.HF_TOKEN"],
        ),
        (f"teacher: {{prompt_prefix: 'use {OPENAI_KEY} '}}\n", ["teacher.prompt_prefix"]),
        (
            f"engines:\n  t: {{kind: openai, base_url: 'https://x/v1', model: '{HF_TOKEN}'}}\n",
            ["engines.t.model"],
        ),
    ],
    ids=["url-userinfo", "custom-header", "extra-body", "vllm-env-var", "prompt-text", "model-name"],
)
def test_a_key_pasted_anywhere_in_a_config_is_refused_unechoed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], entry: str, needles: list[str]
) -> None:
    config = tmp_path / "cfg.yaml"
    config.write_text(base_config(entry))
    for dry in ([], ["--dry-run"]):
        refused(cli(capsys, "curate", config, "--run-dir", tmp_path / "run", *dry), str(config), *needles)
        assert not (tmp_path / "run").exists()


def test_scrub_secrets_covers_every_place_a_config_can_hold_one() -> None:
    """The manifest's redaction (config and stage records): secret-named keys, key-shaped text, URL passwords."""
    from curation.config import scrub_secrets

    data = {
        "engines": {
            "v": {
                "env_vars": {"HF_TOKEN": HF_TOKEN, "AWS_SECRET_ACCESS_KEY": "abc123def456", "HF_HOME": "/c"}
            },
            "t": {"base_url": "https://u:pw123456@h/v1", "extra_headers": {"Authorization": "x y"}},
        },
        "notes": [f"key {OPENAI_KEY} here", ("tuple", HF_TOKEN)],
        "max_tokens": 8000,
        "api_key_env": "DEEPSEEK_API_KEY",
        "path": "/data/hf_cache/validation",
    }
    text = json.dumps(scrub_secrets(data))
    for secret in (HF_TOKEN, "abc123def456", "pw123456", OPENAI_KEY, "x y"):
        assert secret not in text
    out = scrub_secrets(data)
    assert out["max_tokens"] == 8000 and out["api_key_env"] == "DEEPSEEK_API_KEY"
    assert out["path"] == "/data/hf_cache/validation" and out["engines"]["v"]["env_vars"]["HF_HOME"] == "/c"


# ------------------------------------------------------------------------------------ the secret filter


@pytest.mark.parametrize(
    "secret",
    [
        OPENAI_KEY,
        "sk-proj-Ab12Cd34Ef56Gh78Ij90Kl12Mn34Op56",
        "sk-ant-api03-Ab12Cd34Ef56Gh78Ij90Kl12",
        "sk_live_51Hxyzabcdefgh",
        HF_TOKEN,
        "ghp_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef0123",
        "AKIAIOSFODNN7EXAMPLE",
        "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0",
        "api_key=hunter2hunter2",
        "HF_TOKEN=hunter2hunter2",
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "Xk9mQ2pL7vR4tY8wZ3nB6cF1hJ5gD0sAaE",
    ],
)
def test_redaction_removes_real_secret_shapes(secret: str) -> None:
    from curation.errors import redact_secrets

    scrubbed = redact_secrets(f"error near {secret} in the request")
    assert "<redacted>" in scrubbed
    tail = secret.split("=")[-1].split()[-1]
    assert tail not in scrubbed


@pytest.mark.parametrize(
    "plain",
    [
        "hf:/data/datasets/hf_cache/validation",
        "/mnt/hf_datasets_cache/medqa/train.jsonl",
        "hf_token_folder/hf_home",
        "notes about sk-learn-models and task-sk-1",
        "max_tokens=100000 expected_completion_tokens: 1400",
        "the bearer of bad news",
        "/tmp/run/tables/questions/v-20260101T000000-abcd1234 qid 3f2a9c1d0b7e4f5a6b7c8d9e0f1a2b3c",
        "token budget: 4000",
        "DEEPSEEK_API_KEY is not set",
    ],
)
def test_redaction_leaves_ordinary_words_and_paths(plain: str) -> None:
    from curation.errors import redact_secrets

    assert redact_secrets(plain) == plain


# ------------------------------------------------------------------------------------ a real run, keys planted


def _files_holding(root: Path, needles: list[str]) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path}: {n[:6]}..." for n in needles if n.encode() in data]
    return found


def test_a_run_with_keys_in_its_environment_writes_none_of_them(
    ray_local: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """curate (scoring and teacher over an OpenAI-compatible server with api_key_env), curate --dry-run,
    export and report: no file of the run directories holds the planted key or token."""
    from curation.devtools.rehearse import RehearsalConfig, RehearsalServer

    monkeypatch.setenv("M1_TEST_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    rows = (POOL / "medqa.jsonl").read_bytes().splitlines()[:24]
    data = tmp_path / "pool.jsonl"
    data.write_bytes(b"\n".join(rows) + b"\n")
    run, dry = tmp_path / "run", tmp_path / "dry"

    def config(url: str) -> Path:
        engine = (
            f"{{kind: openai, base_url: '{url}', model: MODEL, api_key_env: M1_TEST_API_KEY, "
            "max_concurrency: 8, backoff_base_s: 0.01, backoff_max_s: 0.05, "
            "price: {input_per_mtok: 0.55, output_per_mtok: 2.19}, extra_headers: {X-Client: m1-test}}"
        )
        path = tmp_path / "cfg.yaml"
        path.write_text(
            f"name: secrets\nsources:\n  - {{name: medqa, format: medqa, path: {data}}}\n"
            f"engines:\n  scorer: {engine.replace('MODEL', 'Qwen/Qwen2.5-7B-Instruct')}\n"
            f"  teacher: {engine.replace('MODEL', 'deepseek-reasoner')}\n"
            "  spare: {kind: vllm, model: some/model, env_vars: {HF_HOME: /tmp/hf}}\n"
            "score: {scorers: [{name: s, engine: scorer, max_tokens: 200}]}\n"
            "teacher: {engine: teacher, max_attempts: 1}\n"
            "classify: {method: offline}\n"
        )
        return path

    code, out, err = cli(
        capsys, "curate", config("http://127.0.0.1:9/v1"), "--run-dir", run, "--stages", "ingest"
    )
    assert code == 0, err
    server_cfg = RehearsalConfig(
        pool=str(run / "tables" / "questions"),
        latency_ms=0,
        latency_jitter_ms=0,
        reasoning_tokens_mean=30,
        correct_rate=0.5,
        model_correct_rates={"Qwen/Qwen2.5-7B-Instruct": 0.2},
    )
    with RehearsalServer(server_cfg) as server:
        cfg = config(server.url)
        code, out, err = cli(capsys, "curate", cfg, "--run-dir", run)
        assert code == 0, err
        code, out, err = cli(capsys, "curate", cfg, "--run-dir", dry, "--dry-run")
        assert code == 0, err
    assert OPENAI_KEY not in out + err and HF_TOKEN not in out + err
    code, out, err = cli(capsys, "export", run, "--table", "curated", "--out", run / "export.jsonl")
    assert code == 0, err
    code, out, err = cli(capsys, "report", run)
    assert code == 0, err
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["teacher"]["status"] == "complete"
    assert (run / "report.html").is_file() and (run / "export.jsonl").is_file()
    assert _files_holding(run, [OPENAI_KEY, HF_TOKEN]) == []
    assert _files_holding(dry, [OPENAI_KEY, HF_TOKEN]) == []
