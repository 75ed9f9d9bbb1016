"""The rehearsal engine's server side, as the engine layer sees it: its settings and how to start and stop it.

`RehearsalConfig` is everything the rehearsal server (`curation.devtools.rehearse`, `m1 rehearse`) does;
a `kind: rehearsal` engine carries one under ``server:``. `spawn_rehearsal_server` runs the server as its own
process (``python -m curation.devtools.rehearse``, its own GIL) and waits until it answers;
`stop_rehearsal_server` ends it. The server's code stays a dev tool: this module only names it on a command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

# The server's module, started as ``python -m`` (never imported here: dev tools sit above the engine layer).
SERVER_MODULE = "curation.devtools.rehearse"

FaultKind = Literal[
    "rate_limit",
    "server_error",
    "unavailable",
    "connection_reset",
    "slow",
    "malformed_json",
    "empty_choices",
    "length",
    "content_filter",
]
FAULT_KINDS: tuple[str, ...] = FaultKind.__args__  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------------- config


class FaultRates(BaseModel):
    """Probability per attempt of each injected fault. The rates are exclusive slices of one draw, so their
    sum must stay at or below 1; the rest of the draw is a normal answer."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)  # never echo a pasted key

    rate_limit: float = Field(
        0.0, ge=0.0, le=1.0, description="429 with Retry-After and an OpenAI error body"
    )
    server_error: float = Field(0.0, ge=0.0, le=1.0, description="500 with an OpenAI error body")
    unavailable: float = Field(0.0, ge=0.0, le=1.0, description="503 with an OpenAI error body")
    connection_reset: float = Field(0.0, ge=0.0, le=1.0, description="TCP connection aborted, no response")
    slow: float = Field(0.0, ge=0.0, le=1.0, description="answer only after slow_s seconds")
    malformed_json: float = Field(0.0, ge=0.0, le=1.0, description="200, application/json, truncated body")
    empty_choices: float = Field(0.0, ge=0.0, le=1.0, description="200 with choices: []")
    length: float = Field(0.0, ge=0.0, le=1.0, description="200, finish_reason length, no boxed answer")
    content_filter: float = Field(
        0.0, ge=0.0, le=1.0, description="200, finish_reason content_filter, empty content (reasoning kept)"
    )

    @model_validator(mode="after")
    def _sum_at_most_one(self) -> FaultRates:
        total = sum(getattr(self, k) for k in FAULT_KINDS)
        if total > 1.0 + 1e-9:
            raise ValueError(
                f"fault rates add up to {total:.3f}; they are slices of one draw and must sum to <= 1"
            )
        return self

    def thresholds(self) -> list[tuple[float, str]]:
        """(upper bound, fault) for each fault with a non-zero rate, in a fixed order."""
        out, upper = [], 0.0
        for kind in FAULT_KINDS:
            rate = getattr(self, kind)
            if rate > 0:
                upper += rate
                out.append((upper, kind))
        return out


class RehearsalConfig(BaseModel):
    """Everything the rehearsal server does. Load from YAML with :meth:`from_yaml` or build with keywords."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)  # never echo a pasted key

    host: str = Field("127.0.0.1", description="bind address; keep it on loopback")
    port: int = Field(0, ge=0, le=65535, description="0 picks a free port")
    pool: str | None = Field(None, description="Parquet file or folder of the canonical `questions` table")
    correct_rate: float = Field(
        0.62, ge=0.0, le=1.0, description="share of correct answers (R1 on hard: 0.62)"
    )
    model_correct_rates: dict[str, float] = Field(
        default_factory=dict, description="per-model override of correct_rate (e.g. a 7B and a 32B scorer)"
    )
    boxed_text_ratio: float = Field(
        0.2, ge=0.0, le=1.0, description="share of answers boxed as the option text instead of the letter"
    )
    latency_ms: float = Field(100.0, ge=0.0, description="mean latency of an answer")
    latency_jitter_ms: float = Field(50.0, ge=0.0, description="uniform jitter, +/- this much")
    latency_per_token_ms: float = Field(0.0, ge=0.0, description="extra latency per completion token")
    reasoning: bool = Field(
        True, description="emit message.reasoning_content (R1-like); false: a plain scorer"
    )
    reasoning_tokens_mean: float = Field(
        1400.0, ge=1.0, description="mean reasoning length (R1 on m23K: ~1,400)"
    )
    reasoning_tokens_sigma: float = Field(
        0.82, ge=0.0, le=3.0, description="lognormal sigma (0.82 gives R1's median/mean of ~0.71); 0: fixed"
    )
    reasoning_tokens_max: int = Field(16_000, ge=1, description="cap on one reasoning text")
    non_reasoning_models: list[str] = Field(
        default_factory=lambda: ["Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-32B-Instruct"],
        description="models answered as plain scorers (no reasoning_content) even when reasoning is on",
    )
    faults: FaultRates = Field(default_factory=FaultRates)
    vary_by_request_id: bool = Field(
        False,
        description="draw each answer from the request id too, so a resampled attempt (a new id for the same "
        "prompt) can get another answer, as a sampling teacher would; default: the prompt alone decides",
    )
    retry_after_s: float = Field(1.0, ge=0.0, description="Retry-After of a rate_limit fault")
    slow_s: float = Field(30.0, ge=0.0, description="delay of a slow fault (set it above the client timeout)")
    bad_request_keys: list[str] = Field(
        default_factory=list,
        description="a request whose content holds one of these gets 400 (fail-fast tests)",
    )
    auth_token: SecretStr | None = Field(
        None, description="when set, require 'Authorization: Bearer <token>'"
    )
    strict_models: bool = Field(False, description="404 for a model not in `models` (catches typos)")
    seed: int = Field(0, description="changes every deterministic decision")
    models: list[str] = Field(
        default_factory=lambda: [
            "deepseek-reasoner",
            "deepseek-ai/DeepSeek-R1",
            "Qwen/Qwen2.5-7B-Instruct",
            "Qwen/Qwen2.5-32B-Instruct",
        ],
        description="model names listed by /v1/models",
    )

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> RehearsalConfig:
        """Read a YAML (or JSON) mapping, apply keyword overrides; errors name the file and the bad key."""
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"rehearsal config {path}: cannot read: {exc}") from exc
        if not isinstance(raw, dict):
            raise ValueError(
                f"rehearsal config {path}: expected a mapping at the top, got {type(raw).__name__}"
            )
        raw.update(overrides)
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"rehearsal config {path}: {problems}") from exc

    def to_json_dict(self) -> dict[str, Any]:
        """The config as plain JSON values, the auth token included (for handing to a child process only)."""
        data = self.model_dump(mode="json")
        data["auth_token"] = self.auth_token.get_secret_value() if self.auth_token else None
        return data


def spawn_rehearsal_server(
    cfg: RehearsalConfig,
    *,
    timeout: float = 60.0,
    log_path: str | Path | None = None,
    python: str = sys.executable,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start the server as a separate process (its own GIL) and wait until /health answers.

    The config travels in a private temp file (the auth token stays off the command line) that is deleted once
    the server is up. Output goes to ``log_path`` (default: a file next to it). Stop it with
    :func:`stop_rehearsal_server`.
    """
    workdir = Path(tempfile.mkdtemp(prefix="m1-rehearse-"))
    config_path, ready_path = workdir / "config.json", workdir / "ready"
    fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(cfg.to_json_dict(), f)
    log = Path(log_path) if log_path is not None else workdir / "rehearse.log"
    env = dict(os.environ)
    project_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (project_root, env.get("PYTHONPATH", "")) if p)
    cmd = [
        python,
        "-m",
        SERVER_MODULE,
        "--config",
        str(config_path),
        "--ready-file",
        str(ready_path),
    ]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while not ready_path.exists():
            if proc.poll() is not None:
                tail = log.read_text(encoding="utf-8", errors="replace")[-2000:]
                raise RuntimeError(
                    f"rehearsal server exited with code {proc.returncode} before it was up; log {log}:\n{tail}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"rehearsal server not up within {timeout} s; log {log}")
            time.sleep(0.05)
        url = ready_path.read_text(encoding="utf-8").strip()
        health = url[: -len("/v1")] + "/health"
        while True:
            try:
                with urllib.request.urlopen(health, timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"rehearsal server at {url} did not answer /health within {timeout} s; log {log}"
                )
            time.sleep(0.05)
    except BaseException:
        stop_rehearsal_server(proc)
        raise
    finally:
        config_path.unlink(missing_ok=True)
    return proc, url


def stop_rehearsal_server(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM the spawned server (it prints its stats and exits 0), SIGKILL if it hangs; its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    return proc.returncode
